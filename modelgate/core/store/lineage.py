"""Where each served version came from and how it has done since it loaded: its lineage, its
running totals, and a registry source's last resolution.

All three are written by the decider alone (the holder of the control lease) and read by
gateways and ``modelgate status``:

- :func:`lineage` holds a version's :class:`~modelgate.core.lineage.Lineage` (JSON), written
  when the version enters LOADING and deleted with its pool; at most
  :data:`LINEAGE_MAX_BYTES` (64 KiB) per version: a larger one loses its signature, tags and
  dataset, then the last params and metrics by name, and says so (``truncated``);
- :func:`totals` holds a version's counters since its pool was created: every tick the
  decider folds the pool's finished one-second buckets (``pools.stats``) into it with
  :data:`FOLD`, which remembers the last second folded (field ``through``) so a second is
  never added twice, whichever decider folds it. Its size is fixed: the fields of a bucket
  (about 25: counters and the latency histogram), whatever the traffic or the time served;
  it goes with the pool's other keys;
- :func:`registry` holds a ``source:`` model's :class:`RegistryStatus`: what the source
  resolved to last, when, and why the last attempt failed, if it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from modelgate.core.lineage import Lineage
from modelgate.core.store import PREFIX


def lineage(pool: str) -> str:
    """A version's lineage (JSON of ``Lineage.body()``)."""
    return f"{PREFIX}:pool:{pool}:lineage"


def totals(pool: str) -> str:
    """A version's counters since its pool was created (hash; fields as a stats bucket, plus
    ``since``, the first second with a count, and ``through``, the last second folded)."""
    return f"{PREFIX}:pool:{pool}:totals"


def registry(model: str) -> str:
    """A source model's :class:`RegistryStatus` (JSON)."""
    return f"{PREFIX}:model:{model}:registry"


# Fold finished one-second buckets into a pool's totals, once each.
# KEYS: the totals hash, then the bucket of every second from ARGV[2] to ARGV[3].
# ARGV: the ``through`` the caller read ("" for none), the first and the last second.
# Returns 1 when folded, 0 when ``through`` moved since the caller read it (folded already).
FOLD = """
local through = redis.call('HGET', KEYS[1], 'through')
if (through or '') ~= ARGV[1] then
  return 0
end
local since = redis.call('HEXISTS', KEYS[1], 'since') == 1
for i = 2, #KEYS do
  local fields = redis.call('HGETALL', KEYS[i])
  if #fields > 0 and not since then
    redis.call('HSET', KEYS[1], 'since', tonumber(ARGV[2]) + i - 2)
    since = true
  end
  for j = 1, #fields, 2 do
    redis.call('HINCRBYFLOAT', KEYS[1], fields[j], fields[j + 1])
  end
end
redis.call('HSET', KEYS[1], 'through', ARGV[3])
return 1
"""
# At most this many seconds are folded per call (the buckets live BUCKET_TTL_S anyway).
FOLD_MAX_SECONDS = 600


LINEAGE_MAX_BYTES = 64 * 1024


def encode_lineage(found: Lineage) -> bytes:
    """The record, within LINEAGE_MAX_BYTES."""
    body = found.body()
    raw = orjson.dumps(body)
    if len(raw) <= LINEAGE_MAX_BYTES:
        return raw
    body.update(signature=None, tags={}, dataset=None, truncated=True)
    while len(raw := orjson.dumps(body)) > LINEAGE_MAX_BYTES and (body["params"]
                                                                   or body["metrics"]):
        for key in ("params", "metrics"):
            names = sorted(body[key])
            body[key] = {k: body[key][k] for k in names[:len(names) // 2]}
    return raw


def decode_lineage(raw: bytes | str | None) -> Lineage | None:
    if raw is None:
        return None
    try:
        body = orjson.loads(raw)
        return Lineage.from_body(body) if isinstance(body, dict) else None
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None


def decode_totals(raw: dict[bytes, bytes]) -> dict[str, float]:
    found = {}
    for name, value in raw.items():
        try:
            found[name.decode()] = float(value)
        except (UnicodeDecodeError, ValueError):
            continue
    return found


@dataclass(frozen=True, slots=True)
class RegistryStatus:
    """A source model's last resolution: ``version`` (local) and ``registry_version`` of the
    last success, ``checked_at`` the last attempt, ``error`` why it failed (empty: it did
    not)."""

    source: str
    checked_at: float
    version: str | None = None
    registry_version: str | None = None
    run_id: str | None = None
    resolved_at: float | None = None
    error: str = ""

    def body(self) -> dict[str, Any]:
        return {"source": self.source, "checked_at": self.checked_at, "version": self.version,
                "registry_version": self.registry_version, "run_id": self.run_id,
                "resolved_at": self.resolved_at, "error": self.error}

    def encode(self) -> bytes:
        return orjson.dumps({"v": 1, **self.body()})

    @classmethod
    def decode(cls, raw: bytes | str | None) -> RegistryStatus | None:
        if raw is None:
            return None
        try:
            body = orjson.loads(raw)
            if body.get("v") != 1:
                return None
            return cls(str(body["source"]), float(body["checked_at"]), body.get("version"),
                       body.get("registry_version"), body.get("run_id"),
                       body.get("resolved_at"), str(body.get("error") or ""))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            return None


KEYS = (
    (lineage, "string", "the version's Lineage (JSON); written at LOADING, goes with the pool"),
    (totals, "hash", "counters since the pool was created (a stats bucket's ~25 fields), "
                     "folded by the decider (FOLD)"),
    (registry, "string", "RegistryStatus (JSON): a source model's last resolution"),
)
