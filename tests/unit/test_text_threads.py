"""The text worker's torch thread default, and the enricher's overlap choice that depends on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest
import torch

from models.enrichment import TextEnricher
from models.text_types import Entity, Sentiment
from models.token_ner import MiniLMNER
from streams.contracts.settings import Settings
from streams.runtime.worker import TEXT_MAX_THREADS, build_on_model_threads, torch_threads


@pytest.mark.parametrize(
    ("names", "ner", "cpus", "want"),
    [
        (["text"], "minilm:default", 2, 2),  # the shared encoder pass is all the work: every core
        (["text"], "minilm:/some/dir", 64, TEXT_MAX_THREADS),
        (["text", "monitor"], "minilm:default", 2, 2),  # the monitor never runs torch
        (["text"], "spacy:en_core_web_sm", 2, 1),  # spaCy takes the second core beside torch
        (["text", "asr"], "minilm:default", 2, 1),  # processors sharing a worker share its cores
        (["recs"], "minilm:default", 2, 1),
        ([], "minilm:default", 2, 1),  # callers that name no processors (the asr ct2 engine) keep 1
        (["text"], "minilm:default", 1, 1),
    ],
)
def test_default_torch_threads(names: list[str], ner: str, cpus: int, want: int) -> None:
    assert torch_threads(Settings(ner_model=ner), names, cpus=cpus) == want


def test_each_processor_is_built_on_the_thread_that_will_run_it() -> None:
    """torch's OpenMP slows every team down once a second thread has run a parallel region (worker.py), so a
    model is loaded on its processor's model thread, never on the main thread or another processor's."""
    built_on: dict[str, threading.Thread] = {}

    def builder(name: str) -> Callable[[Settings, object], object]:
        def build(settings: Settings, progress: object) -> object:
            built_on[name] = threading.current_thread()
            return name

        return build

    processors, threads = build_on_model_threads(Settings(), ["text", "recs"], lambda _line: None,
                                                 builders={"text": builder("text"), "recs": builder("recs")})
    assert processors == ["text", "recs"]
    for name, pool in threads.items():
        assert pool.submit(threading.current_thread).result() is built_on[name]
        pool.shutdown()
    assert built_on["text"] is not built_on["recs"]
    assert threading.main_thread() not in built_on.values()


def test_explicit_torch_threads_win() -> None:
    assert torch_threads(Settings(torch_threads=3), ["text"], cpus=2) == 3
    assert torch_threads(Settings(torch_threads=2), ["text", "asr"], cpus=2) == 2


class ThreadRecordingSentiment:
    name = "stub-sentiment@1"

    def predict(self, texts: Sequence[str]) -> list[Sentiment]:
        return [Sentiment("neutral", 0.5) for _ in texts]


class ThreadRecordingNER(MiniLMNER):
    """A MiniLMNER (for the enricher's isinstance check) without a model: records the thread it ran on."""

    def __init__(self) -> None:
        self.name = "stub-minilm-ner@1"
        self.threads: list[str] = []

    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        self.threads.append(threading.current_thread().name)
        return [[] for _ in texts]


@pytest.mark.parametrize(("threads", "overlapped"), [(1, True), (2, False)])
def test_minilm_ner_overlaps_only_on_one_torch_thread(threads: int, overlapped: bool) -> None:
    ner = ThreadRecordingNER()
    enricher = TextEnricher(ThreadRecordingSentiment(), ner)
    assert not enricher.shared_encoder
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert len(enricher.enrich(["a", "b"])) == 2
    finally:
        torch.set_num_threads(before)
        enricher.close()
    assert ner.threads[0].startswith("ner") == overlapped
