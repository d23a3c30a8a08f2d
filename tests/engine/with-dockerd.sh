#!/usr/bin/env bash
# with-dockerd.sh COMMAND...: run COMMAND with a Docker Engine answering on the default socket.
#
# If one answers already, COMMAND just runs. Otherwise this starts `dockerd --iptables=false`
# (as root; overlay2; no NAT rules, so containers reach only the host and each other, and
# builds use --network host), logging to $DOCKERD_LOG, and stops that daemon (and only it)
# when COMMAND ends, however it ends. The exit status is COMMAND's.
set -euo pipefail

log=${DOCKERD_LOG:-test-artifacts/dockerd.log}
start_timeout_s=60

if docker info >/dev/null 2>&1; then
    exec "$@"
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "no Docker engine answers, and starting one needs root: run as root, or start" \
         "dockerd yourself" >&2
    exit 1
fi

mkdir -p "$(dirname "$log")"
dockerd --iptables=false >>"$log" 2>&1 &
pid=$!
stop_dockerd() {
    if kill -0 "$pid" 2>/dev/null; then
        echo "stopping the dockerd this run started (pid $pid)"
        kill -TERM "$pid"
        wait "$pid" || true
    fi
}
trap stop_dockerd EXIT

deadline=$((SECONDS + start_timeout_s))
until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "dockerd exited while starting; the end of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "dockerd did not answer within ${start_timeout_s} s; see $log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "started dockerd (pid $pid, log $log); it stops when this run ends"

status=0
"$@" || status=$?
exit "$status"
