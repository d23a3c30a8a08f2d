"""Optional API keys: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from modelgate.core.errors import Unauthorized


def check_bearer(header: str | None, api_keys: tuple[bytes, ...]) -> None:
    """Raise Unauthorized unless ``header`` carries one of ``api_keys``.

    Every key is compared, matching or not, so the time taken says nothing about which
    key or how much of it matched.
    """
    if not api_keys:
        return
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this server requires an API key: send 'Authorization: Bearer KEY'")
    given = token.strip().encode()
    matched = False
    for key in api_keys:
        matched |= hmac.compare_digest(given, key)
    if not matched:
        raise Unauthorized("the API key is not valid for this server")


def has_key(header: str | None, api_keys: tuple[bytes, ...]) -> bool:
    """Whether ``header`` carries one of ``api_keys`` (always, when there are none)."""
    try:
        check_bearer(header, api_keys)
    except Unauthorized:
        return False
    return True
