"""Drift detection: delay, misses and false alarms of the monitor's CUSUMs against River's ADWIN and
PageHinkley (defaults) and a windowed KS/chi² test at p < 0.05, on the same streams in the same run.

Scenarios (each over ``--seeds`` seeds; the change comes after ``--before`` stationary events):

* mean shifts of 0.25, 0.5, 1 and 3 reference standard deviations on a normal signal;
* a variance doubling;
* a class rate 0.2 -> 0.3 on a three-class signal (the others 0.4/0.4 -> 0.35/0.35);
* ``--stationary`` events (default 100k) over 20 signals at once, nothing changing, ``--stationary-seeds``
  times (default 3): false alarms per 100k events across all 20 signals, and microseconds per event per signal.

Ours is the real monitor (monitoring/drift_monitor.py) with 20 signals active, so each detector carries the
budget share it has in a 20-signal deployment; its first ``reference_events`` (1,000) values are its reference.
The baselines see every value from the first; a detection counts only after the change, an alarm before it
is a false alarm. ADWIN and PageHinkley watch the value (the class indicator for the categorical signal);
the windowed test compares each block of ``--window`` values with the first 1,000.

    .venv/bin/python bench/drift.py [--seeds 10] [--stationary 100000]

Each timing is the median of ``--repeat`` runs. The last line is, per baseline, the ratio of its mean delay
to ours (geometric mean over the scenarios both caught; misses are listed above) next to both false-alarm
rates: a ratio above 1 at fewer false alarms of ours is a win on both axes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from river.drift import ADWIN, PageHinkley
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model
from monitoring.drift_monitor import DriftConfig, DriftMonitor

SIGNALS = 20
REFERENCE = 1000
LABELS = np.array(["a", "b", "c"])

Stream = tuple[np.ndarray, bool]  # values, categorical


def scenarios() -> dict[str, Callable[[np.random.Generator, int, int], Stream]]:
    def mean(shift: float):
        return lambda rng, before, after: (np.concatenate([rng.normal(size=before),
                                                           rng.normal(shift, 1.0, size=after)]), False)

    def variance(rng, before, after):
        return np.concatenate([rng.normal(size=before), rng.normal(scale=np.sqrt(2), size=after)]), False

    def rate(rng, before, after):
        return np.concatenate([rng.choice(LABELS, before, p=[0.2, 0.4, 0.4]),
                               rng.choice(LABELS, after, p=[0.3, 0.35, 0.35])]), True

    return {"mean +0.25sd": mean(0.25), "mean +0.5sd": mean(0.5), "mean +1sd": mean(1.0), "mean +3sd": mean(3.0),
            "variance x2": variance, "rate 0.2->0.3": rate}


# --- detectors: each returns the indices at which it alarmed ---------------------------------------------

def ours(streams: list[Stream], batch: int = 100) -> list[list[int]]:
    """All streams through one monitor (one signal each); indices of drift alarms per stream."""
    monitor = DriftMonitor(DriftConfig(reference_events=REFERENCE))
    alarms: list[list[int]] = [[] for _ in streams]
    n = len(streams[0][0])
    for start in range(0, n, batch):
        ts = list(range(start, min(start + batch, n)))
        for k, (values, categorical) in enumerate(streams):
            chunk = values[start : start + batch]
            for a in monitor.observe("bench", "v1", f"s{k}", list(chunk) if categorical else chunk.tolist(), ts,
                                     kind="categorical" if categorical else "scalar"):
                if a.transition.level == "drift":
                    alarms[k].append(start + a.transition.index)
    return alarms


def river(make: Callable[[], object], values: np.ndarray, categorical: bool) -> list[int]:
    det, out = make(), []
    xs = (values == LABELS[0]).astype(float) if categorical else values
    for i, x in enumerate(xs.tolist()):
        det.update(x)
        if det.drift_detected:
            out.append(i)
    return out


def windowed(values: np.ndarray, categorical: bool, window: int) -> list[int]:
    ref, out = values[:REFERENCE], []
    if categorical:
        expected = np.array([(ref == c).mean() for c in LABELS])
    for end in range(REFERENCE + window, len(values) + 1, window):
        block = values[end - window : end]
        if categorical:
            counts = np.array([(block == c).sum() for c in LABELS], dtype=float)
            p = stats.chisquare(counts, np.clip(expected, 1e-6, None) * window).pvalue
        else:
            p = stats.ks_2samp(ref, block).pvalue
        if p < 0.05:
            out.append(end - 1)
    return out


def baselines(window: int) -> dict[str, Callable[[np.ndarray, bool], list[int]]]:
    return {"ADWIN": lambda v, c: river(ADWIN, v, c), "PageHinkley": lambda v, c: river(PageHinkley, v, c),
            f"KS/chi2 window {window}": lambda v, c: windowed(v, c, window)}


# --- measuring ------------------------------------------------------------------------------------------------

def delay_of(alarms: list[int], change: int) -> int | None:
    after = [i for i in alarms if i >= change]
    return after[0] - change if after else None


def run_scenarios(args: argparse.Namespace) -> dict[str, dict[str, list]]:
    """name -> detector -> [delay or None per seed]; false alarms before the change are counted apart."""
    change = REFERENCE + args.before
    results: dict[str, dict[str, list]] = {}
    for name, make in scenarios().items():
        per: dict[str, list] = {"ours": []}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            target = make(rng, change, args.after)
            noise = [(rng.normal(size=change + args.after), False) for _ in range(SIGNALS - 1)]
            alarms = ours([target, *noise])
            per["ours"].append(delay_of(alarms[0], change))
            for label, detect in baselines(args.window).items():
                per.setdefault(label, []).append(delay_of(detect(*target), change))
        results[name] = per
        print(f"{name:>14}: " + "; ".join(f"{d} {summary(v)}" for d, v in per.items()), flush=True)
    return results


def summary(delays: list) -> str:
    caught = [d for d in delays if d is not None]
    mean = f"{statistics.fmean(caught):.0f}" if caught else "-"
    return f"delay {mean} ({len(caught)}/{len(delays)} caught)"


def stationary(args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """False alarms per 100k events across all signals (over ``--stationary-seeds`` streams of 20 signals);
    our microseconds per event per signal (median of ``--repeat`` runs on the first)."""
    counts: dict[str, int] = {}
    timings = []
    for seed in range(args.stationary_seeds):
        rng = np.random.default_rng(10_000 + seed)
        streams = [(rng.normal(size=args.stationary), False) for _ in range(SIGNALS - 1)]
        streams.append((rng.choice(LABELS, args.stationary, p=[0.2, 0.4, 0.4]), True))
        for _ in range(args.repeat if seed == 0 else 1):
            started = time.perf_counter()
            alarms = ours(streams)
            timings.append((time.perf_counter() - started) / (args.stationary * SIGNALS) * 1e6)
        counts["ours"] = counts.get("ours", 0) + sum(len(a) for a in alarms)
        for label, detect in baselines(args.window).items():
            counts[label] = counts.get(label, 0) + sum(len(detect(v, c)) for v, c in streams)
    per_100k = 100_000 / (args.stationary * args.stationary_seeds)
    return {d: n * per_100k for d, n in counts.items()}, statistics.median(timings[: args.repeat])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--before", type=int, default=4000, help="stationary events after the reference, before the change")
    p.add_argument("--after", type=int, default=5000)
    p.add_argument("--stationary", type=int, default=100_000)
    p.add_argument("--stationary-seeds", type=int, default=3)
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"# {cpu_model()}; {SIGNALS} signals in the monitor; {args.seeds} seeds; "
          f"change after {REFERENCE}+{args.before}", flush=True)
    results = run_scenarios(args)
    rates, us = stationary(args)
    print(f"false alarms per 100k events over {SIGNALS} signals ({args.stationary_seeds} x {args.stationary:,} "
          "events each): "
          + ", ".join(f"{d} {r:.1f}" for d, r in rates.items()))
    print(f"ours: {us:.2f} us per event per signal (median of {args.repeat})")
    parts = []
    for d in (d for d in rates if d != "ours"):
        logs = [math.log(statistics.fmean(b) / max(statistics.fmean(o), 1)) for name in results
                for b, o in [([x for x in results[name][d] if x is not None],
                              [x for x in results[name]["ours"] if x is not None])] if b and o]
        verdict = "fewer or as many" if rates[d] <= rates["ours"] else "more"
        parts.append(f"{d} {math.exp(statistics.fmean(logs)):.2f}x ({verdict} false alarms: {rates[d]:.1f} vs "
                     f"{rates['ours']:.1f}/100k)")
    print("delay ratio, baseline / ours (geometric mean over the scenarios both caught): " + "; ".join(parts))


if __name__ == "__main__":
    main()
