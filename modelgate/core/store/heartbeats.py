"""Workers' heartbeats: one hash per live worker, with a TTL, beside the pool's sorted set
(``pools.worker_set``) scored by each worker's last beat."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from modelgate.core.store import PREFIX

# Workers beat every HEARTBEAT_INTERVAL_S; one silent for WORKER_TTL_S is not live (its hash
# expires then too). Long enough for a few missed beats on a busy host.
HEARTBEAT_INTERVAL_S = 1.0
WORKER_TTL_S = 5.0


def heartbeat(worker_id: str) -> str:
    """Hash describing one live worker (:class:`Heartbeat`); expires after WORKER_TTL_S."""
    return f"{PREFIX}:worker:{worker_id}"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pool: str
    pid: int
    host: str
    started: float  # epoch s
    processed: int = 0  # requests answered so far
    busy: float = 0.0  # share of its lifetime spent in ONNX Runtime runs
    sha256: str = ""  # of the model.onnx it loaded: which content of the version it serves
    # The job lane's own counters (batch jobs' chunks; never in the online figures).
    job_rows: int = 0
    job_chunks: int = 0
    job_failed_rows: int = 0
    job_busy: float = 0.0  # share of its lifetime spent on job chunks

    def fields(self) -> dict[str, str | int | float]:
        return asdict(self)

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> Heartbeat | None:
        """None when a field is missing or malformed (a worker of another release)."""
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            return cls(text["pool"], int(text["pid"]), text["host"], float(text["started"]),
                       int(float(text.get("processed", 0))), float(text.get("busy", 0.0)),
                       text.get("sha256", ""), int(float(text.get("job_rows", 0))),
                       int(float(text.get("job_chunks", 0))),
                       int(float(text.get("job_failed_rows", 0))),
                       float(text.get("job_busy", 0.0)))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


KEYS = ((heartbeat, "hash", "Heartbeat; expires after WORKER_TTL_S"),)
