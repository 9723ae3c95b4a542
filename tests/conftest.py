"""Run the Triton kernels through Triton's CPU interpreter when no CUDA device is present.

TRITON_INTERPRET must be set before triton is first imported, which is why this happens here.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.pop("MPDAGL_BACKEND", None)  # tests choose backends explicitly
