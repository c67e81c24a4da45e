from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

from models.ner import SPACY_NER, SpacyNER, load_ner, normalize_entity_label
from models.sentiment_training import encoder_path
from models.text_types import ENTITY_LABELS, Entity

TEXTS = [
    "Barack Obama visited Paris and met Google engineers on Monday.",
    "@united lost my bag at JFK again 😡 #travel",
    "",
    "Tom Brady and the New England Patriots won the Super Bowl in Arizona.",
    "nothing here at all",
    "Caf\u00e9 owners in M\u00fcnchen love Microsoft Windows, says Angela Merkel.",
]


@pytest.mark.parametrize(
    ("raw", "ours"),
    [
        ("PERSON", "PER"), ("ORG", "ORG"), ("GPE", "LOC"), ("LOC", "LOC"), ("FAC", "LOC"),
        ("NORP", "MISC"), ("EVENT", "MISC"), ("PRODUCT", "MISC"), ("WORK_OF_ART", "MISC"), ("LAW", "MISC"),
        ("LANGUAGE", "MISC"), ("DATE", None), ("TIME", None), ("MONEY", None), ("PERCENT", None),
        ("QUANTITY", None), ("ORDINAL", None), ("CARDINAL", None),
        ("B-PER", "PER"), ("I-PER", "PER"), ("B-LOC", "LOC"), ("I-ORG", "ORG"), ("B-MISC", "MISC"),
        ("PER", "PER"), ("MISC", "MISC"), ("O", None), ("B-DATE", None), ("i-person", "PER"), ("E-GPE", "LOC"),
    ],
)  # fmt: skip
def test_label_mapping(raw: str, ours: str | None) -> None:
    assert normalize_entity_label(raw) == ours


def _check_spans(texts: list[str], results: list[list[Entity]]) -> None:
    assert len(results) == len(texts)
    for text, ents in zip(texts, results, strict=True):
        for ent in ents:
            assert 0 <= ent.start < ent.end <= len(text)
            assert text[ent.start : ent.end] == ent.text
            assert ent.text == ent.text.strip()
            assert ent.label in ENTITY_LABELS
            assert 0.0 <= ent.score <= 1.0


@pytest.fixture(scope="module")
def spacy_ner() -> SpacyNER:
    ner = load_ner(SPACY_NER)
    assert isinstance(ner, SpacyNER)
    return ner


def test_spacy_runs_only_ner(spacy_ner: SpacyNER) -> None:
    assert spacy_ner.nlp.pipe_names == ["ner"]
    assert spacy_ner.name.startswith("spacy-en_core_web_sm") and "@3.8" in spacy_ner.name


def test_spacy_entities(spacy_ner: SpacyNER) -> None:
    results = spacy_ner.predict(TEXTS)
    _check_spans(TEXTS, results)
    first = {(e.text, e.label) for e in results[0]}
    assert {("Barack Obama", "PER"), ("Paris", "LOC"), ("Google", "ORG")} <= first
    assert "Monday" not in {e.text for e in results[0]}  # DATE is dropped
    assert results[2] == []
    assert all(e.score == 1.0 for ents in results for e in ents)
    assert ("Tom Brady", "PER") in {(e.text, e.label) for e in results[3]}


def test_spacy_batch_equals_single(spacy_ner: SpacyNER) -> None:
    assert spacy_ner.predict(TEXTS) == [spacy_ner.predict([t])[0] for t in TEXTS]
    assert spacy_ner.predict([]) == []


def test_entity_to_dict() -> None:
    assert Entity("Paris", "LOC", 3, 8, 1.0).to_dict() == {
        "text": "Paris", "label": "LOC", "start": 3, "end": 8, "score": 1.0,
    }  # fmt: skip


# ---- transformers backend, on a tiny random token classifier (no NER transformer ships offline) ----

HF_LABELS = [
    "O",
    "B-PER",
    "I-PER",
    "B-ORG",
    "I-ORG",
    "B-LOC",
    "I-LOC",
    "B-MISC",
    "I-MISC",
    "B-DATE",
    "I-DATE",
]


def _tiny_token_classifier(path: Path, favour: str | None) -> Path:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=len(HF_LABELS), id2label=dict(enumerate(HF_LABELS)),
        label2id={label: i for i, label in enumerate(HF_LABELS)},
    )  # fmt: skip
    model = BertForTokenClassification(config)
    if favour is not None:  # make one tag win everywhere, so the expected output is known exactly
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.fill_(-5.0)
            model.classifier.bias[HF_LABELS.index(favour)] = 5.0
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def test_hf_backend_random_model_gives_valid_spans(tmp_path: Path) -> None:
    ner = load_ner(f"hf:{_tiny_token_classifier(tmp_path / 'rand', None)}")
    results = ner.predict(TEXTS)
    _check_spans(TEXTS, results)
    assert ner.name.endswith("@local")


def test_hf_backend_merges_inside_tags_into_one_span(tmp_path: Path) -> None:
    ner = load_ner(f"hf:{_tiny_token_classifier(tmp_path / 'iper', 'I-PER')}")
    texts = ["Angela Merkel met Obama", "  spaced   out  "]
    results = ner.predict(texts)
    _check_spans(texts, results)
    assert [[(e.text, e.label) for e in ents] for ents in results] == [
        [("Angela Merkel met Obama", "PER")],
        [("spaced   out", "PER")],
    ]
    assert (results[1][0].start, results[1][0].end) == (2, 14)


def test_hf_backend_begin_tags_start_new_spans(tmp_path: Path) -> None:
    ner = load_ner(f"hf:{_tiny_token_classifier(tmp_path / 'bloc', 'B-LOC')}")
    texts = ["Angela Merkel met Obama in Berlin"]
    [ents] = ner.predict(texts)
    _check_spans(texts, [ents])
    assert {e.label for e in ents} == {"LOC"}
    assert [e.text for e in ents][:1] == ["Angela"] and ents[-1].text == "Berlin"
    assert all(a.end <= b.start for a, b in itertools.pairwise(ents))


def test_hf_backend_drops_unmapped_types(tmp_path: Path) -> None:
    ner = load_ner(f"hf:{_tiny_token_classifier(tmp_path / 'date', 'B-DATE')}")
    assert ner.predict(["Monday 3 March 2025"]) == [[]]


@pytest.mark.parametrize("spec", ["en_core_web_sm", "nope:x", "hf:"])
def test_bad_spec(spec: str) -> None:
    with pytest.raises(ValueError):
        load_ner(spec)
