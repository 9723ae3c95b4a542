"""Taking a trained model out of the library: NIR graphs (``to_nir``, ``from_nir``) and
``torch.export`` / AOTInductor packages (``export_program``, ``write_pt2``, ``load_pt2``).

NIR (the Neuromorphic Intermediate Representation) describes a network as nodes in continuous
time; each node here is what the eval-mode model computes, with tdBN folded into the preceding
convolution or linear layer (``TdBNPLIF.fold``) and each neuron an ``nir.LIF`` whose forward-Euler
step of length ``dt`` is our update (docs/deploy.md):

    NIR:  tau * dv/dt = (v_leak - v) + r * I     ->  v_t = (1 - dt/tau) v_{t-1} + (dt r / tau) I_t
    ours: V_t = lambda * V_{t-1} * (1 - S_{t-1}) + y_t,  lambda = sigmoid(rho)

so ``tau = dt / (1 - lambda)``, ``r = tau / dt``, ``v_leak = 0``, ``v_reset = 0`` (the hard reset),
``v_threshold = Vth``. NIR fires on ``v > v_threshold``, we on ``V >= Vth``: they differ only where
V equals the threshold exactly. A node with several incoming edges sums them (a ResNet block's
output is its second neuron's spikes plus its shortcut). Our own reader (``from_nir``) runs the
graph with the library's own forward-only LIF and reproduces the model's inference path bit for
bit; the graph's metadata also carries each neuron's exact lambda (``tau`` only holds it up to
rounding).
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mpdagl_triton import reference
from mpdagl_triton._version import __version__
from mpdagl_triton.checkpoint import atomic_write_bytes
from mpdagl_triton.errors import InvalidInput, Unavailable
from mpdagl_triton.layers import TdBNPLIF
from mpdagl_triton.models import SpikingNetwork
from mpdagl_triton.models.blocks import ConvSpike, Pool, SpikingLinear, Stem
from mpdagl_triton.models.resnet import BasicBlock, SpikingResNet
from mpdagl_triton.models.tiny import TinyCNN
from mpdagl_triton.models.vgg import SpikingVGG

#: NIR's time step for our discrete steps: what SpikingJelly, snnTorch and Norse assume by default
DT = 1e-4
#: graph metadata key holding the exact decays (a JSON object: LIF node -> lambda)
DECAYS_KEY = "mpdagl_decays"
NIR_INSTALL = "pip install 'mpdagl-triton[nir]'"
READOUT = "mean over T of the output node's per-step values (logits [classes]); argmax = class"


def _nir():
    try:
        import nir
    except ImportError as exc:
        raise Unavailable(f"NIR export needs the nir package: {NIR_INSTALL} ({exc})") from exc
    return nir


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise InvalidInput("the model is in training mode; export uses the running statistics: call "
                           "model.eval() first")


# ----------------------------------------------------------------------------------------------
# ours -> NIR
# ----------------------------------------------------------------------------------------------


class _GraphBuilder:
    """Nodes and edges of a NIR graph under construction. A value is a list of node names whose
    outputs are summed where they meet (NIR adds a node's incoming edges)."""

    def __init__(self, nir_module, dtype: np.dtype):
        self.nir, self.dtype = nir_module, dtype
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.decays: dict[str, float] = {}

    def add(self, name: str, node, inputs: list[str]) -> list[str]:
        self.nodes[name] = node
        self.edges += [(source, name) for source in inputs]
        return [name]

    def array(self, t: Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(self.dtype, copy=False)

    def conv(self, name: str, conv: nn.Conv2d, neuron: TdBNPLIF | None, inputs: list[str],
             in_hw: tuple[int, int]) -> list[str]:
        if neuron is None:
            weight = conv.weight
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, dtype=weight.dtype)
        else:
            weight, bias = neuron.fold(conv.weight)
        node = self.nir.Conv2d(input_shape=np.array(in_hw), weight=self.array(weight),
                               stride=np.array(conv.stride), padding=np.array(conv.padding),
                               dilation=np.array(conv.dilation), groups=conv.groups, bias=self.array(bias))
        return self.add(name, node, inputs)

    def linear(self, name: str, linear: nn.Linear, neuron: TdBNPLIF | None, inputs: list[str]) -> list[str]:
        if neuron is not None:
            weight, bias = neuron.fold(linear.weight)
            return self.add(name, self.nir.Affine(weight=self.array(weight), bias=self.array(bias)), inputs)
        if linear.bias is None:
            return self.add(name, self.nir.Linear(weight=self.array(linear.weight)), inputs)
        return self.add(name, self.nir.Affine(weight=self.array(linear.weight), bias=self.array(linear.bias)),
                        inputs)

    def lif(self, name: str, neuron: TdBNPLIF, shape: tuple[int, ...], inputs: list[str]) -> list[str]:
        decay = float(neuron.decay(reference.compute_dtype(neuron.gamma.dtype)))
        if not decay < 1.0:
            raise InvalidInput(f"{name}: tau = {decay} (no leak) has no nir.LIF form (its time constant "
                               "dt / (1 - tau) would be infinite)")
        tau = DT / (1.0 - decay)
        full = lambda value: np.full(shape, value, dtype=np.float64)  # noqa: E731
        self.decays[name] = decay
        node = self.nir.LIF(tau=full(tau), r=full(tau / DT), v_leak=full(0.0),
                            v_threshold=full(neuron.vth), v_reset=full(0.0))
        return self.add(name, node, inputs)

    def pool(self, name: str, kernel: tuple[int, int], inputs: list[str]) -> list[str]:
        node = self.nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(kernel), padding=np.array([0, 0]))
        return self.add(name, node, inputs)


def _shapes(model: SpikingNetwork) -> dict[nn.Module, tuple[int, ...]]:
    """Each block's output shape per sample (``[C, H, W]`` or ``[F]``), from one forward pass."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda m, args, out: shapes.__setitem__(m, tuple(out.shape[2:])))
             for m in model.modules() if isinstance(m, (Stem, ConvSpike, Pool, SpikingLinear))]
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, model.input_size, model.input_size,
                              dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _conv_spike(g: _GraphBuilder, name: str, block: ConvSpike | Stem, inputs: list[str],
                in_hw: tuple[int, int], shapes: dict) -> list[str]:
    conv = g.conv(f"{name}.conv", block.conv, block.neuron, inputs, in_hw)
    return g.lif(f"{name}.neuron", block.neuron, shapes[block], conv)


def to_nir(model: SpikingNetwork, *, dtype: torch.dtype | None = None):
    """The eval-mode ``model`` as a ``nir.NIRGraph``: one NIR step per timestep.

    Args:
        model: a zoo model (``models.create`` or ``load``) in eval mode.
        dtype: the arrays' dtype, float32 or float64 (default: float64 for a float64 model, else
            float32).

    Returns:
        ``nir.NIRGraph`` with nodes ``input`` (``[C, H, W]``: at each step, the normalized image,
        the same at every step, or event frame t), ``<module>.conv`` (``nir.Conv2d``, tdBN folded
        in), ``<module>.neuron`` (``nir.LIF``), pools (``nir.AvgPool2d``), ``flatten``,
        ``classifier`` (``nir.Affine`` / ``nir.Linear``) and ``output`` (``[classes]``, the per-step
        readout: the logits are its mean over T). ``graph.metadata`` holds T, the readout rule,
        the encoding, normalization, classes, dt and the exact decays.

    Raises InvalidInput for a model in training mode or a part NIR cannot hold (named), and
    Unavailable without the nir package (`pip install 'mpdagl-triton[nir]'`).

    Example:
        >>> net = models.create("tiny", 10, 2, in_channels=1, input_size=8).eval()  # doctest: +SKIP
        >>> graph = to_nir(net)                                                    # doctest: +SKIP
        >>> graph.metadata["timesteps"], type(graph.nodes["stem.neuron"]).__name__  # doctest: +SKIP
        (2, 'LIF')
    """
    nir = _nir()
    if not isinstance(model, SpikingNetwork):
        raise InvalidInput(f"to_nir takes a SpikingNetwork (models.create or load), not {type(model).__name__}")
    _check_eval(model)
    if dtype is None:  # the model's, float32 for a half-precision model
        dtype = next(model.parameters()).dtype
        dtype = dtype if dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise InvalidInput(f"NIR arrays are float32 or float64, not {dtype}")
    g = _GraphBuilder(nir, np.float64 if dtype == torch.float64 else np.float32)
    shapes = _shapes(model)
    body = model.body
    size = model.input_size
    value = g.add("input", nir.Input(input_type={"input": np.array([model.in_channels, size, size])}), [])
    value = _conv_spike(g, "stem", body.stem, value, (size, size), shapes)
    if isinstance(body, (TinyCNN, SpikingVGG)):
        for index, layer in enumerate(body.features):
            name = f"features.{index}"
            hw = shapes[body.stem if index == 0 else body.features[index - 1]][1:]
            if isinstance(layer, Pool):
                value = g.pool(name, (layer.pool.kernel_size,) * 2 if isinstance(layer.pool.kernel_size, int)
                               else tuple(layer.pool.kernel_size), value)
            elif isinstance(layer, ConvSpike):
                value = _conv_spike(g, name, layer, value, tuple(hw), shapes)
            else:
                raise InvalidInput(f"{name} ({type(layer).__name__}) has no NIR form here")
        last = shapes[body.features[-1]]
        value = g.add("flatten", nir.Flatten(input_type={"input": np.array(last)}, start_dim=0, end_dim=-1), value)
        value = g.linear("classifier", body.classifier, None, value)
    elif isinstance(body, SpikingResNet):
        previous = body.stem
        for index, block in enumerate(body.stages):
            if not isinstance(block, BasicBlock):
                raise InvalidInput(f"stages.{index} ({type(block).__name__}) has no NIR form here")
            name, hw = f"stages.{index}", tuple(shapes[previous][1:])
            branch1 = _conv_spike(g, f"{name}.branch1", block.branch1, value, hw, shapes)
            branch2 = _conv_spike(g, f"{name}.branch2", block.branch2, branch1,
                                  tuple(shapes[block.branch1][1:]), shapes)
            shortcut = value if block.shortcut is None else _conv_spike(g, f"{name}.shortcut", block.shortcut,
                                                                         value, hw, shapes)
            value = branch2 + shortcut  # the shortcut added to the spikes: both feed what comes next
            previous = block.branch2
        last = shapes[previous]
        value = g.pool("pool", tuple(last[1:]), value)  # the global average pool
        value = g.add("flatten", nir.Flatten(input_type={"input": np.array([last[0], 1, 1])}, start_dim=0,
                                             end_dim=-1), value)
        if body.hidden is not None:
            value = g.linear("hidden.linear", body.hidden.linear, body.hidden.neuron, value)
            value = g.lif("hidden.neuron", body.hidden.neuron, shapes[body.hidden], value)
        value = g.linear("classifier", body.classifier, None, value)
    else:
        raise InvalidInput(f"{model.arch} ({type(body).__name__}) has no NIR export")
    g.add("output", nir.Output(output_type={"output": np.array([model.num_classes])}), value)
    classes = model.label_names or [str(i) for i in range(model.num_classes)]
    metadata = {
        "source": f"mpdagl-triton {__version__}",
        "arch": model.arch,
        "timesteps": model.timesteps,
        "dt": DT,
        "readout": READOUT,
        "encoding": "direct: feed the normalized image [C, H, W] at every one of the T steps "
                    "(event frames [T, C, H, W]: frame t at step t); reset every neuron to 0 first",
        "normalization": json.dumps(model.normalization),
        "classes": json.dumps(classes),
        "threshold": "a neuron fires when V >= v_threshold (NIR says v > v_threshold: the two differ "
                     "only where V equals the threshold exactly)",
        DECAYS_KEY: json.dumps(g.decays),
    }
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=metadata)


def write_nir(model: SpikingNetwork, path: str | os.PathLike) -> Path:
    """Write ``to_nir(model)`` to ``path`` (HDF5, the ``.nir`` format), atomically.

    Example:
        >>> write_nir(load("runs/digits"), "digits.nir")   # doctest: +SKIP
    """
    nir = _nir()
    check_writable(path)
    graph = to_nir(model)
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    return _write_bytes(path, buffer.getvalue())


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or InvalidInput when no file can be written there (checked before any
    work, so that a long export does not end in a refusal).

    Example:
        >>> check_writable("/no/such/folder/model.nir")
        Traceback (most recent call last):
        ...
        mpdagl_triton.errors.InvalidInput: cannot write /no/such/folder/model.nir: its folder /no/such/folder does not exist
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder; name the file to write")
    if not path.parent.is_dir():
        raise InvalidInput(f"cannot write {path}: its folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidInput(f"cannot write {path}: permission denied")
    return path


def _write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = check_writable(path)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


# ----------------------------------------------------------------------------------------------
# NIR -> ours
# ----------------------------------------------------------------------------------------------


def _metadata_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _uniform(array, what: str) -> float:
    values = np.unique(np.asarray(array, dtype=np.float64))
    if values.size != 1:
        raise InvalidInput(f"{what} differs between neurons; from_nir takes one value per LIF node")
    return float(values[0])


class NIRNetwork(nn.Module):
    """A NIR graph of the node types ``to_nir`` writes, run with the library's forward-only LIF:
    ``forward(x) -> logits [B, classes]`` (mean over T of the output node), as
    ``SpikingNetwork.forward``. ``x``: an image ``[B, C, H, W]`` (the input at every step) or
    frames ``[B, T, C, H, W]``. After a forward, ``spikes`` maps each LIF node to its spikes
    ``[T, B, ...]``. Build it with :func:`from_nir`.

    Example:
        >>> net = from_nir(to_nir(SpikingNetwork("tiny", 10, 2, in_channels=1, input_size=8).eval()))
        >>> net(torch.rand(3, 1, 8, 8)).shape, sorted(net.spikes)
        (torch.Size([3, 10]), ['features.1.neuron', 'stem.neuron'])
    """

    def __init__(self, graph, dtype: torch.dtype = torch.float32, dt: float | None = None,
                 timesteps: int | None = None):
        super().__init__()
        nir = _nir()
        metadata = dict(graph.metadata or {})
        self.metadata = {k: _metadata_text(v) for k, v in metadata.items()}
        self.timesteps = int(timesteps or metadata.get("timesteps") or 0)
        if self.timesteps < 1:
            raise InvalidInput("the graph's metadata holds no timesteps; pass timesteps=T")
        dt = float(dt or metadata.get("dt") or DT)
        decays = json.loads(self.metadata.get(DECAYS_KEY, "{}"))
        self.order = _topological(graph)
        self.sources = defaultdict(list)
        for source, target in graph.edges:
            self.sources[target].append(source)
        self.kinds: dict[str, str] = {}
        self.options: dict[str, dict] = {}
        self.params = nn.ParameterDict()
        tensor = lambda a: nn.Parameter(torch.as_tensor(np.asarray(a)).to(dtype), requires_grad=False)  # noqa: E731
        for name in self.order:
            node = graph.nodes[name]
            key = name.replace(".", "/")
            kind = type(node).__name__
            if isinstance(node, (nir.Input, nir.Output)):
                pass
            elif isinstance(node, nir.Conv2d):
                self.params[f"{key}:w"] = tensor(node.weight)
                self.params[f"{key}:b"] = tensor(node.bias)
                self.options[name] = {"stride": _pair(node.stride), "padding": _pair(node.padding),
                                      "dilation": _pair(node.dilation), "groups": int(node.groups)}
            elif isinstance(node, (nir.Affine, nir.Linear)):
                self.params[f"{key}:w"] = tensor(node.weight)
                if isinstance(node, nir.Affine):
                    self.params[f"{key}:b"] = tensor(node.bias)
            elif isinstance(node, nir.AvgPool2d):
                self.options[name] = {"kernel_size": _pair(node.kernel_size), "stride": _pair(node.stride),
                                      "padding": _pair(node.padding)}
            elif isinstance(node, nir.Flatten):
                self.options[name] = {"start_dim": int(node.start_dim), "end_dim": int(node.end_dim)}
            elif isinstance(node, nir.LIF):
                for field in ("v_leak", "v_reset"):
                    if _uniform(getattr(node, field), f"{name}.{field}") != 0.0:
                        raise InvalidInput(f"{name}: {field} != 0 has no form in this library's LIF")
                tau = _uniform(node.tau, f"{name}.tau")
                gain = _uniform(node.r, f"{name}.r") * dt / tau
                decay = decays.get(name, 1.0 - dt / tau)
                self.options[name] = {"decay": float(decay), "vth": _uniform(node.v_threshold, f"{name}.v_threshold"),
                                      "gain": 1.0 if name in decays else gain}
            else:
                raise InvalidInput(f"{name}: NIR node type {kind} is not one from_nir reads (Input, Output, "
                                   "Conv2d, Affine, Linear, AvgPool2d, Flatten, LIF)")
            self.kinds[name] = kind
        self.spikes: dict[str, Tensor] = {}

    def forward(self, x: Tensor, return_timesteps: bool = False) -> Tensor:
        T = self.timesteps
        # values are [T, B, ...] or [1, B, ...] (the same at every step: the direct-encoded image
        # and what stateless nodes make of it, computed once, as the model's stem does)
        values: dict[str, Tensor] = {}
        self.spikes = {}
        for name in self.order:
            kind = self.kinds[name]
            if kind == "Input":
                values[name] = x.unsqueeze(0) if x.dim() == 4 else x.transpose(0, 1)
                continue
            inputs = [values[s] for s in self.sources[name]]
            h = inputs[0]
            for other in inputs[1:]:
                h = h + other
            if kind == "Output":
                values[name] = h
                continue
            key = name.replace(".", "/")
            steps, batch = h.shape[:2]
            flat = h.reshape(steps * batch, *h.shape[2:])
            if kind == "Conv2d":
                o = self.options[name]
                out = F.conv2d(flat, self.params[f"{key}:w"], self.params[f"{key}:b"], o["stride"],
                               o["padding"], o["dilation"], o["groups"])
            elif kind in ("Affine", "Linear"):
                out = F.linear(flat, self.params[f"{key}:w"], self.params[f"{key}:b"] if kind == "Affine" else None)
            elif kind == "AvgPool2d":
                out = F.avg_pool2d(flat, **self.options[name])
            elif kind == "Flatten":
                o = self.options[name]
                out = flat.flatten(o["start_dim"] + 1, o["end_dim"] if o["end_dim"] < 0 else o["end_dim"] + 1)
            else:  # LIF
                o = self.options[name]
                y = h if o["gain"] == 1.0 else h * o["gain"]
                dtype = reference.compute_dtype(y.dtype)
                decay = torch.full((), o["decay"], dtype=torch.float64).to(dtype)
                values[name] = reference.lif_inference(y.to(dtype), decay, o["vth"], steps=T).to(y.dtype)
                self.spikes[name] = values[name]
                continue
            values[name] = out.reshape(steps, batch, *out.shape[1:])
        out = values["output"] if "output" in values else values[self.order[-1]]
        out = out.expand(T, *out.shape[1:])
        return out if return_timesteps else out.mean(0)


def _pair(value) -> tuple[int, int]:
    array = np.atleast_1d(np.asarray(value)).astype(int).tolist()
    return (array[0], array[0]) if len(array) == 1 else tuple(array[:2])


def _topological(graph) -> list[str]:
    from graphlib import CycleError, TopologicalSorter

    predecessors = {name: set() for name in graph.nodes}
    for source, target in graph.edges:
        predecessors[target].add(source)
    try:
        return list(TopologicalSorter(predecessors).static_order())
    except CycleError as exc:
        raise InvalidInput(f"the NIR graph has a cycle ({exc.args[1]}); from_nir reads feed-forward graphs") from exc


def from_nir(graph, *, dtype: torch.dtype = torch.float32, dt: float | None = None,
             timesteps: int | None = None) -> NIRNetwork:
    """A runnable module from a NIR graph (or a ``.nir`` file) of the node types :func:`to_nir`
    writes: ``from_nir(to_nir(model))(x)`` equals the eval-mode ``model(x)`` under
    ``torch.no_grad()``, spikes and logits bit for bit (in the graph's dtype).

    Args:
        graph: ``nir.NIRGraph`` or a path.
        dtype: float32 or float64.
        dt, timesteps: default to the graph's metadata (``dt`` then NIR's usual 1e-4).

    Returns:
        :class:`NIRNetwork`: ``forward(x [B, C, H, W]) -> logits [B, classes]``.

    Example:
        >>> net = from_nir("digits.nir")                 # doctest: +SKIP
        >>> net(images).argmax(1)                        # doctest: +SKIP
    """
    nir = _nir()
    if isinstance(graph, (str, os.PathLike)):
        if not Path(graph).is_file():
            raise InvalidInput(f"{graph}: no such file")
        try:
            graph = nir.read(graph)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(f"{graph} is not a NIR graph: {exc}") from exc
    return NIRNetwork(graph, dtype=dtype, dt=dt, timesteps=timesteps).eval()


# ----------------------------------------------------------------------------------------------
# torch.export and AOTInductor
# ----------------------------------------------------------------------------------------------


def example_input(model: SpikingNetwork, batch: int = 2) -> Tensor:
    """Zeros shaped as the model's input ``[batch, C, H, W]``, on its device and in its dtype.

    Example:
        >>> example_input(SpikingNetwork("tiny", 10, 2, in_channels=1, input_size=8)).shape
        torch.Size([2, 1, 8, 8])
    """
    param = next(model.parameters())
    return torch.zeros(batch, model.in_channels, model.input_size, model.input_size, dtype=param.dtype,
                       device=param.device)


def export_program(model: SpikingNetwork, example: Tensor | None = None,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the eval-mode model under ``torch.no_grad()`` (its inference
    path on the reference backend; the custom ops ``mpdagl::tdbn_plif_fwd`` with the kernels).

    Args:
        model: in eval mode.
        example: an input ``[B, C, H, W]`` (default: zeros of the model's input shape, B = 2).
        dynamic_batch: let the batch size vary (B >= 1).

    Returns:
        ``torch.export.ExportedProgram``; ``.module()(x)`` gives the logits ``[B, classes]``.

    Example:
        >>> program = export_program(load("runs/digits"))          # doctest: +SKIP
        >>> program.module()(images).argmax(1)                     # doctest: +SKIP
    """
    _check_eval(model)
    example = example_input(model) if example is None else example
    shapes = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=shapes)


def write_pt2(model: SpikingNetwork, path: str | os.PathLike, example: Tensor | None = None) -> Path:
    """An AOTInductor package of the eval-mode model at ``path`` (atomically): compiled C++ (and
    CUDA kernels on a GPU) that :func:`load_pt2` runs without this library's Python code.

    Example:
        >>> write_pt2(load("runs/digits"), "digits.pt2")           # doctest: +SKIP
    """
    import tempfile

    path = check_writable(path)
    program = export_program(model, example)
    with tempfile.TemporaryDirectory(prefix="mpdagl-pt2-") as folder:
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(folder) / "model.pt2"))
        return _write_bytes(path, Path(package).read_bytes())


def load_pt2(path: str | os.PathLike, device_index: int = -1):
    """Load an AOTInductor package written by :func:`write_pt2`: ``runner(x) -> logits``.

    Registers the library's custom ops first (``import mpdagl_triton.ops``): a package compiled
    for CUDA calls ``mpdagl::tdbn_plif_fwd``; one compiled on the CPU holds only PyTorch's own
    ops. Equivalent by hand: ``import mpdagl_triton.ops`` then
    ``torch._inductor.aoti_load_package(path)``.

    Example:
        >>> runner = load_pt2("digits.pt2")                        # doctest: +SKIP
        >>> runner(images).argmax(1)                               # doctest: +SKIP
    """
    import mpdagl_triton.ops  # noqa: F401 (registers mpdagl::tdbn_plif_fwd for CUDA packages)

    if not Path(path).is_file():
        raise InvalidInput(f"{path}: no such file")
    return torch._inductor.aoti_load_package(str(path), device_index=device_index)


__all__ = ["DT", "NIRNetwork", "example_input", "export_program", "from_nir", "load_pt2", "to_nir",
           "write_nir", "write_pt2"]
