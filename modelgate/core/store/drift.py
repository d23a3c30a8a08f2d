"""Drift samples and alerts of a pool.

Workers append one :class:`DriftBatch` a second to the pool's batch stream (a compact summary
of the rows they sampled, never the rows); gateways fold them into the detectors of
``modelgate.core.drift`` and append each raised or cleared :class:`DriftAlert`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import msgpack
import numpy as np

from modelgate.core.store import PREFIX

BATCH_VERSION = 1
BATCHES_MAXLEN = 600  # about ten minutes of one-second batches per worker
ALERTS_MAXLEN = 1000


def batches(pool: str) -> str:
    """Stream of :class:`DriftBatch` (field ``batch``), capped at BATCHES_MAXLEN."""
    return f"{PREFIX}:pool:{pool}:drift"


def alerts(pool: str) -> str:
    """Stream of :class:`DriftAlert`: drift raised and cleared, per feature, capped."""
    return f"{PREFIX}:pool:{pool}:drift:alerts"


class DriftRecordError(ValueError):
    """Bytes or fields that are not a drift record of this format."""


@dataclass(frozen=True, slots=True)
class DriftBatch:
    """One second of sampled rows of one worker.

    ``chunk_rows[i]`` rows went into chunk ``i``; ``z[i]`` holds that chunk's sums of
    standardised values per numeric feature (shape ``[chunks, numeric features]``); ``bins``
    the counts per reference bin for every feature, numeric then label outputs; ``sums`` and
    ``squares`` the raw sums per feature (0 for labels).
    """

    time: float
    chunk_rows: tuple[int, ...]
    z: np.ndarray
    bins: tuple[tuple[int, ...], ...]
    sums: tuple[float, ...]
    squares: tuple[float, ...]

    @property
    def rows(self) -> int:
        return sum(self.chunk_rows)

    def encode(self) -> bytes:
        return msgpack.packb({
            "v": BATCH_VERSION, "t": self.time, "rows": list(self.chunk_rows),
            "z": np.ascontiguousarray(self.z, dtype="<f8").tobytes(),
            "bins": [list(b) for b in self.bins], "sums": list(self.sums),
            "squares": list(self.squares)})

    @classmethod
    def decode(cls, raw: bytes) -> DriftBatch:
        try:
            message = msgpack.unpackb(raw)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise DriftRecordError(f"drift batch is not msgpack: {e}") from e
        if not isinstance(message, dict) or message.get("v") != BATCH_VERSION:
            raise DriftRecordError("drift batch of another format version")
        try:
            chunk_rows = tuple(int(r) for r in message["rows"])
            z_bytes = message["z"]
            bins = tuple(tuple(int(c) for c in b) for b in message["bins"])
            sums = tuple(float(s) for s in message["sums"])
            squares = tuple(float(s) for s in message["squares"])
            time = float(message["t"])
        except (KeyError, TypeError, ValueError) as e:
            raise DriftRecordError(f"drift batch has a malformed field: {e}") from e
        if not chunk_rows or not isinstance(z_bytes, bytes) or len(sums) != len(bins) \
                or len(squares) != len(bins):
            raise DriftRecordError("drift batch fields do not agree in size")
        values, rest = divmod(len(z_bytes), 8 * len(chunk_rows))
        if rest or values > len(bins):
            raise DriftRecordError("drift batch 'z' does not fit its chunks")
        z = np.frombuffer(z_bytes, dtype="<f8").reshape(len(chunk_rows), values)
        return cls(time, chunk_rows, z, bins, sums, squares)


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """A feature's drift raised (``statistic`` names the test) or ``"cleared"``."""

    feature: str
    statistic: str
    value: float
    threshold: float
    window_rows: int
    time: float

    def fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> DriftAlert | None:
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            return cls(text["feature"], text["statistic"], float(text["value"]),
                       float(text["threshold"]), int(text["window_rows"]), float(text["time"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def body(self) -> dict[str, str | float | int]:
        """As the drift endpoint shows it."""
        return asdict(self)


KEYS = (
    (batches, "stream", "DriftBatch (field 'batch'), capped at BATCHES_MAXLEN"),
    (alerts, "stream", "DriftAlert, capped at ALERTS_MAXLEN"),
)
