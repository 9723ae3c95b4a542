"""Test environment: Triton's CPU interpreter when there is no CUDA device, and no network.

TRITON_INTERPRET and the Hugging Face variables must be set before triton / datasets /
huggingface_hub are first imported, which is why this happens here, at the top.
"""

import atexit
import os
import shutil
import sys
import tempfile

# never reach the network; a private cache so tests neither read nor fill the user's
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mpdagl-test-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.pop("HF_TOKEN", None)
# and a private torch.compile cache: a graph cached by an earlier version of our ops would be
# replayed with their old schema (AOTAutograd keys a backward graph on the forward graph only)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mpdagl-test-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

# under pytest-xdist each worker gets its share of the cores: torch's default (every core per
# process) oversubscribes them, and OpenMP's spinning threads then slow some tests ten-fold (the
# README command's test: 5 s alone, 50 s beside another worker)
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
else:
    # cuDNN convolutions default to TF32 (10-bit mantissa): a channels-last and an NCHW model then
    # disagree by ~1e-3 in their weight gradients (seen on an H200). Tests compare in full fp32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
os.environ.pop("MPDAGL_BACKEND", None)  # tests choose backends explicitly
# what ops.compile_options sets before a first compile; here before any test starts inductor's
# compile workers, whatever the order the tests run in
os.environ.setdefault("TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped here without one (bench/gpu_check.sh's
    tests stage runs them on a GPU machine)."""
    import pytest

    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(needs_cuda)
