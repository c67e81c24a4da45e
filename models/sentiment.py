"""Sentiment classification: our mean-pooled MiniLM classifier plus any Hugging Face sequence classifier.

The fast path (`TransformerSentiment.predict`) exists because the `transformers.pipeline` API spends most of
its time in per-call overhead on short tweets; here the tokenizer runs once per batch, texts are grouped by
token length so padding is minimal, and the Linear layers run as per-token int8 where this CPU has a fast
int8 GEMM (else fp32: see `int8_is_faster`).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel

from models.int8_kernel import fused_linear_available
from models.model_store import FINETUNED_MODEL, HEAD_MODEL, is_built, model_dir, registry_dir
from models.registry import Registry, verify_tree
from models.text_types import EMBEDDING_DIMS, SENTIMENT_LABELS, Sentiment

MODEL_TYPE = "streamsense_minilm_meanpool"
log = logging.getLogger(__name__)


class MeanPoolConfig(BertConfig):
    """A BertConfig with its own model_type, so loading our directory never needs trust_remote_code."""

    model_type = MODEL_TYPE

    def __init__(
        self, streamsense_name: str = "sentiment-minilm", streamsense_version: str = "0", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.streamsense_name = streamsense_name
        self.streamsense_version = streamsense_version


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: all-MiniLM-L6-v2 was trained with this pooling, not with [CLS]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class MeanPoolBertForSequenceClassification(BertPreTrainedModel):
    """MiniLM encoder + mean pooling + one Linear layer, shaped like any HF classifier (`.logits`)."""

    config_class = MeanPoolConfig

    def __init__(self, config: MeanPoolConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoded = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            output_hidden_states=bool(kwargs.get("output_hidden_states")),
        )  # fmt: skip
        hidden = encoded.last_hidden_state
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)


def _register_auto_classes() -> None:
    """Lets `pipeline(model=<our dir>)` and AutoModel* resolve our model_type once this module is imported."""
    try:
        AutoConfig.register(MODEL_TYPE, MeanPoolConfig)
        AutoModelForSequenceClassification.register(MeanPoolConfig, MeanPoolBertForSequenceClassification)
    except ValueError:  # already registered (module re-imported)
        pass


_register_auto_classes()

_LABEL_ALIASES = {
    "positive": "positive", "pos": "positive", "neutral": "neutral", "neu": "neutral",
    "negative": "negative", "neg": "negative",
    "1 star": "negative", "2 stars": "negative", "3 stars": "neutral",
    "4 stars": "positive", "5 stars": "positive",
}  # fmt: skip


def normalize_labels(id2label: dict[int, str]) -> list[str]:
    """Map a model's raw labels (in id order) onto positive/neutral/negative.

    Generic LABEL_i names carry no meaning, so we assume the dominant conventions: 3 classes are
    negative/neutral/positive (cardiffnlp twitter-roberta), 2 are negative/positive (SST-2 fine-tunes).
    Anything else unknown is an error rather than a silent mislabel.
    """
    by_id = {int(k): str(v) for k, v in id2label.items()}  # keys are strings in some config.json files
    raw = [by_id[i] for i in sorted(by_id)]
    if all(re.fullmatch(r"label_\d+", r.strip().lower()) for r in raw):
        if len(raw) == 3:
            return ["negative", "neutral", "positive"]
        if len(raw) == 2:
            return ["negative", "positive"]
    unknown = [r for r in raw if r.strip().lower() not in _LABEL_ALIASES]
    if unknown:
        raise ValueError(
            f"cannot map sentiment labels {unknown} (model labels: {raw}) to positive/neutral/negative"
        )
    return [_LABEL_ALIASES[r.strip().lower()] for r in raw]


CALL_OVERHEAD_TOKENS = 32  # one encoder call's fixed cost in tokens' worth of compute: fitted 16 (1 thread), 39 (2)


def length_sorted_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int,
    *,
    overhead: int = CALL_OVERHEAD_TOKENS,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield (original indices, input_ids, attention_mask), grouping texts of similar token length.

    The tokenizer is called once for all texts (its per-call overhead is large for short texts); padding
    is done here, in groups chosen by `padded_groups`.
    """
    ids = tokenizer(
        list(texts), truncation=True, max_length=max_length, padding=False,
        return_attention_mask=False, return_token_type_ids=False,
    )["input_ids"]  # fmt: skip
    yield from padded_groups(ids, tokenizer.pad_token_id or 0, batch_size, overhead=overhead)


def padded_groups(
    ids: Sequence[Sequence[int]], pad_id: int, batch_size: int, *, overhead: int = CALL_OVERHEAD_TOKENS
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """`length_sorted_batches` over already tokenized texts (callers that also need offsets tokenize once).

    Texts sorted by length are cut into groups of at most `batch_size` that minimise the total cost, each
    group costing rows x width padded tokens plus `overhead` for the call itself. Why a cost and not a padding
    bound: on 64 mixed tweets, fixed groups of 64 pad to ~2x the mean length (tight groups doubled measured
    throughput), but a stream at a steady rate brings batches of a few texts, where a 15% padding bound cut 8
    held-out tweets into 4.7 encoder calls on average (2.3 with this cost, for 15% padding instead of 3%), and
    a call's fixed cost (Python, dispatch, thin GEMMs) made such small batches slower per text than large ones.
    """
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    lengths = [len(ids[i]) for i in order]
    # best[j]: least cost of the first j texts; cut[j]: where the last group of that split starts
    best = [0] * (len(order) + 1)
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        width = lengths[j - 1]
        best[j], cut[j] = min(
            (best[i] + overhead + (j - i) * width, i) for i in range(max(0, j - batch_size), j)
        )
    bounds = []
    j = len(order)
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    for a, b in reversed(bounds):
        idx = order[a:b]
        width = lengths[b - 1]
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            input_ids[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        yield idx, torch.from_numpy(input_ids), torch.from_numpy(mask)


class RowInt8Linear(nn.Module):
    """nn.Linear as an int8 GEMM with per-channel weight scales and per-row (per-token) activation scales.

    Why not torch's dynamic quantization: it takes one activation scale per forward pass, so a text's
    scores depend on which texts share its batch (measured: 6-9% of labels changed between batch-of-64 and
    one-by-one). With one scale per token row every text is computed the same way in any batch — the
    micro-batched stream and a per-message call give the same predictions — and accuracy stays at fp32's
    (held-out 3-class: 0.750 vs fp32 0.741 on 1000 tweets; 98% label agreement with fp32), ~2.3x fp32 speed.
    """

    fused = True  # run as the fused op where it is built; `unfuse_linears` turns it off per module

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.dtype == torch.float32 and fused_linear_available():
            return torch.ops.streamsense.row_int8_linear(x, self.weight_t, self.weight_scale, self.bias)
        return self.unfused(x)

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        """The forward as torch ops: the reference the fused op (`models/int8_kernel.py`) equals to the last
        bit, and the path wherever that op cannot be built. Inference only, like the op (in-place ops)."""
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
        quantized = torch.round(rows / scale).to(torch.int8)
        out = torch._int_mm(quantized, self.weight_t).to(torch.float32).mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


def unfuse_linears(model: nn.Module) -> nn.Module:
    """`model` with its int8 linears run as torch ops (the same results, slower). For the benchmark's naive
    baseline: it keeps the arithmetic and the execution it has always had (eager, unfused), so its ratio to
    the pipeline measures what the serving path adds, the fused op included, against a fixed reference."""
    for module in model.modules():
        if isinstance(module, RowInt8Linear):
            module.fused = False
    return model


@functools.cache
def int8_speedup() -> float:
    """How much faster ``torch._int_mm`` is than an fp32 GEMM here, at MiniLM's shape (measured once, ~0.1 s).

    Why measure: the int8 kernel is fast only where the CPU has int8 dot-product instructions (AVX-512 VNNI,
    AMX). Measured on machines of the same kind: ~2.3x fp32 on one, and 0.045x (22 times *slower*) on an AVX2-only
    AMD EPYC, where building the default model through it took over an hour instead of two minutes."""
    a8 = torch.randint(-127, 127, (64, 384), dtype=torch.int8)
    b8 = torch.randint(-127, 127, (384, 1536), dtype=torch.int8)
    a32, b32 = a8.float(), b8.float()

    def best(fn: Any) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    with torch.inference_mode():
        torch._int_mm(a8, b8)
        return best(lambda: a32 @ b32) / best(lambda: torch._int_mm(a8, b8))


def int8_is_faster() -> bool:
    """The default of ``quantize``: int8 only where it pays (per-token int8 and fp32 give the same labels on
    97.8% of held-out tweets and the same accuracy, so the choice is about speed alone)."""
    return int8_speedup() > 1.2


def quantize_linear(model: nn.Module) -> nn.Module:
    """Copy of `model` whose encoder nn.Linear layers (≈all MiniLM FLOPs) run as RowInt8Linear; the fp32
    model stays usable. The classifier head stays fp32: it is tiny and sits close to decision boundaries."""
    quantized = copy.deepcopy(model)
    head = {"classifier", "score"}
    for module in list(quantized.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name not in head:
                setattr(module, name, RowInt8Linear(child))
    return quantized


class _Outputs(nn.Module):
    """A classifier as a function of tensors only (what `torch.jit.trace` takes): logits, then every hidden state."""

    def __init__(self, runner: nn.Module) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.runner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return (out.logits, *(out.hidden_states or ()))  # a hub model may not return hidden states


def traced_forward(runner: nn.Module, probes: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """``_Outputs(runner)`` traced and frozen, if it gives bit-identical outputs on every probe; else eager.

    Why: a streamed batch is often one to five tweets, and then the encoder's time is mostly per-op Python
    and dispatch overhead (~500 ops in the int8 MiniLM), not arithmetic. The traced graph runs the same
    kernels without the Python: the encoder alone, per text, 1 thread, AVX-512 AMD EPYC: batch of 1 7.8 →
    5.2 ms, of 4 5.7 → 4.3 ms, of 10 5.0 → 4.0 ms, with results equal to the last bit. The probes (padded
    and unpadded) guard that equality, so a model whose forward branches on shapes or values (a hub model may)
    stays eager."""
    eager = _Outputs(runner).eval()
    # the tracer reads every attribute, properties included: one of transformers' logs a bogus loss warning
    noisy = logging.getLogger("transformers.modeling_utils")
    was_disabled, noisy.disabled = noisy.disabled, True
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python: the probes decide
            traced = torch.jit.freeze(torch.jit.trace(eager, probes[0], check_trace=False))
            same = all(torch.equal(a, b) for args in probes for a, b in zip(eager(*args), traced(*args), strict=True))
    except Exception as exc:  # any model torch cannot trace still serves, eagerly
        log.warning("serving %s eagerly: tracing failed (%s: %s)", type(runner).__name__, type(exc).__name__, exc)
        return eager
    finally:
        noisy.disabled = was_disabled
    if not same:
        log.warning("serving %s eagerly: its traced graph's outputs differ", type(runner).__name__)
        return eager
    return traced


@functools.cache
def embedding_projection(hidden_size: int) -> torch.Tensor:
    """(hidden_size, EMBEDDING_DIMS), seeded: every worker and version projects the same way. Random projections
    keep distances roughly (Johnson-Lindenstrauss), which is all the drift monitor's embedding signal needs."""
    generator = torch.Generator().manual_seed(20261125)
    return torch.randn(hidden_size, EMBEDDING_DIMS, generator=generator) / EMBEDDING_DIMS**0.5


class TransformerSentiment:
    """SentimentModel over any sequence classifier; `.model`/`.tokenizer` are the fp32 originals."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        *,
        quantize: bool | None = None,
        max_length: int = 128,
        batch_size: int = 64,
        trace: bool = True,
    ) -> None:
        """``quantize``: True runs the encoder's Linear layers as per-token int8, False fp32, None (default)
        int8 only where this CPU's int8 GEMM is faster than fp32 (`int8_is_faster`). ``trace``: serve through a
        traced graph where it gives identical outputs (`traced_forward`)."""
        if quantize is None:
            quantize = int8_is_faster()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.quantized = quantize
        self.max_length = max_length
        self.batch_size = batch_size
        self._runner = quantize_linear(self.model) if quantize else self.model
        self._forward = traced_forward(self._runner, self._probes()) if trace else _Outputs(self._runner).eval()
        labels = normalize_labels(model.config.id2label)
        # raw class -> normalized class; several raw classes may fold into one (e.g. 1-5 stars)
        fold = torch.zeros(len(labels), len(SENTIMENT_LABELS))
        for raw, norm in enumerate(labels):
            fold[raw, SENTIMENT_LABELS.index(norm)] = 1.0
        self._fold = fold

    def _probes(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A padded batch (traced) and a lone text, as the stream sends them."""
        probes = [["a longer probe text, so that the batch is padded", "short"], ["one text"]]
        encoded = [self.tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
                   for texts in probes]
        return [(e["input_ids"], e["attention_mask"]) for e in encoded]

    @property
    def runner(self) -> nn.Module:
        """The module predictions actually run through (the int8 copy when quantized), for baselines."""
        return self._runner

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 3) probabilities in SENTIMENT_LABELS order, rows in input order."""
        return self._run(texts, embed=False)[0]

    def _run(
        self, texts: Sequence[str], *, embed: bool, layers: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray | None]]:
        """Probabilities, (with ``embed``) the projected sentence embeddings — the mean over real tokens of
        the last hidden layer, times a fixed random matrix (`embedding_projection`) — and (with ``layers``)
        those hidden layers' states per text over its real tokens, for a token model sharing this pass."""
        out = np.zeros((len(texts), len(SENTIMENT_LABELS)), dtype=np.float32)
        vectors = np.zeros((len(texts), EMBEDDING_DIMS), dtype=np.float32) if embed else None
        states: list[np.ndarray | None] = [None] * len(texts)
        if not texts:
            return out, vectors, states
        with torch.inference_mode():
            for idx, input_ids, mask in length_sorted_batches(
                self.tokenizer, texts, self.max_length, self.batch_size
            ):
                logits, *hidden_states = self._forward(input_ids, mask)
                out[idx] = (torch.softmax(logits.float(), dim=-1) @ self._fold).numpy()
                if vectors is not None and hidden_states:
                    pooled = mean_pool(hidden_states[-1].float(), mask)
                    vectors[idx] = (pooled @ embedding_projection(pooled.shape[-1])).numpy()
                if layers:
                    selected = torch.cat([hidden_states[k] for k in layers], dim=-1).float().numpy()
                    lengths = mask.sum(1).tolist()
                    for row, i in enumerate(idx):
                        states[i] = selected[row, : lengths[row]]
        return out, vectors, states

    def predict(self, texts: Sequence[str]) -> list[Sentiment]:
        return self.predict_with_states(texts)[0]

    def predict_with_states(
        self, texts: Sequence[str], layers: Sequence[int] = ()
    ) -> tuple[list[Sentiment], list[np.ndarray | None]]:
        """Sentiments plus the encoder states of ``layers`` (see `_run`), so NER can reuse this pass."""
        probs, vectors, states = self._run(texts, embed=True, layers=layers)
        best = probs.argmax(axis=1)
        assert vectors is not None
        sentiments = [Sentiment(SENTIMENT_LABELS[b], float(p[b]), tuple(float(x) for x in v))
                      for b, p, v in zip(best, probs, vectors, strict=True)]
        return sentiments, states


REGISTRY_NAME = "sentiment"  # the model's name in the registry, on model.updates and in text.enriched's models


def default_model_path() -> Path:
    """The built offline model: the fine-tuned one when it was built, else the frozen-encoder head."""
    for name in (FINETUNED_MODEL, HEAD_MODEL):
        if is_built(model_dir() / name):
            return model_dir() / name
    raise FileNotFoundError(
        f"no sentiment model built under {model_dir()}: run `streamsense models build` "
        "(or set STREAMSENSE_MODEL_DIR to where models were built)"
    )


def _resolve(spec: str) -> Path | str:
    if spec == "default":  # the registry's champion once the retraining loop promoted one, else the built model
        champion = Registry(registry_dir()).champion(REGISTRY_NAME)
        if champion is None:
            return default_model_path()
        verify_tree(champion.path, str(champion.meta["sha256"]))
        return champion.path
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
        return path
    return spec  # a Hugging Face hub id


def load_classifier(spec: str = "default") -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(fp32 model, tokenizer, "name@version") — shared by the fast path and the pipeline baseline."""
    where = _resolve(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(where))
    if isinstance(where, Path):
        config = json.loads((where / "config.json").read_text())
        if config.get("model_type") == MODEL_TYPE:
            model = MeanPoolBertForSequenceClassification.from_pretrained(str(where))
            return model, tokenizer, f"{model.config.streamsense_name}@{model.config.streamsense_version}"
        model = AutoModelForSequenceClassification.from_pretrained(str(where))
        return model, tokenizer, f"{where.name}@local"
    model = AutoModelForSequenceClassification.from_pretrained(where)
    return model, tokenizer, f"{where}@{getattr(model.config, '_commit_hash', None) or 'hub'}"


def load_sentiment(
    spec: str = "default", *, quantize: bool | None = None, max_length: int = 128, batch_size: int = 64,
    trace: bool = True,
) -> TransformerSentiment:
    """spec: "default" (our built model), a local model directory, or a Hugging Face model id."""
    model, tokenizer, name = load_classifier(spec)
    return TransformerSentiment(
        model, tokenizer, name, quantize=quantize, max_length=max_length, batch_size=batch_size, trace=trace
    )
