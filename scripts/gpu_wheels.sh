#!/usr/bin/env bash
# Download, here, the Python wheels that the GPU device machine lacks, for `make gpu-check`.
#
#   scripts/gpu_wheels.sh [--with-test-deps]
#
# The device machine has its own Python 3.12 with torch, torchvision, grpcio, opencv, scipy,
# matplotlib, pyyaml, numpy, pillow, rich, urllib3, prometheus-client (see
# /work/.library/device/KINDS.md) and no package index. This puts cp312 manylinux x86_64
# wheels of everything else the project's runtime needs (pyproject.toml dependencies), at the
# versions installed in .venv (the ones the tests ran with), into .gpu-check/wheels/ (git
# ignored; it travels as `carry`). grpcio and protobuf come too: the generated code in
# synthaug/v1 needs grpcio >= 1.85.1 and protobuf >= 7.35. Each wheel is fetched without its
# dependencies (--no-deps): the list below names every one, so nothing the device already
# has (numpy, torch) is replaced. bench/gpu_check.py installs them there with
# `pip install --no-index --no-deps --find-links` into a private folder.
#
# --with-test-deps adds moto and the boto stack (tests only, ~25 MB: with the ISIC data the
# carried folder would exceed the device's 64 MiB transfer limit, so it is off by default).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.gpu-check/wheels

RUNTIME="grpcio grpcio-health-checking grpcio-reflection protobuf pycocotools minio argon2-cffi
argon2-cffi-bindings cffi pycparser pycryptodome pydantic pydantic-core annotated-types typing-inspection
typing-extensions"
TEST_DEPS="moto boto3 botocore s3transfer jmespath xmltodict responses cryptography"

names=$RUNTIME
if [[ "${1:-}" == "--with-test-deps" ]]; then
  names="$RUNTIME $TEST_DEPS"
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--with-test-deps]" >&2
  exit 2
fi

pins=()
for name in $names; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  pins+=("$name==$version")
done

mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_26_x86_64 \
           manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
           manylinux_2_35_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DEST" "${pins[@]}"
# One version of each: drop wheels of these packages left over from older pins.
for wheel in "$DEST"/*.whl; do
  dist=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
  version=$(basename "$wheel" | cut -d- -f2)
  keep=0
  for pin in "${pins[@]}"; do
    pin_dist=$(echo "${pin%%==*}" | tr 'A-Z_.' 'a-z--')
    [[ "$pin_dist" == "$dist" && "${pin##*==}" == "$version" ]] && keep=1
  done
  [[ $keep == 1 ]] || rm -f "$wheel"
done
ls -1 "$DEST"
du -sh "$DEST"
