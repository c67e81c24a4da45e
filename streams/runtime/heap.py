"""Giving freed heap memory back to the OS between batches.

Why: model calls allocate tensors of a new shape for each batch (texts sorted and padded by length, audio
segments of any duration), and glibc's malloc keeps the freed blocks in its arenas instead of returning them,
so a worker's RSS creeps up for hours without a leak. Measured with the text enricher, 600 batches of 1-64
random tweets on 1 torch thread: RSS 877 MB after 100 batches, 971 MB after 600 (still rising); with
``malloc_trim(0)`` after each batch 753 MB and 768 MB. The 10-minute soak's text worker grew +15% before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS): then trimming is a no-op."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """``maybe_trim()`` after each piece of work: trims at most once every ``every_s`` seconds (a trim walks the
    arenas: ~ms), so a high-rate processor pays for it once a second, not once a batch."""

    def __init__(self, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 trim: Callable[[int], int] | None = None) -> None:
        self.every_s = every_s
        self.clock = clock
        self._trim = trim if trim is not None else _malloc_trim()
        self._last = float("-inf")

    def maybe_trim(self) -> bool:
        if self._trim is None or self.clock() - self._last < self.every_s:
            return False
        self._last = self.clock()
        self._trim(0)
        return True
