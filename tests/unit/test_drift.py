"""monitoring/cusum.py, signals.py, drift_monitor.py: calibration, detection, episodes, one budget, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitoring.cusum import Cusum, arl_of, threshold_for
from monitoring.drift_monitor import DriftConfig, DriftMonitor
from monitoring.signals import Signal


def test_threshold_inverts_the_run_length_approximation() -> None:
    for arl in (1e3, 1e5, 1e7):
        h = threshold_for(arl, kl0=0.1)
        assert arl_of(h, kl0=0.1) == pytest.approx(arl, rel=1e-6)
    assert threshold_for(1e6, kl0=0.125) > threshold_for(1e4, kl0=0.125)
    with pytest.raises(ValueError):
        threshold_for(0.5, kl0=0.1)


def test_batched_cusum_equals_the_step_by_step_recursion() -> None:
    rng = np.random.default_rng(3)
    llr = rng.normal(-0.1, 1.0, 2000)
    det = Cusum("x", kl0=0.1)
    det.set_thresholds(1e9, 1e8)  # cap far away
    got = np.concatenate([det.run(llr[i : i + 137]) for i in range(0, llr.size, 137)])
    s, want = 0.0, []
    for x in llr:
        s = max(0.0, s + x)
        want.append(s)
    np.testing.assert_allclose(got, want, atol=1e-9)


def feed(sig: Signal, values, start_ts: int = 0, batch: int = 250):
    out = []
    for i in range(0, len(values), batch):
        chunk = list(values[i : i + batch])
        out += sig.observe(chunk, list(range(start_ts + i, start_ts + i + len(chunk))))[0]
    return out


def budgeted(kind: str, reference, *, detectors_total: int = 100, seed: int = 0) -> Signal:
    cfg = DriftConfig()
    sig = Signal(kind, cfg, seed=seed)
    feed(sig, reference)
    arl = cfg.expected_events_between_false_alarms * detectors_total
    sig.set_budget(arl, arl * cfg.warning_fraction)
    return sig


@pytest.mark.parametrize("draw", ["normal", "exponential", "integers"])
def test_any_distribution_is_quiet_while_nothing_changes_and_caught_when_it_shifts(draw: str) -> None:
    rng = np.random.default_rng(7)
    sample = {"normal": lambda n: rng.normal(size=n), "exponential": lambda n: rng.exponential(size=n),
              "integers": lambda n: rng.poisson(2.0, size=n).astype(float)}[draw]
    sig = budgeted("scalar", sample(1000))
    assert [t.level for t in feed(sig, sample(20_000))] in ([], ["warning", "cleared"])
    shifted = feed(sig, sample(2000) + 2.0 * np.std(sample(1000)))
    drift = [t for t in shifted if t.level == "drift"]
    assert drift and drift[0].index < 60, [(t.level, t.index) for t in shifted]


def test_a_variance_increase_is_caught() -> None:
    rng = np.random.default_rng(11)
    sig = budgeted("scalar", rng.normal(size=1000))
    got = [t for t in feed(sig, rng.normal(scale=np.sqrt(2), size=3000)) if t.level == "drift"]
    assert got and got[0].index < 1000 and got[0].detector.startswith("variance")


def test_a_category_rate_change_is_caught_and_the_episode_is_raised_once_then_cleared() -> None:
    rng = np.random.default_rng(5)
    labels = ["positive", "neutral", "negative"]
    sig = budgeted("categorical", rng.choice(labels, 1000, p=[0.2, 0.4, 0.4]))
    assert feed(sig, rng.choice(labels, 5000, p=[0.2, 0.4, 0.4])) == []
    changed = feed(sig, rng.choice(labels, 3000, p=[0.3, 0.35, 0.35]))
    assert [t.level for t in changed][-1] == "drift" and changed[-1].detector == "positive up"
    assert len({t.episode for t in changed}) == 1  # one episode however long the shift lasts
    back = feed(sig, rng.choice(labels, 6000, p=[0.2, 0.4, 0.4]))
    assert [t.level for t in back] == ["cleared"]


def test_the_budget_is_split_across_every_active_detector() -> None:
    m = DriftMonitor(DriftConfig(reference_events=50))
    rng = np.random.default_rng(0)
    m.observe("a", "v1", "x", list(rng.normal(size=50)), list(range(50)))
    alone = m.signals[next(iter(m.signals))].detectors[0].h
    for k in range(19):
        m.observe("a", "v1", f"y{k}", list(rng.normal(size=50)), list(range(50)))
    shared = m.signals[next(iter(m.signals))].detectors[0].h
    assert m.detectors() == 20 * 5 and shared > alone  # 20x the detectors: each must be more patient


def test_a_new_model_version_starts_a_new_reference_and_retires_the_old_one() -> None:
    m = DriftMonitor(DriftConfig(reference_events=10))
    m.observe("sentiment", "v1", "confidence", [0.9] * 10, list(range(10)))
    m.observe("sentiment", "v2", "confidence", [0.5] * 5, list(range(5)))
    assert [(k.version, s.ready) for k, s in m.signals.items()] == [("v2", False)]


def test_a_restored_monitor_continues_exactly_where_the_checkpoint_was() -> None:
    rng = np.random.default_rng(9)
    values = list(rng.normal(size=4000))
    shifted = list(rng.normal(1.0, 1.0, size=1000))
    one = DriftMonitor(DriftConfig(reference_events=500))
    one.observe("m", "v", "x", values[:2000], list(range(2000)))
    copy = DriftMonitor(DriftConfig(reference_events=500))
    copy.restore(json.loads(json.dumps(one.state())))
    rest = values[2000:] + shifted
    a = one.observe("m", "v", "x", rest, list(range(len(rest))))
    b = copy.observe("m", "v", "x", rest, list(range(len(rest))))
    assert [(x.event_id, x.transition.index) for x in a] == [(x.event_id, x.transition.index) for x in b]
    assert a and a[-1].transition.level == "drift"
    assert one.snapshot() == copy.snapshot()


def test_embedding_drift_catches_a_shift_the_single_dimensions_would_dilute() -> None:
    rng = np.random.default_rng(4)
    m = DriftMonitor(DriftConfig(reference_events=500))
    basis = rng.normal(size=(16, 16))
    same = [list(v) for v in rng.normal(size=(4000, 16)) @ basis]
    assert m.observe("sentiment", "v1", "embedding", same, list(range(4000))) == []
    shift = np.full(16, 0.6) @ basis  # 0.6 sd along every latent dimension: ~1 sd more distance
    moved = [list(v) for v in rng.normal(size=(1000, 16)) @ basis + shift]
    alarms = m.observe("sentiment", "v1", "embedding", moved, list(range(4000, 5000)))
    drift = [a for a in alarms if a.transition.level == "drift"]
    assert drift and drift[0].ts - 4000 < 100, [(a.transition.level, a.ts) for a in alarms]
    again = DriftMonitor(DriftConfig(reference_events=500))
    again.restore(json.loads(json.dumps(m.state())))
    assert again.snapshot() == m.snapshot() and again.embeddings.keys() == m.embeddings.keys()
