"""One monitored signal of one model version: its reference, its detectors, its episode, its window statistics.

Why a probability-integral transform: the signals are anything but normal (confidences pile up near 1, text
lengths are skewed, entity counts are small integers). Mapping each value through the reference's empirical
CDF (ties broken at random) and then the normal quantile makes every scalar signal standard normal while
nothing has changed, whatever its distribution, so one set of calibrated CUSUMs (monitoring/cusum.py) serves
them all: a mean shift up and down at each designed size (in reference standard deviations) and a variance
increase. A categorical signal gets, per category, a Bernoulli CUSUM for its rate going up and one for going
down (relative change ``rate_ratio``); a category the reference never saw counts as ``other``.

An episode opens at the first warning (or drift) and is raised once: ``warning`` → ``drift`` → ``cleared``,
the last when every detector has fallen back below half its warning threshold.

The windowed statistics (KS, PSI, Jensen-Shannon, chi²) are computed only for snapshots: people read them on
the dashboard, but alarms come from the sequential detectors.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

from monitoring.cusum import Cusum

OTHER = "other"
LEVELS = ("none", "warning", "drift")


@dataclass(frozen=True)
class DriftConfig:
    """``expected_events_between_false_alarms``: the whole monitor's budget, split across every detector of
    every active signal. ``reference_events``: the first N values of a model version are its reference."""

    expected_events_between_false_alarms: float = 500_000
    warning_fraction: float = 0.1  # false warnings come this much more often than false drifts
    reference_events: int = 1000
    mean_shifts: tuple[float, ...] = (0.5, 1.5)
    variance_ratio: float = 2.0
    # The reference is a sample: its quantiles and rates are off by ~1/sqrt(n), the same for every later
    # value, which alone multiplied false alarms ~8x in bench/drift.py. Detectors therefore treat a shift of up
    # to this many standard errors of the reference as "no change" (their thresholds assume that worst case).
    reference_margin_se: float = 1.0
    rate_ratio: float = 1.5
    min_rate: float = 0.02  # no "rate down" detector below this rate in the reference, no "up" above 1 - it
    window_events: int = 500
    clear_fraction: float = 0.5


@dataclass
class Transition:
    """An episode's change of level, at one event of a batch."""

    level: str  # warning | drift | cleared
    episode: int
    index: int  # position in the observed batch
    detector: str
    value: float
    threshold: float
    window_events: int  # events since the detector's statistic last left 0 (the change-point estimate)


@dataclass
class Span:
    events: int = 0
    from_ts: int | None = None
    to_ts: int | None = None

    def add(self, ts: np.ndarray) -> None:
        if ts.size:
            self.events += int(ts.size)
            self.from_ts = int(ts[0]) if self.from_ts is None else self.from_ts
            self.to_ts = int(ts[-1])

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "from_ts": self.from_ts, "to_ts": self.to_ts}


@dataclass
class Signal:
    """``kind`` "scalar" or "categorical"; call `observe` with a batch of values and their timestamps."""

    kind: str
    config: DriftConfig = field(default_factory=DriftConfig)
    seed: int = 0
    reference: Span = field(default_factory=Span)
    since_reference: Span = field(default_factory=Span)
    level: int = 0
    episode: int = 0
    _collected: list[Any] = field(default_factory=list)
    _ref: np.ndarray | None = None  # sorted reference values, or category rates
    categories: list[str] = field(default_factory=list)
    detectors: list[Cusum] = field(default_factory=list)
    _llrs: list[Callable[[np.ndarray], np.ndarray]] = field(default_factory=list)  # one per detector
    _window: list[Any] = field(default_factory=list)
    _rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("scalar", "categorical"):
            raise ValueError(f"signal kind must be 'scalar' or 'categorical', got {self.kind!r}")
        self._rng = np.random.default_rng(self.seed)

    @property
    def ready(self) -> bool:
        return self._ref is not None

    # --- the reference --------------------------------------------------------------------------------------

    def _build(self) -> None:
        values = self._collected
        if self.kind == "scalar":
            self._ref = np.sort(np.asarray(values, dtype=np.float64))
        else:
            self.categories = sorted({str(v) for v in values} | {OTHER})
            counts = np.array([sum(1 for v in values if str(v) == c) for c in self.categories], dtype=np.float64)
            self._ref = (counts + 0.5) / (counts.sum() + 0.5 * len(self.categories))  # rates, smoothed
        self._collected = []
        self._make_detectors()

    def _make_detectors(self) -> None:
        """The detectors and, for each, its log-likelihood ratio as a function of the transformed batch (z
        scores for a scalar signal, category indices for a categorical one), both fixed by the reference."""
        assert self._ref is not None
        self.detectors, self._llrs = [], []
        if self.kind == "scalar":
            m = self._margin()
            for d in self.config.mean_shifts:
                for sign in (1.0, -1.0):
                    self.detectors.append(Cusum(f"mean{'+' if sign > 0 else '-'}{d:g}sd", kl0=d * d / 2,
                                                overshoot=1.166 * d))
                    self._llrs.append(lambda z, d=d, sign=sign: d * (sign * z - m) - d * d / 2)
            r = self.config.variance_ratio
            self.detectors.append(Cusum(f"variance x{r:g}", kl0=math.log(r) / 2 - (1 - 1 / r) / 2))
            # the reference variance's standard error is sqrt(2/n)
            self._llrs.append(lambda z, r=r: (z * z - m * math.sqrt(2)) * (1 - 1 / r) / 2 - math.log(r) / 2)
            return
        for i, (name, p0) in enumerate(zip(self.categories, self._ref, strict=True)):
            for direction, (p_in, p1) in self._alternatives(float(p0)).items():
                self.detectors.append(Cusum(f"{name} {direction}", kl0=_bernoulli_kl(p_in, p1)))
                hit, miss = math.log(p1 / p_in), math.log((1 - p1) / (1 - p_in))
                self._llrs.append(lambda cat, i=i, hit=hit, miss=miss: np.where(cat == i, hit, miss))

    def _margin(self) -> float:
        """The reference's standard error, in standard deviations, times the configured margin."""
        return self.config.reference_margin_se / math.sqrt(max(self.reference.events, 1))

    def _alternatives(self, p0: float) -> dict[str, tuple[float, float]]:
        """Per direction, (the in-control rate allowing for the reference's error, the changed rate to look
        for). No "down" for a category too rare to fall, no "up" for one too common to rise."""
        se = math.sqrt(p0 * (1 - p0)) * self._margin()
        out = {}
        if p0 <= 1 - self.config.min_rate:
            p_up = p0 + se
            out["up"] = (p_up, min(max(p0 * self.config.rate_ratio, p_up * 1.05), (1 + p_up) / 2))
        if p0 >= self.config.min_rate:
            p_down = max(p0 - se, p0 / 2)
            out["down"] = (p_down, min(p0 / self.config.rate_ratio, p_down / 1.05))
        return out

    def set_budget(self, arl: float, warning_arl: float) -> None:
        for d in self.detectors:
            d.set_thresholds(arl, warning_arl)

    # --- observing --------------------------------------------------------------------------------------------

    def observe(self, values: Sequence[Any], ts: Sequence[int]) -> tuple[list[Transition], bool]:
        """Feed a batch; returns the episode transitions and whether the reference was completed by it (the
        monitor then re-splits its budget)."""
        ts_arr = np.asarray(ts, dtype=np.int64)
        start, built = 0, False
        if self._ref is None:
            take = min(len(values), self.config.reference_events - len(self._collected))
            self._collected.extend(values[:take])
            self.reference.add(ts_arr[:take])
            start = take
            if len(self._collected) >= self.config.reference_events:
                self._build()
                built = True
        rest = values[start:]
        if self._ref is None or not len(rest):
            return [], built
        self.since_reference.add(ts_arr[start:])
        self._window = (self._window + list(rest))[-self.config.window_events :]
        return self._transitions(self._statistics(rest), start), built

    def _statistics(self, values: Sequence[Any]) -> np.ndarray:
        """The detectors' statistics after each value: shape (detectors, values)."""
        assert self._ref is not None and self._rng is not None
        if self.kind == "scalar":
            x = np.asarray(values, dtype=np.float64)
            lo = np.searchsorted(self._ref, x, "left")
            hi = np.searchsorted(self._ref, x, "right")
            transformed = special.ndtri((lo + self._rng.random(x.size) * (hi - lo + 1)) / (self._ref.size + 1))
        else:
            index = {c: i for i, c in enumerate(self.categories)}
            transformed = np.array([index.get(str(v), index[OTHER]) for v in values])
        return np.vstack([det.run(llr(transformed)) for det, llr in zip(self.detectors, self._llrs, strict=True)])

    def _transitions(self, s: np.ndarray, offset: int) -> list[Transition]:
        h = np.array([d.h for d in self.detectors])[:, None]
        hw = np.array([d.h_warning for d in self.detectors])[:, None]
        drift = (s >= h).any(axis=0)
        warn = (s >= hw).any(axis=0)
        clear = (s < self.config.clear_fraction * hw).all(axis=0)
        out, i, n = [], 0, s.shape[1]
        while i < n:
            cond = warn if self.level == 0 else (drift | clear) if self.level == 1 else clear
            hits = np.flatnonzero(cond[i:])
            if not hits.size:
                break
            j = i + int(hits[0])
            if self.level == 0:
                self.episode += 1
                self.level = 2 if drift[j] else 1
            else:
                self.level = 2 if self.level == 1 and drift[j] else 0
            level = "cleared" if self.level == 0 else LEVELS[self.level]
            k = int(np.argmax(s[:, j] / h[:, 0]))
            det = self.detectors[k]
            out.append(Transition(level, self.episode, offset + j, det.name, float(s[k, j]),
                                  det.h if level != "warning" else det.h_warning, det.since_zero))
            i = j + 1
        return out

    # --- what people read ---------------------------------------------------------------------------------

    def score(self) -> float:
        """The largest detector statistic as a fraction of its drift threshold (1.0: drift)."""
        return max((d.s / d.h for d in self.detectors if math.isfinite(d.h)), default=0.0)

    def warning_score(self) -> float:
        """The warning threshold on the same scale as `score`."""
        return min((d.h_warning / d.h for d in self.detectors if math.isfinite(d.h)), default=1.0)

    def window_statistics(self) -> dict[str, float]:
        """KS/chi², PSI and Jensen-Shannon of the last ``window_events`` values against the reference."""
        if self._ref is None or len(self._window) < 20:
            return {}
        if self.kind == "scalar":
            w = np.asarray(self._window, dtype=np.float64)
            edges = np.unique(np.quantile(self._ref, np.linspace(0, 1, 11)[1:-1]))
            p = np.bincount(np.searchsorted(edges, self._ref, "right"), minlength=edges.size + 1) / self._ref.size
            q = np.bincount(np.searchsorted(edges, w, "right"), minlength=edges.size + 1) / w.size
            ks = stats.ks_2samp(self._ref, w)
            tests = {"ks": float(ks.statistic), "ks_p": float(ks.pvalue)}
        else:
            index = {c: i for i, c in enumerate(self.categories)}
            counts = np.bincount([index.get(str(v), index[OTHER]) for v in self._window],
                                 minlength=len(self.categories)).astype(np.float64)
            p, q = self._ref, counts / counts.sum()
            chi = stats.chisquare(counts, self._ref * counts.sum())
            tests = {"chi2": float(chi.statistic), "chi2_p": float(chi.pvalue)}
        eps = 1e-4
        pe, qe = np.clip(p, eps, None), np.clip(q, eps, None)
        return {**tests, "psi": float(np.sum((qe - pe) * np.log(qe / pe))),
                "js": float(jensenshannon(p, q, base=2)), "window_events": len(self._window)}

    # --- checkpoints ----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        assert self._rng is not None
        return {
            "kind": self.kind, "seed": self.seed, "level": self.level, "episode": self.episode,
            "reference": self.reference.as_dict(), "since_reference": self.since_reference.as_dict(),
            "collected": list(self._collected), "categories": self.categories,
            "ref": None if self._ref is None else encode_array(self._ref),
            "window": list(self._window), "rng": self._rng.bit_generator.state,
            "detectors": [[d.name, d.s, d.since_zero] for d in self.detectors],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: DriftConfig) -> Signal:
        sig = cls(state["kind"], config, seed=state["seed"])
        sig.level, sig.episode = state["level"], state["episode"]
        sig.reference, sig.since_reference = Span(**state["reference"]), Span(**state["since_reference"])
        sig._collected, sig._window = list(state["collected"]), list(state["window"])
        if state["ref"] is not None:
            sig.categories = list(state["categories"])
            sig._ref = decode_array(state["ref"])
            sig._make_detectors()
            for det, (name, s, since_zero) in zip(sig.detectors, state["detectors"], strict=True):
                if det.name != name:
                    raise ValueError(f"checkpointed detector {name!r} does not match {det.name!r} (config changed)")
                det.s, det.since_zero = float(s), int(since_zero)
        assert sig._rng is not None
        sig._rng.bit_generator.state = state["rng"]
        return sig


def _bernoulli_kl(p0: float, p1: float) -> float:
    """KL(Bernoulli(p0) || Bernoulli(p1)): how fast the rate detector's statistic falls when nothing changed."""
    return p0 * math.log(p0 / p1) + (1 - p0) * math.log((1 - p0) / (1 - p1))


def encode_array(a: np.ndarray) -> str:
    """float64 array → base64 text, exact (checkpoints must restore bit-identical references)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode()


def decode_array(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f8").copy()
