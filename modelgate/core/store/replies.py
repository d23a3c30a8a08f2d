"""Reply lists: one per gateway process; workers RPUSH ``wire.encode_reply`` messages onto it
and the gateway pops them."""

from __future__ import annotations

from modelgate.core.store import PREFIX

PREFIX_REPLIES = f"{PREFIX}:replies:"


def reply_list(gateway_id: str) -> str:
    """The list a gateway process pops its replies from; expires when the gateway is gone."""
    return f"{PREFIX_REPLIES}{gateway_id}"


def is_reply_list(key: str) -> bool:
    """Workers write only to keys that pass this, whatever an entry's ``reply_to`` says."""
    return key.startswith(PREFIX_REPLIES) and len(key) > len(PREFIX_REPLIES)


KEYS = ((reply_list, "list", "wire.Reply messages (msgpack); expires when idle"),)
