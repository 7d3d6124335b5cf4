#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io (and debootstrap, which base.sh needs)
# when missing, start dockerd by hand when none runs (these machines have no systemd). Exits non-zero
# when the engine cannot be reached: CI treats that as a failure, never as a reason to skip.
#
#   docker/engine.sh            # idempotent; prints the engine's version
set -euo pipefail

DOCKER=${DOCKER:-docker}
LOG=${DOCKERD_LOG:-/tmp/dockerd.log}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    echo "engine: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v "$DOCKER" >/dev/null || { echo "engine: no docker client ($DOCKER)" >&2; exit 1; }

if ! "$DOCKER" info >/dev/null 2>&1; then
    if pgrep -x dockerd >/dev/null; then
        echo "engine: a dockerd runs but does not answer; see its log" >&2
        exit 1
    fi
    echo "engine: starting dockerd (log: $LOG)"
    # nice: image builds and containers are the daemon's children and inherit it, so they yield the
    # CPU to whatever else runs on the machine.
    setsid nohup nice -n 10 dockerd >"$LOG" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || break  # dockerd exited: no point waiting
        sleep 1
    done
    if ! "$DOCKER" info >/dev/null 2>&1; then
        echo "engine: dockerd did not start; last lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
fi
echo "engine: $("$DOCKER" version --format 'client {{.Client.Version}}, server {{.Server.Version}}')"
