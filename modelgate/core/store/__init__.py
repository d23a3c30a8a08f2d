"""Everything modelgate keeps in Redis: each key's name, the record stored under it (fields,
encode and decode) and the Lua scripts that touch it, side by side, one module per family.

Keys are typed by family so that a model name can never collide with another kind of key:

    mg:models, mg:model:{model}:... which versions of which models are served
    mg:control:...                  the decider's lease, commands and events
    mg:gateway:{id}:...             what one gateway process has applied
    mg:pool:{model}:{version}:...   a pool: the workers serving one version of one model
    mg:worker:{id}                  one worker's heartbeat
    mg:replies:{gateway}            one gateway process's reply list
    mg:autoscaler:...               the autoscaler's decisions and budget
    mg:jobs, mg:job:{id}:...        batch prediction jobs (and each pool's job stream)
    mg:fb:{model}:...               stored answers, labels and quality (feedback)
    mg:tuning:{sha256}              throughput curves measured per model content and host

and each version's lineage and totals since it loaded (``lineage``), under the pool's and the
model's prefixes.

Model names are restricted by the repository to ``[A-Za-z0-9_.-]`` and versions to digits, so
``:`` separates safely. Writers and readers of a record both go through its module here; that
is the rule that keeps them from drifting apart. ``docs/architecture.md`` lists every key, from
:data:`FAMILIES` (a test checks the page against it).
"""

from __future__ import annotations

PREFIX = "mg"

# The modules of this package, in the order docs/architecture.md lists them.
FAMILIES = ("models", "traffic", "pools", "heartbeats", "replies", "scaling", "drift",
            "lineage", "jobs", "feedback", "batching")

# Words of Redis error replies caused by what a key holds (a key of another type, a counter that
# is not a number), as opposed to the server's own state (LOADING, MISCONF, OOM, READONLY, ...):
# the former is bad data in one record, to be skipped; the latter is Redis not serving.
_BAD_DATA_ERRORS = ("WRONGTYPE", "not an integer", "not a valid float")


def is_bad_data(error: BaseException) -> bool:
    """Whether an error reply of Redis was caused by the value of a key, not by the server."""
    text = str(error)
    return any(words in text for words in _BAD_DATA_ERRORS)
