#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored), for benchmarks/run_gpu.sh to install.
# Run where pip can reach PyPI, in the repository root:   bash benchmarks/fetch_wheels.sh
# The GPU image has torch, timm, accelerate, transformers, safetensors, huggingface_hub, typer, rich, pluggy,
# pillow, numpy, zipp, regex, requests, filelock, ...; it lacks diffusers and its dependencies
# importlib_metadata and lazy-importer (declared by diffusers 0.42). The diffusers version
# is the one installed here (featinv is tested against it), else DIFFUSERS_VERSION or 0.42.1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=${DIFFUSERS_VERSION:-$("$PY" -c "import diffusers; print(diffusers.__version__)" 2>/dev/null || echo 0.42.1)}
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "diffusers==$VERSION" importlib_metadata lazy-importer
ls -l .whl
