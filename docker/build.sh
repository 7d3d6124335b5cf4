#!/usr/bin/env bash
# Build llama-rlhf:EXTRA (cpu or gpu): the base image when missing (base.sh), the deps context from
# pyproject.toml and this host's pip settings (context.py), the deps image, then the image itself from
# the checkout. Prints each step's seconds and the image's size.
#
#   docker/build.sh cpu|gpu          # from the repository root; `make docker-cpu` / `make docker-gpu`
set -euo pipefail
cd "$(dirname "$0")/.."

extra=${1:?usage: docker/build.sh cpu|gpu}
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3}
BASE=${BASE_IMAGE:-llama-rlhf-base:bookworm}
LOG=docker/build/$extra.log
mkdir -p docker/build
: >"$LOG"
# Only the client is niced here; builds run under dockerd, which engine.sh starts with nice.
build() {
    nice -n 10 "$DOCKER" build --force-rm "$@" >>"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; echo "build: failed, log: $LOG" >&2; return 1; }
}

t=$SECONDS
docker/base.sh "$BASE"
t_base=$((SECONDS - t)); t=$SECONDS
"$PYTHON" docker/context.py "$extra"
build -f docker/Dockerfile.deps --build-arg BASE_IMAGE="$BASE" --build-arg EXTRA="$extra" \
    -t "llama-rlhf-deps:$extra" "docker/build/$extra"
t_deps=$((SECONDS - t)); t=$SECONDS
build -f "docker/Dockerfile.$extra" --build-arg BASE_IMAGE="$BASE" --build-arg DEPS_IMAGE="llama-rlhf-deps:$extra" \
    -t "llama-rlhf:$extra" .
t_image=$((SECONDS - t))
size=$("$DOCKER" image inspect --format '{{.Size}}' "llama-rlhf:$extra" | awk '{printf "%.2f GB", $1/1e9}')
echo "build: llama-rlhf:$extra $size; seconds: base $t_base, deps $t_deps, image $t_image"
