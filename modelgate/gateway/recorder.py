"""An answer log for conformance checks: with ``--record-answers DIR`` every answer on a path
of the Open Inference Protocol's REST API (``/v2``, ``/v2/health/*``, ``/v2/models/...``) is
appended to ``DIR/answers-<pid>.jsonl``: method, path, status, content type and the JSON part
of the body (a binary answer's JSON header; at most ``MAX_BODY_BYTES``, else marked
``truncated``). The test suite sets it on every gateway it starts and validates each answer
against KServe's published schemas (tests/protocol). Off by default: it costs a write per call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROTOCOL_PATH = re.compile(r"^/v2(/|/health/(live|ready)|/models/.*)?$")
MAX_BODY_BYTES = 4 * 1024 * 1024
_HEADER = b"inference-header-content-length"


class AnswerRecorder:
    """ASGI middleware: the app's answers on protocol paths, one JSON line each."""

    def __init__(self, app: ASGIApp, directory: Path) -> None:
        self.app = app
        self.directory = directory
        self._file: IO[bytes] | None = None

    def __getattr__(self, name: str) -> Any:  # state, routes: the wrapped app's
        return getattr(self.app, name)

    def _log(self) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.directory / f"answers-{os.getpid()}.jsonl", "ab")  # noqa: SIM115
        return self._file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not PROTOCOL_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        answer: dict[str, Any] = {"method": scope["method"], "path": scope["path"]}
        parts: list[bytes] = []
        size = 0

        async def recording(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type":
                        answer["content_type"] = value.decode("latin-1")
                    elif name.lower() == _HEADER:
                        answer["header_length"] = int(value)
            elif message["type"] == "http.response.body" and size <= MAX_BODY_BYTES:
                body = message.get("body", b"")
                parts.append(body)
                size += len(body)
            await send(message)

        await self.app(scope, receive, recording)
        body = b"".join(parts)
        if "header_length" in answer:
            body = body[:answer["header_length"]]
        if len(body) > MAX_BODY_BYTES:
            answer["truncated"] = True
        else:
            answer["body"] = body.decode("utf-8", "replace")
        log = self._log()
        log.write(orjson.dumps(answer) + b"\n")
        log.flush()
