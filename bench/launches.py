"""What a compiled training step launches on an H100, read from the CUDA code inductor generates,
on a machine without a GPU.

    python -m bench.launches [--impl mpdagl|ann|layer] [-T 4] [-B 64] [--nchw] [--json F]

Traces ResNet-19 (``mpdagl``: our fused neurons launched by inductor; ``ann``: BatchNorm + ReLU)
or one stem-like layer (``layer``: a neuron whose input is the same at every step, then a conv)
forward and backward through torch.compile's AOTAutograd on meta tensors, then has inductor
generate the CUDA wrapper code of both graphs for fake CUDA tensors and an sm_90 target, and
counts its launches per kernel: what default compile mode launches per step (the host's cost when
it is host-bound), and every copy or fill kernel inductor adds around ours. Nothing runs: the
generated module fails to load without CUDA, after it was written. fp32 (autocast does not apply
to meta tensors); the launches are the same under bf16 autocast.

Must run without TRITON_INTERPRET, on a CPU-only torch (it stands in for the CUDA runtime).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import types

import torch

_H100 = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=80 << 30,
    max_threads_per_multi_processor=2048, warp_size=32, regs_per_multiprocessor=65536,
    shared_memory_per_block_optin=232448, shared_memory_per_block=49152,
    shared_memory_per_multiprocessor=233472, L2_cache_size=50 << 20, gcnArchName="", uuid="fake",
    max_threads_per_block=1024, clock_rate=1980000, memory_clock_rate=2619000, memory_bus_width=5120)


def _pretend_cuda() -> None:
    """Enough of torch.cuda for inductor to generate (not load) CUDA code."""
    cuda = torch.cuda
    cuda.get_device_properties = lambda device=None: _H100
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.get_device_capability = lambda device=None: (9, 0)
    cuda._lazy_init = lambda: None
    cuda._exchange_device = lambda device: 0
    cuda._maybe_exchange_device = lambda device: 0  # a lambda each: dynamo keys handlers on them
    cuda.set_device = lambda device: None
    cuda.synchronize = lambda *args: None
    cuda.get_rng_state = lambda *args, **kwargs: torch.zeros(16, dtype=torch.uint8)
    cuda.set_rng_state = lambda *args, **kwargs: None
    # meta tensors have no device, so torch leaves every conv output contiguous: use cuDNN's rule
    def channels_last(t):
        return t.dim() == 4 and torch._prims_common.suggest_memory_format(t) == torch.channels_last

    torch._C._conv_determine_backend_memory_format = lambda i, w, backend: (
        torch.channels_last if channels_last(i) or channels_last(w) else torch.contiguous_format)
    # a reinplacing pass computes a scatter's fake result with a copy_ that needs a CUDA device
    # guard; the result has its input's size and strides, all that code generation reads. The
    # function keeps its identity (the pass compares node targets with it).
    import torch._inductor.fx_passes.reinplace as reinplace

    scatter = reinplace._inplace_generalized_scatter
    reinplace._scatter_as_traced = types.FunctionType(scatter.__code__, scatter.__globals__,
                                                      "_scatter_as_traced", scatter.__defaults__,
                                                      scatter.__closure__)

    def tolerant(inp, src, view_ops):
        try:
            return _scatter_as_traced(inp, src, view_ops)  # noqa: F821 (reinplace's global)
        except RuntimeError:
            return inp

    scatter.__code__ = tolerant.__code__


def _model(impl: str, T: int):
    from mpdagl_triton import models
    from mpdagl_triton.layers import TdBNPLIF

    if impl == "layer":
        class StemLayer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.neuron = TdBNPLIF(128, backend="triton")
                self.conv = torch.nn.Conv2d(128, 128, 3, padding=1)

            def forward(self, x):
                return self.conv(self.neuron(x.unsqueeze(0), timesteps=T).flatten(0, 1))
        return StemLayer(), 128
    net = models.create("resnet19", 10, T, backend="triton")
    net.body.stem.channels_last = True  # what it chooses on CUDA; meta tensors stand in here
    if impl == "ann":
        from bench.train_step import AnnNeuron, swap_neurons

        net = swap_neurons(net, AnnNeuron)
    return net, 3


def generate(impl: str, T: int, B: int, channels_last: bool) -> list[str]:
    """The generated wrapper code of the forward and the backward graph."""
    _pretend_cuda()  # before inductor's modules are imported: some keep torch.cuda's functions
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor import config
    from torch._inductor import graph as inductor_graph
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from mpdagl_triton import ops
    from mpdagl_triton.kernels.offline import offline_driver

    config.compile_threads = 1
    ops.register_inductor_ops()
    ops.resolve_backend = lambda backend, device: "triton"
    ops.route = lambda backend, x, sync, compiling: ops._ROUTES["inductor" if compiling else "eager"]
    graphs = []

    def record(graph, example_inputs):
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    def backend(graph, example_inputs):  # AOTAutograd as inductor calls it
        return aot_module_simplified(graph, example_inputs, fw_compiler=record, bw_compiler=record,
                                     partition_fn=min_cut_rematerialization_partition,
                                     decompositions=select_decomp_table())

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net, channels = _model(impl, T)
    net = net.to("meta", memory_format=fmt)
    with offline_driver():
        images = torch.empty(B, channels, 32, 32, device="meta", requires_grad=impl == "layer")
        compiled = torch.compile(net, backend=backend, fullgraph=True)
        compiled(images.contiguous(memory_format=fmt)).sum().backward()
    cuda = torch.device("cuda", 0)
    codes = []
    with offline_driver():
        fake = FakeTensorMode()
        for index, graph in enumerate(graphs):
            for node in graph.graph.nodes:  # meta -> cuda
                node.args = tuple(cuda if isinstance(a, torch.device) and a.type == "meta" else a
                                  for a in node.args)
                node.kwargs = {k: cuda if isinstance(v, torch.device) and v.type == "meta" else v
                               for k, v in node.kwargs.items()}
            graph.recompile()
            with fake:
                inputs = [torch.empty_strided(n.meta["val"].shape, n.meta["val"].stride(),
                                              dtype=n.meta["val"].dtype, device=cuda)
                          for n in graph.graph.nodes if n.op == "placeholder"]
            FakeTensorProp(graph, fake).propagate_dont_convert_inputs(*inputs)
            written = []
            save = inductor_graph.GraphLowering.codegen

            def codegen(self, *args, **kwargs):
                result = save(self, *args, **kwargs)
                written.append(result[0].value if hasattr(result[0], "value") else str(result[0]))
                return result

            inductor_graph.GraphLowering.codegen = codegen
            try:
                compile_fx_inner(graph, inputs, is_backward=index == 1)
            except Exception:  # loading the module needs CUDA: the code was generated before
                if not written:
                    raise
            finally:
                inductor_graph.GraphLowering.codegen = save
            codes.append(written[-1])
    return codes


def count(code: str) -> dict:
    """Launches of the generated ``call``, per kernel and as totals: ours, inductor's, and extern
    ones (cuDNN convolutions, GEMMs)."""
    from mpdagl_triton.kernels.tdbn_plif import KERNEL_NAMES  # after generate(): see _pretend_cuda

    body = code[code.index("def call(self, args)"):]
    kernels: collections.Counter = collections.Counter()
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        launch = re.match(r"(\w+)\.run\(", line)
        if launch:
            name = launch.group(1)
            ours = next((k for k in KERNEL_NAMES if name.startswith(k)), None)
            kernels[ours or re.sub(r"_\d+$", "", name)] += 1
        elif "extern_kernels." in line:
            kernels["extern " + line.split("extern_kernels.")[1].split("(")[0]] += 1
        elif "torch.ops.aten.convolution_backward.default(" in line:
            kernels["extern convolution_backward"] += 1
    ours = sum(n for k, n in kernels.items() if k in KERNEL_NAMES)
    extern = sum(n for k, n in kernels.items() if k.startswith("extern"))
    return {"ours": ours, "inductor": sum(kernels.values()) - ours - extern, "extern": extern,
            "kernels": dict(kernels.most_common())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["mpdagl", "ann", "layer"], default="mpdagl")
    parser.add_argument("-T", type=int, default=4)
    parser.add_argument("-B", type=int, default=64)
    parser.add_argument("--nchw", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET: the interpreter's kernels cannot be traced")
    if torch.version.cuda is not None:  # seen with torch 2.11+cu130: dynamo and fake tensors start CUDA
        parser.error(f"needs a CPU-only build of torch; this one ({torch.__version__}) is built for "
                     "CUDA and would start the CUDA runtime that this tool stands in for")
    from bench.common import write_json

    codes = generate(args.impl, args.T, args.B, channels_last=not args.nchw)
    graphs = {name: count(code) for name, code in zip(["forward", "backward"], codes)}
    for name, graph in graphs.items():
        print(f"{name}: ours {graph['ours']}, inductor {graph['inductor']}, extern {graph['extern']}")
        for kernel, n in graph["kernels"].items():
            print(f"    {n:4d}  {kernel}")
    payload = {"benchmark": "launches", "impl": args.impl, "T": args.T, "B": args.B,
               "layout": "nchw" if args.nchw else "channels_last", "graphs": graphs}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
