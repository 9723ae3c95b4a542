"""Where torch.compile breaks each training-step network's graph, and why (dynamo's explain).

    python -m bench.graph_breaks                                 # every implementation, this device
    python -m bench.graph_breaks --impls spikingjelly --json F   # SpikingJelly's breaks on a GPU

A graph break splits the compiled step into pieces with eager Python between them, and a frame
that breaks is recompiled for each new variant of its inputs until dynamo's recompile limit, after
which it runs eagerly: SpikingJelly's ResNet-19 step once did both on an H200 (46 ms against ours 14.7),
a number that says more about the break than about its kernels. The networks are
``bench.train_step``'s (ResNet-19, one forward under the step's autocast), so what this finds is
what that benchmark compiles. SpikingJelly's Triton path runs only on CUDA: on the CPU it takes
another path, and its breaks there say nothing about the GPU's.
"""

from __future__ import annotations

import argparse
import os

import torch

from bench.common import DTYPES, environment, print_table, reset_spikingjelly, write_json
from bench.train_step import IMPLEMENTATIONS, build


def explain(impl: str, T: int, B: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Graphs, breaks and each break's reason with the last frames of its user stack."""
    row = {"impl": impl, "T": T, "B": B}
    net = build(impl, T, device, dtype)
    if isinstance(net, str):
        row["note"] = net
        return row
    net = net.to(device)
    images = torch.randn(B, 3, 32, 32, device=device)
    if impl == "spikingjelly":  # as train_step's step does: outside what it compiles
        reset_spikingjelly(net)
    torch._dynamo.reset()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        result = torch._dynamo.explain(net)(images)
    row.update(graphs=result.graph_count, breaks=result.graph_break_count, reasons=[
        {"reason": " ".join(str(b.reason).split())[:300],
         "where": [f"{frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno} {frame.name}"
                   for frame in b.user_stack[-3:]]}
        for b in result.break_reasons])
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impls", nargs="+", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("-T", type=int, default=4)
    parser.add_argument("-B", type=int, default=8)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    os.environ.setdefault("SJ_PLIF_CUDA_IMPLEMENTATION", "triton")
    rows = [explain(impl, args.T, args.B, DTYPES[args.dtype], device) for impl in args.impls]
    print_table(rows, ["impl", "T", "B", "graphs", "breaks", "note"])
    for row in rows:
        for reason in row.get("reasons", []):
            print(f"{row['impl']}: {reason['reason']}\n    " + "\n    ".join(reason["where"]))
    payload = {"benchmark": "graph_breaks", "environment": environment(device), "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
