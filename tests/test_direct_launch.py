"""Eager launches skip Triton's per-launch specialization (``kernels.tdbn_plif._DirectLauncher``)
and still hand its launcher exactly what Triton's own ``kernel[grid](...)`` would."""

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_direct_launches_equal_tritons_own():
    """Kernels compiled for sm_90, launchers recorded (tests/direct_launch.py): every launch from
    the cache matches Triton's for the same arguments (variant, grid, stream, every argument),
    across sizes, alignment, dtypes, layouts and options; repeated layers come from the cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MPDAGL_DIRECT_LAUNCH")}
    done = subprocess.run([sys.executable, str(TESTS / "direct_launch.py")], env=env, cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["mismatches"] == []
    # each of the 13 cases runs twice: its second run launches only from the cache
    assert result["direct"] >= 13 * 4 and result["compiled"] >= 13
    # every direct launch was launched a second time through Triton, for the comparison
    assert result["launches"] == result["compiled"] + 2 * result["direct"]


def test_interpreted_and_stand_in_kernels_launch_as_they_are():
    from mpdagl_triton.kernels import tdbn_plif as K

    assert K._direct(K._forward_kernel) is K._forward_kernel  # the interpreter's kernels here
    stand_in = object()
    assert K._direct(stand_in) is stand_in
