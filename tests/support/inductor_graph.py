"""Trace the ops that compiled CUDA graphs use, the way AOTAutograd hands them to inductor, on a
machine without a GPU; print what the graph launches as JSON (read by tests/test_compile.py).

    python tests/support/inductor_graph.py [--channels-last] [--residual] [--skip] [--broadcast] [--symbolic]

``--symbolic`` traces with symbolic sizes, as torch.compile does once shapes turn dynamic.

    python tests/support/inductor_graph.py --dynamo B [B ...] [--network resnet19]

runs one layer (or a whole channels-last network: meta tensors then stand in for CUDA ones in
the op's route and backend checks) forward and backward under torch.compile, with dynamic shapes,
for each batch size B in turn, through AOTAutograd to a backend that records the graphs, and
prints the launches in each graph.

Tensors live on the meta device and Triton lowers the kernels for sm_90 (``offline_driver``), so
torch can decompose the triton_ops into launches and work out which arguments each launch writes.
Must run without TRITON_INTERPRET: the interpreter's kernels cannot be traced.
"""

import argparse
import json

import torch
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx

from mpdagl_triton import ops
from mpdagl_triton.kernels.offline import offline_driver

ops.register_inductor_ops()  # done at import, except under Triton's interpreter


def trace(channels_last: bool, residual: bool, skip: bool, broadcast: bool, symbolic: bool) -> dict:
    shape = (4, 2, 8, 4, 4)
    x = torch.empty(shape, device="meta")
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    grad = torch.empty_like(x)
    if broadcast:  # a stem's image conv output, the same at every timestep
        x = x[0].expand(shape)
    res, shortcut = (torch.empty_like(x) if wanted else None for wanted in (residual, skip))
    gamma, beta, rho = torch.empty(8, device="meta"), torch.empty(8, device="meta"), torch.empty((), device="meta")

    def fwd_bwd(x, grad, gamma, beta, rho, res, shortcut):
        spikes, mean, var, kappas = ops._fwd_inductor_op(x, gamma, beta, rho, res, shortcut, None,
                                                         None, True, 0.0, 1e-5, 0.5, 1.0, "rect",
                                                         "mpdagl", 1.0, False, x.shape[0])
        return spikes, *ops._bwd_inductor_op(grad, x, gamma, beta, rho, res, mean, var, kappas, 0.0,
                                             1e-5, 0.5, 1.0, "rect", True, False)

    with offline_driver():
        trace_mode = "symbolic" if symbolic else "fake"
        graph = make_fx(dispatch_functionalize(fwd_bwd), tracing_mode=trace_mode)(
            x, grad, gamma, beta, rho, res, shortcut)
    launches, other = [], []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            launches.append({"kernel": kernel.fn.__name__, "writes": sorted(node.kwargs["tensors_to_clone"])})
        else:
            other.append(str(node.target))
    return {"launches": launches, "other_ops": other}


def _launches(graph) -> list[str]:
    return [kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__
            for node in graph.graph.nodes
            if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional]


def dynamo(batches: list[int], network: str | None = None) -> dict:
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    graphs = []

    def record(graph, example_inputs):  # runs as traced: on meta tensors, nothing is launched
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    def backend(graph, example_inputs):
        return aot_module_simplified(graph, example_inputs, fw_compiler=record, bw_compiler=record)

    def layer(x, gamma, beta, rho):
        spikes, *_ = ops._fwd_inductor_op(x, gamma, beta, rho, None, None, None, None, True, 0.0,
                                          1e-5, 0.5, 1.0, "rect", "mpdagl", 1.0, False, x.shape[0])
        return spikes

    if network is None:
        compiled = torch.compile(layer, backend=backend, dynamic=True, fullgraph=True)
    else:  # as on CUDA: a training step's shapes turn dynamic once a second batch size comes
        from mpdagl_triton import models

        ops.resolve_backend = lambda backend, device: "triton"
        ops.route = lambda backend, x, sync, compiling: ops._ROUTES["inductor" if compiling else "eager"]
        net = models.create(network, 10, 2, backend="triton").to("meta", memory_format=torch.channels_last)
        compiled = torch.compile(net, backend=backend, fullgraph=True)
    with offline_driver():
        for batch in batches:
            if network is None:
                x = torch.empty(4, batch, 8, 4, 4, device="meta", requires_grad=True)
                params = [torch.empty(8, device="meta", requires_grad=True) for _ in range(2)]
                compiled(x, *params, torch.empty((), device="meta", requires_grad=True)).sum().backward()
            else:
                images = torch.empty(batch, 3, 32, 32, device="meta").contiguous(memory_format=torch.channels_last)
                compiled(images).sum().backward()
    return {"graphs": [_launches(graph) for graph in graphs]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--residual", action="store_true")
    parser.add_argument("--skip", action="store_true")
    parser.add_argument("--broadcast", action="store_true")
    parser.add_argument("--symbolic", action="store_true")
    parser.add_argument("--dynamo", type=int, nargs="+", metavar="B")
    parser.add_argument("--network")
    args = parser.parse_args()
    if args.dynamo:
        print(json.dumps(dynamo(args.dynamo, args.network)))
    else:
        print(json.dumps(trace(args.channels_last, args.residual, args.skip, args.broadcast, args.symbolic)))
