"""Word error rate, with a light normalizer so punctuation/casing differences do not count as errors.

Why our own: jiwer is not installed, and ASR quality checks only need word-level Levenshtein.
"""

from __future__ import annotations

import re

_APOSTROPHE = re.compile(r"['\u2019]")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalize(text: str) -> list[str]:
    """Lowercase, drop apostrophes ("system's" ~ "systems"), split on anything non-alphanumeric."""
    return _NON_WORD.sub(" ", _APOSTROPHE.sub("", text.lower())).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over tokens (substitution, insertion, deletion all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalize`.

    >>> wer("The cat sat.", "the cat sat")
    0.0
    >>> round(wer("a b c d", "a x c"), 2)
    0.5
    """
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else float("inf")
    return edit_distance(ref, hyp) / len(ref)
