#!/usr/bin/env bash
# Checks and benchmarks for a machine with one CUDA GPU, stage by stage, each under its own time
# limit so that one slow stage cannot hold up the rest. Run from the repository root:
#   bash bench/gpu_check.sh                      the default stages, most important first
#   bash bench/gpu_check.sh tests step           some stages
# Default stages:
#   tests         the kernel tests on CUDA (float64 agreement with the reference, opcheck, compile)
#   dispatch      host time of eager launches: Triton's kernel[grid] against our direct launcher
#   tune          launch-parameter sweep, kernel by kernel
#   step-ro       ResNet-19 step vs the ANN floor under CUDA graphs (reduce-overhead), profiled
#   step          the same in default compile mode, profiled by kernel family
#   breaks        where torch.compile breaks each step network's graph, and why
#   step-others   SpikingJelly's and the compiled reference's steps
#   data          the data pipeline next to stand-in steps
#   layer         one fused layer, fwd and fwd+bwd, against the reference and SpikingJelly
#   probe         the per-epoch probe of the paper's quantities
# Named only: step-routes (ours through the opaque custom ops), step-launchers (ours on Triton's
# launcher), step-nchw (NCHW parameters, with and without inductor's layout optimization),
# layer-stem (the first layer: one input at every timestep), train and train-fp32 (`mpdagl
# train` end to end on fake CIFAR-shaped data under CUDA graphs), suite (`python -m bench.all`).
# JSON per stage and one log, all.log, go to $OUT (default bench/results). Packages the machine
# lacks can be carried as wheels in .whl/ (installed with --no-deps into /tmp/site).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # pure-Python packages the machine lacks
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# this checkout, over whatever torch and Triton the machine has (no network needed)
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 ||
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD  # no setuptools: import the checkout in place
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
  python3 -c "from pathlib import Path; from tests.support.fake_data import fake_cifar; \
fake_cifar(Path('/tmp/fake-cifar'), n_train=25000, n_test=1000)"
}
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
    # fp32 (the CLI's default): eval logits are the CUDA graph's own outputs
    train-fp32) fake_cifar &&
                run train_fp32 150 python3 -m mpdagl_triton.cli train --dataset cifar10 --data-path /tmp/fake-cifar \
                  --epochs 1 --batch-size 128 --compile --compile-mode reduce-overhead --amp off --out /tmp/fake-run-fp32 ;;
    suite) run suite 540 python3 -m bench.all --out "$OUT/suite" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
