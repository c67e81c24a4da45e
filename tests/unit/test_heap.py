"""The heap trimmer: at most once per period, a no-op without glibc, and really glibc's on this machine."""

from __future__ import annotations

import sys

import pytest

from streams.runtime.heap import HeapTrimmer, _malloc_trim


def test_trims_at_most_once_per_period() -> None:
    now, calls = [0.0], []
    trimmer = HeapTrimmer(every_s=1.0, clock=lambda: now[0], trim=lambda pad: calls.append(pad) or 0)
    assert trimmer.maybe_trim() and not trimmer.maybe_trim()
    now[0] = 0.9
    assert not trimmer.maybe_trim()
    now[0] = 1.0
    assert trimmer.maybe_trim() and calls == [0, 0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_finds_glibc_malloc_trim_on_linux() -> None:
    trim = _malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
