#!/bin/sh
# Build the images' base locally: Debian (minbase) + Python 3 + venv, from Debian's package
# archive alone, for machines that reach no container registry.
#
#   sudo scripts/build-base-image.sh [IMAGE]        # default localhost/synthaug-base:bookworm
#   make images                                     # builds it first when it is missing
#
# The Dockerfiles default to python:3.11-slim-bookworm from Docker Hub; this image stands in
# for it (`--build-arg BASE_IMAGE=localhost/synthaug-base:bookworm`). Both are Debian bookworm
# with Python 3.11 and `python` on PATH, so the images behave the same on either.
#
# Needs root (debootstrap), debootstrap and a container engine (docker or podman; see
# scripts/container-engine.sh): `apt-get install -y debootstrap podman` on Debian/Ubuntu.
# Settings (environment): DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
# CONTAINER_ENGINE. The archive moves on, so two builds a month apart differ in patch
# versions; pin DEBIAN_MIRROR to a snapshot.debian.org URL for a reproducible base.
set -eu

IMAGE=${1:-${SYNTHAUG_BASE_IMAGE:-localhost/synthaug-base:bookworm}}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
#: python-is-python3: `python` on PATH, as in the python:*-slim images the Dockerfiles name.
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates

here=$(cd "$(dirname "$0")" && pwd)
ENGINE=$("$here/container-engine.sh" name)

if [ "$(id -u)" -ne 0 ]; then
    echo "build-base-image: debootstrap needs root; run with sudo" >&2
    exit 1
fi
command -v debootstrap >/dev/null 2>&1 || { echo "build-base-image: debootstrap is not installed (apt-get install -y debootstrap)" >&2; exit 1; }

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/synthaug-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT INT TERM

echo "build-base-image: debootstrap $SUITE from $MIRROR into $rootfs" >&2
debootstrap --variant=minbase --components=main --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >&2

# Lean: no package lists or caches, no documentation but the copyright files, no locales.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
       "$rootfs"/tmp/* "$rootfs"/root/.cache
find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
find "$rootfs"/usr/share/doc -type d -empty -delete
# What the host left in the rootfs during the build; the engine provides its own at run time.
: > "$rootfs"/etc/resolv.conf
rm -f "$rootfs"/etc/hostname

tar --numeric-owner -C "$rootfs" -c . | "$ENGINE" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >&2
# shellcheck disable=SC2046  # one flag per word
echo "build-base-image: $IMAGE ($("$ENGINE" run --rm $("$here/container-engine.sh" run-flags) "$IMAGE" python --version 2>&1))" >&2
