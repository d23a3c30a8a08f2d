"""What modelgate needs from Redis, checked once at the start of every process, and how a
Redis that refuses writes is told apart from a Redis that is gone.

modelgate keeps its promise (docs/architecture.md, "The delivery promise") only under
``maxmemory-policy noeviction``: Redis then refuses writes at ``maxmemory`` (an outage that
heals: callers get 503, workers hold their answers and wait, nothing is acknowledged) instead of
dropping keys. Any other policy drops keys silently: under ``volatile-*`` the reply lists, the
only keys with a TTL besides heartbeats, go first and their answers are lost; under
``allkeys-*`` a request stream itself may go. docs/operations.md, "Redis settings modelgate
needs", says how to set it and size Redis.
"""

from __future__ import annotations

import logging

import redis
import redis.asyncio as aioredis

SETTINGS_DOC = 'docs/operations.md, "Redis settings modelgate needs"'
REQUIRED_POLICY = "noeviction"
MIN_VERSION = (6, 2)  # XTRIM MINID, LPOP with a count

OUT_OF_MEMORY = (
    "Redis is out of memory (used memory is over its maxmemory) and refuses writes; raise "
    f"maxmemory or free memory in Redis ({SETTINGS_DOC})")


def policy_problem(policy: str) -> str | None:
    """Why an eviction policy breaks modelgate's promise; None for ``noeviction``."""
    if policy == REQUIRED_POLICY:
        return None
    if policy.startswith("volatile-"):
        lost = ("the reply lists (keys with a TTL) are evicted first: answers already computed "
                "are lost and their callers get 504")
    else:
        lost = ("any key may be evicted, the request streams included: queued calls are lost "
                "without an answer")
    return (f"Redis maxmemory-policy is {policy!r}: at maxmemory {lost}. Set "
            f"`maxmemory-policy {REQUIRED_POLICY}` ({SETTINGS_DOC}); modelgate then answers "
            "503 while Redis is full and loses nothing")


def _version_problem(info: dict[str, object]) -> str | None:
    raw = str(info.get("redis_version", ""))
    try:
        version = tuple(int(part) for part in raw.split(".")[:2])
    except ValueError:
        return None
    if version >= MIN_VERSION:
        return None
    return (f"Redis {raw} is older than modelgate needs ({MIN_VERSION[0]}.{MIN_VERSION[1]}): "
            "XTRIM MINID and LPOP with a count will fail; upgrade Redis")


def _log_findings(log: logging.Logger, policy: str | None, refused: str | None,
                  info: dict[str, object] | None) -> None:
    if refused is not None:
        log.warning("cannot read Redis's maxmemory-policy (CONFIG is refused: %s, as on many "
                    "managed services): make sure it is %s (%s)", refused, REQUIRED_POLICY,
                    SETTINGS_DOC)
    elif policy is not None and (problem := policy_problem(policy)) is not None:
        log.warning("%s", problem)
    if info is not None and (problem := _version_problem(info)) is not None:
        log.error("%s", problem)


def _policy_of(reply: dict[str, str] | dict[bytes, bytes]) -> str | None:
    for name, value in reply.items():
        if (name.decode() if isinstance(name, bytes) else name) == "maxmemory-policy":
            return value.decode() if isinstance(value, bytes) else value
    return None


def check_redis(client: redis.Redis, log: logging.Logger) -> str | None:
    """Log a loud warning unless Redis evicts nothing, and an error if it is too old.

    Returns the eviction policy, or None when it could not be read: CONFIG refused (said once,
    in the log) or Redis unreachable (nothing said: the caller's own retries report that).
    Never raises for Redis's sake: a process starts whatever this finds.
    """
    try:
        info = client.info("server")
    except redis.RedisError:
        return None
    try:
        policy = _policy_of(client.config_get("maxmemory-policy"))
    except redis.ResponseError as e:
        _log_findings(log, None, str(e), info)
        return None
    except redis.RedisError:
        return None
    _log_findings(log, policy, None, info)
    return policy


async def check_redis_async(client: aioredis.Redis, log: logging.Logger) -> str | None:
    """:func:`check_redis` on an asyncio client."""
    try:
        info = await client.info("server")
    except redis.RedisError:
        return None
    try:
        policy = _policy_of(await client.config_get("maxmemory-policy"))
    except redis.ResponseError as e:
        _log_findings(log, None, str(e), info)
        return None
    except redis.RedisError:
        return None
    _log_findings(log, policy, None, info)
    return policy


def refusal(error: str) -> redis.ResponseError:
    """The redis-py error for a write refusal reported as text (by a script's pcall): Redis
    7 says ``OOM command not allowed ...``, 6.2 prefixes the script's name and line."""
    if "OOM" in error:
        return redis.OutOfMemoryError(error)
    if "READONLY" in error:
        return redis.ReadOnlyError(error)
    return redis.ResponseError(error)


# Errors after which a process waits and tries again: Redis gone, stalled, full, or a replica.
OUTAGES: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError,
                                        redis.OutOfMemoryError, redis.ReadOnlyError)
