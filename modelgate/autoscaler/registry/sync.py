"""When to ask the registry, and what its answers change: the MLflow poller of the decider.

The model control loop (``control.py``) calls :meth:`RegistrySync.tick` every tick, under the
decider's lease, with the models that follow a source. Each is asked at most every
``poll_s`` (5 s by default), sooner when nudged (a load command, a webhook). The asking runs in
one background thread -- a download can take long and the decider must keep scaling
meanwhile -- and its results are collected at the next tick. A result whose local version
differs from the model's ``registry.json`` rewrites it (atomically); the caller then rescans the
model, and the usual swap serves it. A failure leaves ``registry.json`` and what serves as they
are, and says why (:class:`~modelgate.core.store.lineage.RegistryStatus`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from modelgate.autoscaler.registry.client import MlflowClient, RegistryError
from modelgate.autoscaler.registry.fetch import fetch
from modelgate.core.lineage import RegistrySource, SourcePointer
from modelgate.core.settings import RegistrySettings
from modelgate.core.store.lineage import RegistryStatus

log = logging.getLogger("modelgate.autoscaler")


@dataclass(frozen=True, slots=True)
class Resolution:
    """One model's answer from the registry: ``status``, and whether ``registry.json`` moved
    (``moved``: the model must be rescanned)."""

    model: str
    status: RegistryStatus
    moved: bool = False
    new: bool = False  # a version folder was written


def resolve(client: MlflowClient, models_dir: Path, model: str, source_uri: str,
            tracking_uri: str | None, now: float) -> Resolution:
    """Ask the registry about one model's source; fetch and point at what it names."""
    model_dir = models_dir / model
    try:
        source = RegistrySource.parse(source_uri)
        fetched = fetch(client, source, model_dir, tracking_uri)
    except (RegistryError, ValueError, OSError) as e:
        kept = SourcePointer.read(model_dir)  # what still serves, as last resolved
        if kept is None or kept.source != source_uri:
            return Resolution(model, RegistryStatus(source_uri, now, error=str(e)))
        return Resolution(model, RegistryStatus(source_uri, now, kept.version,
                                                kept.registry_version, None, kept.resolved_at,
                                                str(e)))
    pointer = SourcePointer.read(model_dir)
    moved = pointer is None or pointer.source != source_uri or pointer.version != \
        fetched.version or pointer.registry_version != fetched.registry_version
    resolved_at = now if moved or pointer is None else pointer.resolved_at
    if moved:
        SourcePointer(source_uri, fetched.version, fetched.registry_version, now).write(
            model_dir)
    return Resolution(model, RegistryStatus(source_uri, now, fetched.version,
                                            fetched.registry_version, fetched.run_id,
                                            resolved_at), moved, fetched.new)


class RegistrySync:
    def __init__(self, models_dir: Path, settings: RegistrySettings,
                 make_client: Callable[[RegistrySettings], MlflowClient] = MlflowClient
                 ) -> None:
        self.models_dir = models_dir
        self.settings = settings
        self.poll_s = max(settings.poll_s, 5.0)  # at most every 5 s: a registry is shared
        self.make_client = make_client
        self._client: MlflowClient | None = None
        self._due: dict[str, float] = {}
        self._nudged: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._running: Future[list[Resolution]] | None = None
        self.statuses: dict[str, RegistryStatus] = {}

    def unanswered(self, models: list[str]) -> list[str]:
        """Those of ``models`` the registry has not answered about yet."""
        return [m for m in models if m not in self.statuses]

    def nudge(self, model: str) -> None:
        """Ask about ``model`` at the next tick (a load command, a webhook)."""
        self._nudged.add(model)

    def tick(self, sources: dict[str, str], now: float) -> list[Resolution]:
        """Collect the answers of the last round and start the next one if any model is due.
        ``sources``: model -> its source URI."""
        done: list[Resolution] = []
        if self._running is not None and self._running.done():
            done = self._collect()
        for model in list(self._due):
            if model not in sources:
                del self._due[model]
                self.statuses.pop(model, None)
        due = sorted(m for m in sources
                     if m in self._nudged or now >= self._due.get(m, float("-inf")))
        if due and self._running is None:
            for model in due:
                self._due[model] = now + self.poll_s
                self._nudged.discard(model)
            asked = {m: sources[m] for m in due}
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="registry")
            self._running = self._executor.submit(self._round, asked, now)
        return done

    def _collect(self) -> list[Resolution]:
        assert self._running is not None
        try:
            results = self._running.result()
        finally:
            self._running = None
        for result in results:
            previous = self.statuses.get(result.model)
            self.statuses[result.model] = result.status
            if result.status.error and (previous is None or previous.error !=
                                        result.status.error):
                log.warning("model %s: %s: %s; what serves stays", result.model,
                            result.status.source, result.status.error)
        return results

    def _round(self, asked: dict[str, str], now: float) -> list[Resolution]:
        try:
            if self._client is None:
                self._client = self.make_client(self.settings)
        except RegistryError as e:
            return [Resolution(m, RegistryStatus(s, now, error=str(e)))
                    for m, s in asked.items()]
        return [resolve(self._client, self.models_dir, model, uri,
                        self.settings.tracking_uri, now) for model, uri in asked.items()]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
