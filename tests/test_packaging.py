"""The kernels compile for Hopper with Triton's real compiler, and the wheel has the right layout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "ptx_compile_check.py")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "compiled 35 kernel variants for sm_90" in out.stdout  # 5 layouts x 7 kernel variants
    assert "float arguments reach the kernels as f64" in out.stdout


@pytest.mark.slow


def test_wheel_installs_kernels_and_models_inside_the_package(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    (wheel,) = tmp_path.glob("mpdagl_triton-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mpdagl_triton/kernels/tdbn_plif.py" in names
    assert "mpdagl_triton/models/__init__.py" in names
    assert "mpdagl_triton/ops.py" in names
    assert "mpdagl_triton/assets/digits.npz" in names  # the default run needs no network
    top_level = {n.split("/")[0] for n in names}
    assert not top_level & {"kernels", "models", "tests", "bench"}, top_level


@pytest.mark.slow
def test_the_same_ops_are_registered_with_or_without_a_gpu():
    """Registration does not depend on the hardware: without CUDA (hidden here, if the machine
    has it) and outside the interpreter, importing the ops registers all four; registering again
    is a no-op."""
    code = """
import torch
from mpdagl_triton import ops
assert not torch.cuda.is_available()
names = ("tdbn_plif_fwd", "tdbn_plif_bwd", "tdbn_plif_fwd_inductor", "tdbn_plif_bwd_inductor")
print("at import:", [hasattr(torch.ops.mpdagl, n) for n in names])
ops.register_inductor_ops()
print("again:", [hasattr(torch.ops.mpdagl, n) for n in names])
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "at import: [True, True, True, True]" in out.stdout
    assert "again: [True, True, True, True]" in out.stdout


def test_interpreted_kernels_cannot_get_inductor_ops(monkeypatch):
    from mpdagl_triton import ops

    monkeypatch.setattr(ops, "_fwd_inductor_op", None)  # not yet registered (as on a CPU)
    monkeypatch.setattr(ops, "triton_interpreting", lambda: True)
    with pytest.raises(RuntimeError, match="interpreter"):
        ops.register_inductor_ops()
