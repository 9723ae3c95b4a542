"""Architectures built from mpdagl_triton layers (installed as ``mpdagl_triton.models``)."""
