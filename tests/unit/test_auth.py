"""API keys: ``Authorization: Bearer KEY`` against every configured key, in constant time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelgate.core.errors import Unauthorized
from modelgate.gateway.auth import check_bearer

KEYS = (b"key-alpha-5f1c0e9a", b"key-bravo-7d24b6c3", b"key-charlie-90ab1d")


class _Counted(tuple[bytes, ...]):
    """The configured keys, noting which ones the check looked at (an input, not a patch)."""

    seen: list[bytes]

    def __iter__(self) -> Iterator[bytes]:
        for key in super().__iter__():
            self.seen.append(key)
            yield key


def _counted() -> _Counted:
    keys = _Counted(KEYS)
    keys.seen = []
    return keys


@pytest.mark.parametrize("key", KEYS)
def test_any_configured_key_is_accepted(key: bytes) -> None:
    check_bearer(f"Bearer {key.decode()}", KEYS)


def test_scheme_is_case_insensitive() -> None:
    check_bearer(f"bearer {KEYS[1].decode()}", KEYS)


@pytest.mark.parametrize("position", range(len(KEYS)))
def test_every_key_is_compared_whichever_matches(position: int) -> None:
    """No early exit on a match: the time taken does not tell which key matched."""
    keys = _counted()
    check_bearer(f"Bearer {KEYS[position].decode()}", keys)
    assert keys.seen == list(KEYS)


def test_every_key_is_compared_when_none_matches() -> None:
    keys = _counted()
    with pytest.raises(Unauthorized):
        check_bearer("Bearer nope", keys)
    assert keys.seen == list(KEYS)


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic " + KEYS[0].decode(), KEYS[0].decode(),
    "Bearer " + KEYS[0].decode()[:-1],  # a prefix
    "Bearer " + KEYS[0].decode() + "0",  # a key and more
    "Bearer " + KEYS[0].decode().upper(),  # keys are case-sensitive
    "Bearer " + KEYS[0].decode() + KEYS[1].decode(),
    "Bearer ключ",
])
def test_anything_else_is_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized) as raised:
        check_bearer(header, KEYS)
    message = str(raised.value)
    assert "Bearer" in message or "not valid" in message
    assert not any(key.decode() in message for key in KEYS), "a key leaked into the message"


def test_no_keys_means_no_check() -> None:
    check_bearer(None, ())
    check_bearer("Basic whatever", ())
