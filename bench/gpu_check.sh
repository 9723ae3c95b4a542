#!/usr/bin/env bash
# One prepared GPU session: CUDA correctness of the kernels, then the benchmark suite.
# Run on the device machine from the repo root (the device tool's README explains .whl):
#   bash bench/gpu_check.sh          (writes logs and JSON into $OUT, or bench/results)
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # pure-Python packages missing on the image
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export SJ_PLIF_CUDA_IMPLEMENTATION=triton PYTHONUNBUFFERED=1
# no install needed: a checkout maps kernels/ and models/ into mpdagl_triton by itself
python3 -c "import mpdagl_triton.kernels.tdbn_plif, mpdagl_triton.models" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -x -p no:cacheprovider tests/test_op.py tests/test_compile.py tests/test_models.py \
  2>&1 | tee "$OUT/cuda_tests.log" | tail -5
python3 -m bench.all --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40
