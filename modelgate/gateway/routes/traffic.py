"""A model's traffic: ``GET`` it (the policy, each version's share and figures, agreement
between the serving version and its candidates, the promotion gate), ``PUT`` a new policy
(replacing the whole of it), or override the gate (``POST .../traffic/promote|rollback|pause|
resume``). Changing traffic needs the admin key when the server has one.

A PUT is written with the key's id and the time, under a new models generation: every gateway
applies it within a second (this one before it answers). Weights must name READY versions; a
version with weight 0 gets no new unpinned call from then on (calls already admitted to it are
still answered by it).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelgate.core.errors import BackendUnavailable, InvalidInput, ModelNotFound
from modelgate.core.stats import decode_bucket, latency_figures, sum_buckets
from modelgate.core.store import models as model_store
from modelgate.core.store import pools
from modelgate.core.store import traffic as traffic_store
from modelgate.core.store.models import ControlCommand, ControlEvent
from modelgate.core.store.traffic import AgreementTally, GateState, TrafficPolicy
from modelgate.gateway import protocol
from modelgate.gateway.dataplane import DataPlane
from modelgate.gateway.routes.repository import key_id, object_body, wait_for_result

JSON = "application/json"
WINDOW_S = 60  # the sliding window of agreement and per-version figures
ACTIONS = ("promote", "rollback", "pause", "resume")
ACTION_TIMEOUT_S = 10.0


def _plane(request: Request) -> DataPlane:
    return request.app.state.plane


def _model(plane: DataPlane, name: str) -> Any:
    model = plane.models.get(name)
    if model is None:
        plane.table.resolve(name)  # raises the not-found error that says what is served
    return model


async def get_traffic(request: Request) -> Response:
    plane = _plane(request)
    name = request.path_params["name"]
    model = _model(plane, name)
    return Response(protocol.dumps(await _view(plane, name, model)), media_type=JSON)


async def _view(plane: DataPlane, name: str, model: Any) -> dict[str, Any]:
    client = plane.client
    now = int(time.time())
    seconds = range(now - WINDOW_S, now)
    versions = sorted(model.versions, key=int)
    totals = [key async for key in client.scan_iter(
        match=traffic_store.agreement(name, "*", "*", "total"), count=200)]
    pairs = sorted({tuple(k.decode().split(":")[-3:-1]) for k in totals})
    pipe = client.pipeline(transaction=False)
    pipe.get(traffic_store.policy(name))
    pipe.get(traffic_store.gate(name))
    for version in versions:
        for second in seconds:
            pipe.hgetall(pools.stats(pools.pool_id(name, version), second))
    for serving, candidate in pairs:
        pipe.hgetall(traffic_store.agreement(name, serving, candidate, "total"))
        for second in seconds:
            pipe.hgetall(traffic_store.agreement(name, serving, candidate, second))
    results = await pipe.execute()
    raw_policy, raw_gate = results[0], results[1]
    at = 2
    policy = TrafficPolicy.decode(raw_policy) if raw_policy else None
    weights = policy.weights if policy is not None and policy.weights else {}
    rows = []
    for version in versions:
        bucket = sum_buckets(decode_bucket(b) for b in results[at:at + WINDOW_S])
        at += WINDOW_S
        completed = bucket.get("completed", 0.0)
        figures = latency_figures(bucket)
        state = model.versions[version].state
        rows.append({
            "version": version, "state": state.status.value,
            "default": version == model.state.default,
            "weight": weights.get(version, 100 if version == model.state.default and not
                                  weights else 0),
            "calls": int(completed),
            "error_rate": round(bucket.get("errors", 0.0) / completed, 5) if completed else None,
            "p50_ms": _round(figures["p50_ms"]), "p99_ms": _round(figures["p99_ms"])})
    agreement = []
    for serving, candidate in pairs:
        total = AgreementTally.parse(results[at])
        window = AgreementTally()
        for raw in results[at + 1:at + 1 + WINDOW_S]:
            window = window.merged(AgreementTally.parse(raw))
        at += 1 + WINDOW_S
        agreement.append({"serving": serving, "candidate": candidate, **total.summary(),
                          "window": {"seconds": WINDOW_S, **window.summary()}})
    gate = GateState.decode(raw_gate) if raw_gate else None
    return {
        "model": name, "default": model.state.default,
        "policy": policy.body() if policy is not None else None,
        "versions": rows, "agreement": agreement,
        "gate": ({"serving": gate.serving, "candidate": gate.candidate, "step": gate.step + 1,
                  "status": gate.status, "reason": gate.reason, "since": gate.step_started}
                 if gate is not None else None),
    }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


async def put_traffic(request: Request) -> Response:
    plane = _plane(request)
    name = request.path_params["name"]
    model = _model(plane, name)
    body = await object_body(request)
    try:
        policy = traffic_store.from_body(body, by=key_id(request), time=time.time())
    except traffic_store.PolicyError as e:
        raise InvalidInput(str(e)) from e
    ready = set(model.state.ready())
    named = {v for v, w in policy.weights.items() if w > 0}
    if policy.shadow is not None:
        named.add(policy.shadow.version)
    if policy.default is not None:
        named.add(policy.default)
    missing = sorted(named - ready, key=int)
    if missing:
        raise InvalidInput(f"version(s) {missing} of {name!r} are not READY (ready: "
                           f"{sorted(ready, key=int)}); load them first")
    reason = str(body.get("reason") or "set through the API") if isinstance(body, dict) else ""
    policy = TrafficPolicy(policy.weights, policy.shadow, policy.sticky_header, policy.default,
                           policy.by, reason, policy.time)
    event = ControlEvent(policy.time, name, "", "traffic",
                         f"{policy.body()['weights'] or 'default only'}"
                         + (f", shadow {policy.shadow.version} {policy.shadow.percent:g}%"
                            if policy.shadow else "")
                         + (f", default {policy.default}" if policy.default else ""),
                         policy.by)
    pipe = plane.client.pipeline(transaction=True)
    pipe.set(traffic_store.policy(name), policy.encode())
    pipe.incr(model_store.GENERATION)
    pipe.xadd(model_store.EVENTS, event.fields(), maxlen=model_store.EVENTS_MAXLEN,
              approximate=True)
    await pipe.execute()
    await plane.refresh()  # this gateway applies it before it answers
    return Response(protocol.dumps(await _view(plane, name, plane.models[name])),
                    media_type=JSON)


async def traffic_action(request: Request) -> Response:
    plane = _plane(request)
    name = request.path_params["name"]
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise ModelNotFound(f"unknown traffic action {action!r}; use one of {list(ACTIONS)}")
    _model(plane, name)
    if plane.decider_mode is None:
        raise BackendUnavailable("no decider runs to move the promotion gate: run `modelgate "
                                 "autoscaler` (or `modelgate up`) against this Redis")
    command = ControlCommand(uuid.uuid4().hex, action, name, key_id(request), time.time())
    await plane.client.xadd(model_store.COMMANDS, command.fields(),
                            maxlen=model_store.COMMANDS_MAXLEN, approximate=True)
    result = await wait_for_result(plane, command.id, time.monotonic() + ACTION_TIMEOUT_S)
    if result is None or result.status == "pending":
        raise BackendUnavailable(f"the decider did not answer the {action} within "
                                 f"{ACTION_TIMEOUT_S:.0f} s; look at GET /v2/models/{name}/"
                                 "traffic")
    if result.status != "done":
        raise InvalidInput(f"{action} of {name!r}: {result.message}")
    await plane.refresh()
    return Response(protocol.dumps({"done": result.message,
                                    **await _view(plane, name, plane.models[name])}),
                    media_type=JSON)


routes = [
    Route("/v2/models/{name}/traffic", get_traffic, methods=["GET"]),
    Route("/v2/models/{name}/traffic", put_traffic, methods=["PUT"]),
    Route("/v2/models/{name}/traffic/{action}", traffic_action, methods=["POST"]),
]

# Calls that change what is served: they need an admin key when the server has any.
CONTROL = {("/v2/models/{name}/traffic", "PUT"), ("/v2/models/{name}/traffic/{action}", "POST")}
