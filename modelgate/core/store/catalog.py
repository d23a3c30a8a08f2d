"""The table of every Redis key, generated from the family modules' ``KEYS`` (for
docs/architecture.md, which a test keeps equal to it).

``python -m modelgate.core.store.catalog`` prints it; with ``--write DOC`` it replaces the
table between DOC's ``<!-- keys:begin -->`` and ``<!-- keys:end -->`` markers.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from modelgate.core.store import FAMILIES

# How each parameter of a key function shows in the table.
PLACEHOLDERS = {"pool": "{model}:{version}", "worker_id": "{worker}",
                "gateway_id": "{gateway}", "epoch_s": "{epoch_s}", "model": "{model}",
                "command_id": "{command}", "serving": "{serving}",
                "candidate": "{candidate}", "job_id": "{id}", "version": "{version}",
                "sha256": "{sha256}", "host_id": "{host_id}"}


def pattern(key: str | Callable[..., str]) -> str:
    """A key constant as it is, a key function applied to placeholders."""
    if isinstance(key, str):
        return key
    return key(*(PLACEHOLDERS[name] for name in inspect.signature(key).parameters))


def key_table() -> str:
    lines = ["| key | type | holds | module |", "|---|---|---|---|"]
    for family in FAMILIES:
        module = importlib.import_module(f"modelgate.core.store.{family}")
        for key, kind, record in module.KEYS:
            lines.append(f"| `{pattern(key)}` | {kind} | {record} | `store/{family}.py` |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- keys:begin -->\n", "<!-- keys:end -->"


def write_into(path: Path) -> None:
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + BEGIN + key_table() + END + tail)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write_into(Path(sys.argv[2]))
    else:
        print(key_table(), end="")
