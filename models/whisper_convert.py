"""Convert a CTranslate2 (faster-whisper) Whisper model into an openai-whisper checkpoint.

Only CT2 copies of OpenAI's weights ship offline, while the pipeline runs openai-whisper
(pure torch, no native runtime).  The CT2 ``model.bin`` format is simple enough to parse
with ``struct`` + numpy, so ``ctranslate2`` is not a dependency of the conversion.

CT2 binary layout (binary version >= 4, as written by ``ctranslate2.specs.ModelSpec``)::

    u32 version | str spec_name | u32 revision | u32 n_vars
    n_vars * (str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | bytes)
    u32 n_aliases | n_aliases * (str alias | str target)

where ``str`` is ``u16 length-including-NUL`` + bytes + NUL, all little-endian.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

# ctranslate2::DataType enum order.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16, widened to float32 on read
}
_BF16 = 5


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this converter understands."""


def _read_ct2_bytes(parts: Iterable[Path]) -> bytes:
    paths = [Path(p) for p in parts]
    if len(paths) == 1:
        return paths[0].read_bytes()
    # Split packages (PyPI's file-size limit) are plain byte concatenations.
    return b"".join(p.read_bytes() for p in paths)


def parse_ct2(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """Parse CT2 ``model.bin`` bytes into ``(spec_name, {name: array})`` with aliases resolved.

    Arrays are views into ``data`` where possible (no copy of a 150 MB model twice).
    """
    buf = memoryview(data)
    off = 0

    def take(fmt: str) -> int:
        nonlocal off
        try:
            (val,) = struct.unpack_from(fmt, buf, off)
        except struct.error as exc:
            raise CT2FormatError(f"truncated CT2 file at byte {off}") from exc
        off += struct.calcsize(fmt)
        return val

    def take_str() -> str:
        nonlocal off
        n = take("<H")
        if n == 0 or off + n > len(buf):
            raise CT2FormatError(f"bad string length {n} at byte {off}")
        s = bytes(buf[off : off + n - 1]).decode("utf-8")
        off += n
        return s

    version = take("<I")
    if version < 4 or version > 6:
        raise CT2FormatError(f"unsupported CT2 binary version {version} (expected 4..6)")
    spec = take_str()
    take("<I")  # spec revision
    n_vars = take("<I")
    out: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = take_str()
        rank = take("<B")
        shape = tuple(take("<I") for _ in range(rank))
        dtype_id = take("<B")
        nbytes = take("<I")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{name}: unknown dtype id {dtype_id}")
        dt = _DTYPES[dtype_id]
        if off + nbytes > len(buf) or nbytes != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise CT2FormatError(f"{name}: {nbytes} bytes do not match shape {shape} x {dt}")
        arr = np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize, offset=off).reshape(shape)
        if dtype_id == _BF16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
        off += nbytes
    for _ in range(take("<I")):
        alias, target = take_str(), take_str()
        out[alias] = out[target]
    if off != len(buf):
        raise CT2FormatError(f"{len(buf) - off} trailing bytes after the CT2 variables")
    return spec, out


def _weight(v: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """Float tensor for ``name``, dequantizing int8/int16 weights with CT2's per-row scale."""
    arr = v[name]
    if arr.dtype.kind == "i":
        scale = v.get(name + "_scale")
        if scale is None:
            raise CT2FormatError(f"{name} is quantized but has no {name}_scale")
        # CT2 stores q = round(w * scale) with one scale per output row.
        arr = arr.astype(np.float32) / np.asarray(scale, dtype=np.float32).reshape(-1, *[1] * (arr.ndim - 1))
    return torch.from_numpy(np.array(arr, dtype=np.float32 if arr.dtype != np.float16 else np.float16))


def _scalar(v: dict[str, np.ndarray], name: str) -> int:
    return int(np.asarray(v[name]).reshape(-1)[0])


def _count_layers(v: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def ct2_to_whisper_state(
    v: dict[str, np.ndarray], progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Map CT2 WhisperSpec variables to ``(dims, state_dict)`` for ``whisper.model.Whisper``.

    Dims come from the tensors themselves so any size (tiny.en ... large) converts without a table.
    """
    n_audio_layer = _count_layers(v, "encoder")
    n_text_layer = _count_layers(v, "decoder")
    if n_audio_layer == 0 or n_text_layer == 0:
        raise CT2FormatError("no encoder/decoder layers found: not a WhisperSpec model")
    conv1 = v["encoder/conv1/weight"]
    tok = v["decoder/embeddings/weight"]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": _scalar(v, "encoder/num_heads"),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(tok.shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(tok.shape[1]),
        "n_text_head": _scalar(v, "decoder/num_heads"),
        "n_text_layer": n_text_layer,
    }
    proj = v.get("decoder/projection/weight")
    if proj is not None and not np.shares_memory(proj, tok) and not np.array_equal(proj, tok):
        # openai-whisper ties the output projection to the token embedding.
        raise CT2FormatError("decoder projection is not tied to the embeddings; whisper cannot express it")

    sd: dict[str, torch.Tensor] = {}
    w = _weight

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = w(v, f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = w(v, f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = w(v, f"{src}/gamma")
        sd[f"{dst}.bias"] = w(v, f"{src}/beta")

    def split_linear(dsts: list[str], src: str) -> None:
        """Split a fused projection; whisper's key has no bias, so that bias must be ~0 and is dropped."""
        ws = torch.chunk(w(v, f"{src}/weight"), len(dsts), dim=0)
        bs = torch.chunk(w(v, f"{src}/bias"), len(dsts), dim=0)
        for dst, wt, bt in zip(dsts, ws, bs, strict=True):
            sd[f"{dst}.weight"] = wt.clone()
            if dst.endswith(".key"):
                if bt.float().abs().max().item() > 1e-6:
                    raise CT2FormatError(f"{src}: key bias is non-zero; whisper's key projection has none")
            else:
                sd[f"{dst}.bias"] = bt.clone()

    total = n_audio_layer + n_text_layer
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def block(dst: str, src: str) -> None:
        """Self-attention and MLP, common to encoder and decoder layers."""
        split_linear(
            [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0"
        )
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        tick()

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    sd["encoder.positional_embedding"] = w(v, "encoder/position_encodings/encodings")
    for i in range(n_audio_layer):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}")
    norm("encoder.ln_post", "encoder/layer_norm")

    sd["decoder.token_embedding.weight"] = w(v, "decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = w(v, "decoder/position_encodings/encodings")
    for i in range(n_text_layer):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        split_linear([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1")
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        block(dst, src)
    norm("decoder.ln", "decoder/layer_norm")
    return dims, sd


def convert(
    ct2_parts: Path | Iterable[Path],
    out_path: Path,
    *,
    config_json: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert CT2 ``model.bin`` (or its split parts, in order) to a ``whisper.load_model`` checkpoint.

    The output is written atomically so a crash mid-write never leaves a cache entry that
    later loads as garbage.  ``alignment_heads`` from CT2's config.json is stored alongside
    (whisper.load_model ignores extra keys; :func:`apply_alignment_heads` uses it for word timestamps).
    """
    parts = [Path(ct2_parts)] if isinstance(ct2_parts, (str, Path)) else [Path(p) for p in ct2_parts]
    spec, variables = parse_ct2(_read_ct2_bytes(parts))
    if spec != "WhisperSpec":
        raise CT2FormatError(f"spec is {spec!r}, not WhisperSpec")
    dims, sd = ct2_to_whisper_state(variables, progress)
    ckpt: dict = {"dims": dims, "model_state_dict": sd}
    cfg = Path(config_json) if config_json else parts[0].parent / "config.json"
    if cfg.is_file():
        heads = json.loads(cfg.read_text()).get("alignment_heads")
        if heads:
            ckpt["alignment_heads"] = [[int(a), int(b)] for a, b in heads]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Unique temp name: several workers may convert the same model at once; last rename wins.
    tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out_path)
    return out_path


def apply_alignment_heads(model: torch.nn.Module, heads: list[list[int]]) -> None:
    """Install per-model alignment heads (whisper only knows them for names it downloads itself)."""
    dims = model.dims
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


def dims_dict(model: torch.nn.Module) -> dict[str, int]:
    """Plain dict of a loaded model's dims (handy in tests and logs)."""
    return asdict(model.dims)
