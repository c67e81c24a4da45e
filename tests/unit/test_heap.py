"""The heap trimmer: at most once per period, a no-op without glibc, and really glibc's on this machine.
Freezing: loaded objects leave the collector's generations, and a dropped frozen cycle is collected by the next
freeze."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from streams.runtime.heap import HeapTrimmer, _malloc_trim, freeze_loaded


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


class Model:
    """Stands for a loaded model: an object in a reference cycle, as torch modules and tokenizers often are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def in_generations(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_freezing_takes_loaded_objects_out_of_every_collection(unfrozen: None) -> None:
    model = Model()
    assert in_generations(model)
    assert freeze_loaded() >= 1
    assert not in_generations(model)  # a full collection no longer walks it
    fresh = Model()
    assert in_generations(fresh)  # objects made afterwards are collected as before


def test_a_dropped_frozen_cycle_is_collected_by_the_next_freeze(unfrozen: None) -> None:
    model = Model()
    gone = weakref.ref(model)
    freeze_loaded()
    del model
    gc.collect()
    assert gone() is not None  # frozen: a cycle is never collected, which is why a model swap freezes again
    freeze_loaded()
    assert gone() is None
