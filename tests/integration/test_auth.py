"""API keys and Redis credentials with real processes; no secret ever reaches a log.

Every process here logs at DEBUG into a captured file (stdout and stderr), so a key or a
password written anywhere by the gateway or the worker would show up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest

from modelgate.core.embedded_redis import free_port, start_redis
from modelgate.core.process import child_preexec, stop_process
from tests.models import write_repository
from tests.procs import REPO_ROOT, Processes, wait_until

pytestmark = pytest.mark.integration

KEY_1 = "mg-key-alpha-5f1c0e9a"
KEY_2 = "mg-key-bravo-7d24b6c3"
WRONG_KEY = "mg-key-wrong-00000000"
REDIS_PASSWORD = "redis-pw-c4f7e1d2"
WRONG_PASSWORD = "redis-pw-wrong-99e0"
SECRETS = [KEY_1, KEY_2, WRONG_KEY, REDIS_PASSWORD, WRONG_PASSWORD]
PROBES = ["/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"]
OPEN_PROBES = ["/v2/health/live", "/v2/health/ready", "/openapi.json"]
INFER = "/v2/models/int64/infer"
BODY = {"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}
READY_TIMEOUT_S = 60.0


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Server:
    base_url: str
    processes: Processes

    def client(self, headers: Mapping[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10.0)

    def full_logs(self) -> str:
        """All that every process wrote (logging flushes each record to the file)."""
        return "\n".join(path.read_text(errors="replace")
                         for _, _, path in self.processes.started)


def _spawn_with_env(processes: Processes, label: str, args: Sequence[str],
                    env: Mapping[str, str]) -> None:
    """``Processes.spawn`` with ``MODELGATE_*`` variables set, for flags read from the env."""
    log_path = processes.log_dir / f"{label}.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelgate", *args], cwd=REPO_ROOT, env={**clean, **env},
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            preexec_fn=child_preexec)
    processes.started.append((label, process, log_path))


def _status(url: str, headers: Mapping[str, str] | None = None) -> int | None:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code
    except httpx.TransportError:
        return None


@contextlib.contextmanager
def serving(log_dir: Path, repo: Path, redis_url: str, gateway_args: Sequence[str] = (),
            gateway_env: Mapping[str, str] | None = None, worker: bool = True,
            ready_headers: Mapping[str, str] | None = None) -> Iterator[Server]:
    """A gateway (and a worker for ``int64``) at DEBUG log level; ready, or live only when
    there is no worker."""
    processes = Processes(log_dir)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    common = ["--models", str(repo), "--redis-url", redis_url]
    try:
        if worker:
            processes.spawn("worker", ["--log-level", "DEBUG", "worker", *common,
                                       "--model", "int64"])
        args = ["--log-level", "DEBUG", "gateway", *common, "--port", str(port), *gateway_args]
        if gateway_env:
            _spawn_with_env(processes, "gateway", args, gateway_env)
        else:
            processes.spawn("gateway", args)
        probe = "/v2/health/ready" if worker else "/v2/health/live"
        wait_until(lambda: _status(base_url + probe, ready_headers) == 200, READY_TIMEOUT_S,
                   f"{base_url}{probe}", processes.check_alive, processes.logs)
        yield Server(base_url, processes)
    finally:
        processes.stop(labels_first=("gateway",))


def assert_no_secret_in(logs: str) -> None:
    assert logs.strip(), "nothing was captured; the check would prove nothing"
    leaked = [secret for secret in SECRETS if secret in logs]
    assert not leaked, f"secrets in the logs: {leaked}\n{logs[-3000:]}"


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="modelgate"'
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert "API key" in error and not any(s in error for s in SECRETS), error


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         onnx_models: dict[str, onnx.ModelProto]) -> Path:
    return write_repository(tmp_path_factory.mktemp("auth-models"),
                            {"int64": onnx_models["int64"]})


@pytest.fixture(scope="module")
def plain_redis() -> Iterator[str]:
    """A Redis without a password for the API-key servers (database 0 and 1)."""
    process, url = start_redis()
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        stop_process(process, timeout_s=5)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, repo: Path,
          plain_redis: str) -> Iterator[Server]:
    """Two keys from repeated ``--api-key`` flags; probes open."""
    with serving(tmp_path_factory.mktemp("keyed-logs"), repo, f"{plain_redis}/0",
                 ["--api-key", KEY_1, "--api-key", KEY_2]) as server:
        yield server


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory, repo: Path,
              plain_redis: str) -> Iterator[Server]:
    """The same two keys from ``MODELGATE_API_KEY`` and probes protected from the env too."""
    env = {"MODELGATE_API_KEY": f"{KEY_1},{KEY_2}", "MODELGATE_PROTECT_PROBES": "1"}
    with serving(tmp_path_factory.mktemp("protected-logs"), repo, f"{plain_redis}/1",
                 gateway_env=env, ready_headers=bearer(KEY_2)) as server:
        yield server


# --------------------------------------------------------------------------- API keys


def test_no_key_is_401_with_www_authenticate(keyed: Server) -> None:
    with keyed.client() as client:
        assert_unauthorized(client.post(INFER, json=BODY))
        assert_unauthorized(client.get("/v2/models/int64"))
        assert_unauthorized(client.get("/v2"))
        # Feedback and quality are data: an application key like every data call.
        assert_unauthorized(client.post("/v2/models/int64/feedback", json={"id": "a", "label": 1}))
        assert_unauthorized(client.get("/v2/models/int64/quality"))


@pytest.mark.parametrize("header", [
    f"Bearer {WRONG_KEY}", f"Basic {KEY_1}", KEY_1, "Bearer", f"Bearer {KEY_1[:-1]}",
    f"Bearer {KEY_1}{KEY_2}",
])
def test_wrong_key_is_401(keyed: Server, header: str) -> None:
    with keyed.client({"authorization": header}) as client:
        assert_unauthorized(client.post(INFER, json=BODY))


def test_header_with_non_ascii_bytes_is_401(keyed: Server) -> None:
    with keyed.client() as client:
        response = client.post(INFER, json=BODY, headers={b"authorization": b"Bearer \xff\xfe"})
    assert_unauthorized(response)


@pytest.mark.parametrize("key", [KEY_1, KEY_2])
def test_either_key_is_accepted(keyed: Server, key: str) -> None:
    with keyed.client(bearer(key)) as client:
        response = client.post(INFER, json=BODY)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2, 3]
        assert client.get("/v2/models/int64").status_code == 200
        assert client.post("/v1/models/int64:predict",
                           json={"instances": [[1, 2]]}).status_code == 200
        feedback = client.post("/v2/models/int64/feedback", json={"id": "nope", "label": 1})
        assert feedback.status_code == 200 and feedback.json()["unknown"] == 1
        assert client.get("/v2/models/int64/quality").status_code == 200


def test_probes_and_document_are_open_by_default(keyed: Server) -> None:
    """Kubernetes probes and the HEALTHCHECK send no key: their status codes stay usable."""
    with keyed.client() as client:
        for path in OPEN_PROBES:
            assert client.get(path).status_code == 200, path


def test_without_a_key_probes_name_no_model_and_metrics_need_the_key(keyed: Server) -> None:
    """Issue 12, item 9: with keys on, the open readiness body and /metrics named every model
    (and /metrics every drift feature) to anyone."""
    with keyed.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert_unauthorized(client.get("/metrics"))
    with keyed.client(bearer(KEY_1)) as client:
        ready = client.get("/v2/health/ready").json()
        assert ready["ready"] is True and "int64" in ready["models"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and 'model="int64"' in metrics.text
    with keyed.client(bearer(WRONG_KEY)) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True}


def test_protect_probes_puts_them_behind_the_key(protected: Server) -> None:
    with protected.client() as client:
        for path in PROBES:
            assert_unauthorized(client.get(path))
    with protected.client(bearer(WRONG_KEY)) as client:
        assert_unauthorized(client.get("/metrics"))
    for key in (KEY_1, KEY_2):
        with protected.client(bearer(key)) as client:
            for path in PROBES:
                assert client.get(path).status_code == 200, path
            assert client.post(INFER, json=BODY).status_code == 200


def test_keys_never_reach_the_logs(keyed: Server, protected: Server) -> None:
    for server in (keyed, protected):
        for key in (KEY_1, KEY_2, WRONG_KEY):
            with server.client(bearer(key)) as client:
                client.post(INFER, json=BODY)
                client.post(INFER, content=b"{not json")
                client.get("/v2/models/nope")
                client.get("/metrics")
        assert_no_secret_in(server.full_logs())


# --------------------------------------------------------------------------- Redis credentials


@pytest.fixture(scope="module")
def password_redis() -> Iterator[str]:
    """A Redis with ``requirepass``; yields its URL without credentials."""
    process, url = start_redis(extra_args=("--requirepass", REDIS_PASSWORD))
    try:
        yield url
    finally:
        stop_process(process, timeout_s=5)
        if process.stderr is not None:
            process.stderr.close()


def _with_password(url: str, password: str, scheme: str = "redis") -> str:
    return url.replace("redis://", f"{scheme}://:{password}@", 1)


def test_redis_with_a_password_serves_and_hides_it(
        tmp_path: Path, repo: Path, password_redis: str) -> None:
    url = _with_password(password_redis, REDIS_PASSWORD)
    with serving(tmp_path, repo, url) as server, server.client() as client:
        response = client.post(INFER, json=BODY)
        assert response.status_code == 200, response.text
        client.post(INFER, content=b"[]")
        assert client.get("/v2/health/ready").json()["redis"] is True
        assert_no_secret_in(server.full_logs())


def test_wrong_redis_password_is_503_and_hidden(
        tmp_path: Path, repo: Path, password_redis: str) -> None:
    url = _with_password(password_redis, WRONG_PASSWORD)
    with serving(tmp_path, repo, url, worker=False) as server, server.client() as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        response = client.post(INFER, json=BODY)
        assert response.status_code == 503, response.text
        assert "Redis" in response.json()["error"]
        wait_until(lambda: "redis" in server.full_logs().lower(), 10,
                   "the gateway to log that Redis refused it", details=server.full_logs)
        assert_no_secret_in(server.full_logs())


# --------------------------------------------------------------------------- TLS (rediss://)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca, key, csr, cert = (folder / n for n in
                                  ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(ca_key),
             "-out", str(ca), "-subj", "/CN=modelgate test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1")
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature,keyEncipherment\n"
                          "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(extensions))
    return ca, cert, key


def test_rediss_with_password_serves_over_tls(tmp_path: Path, repo: Path) -> None:
    """redis-server with --tls-port and a self-signed CA; gateway and worker verify it."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    certs, logs = tmp_path / "certs", tmp_path / "logs"
    certs.mkdir()
    logs.mkdir()
    ca, cert, key = _certificates(certs)
    tls_port = free_port()
    try:
        process, _ = start_redis(extra_args=(
            "--requirepass", REDIS_PASSWORD, "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"))
    except RuntimeError as e:
        pytest.skip(f"this redis-server cannot serve TLS: {e}")
    try:
        url = (f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{tls_port}/0"
               f"?ssl_cert_reqs=required&ssl_ca_certs={ca}")
        with serving(logs, repo, url) as server, server.client() as client:
            response = client.post(INFER, json=BODY)
            assert response.status_code == 200, response.text
            assert_no_secret_in(server.full_logs())
    finally:
        stop_process(process, timeout_s=5)
        if process.stderr is not None:
            process.stderr.close()
