"""A small client of MLflow's tracking server REST API: the model registry (aliases, model
versions, download URIs), runs, and the artifacts the server proxies (``mlflow server
--serve-artifacts``, the default since MLflow 2).

Every failure is a :class:`RegistryError` whose message says what went wrong and how to fix
it; nothing here retries (the poller asks again at its next round).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from modelgate.core.lineage import RegistrySource, public_uri
from modelgate.core.settings import RegistrySettings

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


class RegistryError(Exception):
    """The registry could not give what a source needs; the message says why."""


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    """One registry model version, as the registry says."""

    name: str
    version: str
    run_id: str | None
    source: str  # where the registry says its files are (models:/m-..., runs:/..., a URI)
    tags: dict[str, str]
    raw: dict[str, Any]


class MlflowClient:
    def __init__(self, settings: RegistrySettings) -> None:
        try:
            import httpx
        except ImportError as e:  # an optional extra: the core never needs it
            raise RegistryError("talking to a model registry needs httpx: pip install "
                                "'modelgate[mlflow]'") from e
        if not settings.tracking_uri:
            raise RegistryError("MLFLOW_TRACKING_URI is not set: the decider (modelgate up, or "
                                "the autoscaler service) needs it to follow a source")
        parts = urlsplit(settings.tracking_uri)
        if parts.scheme not in ("http", "https"):
            raise RegistryError(f"MLFLOW_TRACKING_URI must be an http(s) URL of a tracking "
                                f"server (mlflow server), got scheme {parts.scheme!r}")
        self._httpx = httpx
        # One request line every few seconds per source says nothing: failures are ours to say.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        auth: Any = None
        headers = {}
        if settings.token:
            headers["authorization"] = f"Bearer {settings.token}"
        elif settings.username:
            auth = (settings.username, settings.password or "")
        elif parts.username:
            auth = (parts.username, parts.password or "")
        base = settings.tracking_uri.rstrip("/")
        if parts.username:  # credentials go in the auth, never in URLs that may be logged
            base = base.replace(f"{parts.netloc}", parts.netloc.rpartition("@")[2], 1)
        self.base = base
        self.shown = public_uri(settings.tracking_uri) or "the tracking server"
        self.http = httpx.Client(base_url=base, headers=headers, auth=auth,
                                 timeout=settings.timeout_s, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self.http.get(path, params=params)
        except self._httpx.HTTPError as e:
            raise RegistryError(f"cannot reach the MLflow tracking server at {self.shown} "
                                f"({type(e).__name__}: {e}); is it running?") from e
        if response.status_code != 200:
            try:
                detail = response.json().get("message") or response.text
            except ValueError:
                detail = response.text
            raise RegistryError(f"{self.shown} answered {response.status_code} to GET {path}: "
                                f"{str(detail)[:300]}")
        try:
            body = response.json()
        except ValueError as e:
            raise RegistryError(f"{self.shown} answered GET {path} with something that is "
                                "not JSON; is MLFLOW_TRACKING_URI a tracking server?") from e
        return body if isinstance(body, dict) else {}

    def resolve(self, source: RegistrySource) -> ModelVersionInfo:
        """The model version a source names now (the alias's, or the pinned one)."""
        if source.alias:
            body = self._get(f"{API}/registered-models/alias",
                             {"name": source.name, "alias": source.alias})
        else:
            body = self._get(f"{API}/model-versions/get",
                             {"name": source.name, "version": str(source.version)})
        found = body.get("model_version")
        if not isinstance(found, dict) or "version" not in found:
            raise RegistryError(f"{self.shown} has no model version for {source.uri}")
        tags = {str(t.get("key")): str(t.get("value")) for t in found.get("tags") or []
                if isinstance(t, dict)}
        return ModelVersionInfo(str(found.get("name", source.name)), str(found["version"]),
                                found.get("run_id") or None, str(found.get("source", "")),
                                tags, found)

    def run(self, run_id: str) -> dict[str, Any]:
        run = self._get(f"{API}/runs/get", {"run_id": run_id}).get("run")
        return run if isinstance(run, dict) else {}

    def download_uri(self, name: str, version: str) -> str:
        body = self._get(f"{API}/model-versions/get-download-uri",
                         {"name": name, "version": version})
        uri = body.get("artifact_uri")
        if not isinstance(uri, str) or not uri:
            raise RegistryError(f"{self.shown} gave no download URI for {name} version "
                                f"{version}")
        return uri

    def list_artifacts(self, path: str) -> list[dict[str, Any]]:
        files = self._get(ARTIFACTS, {"path": path}).get("files") or []
        return [f for f in files if isinstance(f, dict)]

    def download(self, path: str, dest: Path) -> None:
        url = f"{ARTIFACTS}/{quote(path)}"
        try:
            with self.http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise RegistryError(f"{self.shown} answered {response.status_code} to "
                                        f"GET {url}: the artifact is missing or not served "
                                        "(run mlflow server with --serve-artifacts)")
                with dest.open("wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
        except self._httpx.HTTPError as e:
            raise RegistryError(f"downloading {path} from {self.shown} failed "
                                f"({type(e).__name__}: {e})") from e


def artifact_path(uri: str) -> str | None:
    """The path under the server's artifact proxy of an ``mlflow-artifacts:`` URI (None for a
    URI of another kind)."""
    parts = urlsplit(uri)
    if parts.scheme != "mlflow-artifacts":
        return None
    return parts.path.lstrip("/")


def local_path(uri: str) -> Path | None:
    """A ``file:`` URI (or a plain path) that this machine can read, else None."""
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file"):
        return None
    path = Path(parts.path)
    return path if path.is_dir() else None


def walk(client: MlflowClient, root: str) -> Iterator[tuple[str, int]]:
    """(path relative to ``root``, size) of every file under an artifact folder."""
    pending = [""]
    while pending:
        relative = pending.pop()
        for item in client.list_artifacts(f"{root}/{relative}".rstrip("/")):
            name = str(item.get("path", "")).rsplit("/", 1)[-1]
            child = f"{relative}/{name}".lstrip("/")
            if item.get("is_dir"):
                pending.append(child)
            else:
                yield child, int(item.get("file_size") or 0)


def copy_local(folder: Path, dest: Path) -> None:
    shutil.copytree(folder, dest, dirs_exist_ok=True)
