#!/bin/sh
# Without a config file Redis starts in protected mode and refuses clients from other
# containers; the official image is built with it off. A config file given first still wins
# for everything else.
set -e
if [ "${1:-}" = "redis-server" ]; then
    exec "$@" --protected-mode no
fi
exec "$@"
