"""The worker's web server (127.0.0.1 by default): /metrics, /ready, /health, processors' views, model swaps.

* ``/ready`` — 200 once the worker's models are loaded, its state restored and its first partition assignment
  done (503 before, with what is missing): what tests, the demo, benches and a load balancer wait on, instead
  of a log line.
* ``/health`` — 503 when a processor's model thread has been on one piece of work for longer than
  ``health_stall_s`` (a hung model call), so an orchestrator restarts the
  worker; a failed delivery already exits the process (fail-stop), which any supervisor sees.
* ``POST /models/{processor}/{model}?version=SPEC`` — the hot-swap seam: loads ``SPEC`` on that processor's
  model thread between batches; answers with the new "name@version" once it serves (409 if the processor
  cannot swap, 422 if the version fails to load: the serving model is then unchanged).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiohttp.web import Response
from faust.web import View

from monitoring.metrics import exposition
from streams.runtime.runner import ProcessorRunner


@dataclass
class Readiness:
    """What /ready waits for: models and state, then a first assignment from every consumer of the worker (the
    Faust consumer and each batch source, streams/runtime/batch_source.py), which each report theirs."""

    models_loaded: bool = False
    consumers: tuple[str, ...] = ("faust",)
    assignments: dict[str, list[str]] = field(default_factory=dict)  # consumer → "topic[partition]"s it holds

    def assign(self, consumer: str, partitions: Iterable[tuple[str, int]]) -> None:
        self.assignments[consumer] = sorted(f"{t}[{p}]" for t, p in partitions)

    @property
    def assigned(self) -> bool:
        return all(c in self.assignments for c in self.consumers)

    @property
    def partitions(self) -> list[str]:
        return sorted(p for held in self.assignments.values() for p in held)

    def missing(self) -> list[str]:
        return [what for what, ok in (("models and state", self.models_loaded), ("partition assignment",
                                                                                  self.assigned)) if not ok]


View_ = Callable[[Mapping[str, str], Mapping[str, str]], tuple[int, Any]]


def register_routes(app: faust.App, routes: Mapping[str, View_]) -> None:
    """A processor's read-only views, run in the default thread pool (never on the event loop)."""
    for path, view in routes.items():

        async def page(web: Any, request: Any, _view: View_ = view, **params: str) -> Any:
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(None, _view, params, dict(request.query))
            return web.json(body, status=status)

        page.__name__ = f"route_{abs(hash(path))}"
        app.page(path)(page)


def register_worker_pages(app: faust.App, app_id: str, readiness: Readiness, runners: Sequence[ProcessorRunner],
                          stall_s: float) -> None:
    by_name = {r.processor.name: r for r in runners}

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return Response(body=exposition(), content_type="text/plain", charset="utf-8")

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        missing = readiness.missing()
        body = {"ready": not missing, "app": app_id, "waiting_for": missing, "partitions": readiness.partitions}
        return web.json(body, status=200 if not missing else 503)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        stalled = {r.processor.name: round(r.busy_for(), 1) for r in runners if r.busy_for() > stall_s}
        body = {"status": "stalled" if stalled else "ok", "app": app_id, "stalled_s": stalled}
        return web.json(body, status=503 if stalled else 200)

    @app.page("/models/{processor}/{model}")
    class Swap(View):  # type: ignore[misc]
        async def post(self, request: Any, processor: str, model: str) -> Any:
            version = request.query.get("version")
            runner = by_name.get(processor)
            if not version:
                return self.json({"error": "pass ?version=SPEC"}, status=400)
            if runner is None or "hot-swap" not in runner.capabilities:
                return self.json({"error": f"processor {processor!r} is not running here or cannot swap models"},
                                 status=409)
            try:
                serving = await runner.swap(model, version)
            except Exception as exc:
                return self.json({"error": f"{type(exc).__name__}: {exc}"}, status=422)
            return self.json({"processor": processor, "model": model, "serving": serving})
