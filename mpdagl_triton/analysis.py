"""What the paper measures, for your own runs (docs/method.md#theorems, #energy-estimate).

- :func:`probe` runs a fixed batch through the model once (training-mode statistics, running
  statistics left untouched) and measures, per spiking layer: tau, the surrogate widths, the mean
  tdBN scale and shift (gamma_bar, beta_bar), the firing rate, the gradient-available proportion
  (fraction of neurons with |V_t - Vth| < kappa_t / 2) at t = 1 and t > 1, and the mean and
  variance of the tdBN output and of V at t = 1 and t > 1 next to Theorems 1 and 2; per synaptic
  layer (conv / linear): its iso-ANN MACs and its input rate, for the energy estimate.
- :func:`energy` is the estimate of Table 2; :func:`analyze` writes the figures and a JSON summary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from mpdagl_triton import reference
from mpdagl_triton.checkpoint import read_jsonl
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.layers import TdBNPLIF

E_ADD_PJ, E_MAC_PJ = 0.9, 4.6  # 45 nm energies per operation (paper Section 5.4)


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def _neuron_stats(layer: TdBNPLIF, x: Tensor, residual: Tensor | None) -> tuple[dict, Tensor]:
    """Everything the paper plots about one layer, from its input, by the readable reference;
    and the layer's spikes (training-mode statistics), so the layer need not run twice."""
    y = reference.tdbn(x.float(), layer.gamma.float(), layer.beta.float(),
                       residual=None if residual is None else residual.float(), training=True,
                       eps=layer.eps, vth=layer.vth, alpha=layer.alpha)
    tau = float(layer.tau.detach())
    k_first, k_rest = (float(k) for k in layer.kappas())
    v = torch.zeros_like(y[0])
    s = torch.zeros_like(y[0])
    membranes, spikes = [], []
    for t in range(y.shape[0]):
        v = tau * v * (1 - s) + y[t]
        s = (v >= layer.vth).float()
        membranes.append(v)
        spikes.append(s)
    V = torch.stack(membranes)
    gamma_bar = float(layer.gamma.detach().mean())
    beta_bar = float(layer.beta.detach().mean())
    sigma2 = (layer.alpha * gamma_bar * layer.vth) ** 2
    rest = V[1:]
    stats = {
        "tau": tau, "kappa_first": k_first, "kappa_rest": k_rest,
        "gamma_bar": gamma_bar, "beta_bar": beta_bar,
        "firing_rate": float(torch.stack(spikes).mean()),
        "grad_available_first": float(((V[0] - layer.vth).abs() < k_first / 2).float().mean()),
        "grad_available_rest": float(((rest - layer.vth).abs() < k_rest / 2).float().mean()) if len(rest) else None,
        # Theorem 1: y ~ N(beta_bar, (gamma_bar Vth)^2); Theorem 2: V_1 likewise, V_{t>1} ~
        # N((1 + tau) beta_bar, (1 + tau^2) (gamma_bar Vth)^2)
        "y_mean": float(y.mean()), "y_var": float(y.var(unbiased=False)),
        "v_first_mean": float(V[0].mean()), "v_first_var": float(V[0].var(unbiased=False)),
        "v_rest_mean": float(rest.mean()) if len(rest) else None,
        "v_rest_var": float(rest.var(unbiased=False)) if len(rest) else None,
        "theorem1_mean": beta_bar, "theorem1_var": sigma2,
        "theorem2_rest_mean": (1 + tau) * beta_bar, "theorem2_rest_var": (1 + tau * tau) * sigma2,
    }
    return stats, torch.stack(spikes).to(x.dtype)


def _macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one sample at one timestep, as the iso-ANN layer would do them."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.shape[1] * math.prod(output.shape[2:]) * per_output
    return module.in_features * module.out_features


@torch.no_grad()
def probe(model: nn.Module, images: Tensor) -> dict:
    """Per-layer statistics of one forward pass over ``images`` (see the module docstring), for
    any model whose spiking layers are :class:`~mpdagl_triton.TdBNPLIF` modules.

    Returns ``{"layers": [...], "synapses": [...]}``: one dict per spiking layer (tau, kappas,
    gamma_bar, beta_bar, firing rate, gradient-available proportions, the theorems' moments) and
    per conv / linear layer (MACs, input rate); the model's mode and buffers are unchanged.

    Example:
        >>> from mpdagl_triton import models
        >>> net = models.create("tiny", 10, T=2, in_channels=1, input_size=8)
        >>> stats = probe(net, torch.rand(16, 1, 8, 8))
        >>> [row["layer"] for row in stats["layers"]]
        ['body.stem.neuron', 'body.features.1.neuron']
    """
    neurons = [(n, m) for n, m in model.named_modules() if isinstance(m, TdBNPLIF)]
    synapses = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    measured: dict[str, dict] = {}
    activity: dict[str, dict] = {}

    def measure_and_fire(name, module):  # stands in for the layer's forward during the probe
        def forward(x, residual=None, skip=None, timesteps=None):
            if timesteps is not None:
                x = x.expand(timesteps, *x.shape[1:])
            measured[name], spikes = _neuron_stats(module, x, residual)
            return spikes if skip is None else spikes + skip.to(spikes.dtype)
        return forward

    def count_synapse(name):
        def hook(module, args, output):
            x = args[0]
            activity[name] = {"macs": _macs(module, output), "input_rate": float(x.float().mean()),
                              "input_is_binary": bool(((x == 0) | (x == 1)).all())}
        return hook

    was_training = model.training
    for name, module in neurons:  # one process only, never synchronized; running stats untouched
        module.forward = measure_and_fire(name, module)
    handles = [m.register_forward_hook(count_synapse(n)) for n, m in synapses]
    try:
        model.train()
        model(images)
    finally:
        for h in handles:
            h.remove()
        for _, module in neurons:
            del module.forward
        model.train(was_training)
    layers = [{"layer": name, **measured[name]} for name, _ in neurons]
    synapse_rows = [{"layer": name, **activity[name]} for name, _ in synapses if name in activity]
    for i, row in enumerate(synapse_rows):
        row["role"] = "encoding" if i == 0 else "readout" if i == len(synapse_rows) - 1 else "spiking"
    return {"layers": layers, "synapses": synapse_rows}


# ----------------------------------------------------------------------------------------------
# Energy (Table 2)
# ----------------------------------------------------------------------------------------------


def energy_from_counts(adds: float, mults: float) -> float:
    """Energy in joules of ``adds`` accumulates and ``mults`` multiply-accumulates."""
    return (E_ADD_PJ * adds + E_MAC_PJ * mults) * 1e-12


def ann_energy(macs: float) -> float:
    """Energy in joules of an ANN doing ``macs`` multiply-accumulates."""
    return E_MAC_PJ * macs * 1e-12


def energy(synapses: list[dict], timesteps: int) -> dict:
    """The paper's energy estimate (docs/method.md#energy-estimate): #Add = sum_n r_n T MACs_n
    over spiking layers (r_n their input rate); #Mult = T (MACs of the encoding layer + MACs of
    the readout); E = 0.9 pJ #Add + 4.6 pJ #Mult, against the iso-ANN's 4.6 pJ per MAC."""
    adds = sum(s["input_rate"] * timesteps * s["macs"] for s in synapses if s["role"] == "spiking")
    mults = timesteps * sum(s["macs"] for s in synapses if s["role"] != "spiking")
    ann_macs = sum(s["macs"] for s in synapses)
    snn_j, ann_j = energy_from_counts(adds, mults), ann_energy(ann_macs)
    return {"adds": adds, "mults": mults, "ann_macs": ann_macs, "snn_mj": snn_j * 1e3,
            "ann_mj": ann_j * 1e3, "ratio": snn_j / ann_j}


# ----------------------------------------------------------------------------------------------
# Figures and summary
# ----------------------------------------------------------------------------------------------


def read_run(folder: str | Path) -> tuple[list[dict], dict]:
    """(metrics rows, model config) of a training folder."""
    folder = Path(folder)
    path = folder / "metrics.jsonl"
    if not folder.is_dir():
        raise InvalidInput(f"no folder {folder}")
    if not path.is_file():
        raise InvalidInput(f"{folder} has no metrics.jsonl (is it a training output folder?)")
    rows = read_jsonl(path)
    if not rows:
        raise InvalidInput(f"{path} holds no completed epoch")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return rows, config


def _short(name: str) -> str:
    return name.removeprefix("body.").removesuffix(".neuron") or name


def _series(rows: list[dict], key: str) -> list[list[float | None]]:
    """[layer][epoch] values of a per-layer key."""
    n_layers = len(rows[-1].get("layers", []))
    return [[r["layers"][i].get(key) if i < len(r.get("layers", [])) else None for r in rows]
            for i in range(n_layers)]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict], config: dict) -> dict:
    last = rows[-1]
    layers = last.get("layers", [])
    summary = {
        "epochs": len(rows),
        "final": {k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")},
        "best_test_acc": max(r["test_acc"] for r in rows),
        "layers": layers,
        "per_epoch": [{
            "epoch": r["epoch"],
            "grad_available_first": _mean(layer.get("grad_available_first") for layer in r.get("layers", [])),
            "grad_available_rest": _mean(layer.get("grad_available_rest") for layer in r.get("layers", [])),
            "firing_rate": _mean(layer.get("firing_rate") for layer in r.get("layers", [])),
        } for r in rows],
    }
    if last.get("synapses") and config.get("timesteps"):
        summary["energy"] = energy(last["synapses"], config["timesteps"])
    return summary


def _figure(ncols: int = 1, width: float = 6.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # constrained layout makes room for a legend of any length below the axes
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False, layout="constrained")
    return fig, axes[0]


def _epoch_axis(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: one tick


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_gamma_beta(rows: list[dict], path: Path) -> None:
    """Paper Fig. 2: the channel means of the tdBN scale and shift per layer over epochs."""
    fig, (ax_g, ax_b) = _figure(2)
    epochs = [r["epoch"] for r in rows]
    names = [_short(layer["layer"]) for layer in rows[-1]["layers"]]
    cmap = _colors(len(names))
    for i, name in enumerate(names):
        _over_epochs(ax_g, epochs, _series(rows, "gamma_bar")[i], color=cmap[i], label=name)
        _over_epochs(ax_b, epochs, _series(rows, "beta_bar")[i], color=cmap[i])
    ax_g.set(xlabel="epoch", ylabel=r"$\bar\gamma$ (mean tdBN scale, unitless)", title="tdBN scale per layer")
    ax_b.set(xlabel="epoch", ylabel=r"$\bar\beta$ (mean tdBN shift, membrane units)", title="tdBN shift per layer")
    _epoch_axis(ax_g, ax_b)
    _legend(fig, ax_g, len(names))
    _save(fig, path)


def plot_firing_rate(rows: list[dict], path: Path) -> None:
    """Paper Fig. 4: firing rate per layer at the last epoch."""
    fig, (ax,) = _figure(1, width=max(6.4, 0.35 * len(rows[-1]["layers"])))
    layers = rows[-1]["layers"]
    ax.bar(range(len(layers)), [100 * layer["firing_rate"] for layer in layers], color="tab:blue")
    ax.set_xticks(range(len(layers)), [_short(layer["layer"]) for layer in layers], rotation=60, ha="right",
                  fontsize=7)
    ax.set(xlabel="spiking layer", ylabel="firing rate (% of neurons per timestep)",
           title=f"Firing rate per layer (epoch {rows[-1]['epoch']})")
    _save(fig, path)


def plot_grad_available(rows: list[dict], path: Path) -> None:
    """Paper Fig. 5c/5f: gradient-available proportion per layer (last epoch) and over epochs."""
    fig, (ax_l, ax_e) = _figure(2)
    layers = rows[-1]["layers"]
    idx = torch.arange(len(layers)).tolist()
    first = [100 * layer["grad_available_first"] for layer in layers]
    rest = [100 * layer["grad_available_rest"] if layer["grad_available_rest"] is not None else 0
            for layer in layers]
    ax_l.bar([i - 0.2 for i in idx], first, width=0.4, color="tab:orange", label="t = 1")
    ax_l.bar([i + 0.2 for i in idx], rest, width=0.4, color="tab:green", label="t > 1")
    ax_l.set_xticks(idx, [_short(layer["layer"]) for layer in layers], rotation=60, ha="right", fontsize=7)
    ax_l.set(xlabel="spiking layer", ylabel=r"neurons with $|V-V_{th}|<\kappa/2$ (%)",
             title=f"Gradient-available proportion (epoch {rows[-1]['epoch']})")
    epochs = [r["epoch"] for r in rows]
    mean_first = [_mean(layer["grad_available_first"] for layer in r["layers"]) for r in rows]
    mean_rest = [_mean(layer["grad_available_rest"] for layer in r["layers"]) for r in rows]
    _over_epochs(ax_e, epochs, [100 * v for v in mean_first], color="tab:orange")
    if any(v is not None for v in mean_rest):
        _over_epochs(ax_e, epochs, [100 * v if v is not None else float("nan") for v in mean_rest],
                     color="tab:green")
    ax_e.set(xlabel="epoch", ylabel="mean over layers (%)", title="Gradient-available proportion over training")
    _epoch_axis(ax_e)
    _legend(fig, ax_l, 2)
    _save(fig, path)


def plot_kappa(rows: list[dict], path: Path) -> None:
    """Paper Fig. 5d: surrogate width per layer at t = 1 and t > 1 (last epoch)."""
    fig, (ax,) = _figure(1, width=max(6.4, 0.35 * len(rows[-1]["layers"])))
    layers = rows[-1]["layers"]
    idx = list(range(len(layers)))
    ax.plot(idx, [layer["kappa_first"] for layer in layers], "o-", color="tab:orange",
            label=r"$\kappa$ at t = 1")
    ax.plot(idx, [layer["kappa_rest"] for layer in layers], "s-", color="tab:green",
            label=r"$\kappa$ at t > 1")
    ax.set_xticks(idx, [_short(layer["layer"]) for layer in layers], rotation=60, ha="right", fontsize=7)
    ax.set(xlabel="spiking layer", ylabel=r"surrogate width $\kappa$ (membrane units)",
           title=f"Surrogate width per layer (epoch {rows[-1]['epoch']})")
    _legend(fig, ax, 2)
    _save(fig, path)


def plot_theorems(rows: list[dict], path: Path) -> None:
    """Paper Fig. 6: measured mean / variance of the tdBN output and of V against Theorems 1-2."""
    fig, axes = _figure(2)
    layers = rows[-1]["layers"]
    pairs = [("y_mean", "theorem1_mean", "y (Thm 1)", "o"), ("v_first_mean", "theorem1_mean", "V, t = 1 (Thm 2)", "^"),
             ("v_rest_mean", "theorem2_rest_mean", "V, t > 1 (Thm 2)", "s")]
    for ax, kind in zip(axes, ("mean", "var")):
        lo, hi = float("inf"), float("-inf")
        for measured, predicted, label, marker in pairs:
            m_key, p_key = measured.replace("mean", kind), predicted.replace("mean", kind)
            points = [(layer[p_key], layer[m_key]) for layer in layers if layer.get(m_key) is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            ax.scatter(xs, ys, marker=marker, label=label)
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="measured = predicted")
        unit = "membrane units" if kind == "mean" else "membrane units²"
        ax.set(xlabel=f"predicted {kind} ({unit})", ylabel=f"measured {kind} ({unit})",
               title=f"Theorems 1-2: {kind} per layer (epoch {rows[-1]['epoch']})")
    _legend(fig, axes[0], 4)
    _save(fig, path)


def plot_compare(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """Paper Fig. 5a-c: several runs on train loss, test accuracy, gradient-available proportion."""
    fig, (ax_loss, ax_acc, ax_ga) = _figure(3, width=5.2)
    colors = _colors(len(runs))
    for (label, rows), color in zip(runs, colors):
        epochs = [r["epoch"] for r in rows]
        _over_epochs(ax_loss, epochs, [r["train_loss"] for r in rows], color=color, label=label)
        _over_epochs(ax_acc, epochs, [100 * r["test_acc"] for r in rows], color=color)
        available = [_mean(layer["grad_available_rest"] if layer["grad_available_rest"] is not None
                           else layer["grad_available_first"] for layer in r["layers"]) or 0 for r in rows]
        _over_epochs(ax_ga, epochs, [100 * share for share in available], color=color)
    ax_loss.set(xlabel="epoch", ylabel="train loss (cross entropy, nats)", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_ga.set(xlabel="epoch", ylabel="mean over layers, t > 1 (%)", title="Gradient-available proportion")
    _epoch_axis(ax_loss, ax_acc, ax_ga)
    _legend(fig, ax_loss, len(runs))
    _save(fig, path)


def plot_gradients(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """Mean |gradient| of each conv / linear weight: the first run's layers over epochs, and
    every run's layers at its last epoch (the width rules' gradients side by side)."""
    fig, (ax_epochs, ax_layers) = _figure(2, width=6.0)
    label, rows = runs[0]
    names = [g["layer"] for g in rows[-1]["gradients"]]
    epochs = [r["epoch"] for r in rows]
    for index, (name, color) in enumerate(zip(names, _colors(len(names)))):
        values = [r["gradients"][index]["mean_abs_grad"] for r in rows]
        _over_epochs(ax_epochs, epochs, values, color=color, label=_short(name))
    for (run_label, run_rows), color in zip(runs, _colors(len(runs))):
        last = run_rows[-1]["gradients"]
        ax_layers.plot(range(1, len(last) + 1), [g["mean_abs_grad"] for g in last], marker="o",
                       markersize=3, color=color, label=run_label)
    ax_epochs.set(xlabel="epoch", ylabel="mean |dL/dw|", yscale="log", title=f"Per layer over epochs ({label})")
    ax_layers.set(xlabel="layer (input to output)", ylabel="mean |dL/dw|, last epoch", yscale="log",
                  title="Per layer, last epoch")
    _epoch_axis(ax_epochs)
    ax_epochs.legend(fontsize=6, ncol=2, frameon=False)
    ax_layers.legend(fontsize=7, frameon=False)
    _save(fig, path)


def _over_epochs(ax, epochs: list[int], values: list[float], **style) -> None:
    """A quantity over epochs: a line, with a marker on each point of a short run (a line
    through one epoch draws nothing)."""
    ax.plot(epochs, values, marker="o" if len(epochs) <= 3 else None, markersize=4, **style)


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _legend(fig, ax, n: int) -> None:
    """One legend per figure, outside the data."""
    handles, labels = ax.get_legend_handles_labels()
    for other in fig.axes:
        if other is not ax:
            for handle, text in zip(*other.get_legend_handles_labels()):
                if text not in labels:
                    handles.append(handle)
                    labels.append(text)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(max(n, 1), 6), fontsize=7, frameon=False)


def analyze(folder: str | Path, compare: list[str | Path] = (), out: str | Path | None = None) -> dict:
    """Write the figures and ``summary.json`` for a run into ``out`` (default ``DIR/analysis``)."""
    folder = Path(folder)
    rows, config = read_run(folder)
    if "layers" not in rows[-1] or "grad_available_first" not in rows[-1]["layers"][0]:
        raise InvalidInput(f"{folder}/metrics.jsonl has no per-layer probe statistics")
    out = Path(out) if out else folder / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    files = {"gamma_beta": "gamma_beta.png", "firing_rate": "firing_rate.png",
             "grad_available": "grad_available.png", "kappa": "kappa.png", "theorems": "theorems.png"}
    plot_gamma_beta(rows, out / files["gamma_beta"])
    plot_firing_rate(rows, out / files["firing_rate"])
    plot_grad_available(rows, out / files["grad_available"])
    plot_kappa(rows, out / files["kappa"])
    plot_theorems(rows, out / files["theorems"])
    summary = summarize(rows, config)
    summary["run"] = str(folder)
    runs = [(folder.name, rows)] + [(Path(c).name, read_run(c)[0]) for c in compare]
    recorded = [run for run in runs if run[1][-1].get("gradients")]
    if recorded and recorded[0][0] == folder.name:
        plot_gradients(recorded, out / "grad_norms.png")
        files["grad_norms"] = "grad_norms.png"
    if compare:
        plot_compare(runs, out / "compare.png")
        files["compare"] = "compare.png"
        summary["compare"] = {name: summarize(r, {})["final"] for name, r in runs}
    summary["files"] = files
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
