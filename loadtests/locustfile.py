"""Locust load tests for modelgate, or any server with KServe V2 model metadata.

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8080 \\
        -u 16 -r 8 --run-time 20s --slo-p95-ms 250 [UserClass ...]

User classes (all run, by weight, unless named at the end of the command line):

- ``V2SingleRowUser``: ``POST /v2/models/{model}/infer`` with one row.
- ``V2BatchUser``: the same with ``--batch-size`` rows.
- ``V1PredictUser``: ``POST /v1/models/{v1-model}:predict`` with one instance.
- ``MixedUser``: single rows, batches and V1 calls across the ``--mix`` models, by weight.

Every answer is checked (HTTP 200, every output of the model with its datatype and the shape
the rows imply) and marked failed otherwise, with the reason. Request bodies are derived from
``GET /v2/models/{name}`` (fetched once per process and model), so any model can be targeted.

Options, as a flag or an environment variable (a flag wins):

========================== ================================= ================================
flag                       environment                       default
========================== ================================= ================================
--model NAME               MODELGATE_LOADTEST_MODEL          mlp (V2 users)
--v1-model NAME            MODELGATE_LOADTEST_V1_MODEL       iris (V1 user)
--mix NAME:WEIGHT,...      MODELGATE_LOADTEST_MIX            mlp:3,iris:1 (MixedUser)
--batch-size N             MODELGATE_LOADTEST_BATCH_SIZE     8
--rate-per-user R          MODELGATE_LOADTEST_RATE_PER_USER  10 calls/s per user; 0 = no pause
--api-key KEY              MODELGATE_LOADTEST_API_KEY        none (sends ``Authorization``)
========================== ================================= ================================

plus the SLO gate's ``--slo-*`` flags (``slo.py``) and ``MODELGATE_LOADTEST_SHAPE`` /
``MODELGATE_LOADTEST_TIME_SCALE`` for a load shape (``shapes.py``).
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import payloads
import shapes
import slo
from gevent.lock import Semaphore
from locust import FastHttpUser, events, task
from locust.user.wait_time import constant_pacing

BODIES_PER_KIND = 16  # distinct pre-encoded bodies per (model, API, rows): cheap for the client

slo.register(events)

# Locust takes a load shape from this module's namespace when it imports it: only the one
# selected by MODELGATE_LOADTEST_SHAPE is bound here, or None (see shapes.py for why).
SelectedShape = shapes.selected(os.environ)


# --------------------------------------------------------------------------- options


def _mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"mlp:3,iris:1"`` -> ((mlp, 3.0), (iris, 1.0)); a missing weight is 1."""
    mix = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad weight in {item!r}") from e
        if not name or value <= 0:
            raise argparse.ArgumentTypeError(f"{item!r}: want NAME[:WEIGHT] with WEIGHT > 0")
        mix.append((name, value))
    if not mix:
        raise argparse.ArgumentTypeError("the mix names no model; e.g. mlp:3,iris:1")
    return tuple(mix)


def _at_least(low: float, kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value
    return parse


@events.init_command_line_parser.add_listener
def _add_flags(parser: Any) -> None:
    group = parser.add_argument_group("modelgate load test", "what to call, how often")
    group.add_argument("--model", default="mlp", env_var="MODELGATE_LOADTEST_MODEL",
                       help="model of the V2 users")
    group.add_argument("--v1-model", default="iris", env_var="MODELGATE_LOADTEST_V1_MODEL",
                       help="model of the V1 user")
    group.add_argument("--mix", type=_mix, default=_mix("mlp:3,iris:1"),
                       env_var="MODELGATE_LOADTEST_MIX", metavar="NAME:WEIGHT,...",
                       help="models of MixedUser and how often each is called")
    group.add_argument("--batch-size", type=_at_least(1, int), default=8,
                       env_var="MODELGATE_LOADTEST_BATCH_SIZE", help="rows of a batch call")
    group.add_argument("--rate-per-user", type=_at_least(0, float), default=10.0,
                       env_var="MODELGATE_LOADTEST_RATE_PER_USER", metavar="CALLS_PER_S",
                       help="calls per second each user aims for; 0 = back to back")
    group.add_argument("--api-key", default=None, env_var="MODELGATE_LOADTEST_API_KEY",
                       help="sent as 'Authorization: Bearer KEY'")


@dataclass(frozen=True, slots=True)
class Options:
    model: str
    v1_model: str
    mix: tuple[tuple[str, float], ...]
    batch_size: int
    rate_per_user: float
    api_key: str | None

    @classmethod
    def from_parsed(cls, parsed: Any) -> Options:
        return cls(parsed.model, parsed.v1_model, tuple(parsed.mix), int(parsed.batch_size),
                   float(parsed.rate_per_user), parsed.api_key or None)


# --------------------------------------------------------------------------- users

# Per process: model metadata and encoded bodies, keyed by (host, model[, API, rows]). Every
# user of the process shares them, so metadata is fetched once, not once per user.
_specs: dict[tuple[str, str], payloads.ModelSpec] = {}
_bodies: dict[tuple[str, str, str, int | None], list[bytes]] = {}
_fetching: dict[tuple[str, str], Semaphore] = {}


class ModelgateUser(FastHttpUser):
    """Calls with checked answers; subclasses only say which calls."""

    abstract = True

    def on_start(self) -> None:
        if self.environment.parsed_options is None:
            raise RuntimeError("run these users with the locust command (they read its flags)")
        self.options = Options.from_parsed(self.environment.parsed_options)
        self.headers = {"content-type": "application/json"}
        if self.options.api_key:
            self.headers["authorization"] = f"Bearer {self.options.api_key}"
        rate = self.options.rate_per_user
        self._pace = constant_pacing(1.0 / rate) if rate > 0 else None

    def wait_time(self) -> float:
        return self._pace(self) if self._pace is not None else 0.0

    # ---- calls

    def v2_infer(self, model: str, rows: int) -> None:
        spec = self.spec(model)
        if spec is None:
            return
        actual_rows = spec.rows(rows)
        body = random.choice(self.bodies(spec, "v2", actual_rows))
        # Bytes are sent as they are (documented); the annotation says str only.
        with self.client.post(f"/v2/models/{quote(model)}/infer", data=body,  # type: ignore[arg-type]
                              headers=self.headers, name=_name("v2", model, actual_rows),
                              catch_response=True) as response:
            _judge(response, lambda answer: payloads.v2_problem(spec, actual_rows, answer))

    def v1_predict(self, model: str, rows: int) -> None:
        spec = self.spec(model)
        if spec is None:
            return
        actual_rows = spec.rows(rows)
        body = random.choice(self.bodies(spec, "v1", actual_rows))
        with self.client.post(f"/v1/models/{quote(model)}:predict", data=body,  # type: ignore[arg-type]
                              headers=self.headers, name=_name("v1", model, actual_rows),
                              catch_response=True) as response:
            _judge(response, lambda answer: payloads.v1_problem(spec, actual_rows, answer))

    # ---- shared per process

    def spec(self, model: str) -> payloads.ModelSpec | None:
        """The model's metadata, fetched once per process; None (a failed request) if not."""
        key = (self.host or "", model)
        # One user fetches while the others of this process wait, rather than all at once.
        with _fetching.setdefault(key, Semaphore()):
            if key not in _specs:
                with self.client.get(f"/v2/models/{quote(model)}", headers=self.headers,
                                     name=f"/v2/models/{model} (metadata)",
                                     catch_response=True) as response:
                    def parse(answer: Any) -> str | None:
                        try:
                            _specs[key] = payloads.ModelSpec.from_metadata(answer)
                        except payloads.MetadataError as e:
                            return str(e)
                        return None
                    _judge(response, parse)
        return _specs.get(key)

    def bodies(self, spec: payloads.ModelSpec, api: str, rows: int | None) -> list[bytes]:
        key = (self.host or "", spec.name, api, rows)
        if key not in _bodies:
            encode = payloads.v2_body if api == "v2" else payloads.v1_body
            rng = np.random.default_rng(len(_bodies))
            _bodies[key] = [encode(spec, rows, rng) for _ in range(BODIES_PER_KIND)]
        return _bodies[key]


def _name(api: str, model: str, rows: int | None) -> str:
    """The statistics row: endpoint and row count (single rows and batches are apart)."""
    path = f"/v2/models/{model}/infer" if api == "v2" else f"/v1/models/{model}:predict"
    if rows is None:
        return path
    return f"{path} ({rows} row{'s' if rows != 1 else ''})"


def _judge(response: Any, problem: Callable[[Any], str | None]) -> None:
    """Mark ``response`` failed with a reason (HTTP status, the server's error, or what the
    answer lacks), else succeeded."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {_error_text(response)}")
        return
    try:
        answer = response.json()
    except ValueError as e:
        response.failure(f"the answer is not JSON: {e}")
        return
    reason = problem(answer)
    if reason is None:
        response.success()
    else:
        response.failure(reason)


def _error_text(response: Any) -> str:
    if response.status_code == 0:  # no HTTP answer: connection refused, reset, timed out
        return f"{type(response.error).__name__}: {response.error}"[:200]
    try:
        return str(response.json().get("error", response.text))[:200]
    except (ValueError, AttributeError):
        return (response.text or "")[:200]


class V2SingleRowUser(ModelgateUser):
    """V2 inference, one row per call: the latency-bound case."""

    @task
    def infer_one_row(self) -> None:
        self.v2_infer(self.options.model, 1)


class V2BatchUser(ModelgateUser):
    """V2 inference, ``--batch-size`` rows per call."""

    @task
    def infer_batch(self) -> None:
        self.v2_infer(self.options.model, self.options.batch_size)


class V1PredictUser(ModelgateUser):
    """KServe V1 ``:predict`` with one instance."""

    @task
    def predict(self) -> None:
        self.v1_predict(self.options.v1_model, 1)


class MixedUser(ModelgateUser):
    """A blend across the ``--mix`` models: mostly single rows, some batches, some V1."""

    def pick_model(self) -> str:
        names, weights = zip(*self.options.mix, strict=True)
        return random.choices(names, weights)[0]

    @task(6)
    def infer_one_row(self) -> None:
        self.v2_infer(self.pick_model(), 1)

    @task(3)
    def infer_batch(self) -> None:
        self.v2_infer(self.pick_model(), self.options.batch_size)

    @task(1)
    def predict(self) -> None:
        self.v1_predict(self.pick_model(), 1)
