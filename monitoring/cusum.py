"""Sequential change detectors calibrated from a reference, with one false-alarm budget for all of them.

Why CUSUM and not ADWIN/PageHinkley/windowed tests: a CUSUM on the log-likelihood ratio of "changed" against
"as in the reference" is the fastest detector for a given false-alarm rate (Lorden, Moustakides), and its
threshold follows from the rate we want, so a budget split across detectors keeps the whole monitor's false
alarms where it is configured. River's detectors have no such knob (ADWIN's delta bounds a window test, not
the alarm rate of a stream; PageHinkley's threshold is in the signal's units).

Each detector accumulates ``S_t = max(0, S_{t-1} + llr_t)`` and alarms when ``S_t >= h``. The in-control run
length of such a CUSUM is approximately (Siegmund, with the LLR scaled so that E0[exp(llr)] = 1)::

    ARL0(h) ~ (exp(h + rho) - (h + rho) - 1) / KL0

where KL0 = -E0[llr] is the drift towards zero when nothing changed and rho the expected overshoot of the
threshold (1.166 * delta for a normal mean shift of delta; taken as 0 elsewhere, which over-estimates the
threshold a little: fewer false alarms, slightly later detection). `threshold_for` inverts it.

The running maximum is computed a batch at a time with NumPy (Lindley's recursion as a cumulative sum), so a
detector costs well under a microsecond per event.

>>> h = threshold_for(arl=1e6, kl0=0.125, overshoot=1.166 * 0.5)
>>> round(h, 2)
11.15
>>> round(arl_of(h, kl0=0.125, overshoot=1.166 * 0.5))
1000000
"""

from __future__ import annotations

import math

import numpy as np


def arl_of(h: float, *, kl0: float, overshoot: float = 0.0) -> float:
    """Approximate mean events between false alarms of a CUSUM with threshold ``h``."""
    a = h + overshoot
    return (math.expm1(a) - a) / kl0


def threshold_for(arl: float, *, kl0: float, overshoot: float = 0.0) -> float:
    """The threshold whose in-control run length is ``arl`` (bisection on the monotone `arl_of`)."""
    if arl <= 1 or kl0 <= 0:
        raise ValueError(f"need arl > 1 and kl0 > 0, got arl={arl}, kl0={kl0}")
    lo, hi = 0.0, math.log(arl * kl0 + 1.0) + 5.0
    while arl_of(hi, kl0=kl0, overshoot=overshoot) < arl:
        hi *= 2
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if arl_of(mid, kl0=kl0, overshoot=overshoot) < arl else (lo, mid)
    return hi


class Cusum:
    """One one-sided CUSUM on precomputed log-likelihood ratios.

    ``kl0`` and ``overshoot`` describe the detector (for its threshold); ``h`` and ``h_warning`` are set by
    the budget (`set_thresholds`). The statistic is capped at ``cap * h`` so that, once the stream goes back
    to the reference, an episode clears within a bounded number of events.
    """

    __slots__ = ("cap", "h", "h_warning", "kl0", "name", "overshoot", "s", "since_zero")

    def __init__(self, name: str, *, kl0: float, overshoot: float = 0.0, cap: float = 2.0) -> None:
        self.name = name
        self.kl0 = kl0
        self.overshoot = overshoot
        self.cap = cap
        self.s = 0.0
        self.since_zero = 0  # events since the statistic was last 0: the change point estimate
        self.h = math.inf
        self.h_warning = math.inf

    def set_thresholds(self, arl: float, warning_arl: float) -> None:
        self.h = threshold_for(arl, kl0=self.kl0, overshoot=self.overshoot)
        self.h_warning = threshold_for(max(warning_arl, 2.0), kl0=self.kl0, overshoot=self.overshoot)

    def run(self, llr: np.ndarray) -> np.ndarray:
        """The statistic after each of ``llr``'s steps (and advance the state to the last one)."""
        if llr.size == 0:
            return llr
        c = np.cumsum(llr)
        floor = np.minimum.accumulate(np.concatenate(([-self.s], c)))[1:]
        s = c - np.minimum(floor, 0.0)  # Lindley: S_t = C_t - min(-S_0, min_{j<=t} C_j)
        # capped per batch, not per step: within a batch the statistic may sit at the cap a little longer,
        # which only slows the clearing of an episode, never an alarm
        np.minimum(s, self.cap * self.h, out=s)
        zeros = np.flatnonzero(s <= 0.0)
        self.since_zero = int(s.size - 1 - zeros[-1]) if zeros.size else self.since_zero + int(s.size)
        self.s = float(s[-1])
        return s
