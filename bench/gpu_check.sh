#!/usr/bin/env bash
# One prepared GPU session: CUDA correctness of the kernels, then the benchmarks, stage by stage,
# each under its own time limit so that one slow stage cannot eat the lease.
# Run on the device machine from the repo root (the device tool's README explains .whl):
#   bash bench/gpu_check.sh                      every stage
#   bash bench/gpu_check.sh tests tune step      some stages
# Stages: tests dispatch tune step-ro step breaks step-others data layer probe (the default list, most important
# first: a call cut off by the device limit still brings back what finished; dispatch, ~15 s, is
# the eager launches' host time through Triton's kernel[grid] and the direct launcher; breaks, ~50 s,
# where dynamo breaks each step network's graph and why: SpikingJelly's did in runs 6-7); only when named:
# step-routes (ours in default compile mode through the opaque custom ops, --opaque-route, next to `step`),
# step-launchers (ours in default mode on Triton's launcher, --triton-launcher, next to `step`),
# layer-stem (the first layer: one input timestep at every step, `timesteps=T`), step-nchw (T2 B128
# NCHW with and without inductor's layout optimization),
# train (`mpdagl train` end to end on fake CIFAR-shaped data under CUDA graphs, bf16; train-fp32 the same
# in fp32, one epoch) and suite
# (`python -m bench.all` in one go, to time the whole suite: issue 7 asks for under 8 minutes).
# JSON per stage and one log, all.log, go to $OUT (or bench/results): the device tool brings back
# at most 8 files. The stage limits add up to more than one device call's 600 s: name stages.
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
stages=${*:-tests dispatch tune step-ro step breaks step-others data layer probe}
LOG=$OUT/all.log
run() {  # run NAME SECONDS CMD...: append its output to all.log, stop it after SECONDS
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout -k 5 "$limit" "$@" >"$OUT/stage.log" 2>&1
  local rc=$?
  cat "$OUT/stage.log" >>"$LOG"
  tail -n 25 "$OUT/stage.log"
  rm -f "$OUT/stage.log"
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
}
fake_cifar() {  # CIFAR-shaped training data for the train stages, in the Hub's layout
  python3 -c "from pathlib import Path; from tests.fake_data import fake_cifar; \
fake_cifar(Path('/tmp/fake-cifar'), n_train=25000, n_test=1000)"
}
# no install needed: a checkout maps kernels/ and models/ into mpdagl_triton by itself
python3 -c "import mpdagl_triton.kernels.tdbn_plif, mpdagl_triton.models" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$LOG"
for stage in $stages; do
  case $stage in
    tests) run tests 160 python3 -m pytest -o addopts=-q --maxfail=5 -p no:cacheprovider -n 8 tests/test_op.py tests/test_direct_launch.py \
             tests/test_compile.py tests/test_layers.py tests/test_models.py tests/test_validation.py \
             tests/test_train.py::test_an_fp16_step_on_cuda_does_not_wait_for_the_gpu ;;
    tune) run tune 180 python3 -m bench.tune --json "$OUT/tune.json" ;;
    step) run step 180 python3 -m bench.train_step --jobs 6 --impls ann mpdagl --profile 3 --json "$OUT/train_step.json"
          # if ours failed (inductor's static launcher with our kernels?), measure it on Triton's launcher
          python3 -c "import json,sys; rows=json.load(open('$OUT/train_step.json'))['rows']; \
            sys.exit(any(r['impl']=='mpdagl' and 'ms' not in r for r in rows))" ||
            run step_triton_launcher 150 python3 -m bench.train_step --jobs 4 --triton-launcher --impls mpdagl \
              --json "$OUT/train_step_triton_launcher.json" ;;
    step-launchers) run step_triton_launcher 150 python3 -m bench.train_step --jobs 4 --triton-launcher \
                      --impls mpdagl --settings t4b64 --json "$OUT/train_step_triton_launcher.json" ;;
    step-ro) run step_ro 150 python3 -m bench.train_step --jobs 4 --impls ann mpdagl --compile-mode reduce-overhead \
               --settings t4b64 t2b128cl --profile 3 --json "$OUT/train_step_ro.json"
             # if ours failed on the default compiled route, measure the custom-op route instead
             python3 -c "import json,sys; rows=json.load(open('$OUT/train_step_ro.json'))['rows']; \
               sys.exit(any(r['impl']=='mpdagl' and 'ms' not in r for r in rows))" ||
               run step_ro_custom_ops 150 python3 -m bench.train_step --jobs 4 --opaque-route --impls mpdagl \
                 --compile-mode reduce-overhead --settings t4b64 t2b128cl --json "$OUT/train_step_ro_custom_ops.json" ;;
    step-routes) run step_custom_ops 90 python3 -m bench.train_step --jobs 4 --opaque-route --impls mpdagl \
                   --settings t4b64 --json "$OUT/train_step_custom_ops.json" ;;
    breaks) run breaks 90 python3 -m bench.graph_breaks --json "$OUT/graph_breaks.json" ;;
    dispatch) run dispatch 60 python3 -m bench.dispatch --device cuda --json "$OUT/dispatch.json" ;;
    layer) run layer 80 python3 -m bench.layer --jobs 3 --shapes 4x64x128x32x32 --dtypes fp32 --json "$OUT/layer.json" ;;
    step-nchw) run step_nchw 150 python3 -m bench.train_step --jobs 4 --impls ann mpdagl --settings t2b128 --profile 3 \
                 --json "$OUT/train_step_nchw.json"
               run step_nchw_no_layout_opt 150 python3 -m bench.train_step --jobs 4 --impls ann mpdagl --settings t2b128 \
                 --no-layout-optimization --json "$OUT/train_step_nchw_no_layout_opt.json" ;;
    layer-stem) run layer_stem 80 python3 -m bench.layer --stem --shapes 4x64x128x32x32 --dtypes fp32 bf16 \
                  --impls fused fused-compiled reference-compiled --json "$OUT/layer_stem.json" ;;
    step-others) run step_others 150 python3 -m bench.train_step --jobs 4 --impls spikingjelly reference \
                   --json "$OUT/train_step_others.json" ;;
    data) run data 90 python3 -m bench.data --synthetic 20000 --batch-size 128 --step-ms 10 --augment-chunks 4096 16384 --compare-interleave \
            --json "$OUT/data.json" ;;
    probe) run probe 60 python3 -m bench.probe --arch resnet19 --images 50000 --batch-size 128 -T 2 --size 32 \
             --channels 3 --json "$OUT/probe.json" ;;
    train) fake_cifar &&
           run train 240 python3 -m mpdagl_triton.cli train --dataset cifar10 --data-path /tmp/fake-cifar --epochs 3 \
             --batch-size 128 --compile --compile-mode reduce-overhead --amp bf16 --channels-last --out /tmp/fake-run &&
           cp /tmp/fake-run/metrics.jsonl "$OUT/train_metrics.jsonl" ;;
    # fp32 (the CLI's default): eval logits are the CUDA graph's own outputs (ran in run 7)
    train-fp32) fake_cifar &&
                run train_fp32 150 python3 -m mpdagl_triton.cli train --dataset cifar10 --data-path /tmp/fake-cifar \
                  --epochs 1 --batch-size 128 --compile --compile-mode reduce-overhead --amp off --out /tmp/fake-run-fp32 ;;
    suite) run suite 540 python3 -m bench.all --out "$OUT/suite" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
