#!/bin/sh
# Build the service images with docker or podman (whichever works; scripts/container-engine.sh),
# tagged synthaug/<service>:<version from pyproject.toml>, the names compose and kustomize use.
#
#   scripts/build-images.sh                        # every image
#   scripts/build-images.sh compositor evaluator   # some of them
#   make images [IMAGES="orchestrator compositor evaluator"] [TORCH=cpu]
#
# orchestrator, compositor, evaluator: deploy/docker/Dockerfile.cpu (no torch).
# gan, segmenter: deploy/docker/Dockerfile.gpu, with CUDA torch from TORCH_IMAGE (default
#   pytorch/pytorch from Docker Hub) or, with TORCH=cpu, CPU-only torch from TORCH_INDEX_URL
#   (default download.pytorch.org/whl/cpu) over BASE_IMAGE.
#
# Settings (environment):
#   BASE_IMAGE   base of the CPU images (default localhost/synthaug-base:bookworm, built by
#                scripts/build-base-image.sh from Debian's archive when missing: no registry
#                needed; BASE_IMAGE=python:3.11-slim-bookworm uses Docker Hub's instead)
#   TORCH        cuda (default) or cpu: where gan and segmenter get torch
#   TORCH_IMAGE, TORCH_INDEX_URL   override the Dockerfile.gpu defaults
#   TAG          image tag (default: the version in pyproject.toml)
#   CONTAINER_ENGINE, CONTAINER_BUILD_FLAGS   see scripts/container-engine.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

ENGINE=$("$here/container-engine.sh" name)
BUILD_FLAGS=$("$here/container-engine.sh" build-flags)
LOCAL_BASE=localhost/synthaug-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
TORCH=${TORCH:-cuda}
TAG=${TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)}
SERVICES=${*:-orchestrator compositor evaluator gan segmenter}

case "$TORCH" in
    cuda) ;;
    cpu) TORCH_IMAGE=${TORCH_IMAGE:-$BASE_IMAGE} ;;
    *) echo "build-images: TORCH must be cuda or cpu, not $TORCH" >&2; exit 2 ;;
esac
TORCH_ARGS=""
if [ -n "${TORCH_IMAGE:-}" ]; then TORCH_ARGS="--build-arg TORCH_IMAGE=$TORCH_IMAGE"; fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then TORCH_ARGS="$TORCH_ARGS --build-arg TORCH_INDEX_URL=$TORCH_INDEX_URL"; fi

# The local base is built once, when an image about to be built stands on it.
needs_base=no
for service in $SERVICES; do
    case "$service" in
        orchestrator|compositor|evaluator) base=$BASE_IMAGE ;;
        gan|segmenter) base=${TORCH_IMAGE:-} ;;
        *) echo "build-images: unknown service $service (orchestrator compositor evaluator gan segmenter)" >&2; exit 2 ;;
    esac
    if [ "$base" = "$LOCAL_BASE" ]; then needs_base=yes; fi
done
if [ "$needs_base" = yes ] && ! "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    echo "build-images: $LOCAL_BASE is missing; building it (scripts/build-base-image.sh)" >&2
    "$here/build-base-image.sh" "$LOCAL_BASE"
fi

for service in $SERVICES; do
    case "$service" in
        gan|segmenter) dockerfile=deploy/docker/Dockerfile.gpu; args=$TORCH_ARGS ;;
        *) dockerfile=deploy/docker/Dockerfile.cpu; args="--build-arg BASE_IMAGE=$BASE_IMAGE" ;;
    esac
    echo "build-images: synthaug/$service:$TAG ($ENGINE, $dockerfile)" >&2
    # shellcheck disable=SC2086  # flags and args are lists of words
    "$ENGINE" build $BUILD_FLAGS $args -f "$dockerfile" --target "$service" -t "synthaug/$service:$TAG" .
done
"$ENGINE" images | awk 'NR == 1 || /synthaug\// { print }' >&2
