#!/usr/bin/env bash
# The cuda backend's GPU check (docs/cuda.md): run from anywhere on a machine with an
# NVIDIA GPU, cupy, torch, onnx, llvmlite and scipy installed; installs nothing and needs no
# network.  Under 8 minutes on an H100.  Exit status: non-zero if a test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
python - <<'PY' || exit 1
import cupy
n = cupy.cuda.runtime.getDeviceCount()
p = cupy.cuda.runtime.getDeviceProperties(0)
print(f"devices: {n}; device 0: {p['name'].decode()} sm_{p['major']}{p['minor']}; cupy {cupy.__version__}")
PY
status=0
python -m pytest -q -o addopts="" -p no:cacheprovider -m gpu tests/test_cuda_device.py -rs || status=1
python benchmarks/bench_cuda.py || status=1
exit $status
