"""Compile a kernel for a GPU target without a GPU, with Triton's real compiler and ptxas.

The CPU interpreter accepts code the compiler rejects; this lowers a kernel variant all the way to a
cubin for an H100 (sm_90) and reads its register, spill and shared-memory use from the cubin;
``offline_driver`` lets torch lower kernels to Triton IR without a GPU (to trace a compiled graph),
and with ``recorded_launches`` it lets launches go through Triton's Python up to its launcher.
Nothing here launches anything. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

HOPPER = GPUTarget("cuda", 90, 32)


def compile_variant(kernel, pointers: dict[str, str], constexprs: dict, num_warps: int = 4,
                    target: GPUTarget = HOPPER):
    """Compile ``kernel`` for ``target``: pointer args typed by ``pointers`` (e.g. ``"bf16"``),
    ``constexprs`` fixed, scalars as annotated (our float scalars are ``tl.float64``), else i32.
    Returns Triton's CompiledKernel."""
    signature = {}
    for param in kernel.params:
        name = param.name
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
        else:
            signature[name] = param.annotation if param.annotation in ("fp32", "fp64") else "i32"
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=target, options={"num_warps": num_warps})


def resource_usage(compiled) -> dict[str, int]:
    """Registers, local memory (spills) and shared memory per thread block, from the cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                              text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|LOCAL|SHARED|STACK):(\d+)", text))
    return {"registers": int(usage["REG"]), "spill_bytes": int(usage["LOCAL"]),
            "shared_bytes": int(usage["SHARED"]), "stack_bytes": int(usage["STACK"])}


def compile_call(kernel, args: tuple, kwargs: dict, target: GPUTarget = HOPPER):
    """Compile exactly the variant that ``kernel[grid](*args, **kwargs)`` would compile on a
    ``target`` GPU: the same specialization of every argument (pointer alignment, integers equal
    to 1 or divisible by 16), the same constexprs and options. Tensors may live on the CPU; only
    their dtype and alignment matter. Uses Triton's own binder (a private API, stable from
    Triton 3.3 to 3.9)."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args,
                                                             specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


class _OfflineDriver:
    """Stands in for Triton's CUDA driver on a machine without one: torch asks the active driver
    for its target when it lowers a kernel to Triton IR to find which arguments the kernel writes."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


@contextlib.contextmanager
def offline_driver(target: GPUTarget = HOPPER):
    """Make ``target`` Triton's active device while inside, on a machine with no GPU driver."""
    config = triton.runtime.driver
    saved = config._active  # reset_active() would try to create the missing CUDA driver
    config.set_active(_OfflineDriver(target))
    try:
        yield
    finally:
        config._active = saved


@contextlib.contextmanager
def recorded_launches():
    """While inside, a compiled kernel's launcher appends ``(compiled kernel, launcher
    arguments)`` to the yielded list instead of loading the cubin and launching: with
    ``offline_driver``, ``kernel[grid](...)`` then runs all of Triton's Python of a launch.
    Kernels first launched inside keep recording after it (for processes without a GPU)."""
    from triton.compiler.compiler import CompiledKernel

    calls = []
    saved = CompiledKernel._init_handles

    def init_handles(self):
        if self._run is None:
            self.function = id(self)
            self._run = lambda *launch: calls.append((self, launch))

    CompiledKernel._init_handles = init_handles
    try:
        yield calls
    finally:
        CompiledKernel._init_handles = saved
