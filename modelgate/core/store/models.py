"""Which versions of which models are served: the shared desired state, and the control plane
that keeps it.

One process per deployment decides (the holder of :func:`lease`: ``modelgate up``'s supervisor,
or the autoscaler service); every gateway, the autoscaler and ``modelgate status`` read what it
decided. Each model's :class:`ModelState` is one JSON record; :data:`GENERATION` counts changes,
so readers poll one integer and re-read the records only when it moved. Gateways say which
generation they have applied (:func:`gateway_applied`), which is how the decider knows that no
gateway still sends calls to a version leaving. API calls reach the decider as
:class:`ControlCommand` entries and find their answer under :func:`command_result`.

Version states are Triton's: LOADING (its pool is starting and warming up), READY (it takes
calls), UNLOADING (it takes no new calls and drains what it has), UNAVAILABLE (it could not be
loaded: ``reason`` says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from modelgate.core.store import PREFIX

MODELS = f"{PREFIX}:models"
GENERATION = f"{PREFIX}:models:generation"
COMMANDS = f"{PREFIX}:control:commands"
EVENTS = f"{PREFIX}:control:events"
LEASE = f"{PREFIX}:control:lease"
REPOSITORY = f"{PREFIX}:control:repository"
EXPLICIT = f"{PREFIX}:control:explicit"

COMMANDS_MAXLEN = 1000
EVENTS_MAXLEN = 10_000  # about a day of busy rollouts, a few MB
RESULT_TTL_S = 600
# The decider renews its lease every tick (1 s); another takes over once it lapses.
LEASE_TTL_S = 5.0
# A gateway that has not said what it applied for this long is gone (its calls with it).
GATEWAY_TTL_S = 5.0


# Take or renew the lease: KEYS: the lease. ARGV: this decider's lease value, its TTL in ms.
# The value is "{decider id} {control mode}", so readers learn the mode from it as well.
TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def lease_value(decider_id: str, mode: str) -> str:
    return f"{decider_id} {mode}"


def lease_mode(raw: bytes | str | None) -> str | None:
    """The control mode of the live decider, from the lease's value; None without one."""
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return text.rsplit(" ", 1)[-1]


def state(model: str) -> str:
    """One model's :class:`ModelState` (JSON)."""
    return f"{PREFIX}:model:{model}:state"


def load_error(pool: str) -> str:
    """Why the workers of a pool could not load its model (set by the worker; expires)."""
    return f"{PREFIX}:pool:{pool}:load_error"


def command_result(command_id: str) -> str:
    """The :class:`CommandResult` of one command (JSON; expires after RESULT_TTL_S)."""
    return f"{PREFIX}:control:result:{command_id}"


def gateway_applied(gateway_id: str) -> str:
    """The model generation one gateway process has applied (expires with it)."""
    return f"{PREFIX}:gateway:{gateway_id}:applied"


class VersionStatus(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class StateError(ValueError):
    """A stored record that is not one of this format."""


@dataclass(frozen=True, slots=True)
class VersionState:
    status: VersionStatus
    sha256: str
    since: float  # epoch s of the last change of status
    reason: str = ""
    generation: int = 0  # the model generation at which it entered its status

    def body(self) -> dict[str, Any]:
        return {"state": self.status.value, "reason": self.reason, "sha256": self.sha256,
                "since": round(self.since, 3)}


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model as served: its versions by number and the one that answers unpinned calls."""

    name: str
    versions: dict[str, VersionState] = field(default_factory=dict)
    default: str | None = None
    generation: int = 0
    reason: str = ""  # what is wrong with the model as a whole (a bad config), if anything

    def ready(self) -> list[str]:
        return sorted((v for v, s in self.versions.items() if s.status == VersionStatus.READY),
                      key=int)

    def with_version(self, version: str, status: VersionStatus, sha256: str, now: float,
                     generation: int, reason: str = "") -> ModelState:
        versions = dict(self.versions)
        versions[version] = VersionState(status, sha256, now, reason, generation)
        return replace(self, versions=versions)

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": 1, "name": self.name, "default": self.default, "generation": self.generation,
            "reason": self.reason,
            "versions": {v: {"status": s.status.value, "sha256": s.sha256, "since": s.since,
                             "reason": s.reason, "generation": s.generation}
                         for v, s in self.versions.items()}})

    @classmethod
    def decode(cls, raw: bytes | str) -> ModelState:
        try:
            message = orjson.loads(raw)
            if message.get("v") != 1:
                raise StateError(f"model state of format {message.get('v')!r}, expected 1")
            versions = {str(v): VersionState(VersionStatus(s["status"]), str(s["sha256"]),
                                             float(s["since"]), str(s.get("reason", "")),
                                             int(s.get("generation", 0)))
                        for v, s in message["versions"].items()}
            default = message.get("default")
            return cls(str(message["name"]), versions,
                       str(default) if default is not None else None,
                       int(message.get("generation", 0)), str(message.get("reason", "")))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise StateError(f"not a model state: {e}") from e


COMMAND_OPS = ("load", "unload", "promote", "rollback", "pause", "resume")


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """A request to the decider: ``load`` or ``unload`` one model (explicit mode), or a
    person's override of its promotion gate: ``promote``, ``rollback``, ``pause``,
    ``resume``."""

    id: str
    op: str  # load | unload | promote | rollback | pause | resume
    model: str
    by: str  # who asked: the API key's id, or "cli"
    at: float

    def fields(self) -> dict[str, str]:
        return {"id": self.id, "op": self.op, "model": self.model, "by": self.by,
                "at": f"{self.at:.3f}"}

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> ControlCommand | None:
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            if text["op"] not in COMMAND_OPS:
                return None
            return cls(text["id"], text["op"], text["model"], text.get("by", ""),
                       float(text["at"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Where a command stands: ``pending`` until every version it touched settled, then
    ``done`` or ``failed`` (``message`` says why), or ``refused`` at once."""

    status: str  # pending | done | failed | refused
    message: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"status": self.status, "message": self.message})

    @classmethod
    def decode(cls, raw: bytes | str) -> CommandResult:
        try:
            message = orjson.loads(raw)
            return cls(str(message["status"]), str(message.get("message", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise StateError(f"not a command result: {e}") from e


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One change to what is served, with who asked and why (kept, shown by status)."""

    time: float
    model: str
    version: str
    change: str  # e.g. "LOADING", "READY", "default", "UNLOADING", "removed", "UNAVAILABLE"
    reason: str
    by: str = "decider"

    def fields(self) -> dict[str, str]:
        return {"time": f"{self.time:.3f}", "model": self.model, "version": self.version,
                "change": self.change, "reason": self.reason, "by": self.by}

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> ControlEvent | None:
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            return cls(float(text["time"]), text["model"], text["version"], text["change"],
                       text.get("reason", ""), text.get("by", "decider"))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


KEYS = (
    (MODELS, "set", "names of the models with a state"),
    (state, "string", "ModelState (JSON)"),
    (GENERATION, "string", "integer, bumped on every change to any ModelState"),
    (load_error, "string", "why the pool's workers cannot load its model; expires"),
    (COMMANDS, "stream", "ControlCommand, capped at COMMANDS_MAXLEN"),
    (command_result, "string", "CommandResult (JSON); expires after RESULT_TTL_S"),
    (EVENTS, "stream", "ControlEvent, capped at EVENTS_MAXLEN"),
    (LEASE, "string", "'{decider} {mode}'; expires after LEASE_TTL_S unless renewed"),
    (REPOSITORY, "string", "the identity of the repository the state belongs to"),
    (EXPLICIT, "set", "models loaded through the API (explicit mode)"),
    (gateway_applied, "string", "the generation a gateway applied; expires with it"),
)
