#!/usr/bin/env bash
# One prepared GPU session: CUDA correctness of the kernels, then the benchmarks, stage by stage,
# each under its own time limit so that one slow stage cannot eat the lease.
# Run on the device machine from the repo root (the device tool's README explains .whl):
#   bash bench/gpu_check.sh                      every stage
#   bash bench/gpu_check.sh tests tune step      some stages
# Stages: tests tune layer step step-others data probe. Logs and JSON go to $OUT (or bench/results).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # pure-Python packages missing on the image
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# compile caches inside the checkout: a later lease can carry them (.cache) and skip recompiling
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
export SJ_PLIF_CUDA_IMPLEMENTATION=triton PYTHONUNBUFFERED=1
stages=${*:-tests tune layer step step-others data probe}
run() {  # run NAME SECONDS CMD...: log to $OUT/NAME.log, stop after SECONDS
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
}
# no install needed: a checkout maps kernels/ and models/ into mpdagl_triton by itself
python3 -c "import mpdagl_triton.kernels.tdbn_plif, mpdagl_triton.models" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
for stage in $stages; do
  case $stage in
    tests) run tests 120 python3 -m pytest -q -x -p no:cacheprovider -n 8 tests/test_op.py tests/test_compile.py \
             tests/test_layers.py tests/test_models.py ;;
    tune) run tune 150 python3 -m bench.tune --json "$OUT/tune.json" ;;
    layer) run layer 120 python3 -m bench.layer --shapes 4x64x128x32x32 --dtypes fp32 --json "$OUT/layer.json" ;;
    step) run step 240 python3 -m bench.train_step --impls ann mpdagl --json "$OUT/train_step.json" ;;
    step-others) run step_others 300 python3 -m bench.train_step --impls spikingjelly reference \
                   --json "$OUT/train_step_others.json" ;;
    data) run data 90 python3 -m bench.data --synthetic 20000 --batch-size 128 --json "$OUT/data.json" ;;
    probe) run probe 90 python3 -m bench.probe --arch resnet19 --images 50000 --batch-size 128 -T 2 --size 32 \
             --channels 3 --json "$OUT/probe.json" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
tar czf "$OUT/cache.tgz" .cache 2>/dev/null && ls -la "$OUT/cache.tgz"
