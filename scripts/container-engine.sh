#!/bin/sh
# The container engine the image scripts and the image test use, and its flags.
#
#   scripts/container-engine.sh              # docker | podman
#   scripts/container-engine.sh build-flags  # arguments for `ENGINE build`, one per line
#   scripts/container-engine.sh run-flags    # arguments for `ENGINE run`, one per line
#
# The engine: $CONTAINER_ENGINE when set, else docker when its daemon answers (a client without
# a daemon, common in CI and sandboxes, does not count), else podman when installed.
# The flags: $CONTAINER_BUILD_FLAGS / $CONTAINER_RUN_FLAGS when set (space-separated), else
# for podman:
# - --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 (build and run): podman asks for the
#   host's maximum open files by default, which sandboxes and some CI runners refuse
#   ("error setting rlimit type 7: operation not permitted");
# - --format docker (build): OCI images drop HEALTHCHECK, which compose relies on;
# - the host's CA bundle over the build's /etc/ssl/certs/ca-certificates.crt (build, only
#   while RUN steps run; nothing of it stays in a layer), so pip trusts what the host trusts
#   (a proxy's CA included). Docker has no build volumes: it uses the image's own bundle.
set -eu

HOST_CA=/etc/ssl/certs/ca-certificates.crt
PODMAN_LIMITS="--ulimit nofile=4096:4096 --ulimit nproc=4096:4096"

engine() {
    if [ -n "${CONTAINER_ENGINE:-}" ]; then
        command -v "$CONTAINER_ENGINE" >/dev/null 2>&1 || { echo "container-engine: CONTAINER_ENGINE=$CONTAINER_ENGINE is not installed" >&2; return 1; }
        echo "$CONTAINER_ENGINE"
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    else
        echo "container-engine: neither a running docker daemon nor podman found; install one (Debian: apt-get install podman) or set CONTAINER_ENGINE" >&2
        return 1
    fi
}

one_per_line() {
    for flag in $1; do echo "$flag"; done
}

ENGINE=$(engine)
case "${1:-name}" in
    name)
        echo "$ENGINE" ;;
    build-flags)
        if [ -n "${CONTAINER_BUILD_FLAGS+set}" ]; then
            one_per_line "$CONTAINER_BUILD_FLAGS"
        elif [ "$(basename "$ENGINE")" = podman ]; then
            one_per_line "--format docker $PODMAN_LIMITS"
            if [ -f "$HOST_CA" ]; then echo "--volume=$HOST_CA:$HOST_CA:ro"; fi
        fi ;;
    run-flags)
        if [ -n "${CONTAINER_RUN_FLAGS+set}" ]; then
            one_per_line "$CONTAINER_RUN_FLAGS"
        elif [ "$(basename "$ENGINE")" = podman ]; then
            one_per_line "$PODMAN_LIMITS"
        fi ;;
    *)
        echo "usage: $0 [name|build-flags|run-flags]" >&2
        exit 2 ;;
esac
