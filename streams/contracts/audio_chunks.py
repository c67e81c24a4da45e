"""The ``audio.chunks`` contract: key = stream id, value = audio bytes, format in headers.

Headers (UTF-8 strings): ``stream_id`` (optional when the key is the stream id; must equal it otherwise),
``seq`` (0, 1, 2, ... per stream; duplicates are dropped, gaps reordered within a window), ``sample_rate``,
``channels`` (default 1), ``encoding`` (pcm16, wav, flac, ogg, mp3), ``eos`` ("1" on a stream's last chunk),
``word_timestamps`` (optional "1"/"0": this stream's choice of word timings). Written by producers
(`chunk_headers`), read by the ASR processor (`parse_meta`), with one readable reason per way they can be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.contracts.records import RawRecord

REQUIRED_HEADERS = ("seq", "sample_rate", "encoding")
MAX_STREAM_ID = 200


def chunk_headers(stream_id: str, seq: int, sample_rate: int, channels: int, *, encoding: str = "pcm16",
                  eos: bool = False) -> tuple[tuple[str, bytes], ...]:
    return (
        ("stream_id", stream_id.encode()), ("seq", str(seq).encode()), ("sample_rate", str(sample_rate).encode()),
        ("channels", str(channels).encode()), ("encoding", encoding.encode()), ("eos", b"1" if eos else b"0"),
    )


class BadChunk(ValueError):
    """Headers that do not describe a usable chunk; the message is the dead-letter reason."""


@dataclass(frozen=True)
class ChunkMeta:
    stream_id: str
    seq: int
    sample_rate: int
    channels: int
    encoding: str
    eos: bool
    word_timestamps: bool | None = None  # None: header absent, the stream keeps its current choice


def parse_meta(record: RawRecord) -> ChunkMeta:
    """Headers → metadata, with one specific reason per way they can be wrong."""
    headers: dict[str, str] = {}
    for k, v in record.headers:
        try:
            headers[k] = (v or b"").decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadChunk(f"header {k!r} is not valid UTF-8") from None
    missing = [h for h in REQUIRED_HEADERS if not headers.get(h)]
    if missing:
        raise BadChunk(f"missing required header(s): {', '.join(missing)}")
    try:  # strictly: two undecodable keys would both become "\ufffd", merging two streams into one
        key = record.key.decode("utf-8") if record.key else ""
    except UnicodeDecodeError:
        raise BadChunk(f"the message key {record.key[:40]!r} is not valid UTF-8 (a stream id is a string)") from None
    stream_id = headers.get("stream_id") or key
    if not stream_id:
        raise BadChunk("no stream id: neither a stream_id header nor a message key")
    if key and stream_id != key:
        raise BadChunk(f"stream_id header {stream_id!r} differs from the message key {key!r}")
    if len(stream_id) > MAX_STREAM_ID:
        raise BadChunk(f"stream id has {len(stream_id)} characters, over {MAX_STREAM_ID}")
    ints = {}
    for name, default in (("seq", None), ("sample_rate", None), ("channels", "1")):
        raw = headers.get(name) or default
        try:
            ints[name] = int(raw)  # type: ignore[arg-type]
        except ValueError:
            raise BadChunk(f"header {name!r}={raw!r} is not an integer") from None
    if ints["seq"] < 0:
        raise BadChunk(f"header 'seq'={ints['seq']} is negative")
    eos = headers.get("eos", "0")
    if eos not in ("0", "1"):
        raise BadChunk(f"header 'eos'={eos!r}; expected '0' or '1'")
    words = headers.get("word_timestamps")
    if words not in (None, "", "0", "1"):
        raise BadChunk(f"header 'word_timestamps'={words!r}; expected '0' or '1'")
    return ChunkMeta(stream_id, ints["seq"], ints["sample_rate"], ints["channels"],
                     headers["encoding"].lower(), eos == "1", None if not words else words == "1")
