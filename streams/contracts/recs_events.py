"""The recommender's input contracts: ``clicks`` (key = user id), ``items`` (key = item id, compacted) and
``recs.requests`` (key = request id), parsed with one readable reason per defect (the dead letter's reason).

``clicks``: {id, user_id, item_id, event: impression|click|like|purchase|rating, value?, ts?} (ids are strings or
integers of 1..200 characters; a rating's value is 0..10). ``items``: {item_id, title?, genres? (string with "|"
or a list), text?}. ``recs.requests``: {id, user_id, k? (1..1000, default 10)}; answered on ``recs.responses``
with {id, ts, schema, user_id, items: [{item_id, score}], model}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.recs.events import ClickEvent
from streams.contracts.records import RawRecord
from streams.contracts.schemas import SchemaError, decode_json_object

MAX_ID_CHARS = 200
MAX_K = 1000


class BadInput(ValueError):
    """A record that cannot be used; the message is the dead-letter reason."""


def _json(record: RawRecord) -> dict[str, Any]:
    try:
        return decode_json_object(record.value)
    except SchemaError as exc:  # its message is already the readable reason
        raise BadInput(str(exc)) from exc


def _id(obj: Mapping[str, Any], field: str) -> str:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadInput(f"field {field!r} must be a string or integer id, got {type(value).__name__}")
    text = str(value).strip()
    if not text or len(text) > MAX_ID_CHARS:
        raise BadInput(f"field {field!r} must be 1..{MAX_ID_CHARS} characters")
    return text


def parse_click(record: RawRecord) -> ClickEvent:
    obj = _json(record)
    for f in ("id", "user_id", "item_id"):
        _id(obj, f)
    try:
        ev = ClickEvent.from_dict(obj)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"bad click event: {exc}") from exc
    if ev.event == "rating" and ev.value is not None and not (0.0 <= ev.value <= 10.0):
        raise BadInput(f"rating value {ev.value} out of range 0..10")
    return ev


def parse_item(record: RawRecord) -> dict[str, Any]:
    obj = _json(record)
    row: dict[str, Any] = {"item_id": _id(obj, "item_id")}
    for f in ("title", "genres", "text"):
        v = obj.get(f)
        if v is None:
            continue
        if isinstance(v, list) and all(isinstance(g, str) for g in v):
            v = "|".join(v)
        if not isinstance(v, str):
            raise BadInput(f"field {f!r} must be a string, got {type(v).__name__}")
        row[f] = v
    return row


def parse_request(record: RawRecord, max_k: int = MAX_K) -> tuple[str, str, int]:
    obj = _json(record)
    k = obj.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadInput(f"field 'k' must be an integer in 1..{max_k}")
    return _id(obj, "id"), _id(obj, "user_id"), k
