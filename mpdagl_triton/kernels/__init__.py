"""Triton kernels (installed as ``mpdagl_triton.kernels``). Each module documents what it computes,
its grid, and what it saves for backward per element."""
