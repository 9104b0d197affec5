"""Per-layer diagnostics of a converted SNN: structure, firing rates, operations, energy.

Counting rules (stated here so the numbers can be checked):

* **ANN MACs** of a Conv/Linear layer per inference: output elements x inputs per output
  (``in_channels / groups x kernel size`` for a convolution, ``in_features`` for a Linear).
  Only Conv/Linear layers are counted (BatchNorm folds into them; pooling and additions
  are cheap in comparison).
* **Synaptic operations (SynOps)** of an IF layer per inference: its spikes x the fan-out
  of the layers that consume them. The fan-out of a consuming Conv/Linear is its
  connection count divided by its input size (exact for Linear layers, an average over
  positions for convolutions, whose border elements have fewer connections). Pooling,
  reshapes, scaling and additions pass spikes on unchanged: average pooling counts as
  folded into the consuming layer, so a spike reaches every output its pooled value feeds.
  A spike that reaches another IF layer directly (a residual connection) or the output
  counts one operation. The ANN MACs of a row are those of its consuming layers.
* Layers before the first IF neuron see a constant input and run **once per inference**
  (the simulator hoists them out of the time loop), as MACs on real-valued data.
* **Energy** uses the 45 nm figures of M. Horowitz, "Computing's energy problem"
  (ISSCC 2014): 4.6 pJ per 32-bit float multiply-accumulate (3.7 pJ multiply + 0.9 pJ
  add) and 0.9 pJ per 32-bit float accumulate. Memory traffic and membrane updates are
  not counted.

Example:
    >>> report = layer_report(snn, test_loader, timesteps=32, max_batches=4)  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import fx, nn

from ann2snn._checks import device_of, positive_int
from ann2snn.analysis.saturation import RangeTally, RangeWarning, range_report, range_warnings
from ann2snn.calibration import batch_count_bound, batch_input
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.runtime.recorders import SpikeRecorder
from ann2snn.runtime.spiking_model import SpikingModel

__all__ = [
    "ENERGY_PER_AC_PJ",
    "ENERGY_PER_MAC_PJ",
    "LayerReport",
    "LayerRow",
    "ann_macs",
    "layer_report",
    "structure_table",
]

#: Energy of one 32-bit float multiply-accumulate at 45 nm, in picojoules (Horowitz 2014).
ENERGY_PER_MAC_PJ = 4.6
#: Energy of one 32-bit float accumulate (addition) at 45 nm, in picojoules (Horowitz 2014).
ENERGY_PER_AC_PJ = 0.9
ENERGY_NOTE = (
    f"energy at 45 nm (Horowitz, ISSCC 2014): {ENERGY_PER_MAC_PJ} pJ per 32-bit float MAC, "
    f"{ENERGY_PER_AC_PJ} pJ per accumulate; memory access and membrane updates not counted"
)

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _connections_per_row(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of ``module`` for one row (sample or time step) of its output."""
    per_output = out[0].numel() if out.dim() > 1 else out.numel()
    if isinstance(module, nn.Linear):
        return per_output * module.in_features
    kernel = math.prod(module.kernel_size)
    return per_output * (module.in_channels // module.groups) * kernel


class _ShapeRecorder:
    """Forward hooks recording, once, input size and connections of each weighted layer."""

    def __init__(self, root: nn.Module) -> None:
        self.in_numel: Dict[str, int] = {}
        self.connections: Dict[str, int] = {}
        self.out_numel: Dict[str, int] = {}
        self.handles = []
        for name, mod in root.named_modules():
            if not name or list(mod.children()):
                continue
            self.handles.append(mod.register_forward_hook(self._hook(name, mod)))

    def _hook(self, name: str, mod: nn.Module):
        def hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
            if name in self.out_numel or not isinstance(output, torch.Tensor):
                return
            rows = output.shape[0] if output.dim() > 1 else 1
            self.out_numel[name] = output.numel() // max(rows, 1)
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is not None:
                self.in_numel[name] = x[0].numel() if x.dim() > 1 else x.numel()
            if isinstance(mod, _WEIGHTED):
                self.connections[name] = _connections_per_row(mod, output)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def ann_macs(model: nn.Module, example: torch.Tensor) -> Dict[str, int]:
    """Multiply-accumulates per inference of every Conv/Linear layer of an ANN.

    Args:
        model: the ANN.
        example: one input batch (only its shape matters).

    Returns:
        ``{layer name: MACs per sample}``, in execution order.
    """
    rec = _ShapeRecorder(model)
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        rec.remove()
    return dict(rec.connections)


@dataclass
class LayerRow:
    """One IF layer of a report (values per inference, i.e. per input sample over T steps).

    Attributes:
        name: the layer's module name in ``snn.graph_module``.
        neurons: neurons per sample.
        threshold: firing threshold (a scalar, or ``min..max`` of per-channel thresholds).
        scale: the normalization scale (activation value of one spike per step) in ANN units.
        firing_rate: spikes per neuron per time step.
        spikes: spikes per inference.
        fan_out: average synaptic operations caused by one spike.
        synops: synaptic operations per inference (``spikes x fan_out``).
        ann_macs: the ANN's multiply-accumulates over the same connections per inference.
        saturated: share of (input, neuron) pairs that spiked at every step while their
            input exceeded the threshold (saturated; :mod:`ann2snn.analysis.saturation`).
        out_of_range: share of inputs that drove an activation of the layer above the
            largest value of the calibration data (None when the SNN does not know it); see
            :mod:`ann2snn.analysis.saturation`.
    """

    name: str
    neurons: int
    threshold: str
    scale: str
    firing_rate: float = float("nan")
    spikes: float = float("nan")
    fan_out: float = float("nan")
    synops: float = float("nan")
    ann_macs: float = float("nan")
    saturated: float = float("nan")
    out_of_range: Optional[float] = None


@dataclass
class LayerReport:
    """A per-layer report from :func:`layer_report`.

    Attributes:
        rows: one :class:`LayerRow` per IF layer, in graph order.
        timesteps: simulated time steps T.
        samples: number of input samples.
        static_macs: MACs per inference of the layers computed once (before any IF layer).
        ann_macs_total: MACs per inference of the whole ANN.
        synops_total: synaptic operations per inference of the whole SNN.
        ann_energy_uj / snn_energy_uj: energy estimates per inference, in microjoules.
        saturation: saturation and calibration coverage over all layers
            (:meth:`ann2snn.analysis.saturation.RangeTally.summary`).
    """

    rows: List[LayerRow]
    timesteps: int
    samples: int
    static_macs: int
    ann_macs_total: int
    synops_total: float
    ann_energy_uj: float
    snn_energy_uj: float
    constants: Dict[str, float] = field(
        default_factory=lambda: {"mac_pj": ENERGY_PER_MAC_PJ, "ac_pj": ENERGY_PER_AC_PJ}
    )
    saturation: Dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The report as a readable text table with totals."""
        head = (
            f"{'layer':<22} {'neurons':>9} {'threshold':>11} {'scale':>15} {'rate':>7} "
            f"{'spikes/inf':>11} {'fan-out':>8} {'SynOps/inf':>11} {'ANN MACs':>11} "
            f"{'ratio':>6} {'sat %':>6} {'beyond %':>8}"
        )
        lines = [
            f"per-layer activity at T={self.timesteps} over {self.samples} samples "
            "(per inference = per sample over all T steps)",
            head,
            "-" * len(head),
        ]
        for r in self.rows:
            ratio = r.synops / r.ann_macs if r.ann_macs else float("nan")
            beyond = "-" if r.out_of_range is None else f"{100 * r.out_of_range:.1f}"
            lines.append(
                f"{r.name:<22} {r.neurons:>9,} {r.threshold:>11} {r.scale:>15} "
                f"{r.firing_rate:>7.4f} {r.spikes:>11,.0f} {r.fan_out:>8.1f} "
                f"{r.synops:>11,.0f} {r.ann_macs:>11,.0f} {ratio:>6.2f} "
                f"{100 * r.saturated:>6.2f} {beyond:>8}"
            )
        ratio = self.snn_energy_uj / self.ann_energy_uj if self.ann_energy_uj else float("nan")
        lines += [
            "",
            f"layers before the first IF layer (run once per inference): {self.static_macs:,} MACs",
            f"ANN: {self.ann_macs_total:,} MACs per inference -> {self.ann_energy_uj:.3f} uJ",
            f"SNN: {self.synops_total:,.0f} SynOps + {self.static_macs:,} MACs per inference "
            f"-> {self.snn_energy_uj:.3f} uJ ({ratio:.2f}x the ANN)",
            ENERGY_NOTE,
        ]
        lines += range_report(self.saturation)
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> Dict[str, Any]:
        """The report as plain JSON-ready data."""
        return asdict(self)


def _threshold_text(t: torch.Tensor) -> str:
    t = t.detach().float().reshape(-1)
    if t.numel() == 1:
        return f"{t.item():.4g}"
    return f"{t.min().item():.3g}..{t.max().item():.3g}"


def _neuron_rows(snn: SpikingModel) -> List[LayerRow]:
    rows = []
    for name, m in snn.neurons():
        scale = "-" if m.scale is None else _threshold_text(m.scale)
        rows.append(
            LayerRow(name=name, neurons=0, threshold=_threshold_text(m.threshold), scale=scale)
        )
    return rows


def _fan_outs(snn: SpikingModel, rec: _ShapeRecorder) -> Dict[str, Tuple[float, int]]:
    """Per IF layer: (average synaptic operations per spike, MACs of the consuming layers)."""
    loop = snn.graph_module.time_loop
    memo: Dict[fx.Node, Tuple[float, Dict[str, int]]] = {}

    def module(node: fx.Node) -> Optional[nn.Module]:
        return loop.get_submodule(str(node.target)) if node.op == "call_module" else None

    def downstream(node: fx.Node) -> Tuple[float, Dict[str, int]]:
        if node in memo:
            return memo[node]
        total, consumers = 0.0, {}
        for user in node.users:
            mod = module(user)
            if user.op == "output" or isinstance(mod, IFNeuron):
                total += 1.0
            elif isinstance(mod, _WEIGHTED):
                key = f"time_loop.{user.target}"
                total += rec.connections[key] / max(rec.in_numel[key], 1)
                consumers[key] = rec.connections[key]
            else:
                sub_total, sub_consumers = downstream(user)
                total += sub_total
                consumers.update(sub_consumers)
        memo[node] = (total, consumers)
        return memo[node]

    out = {}
    for node in loop.graph.nodes:
        if isinstance(module(node), IFNeuron):
            fan, consumers = downstream(node)
            out[f"time_loop.{node.target}"] = (fan, sum(consumers.values()))
    return out


def structure_table(snn: SpikingModel) -> str:
    """Every layer of the SNN: where it runs, its type, size and (for IF layers) threshold.

    Args:
        snn: a converted model.

    Returns:
        A text table.
    """
    gm = snn.graph_module
    rec = _ShapeRecorder(gm)
    shape = snn.meta.get("input_shape")
    try:
        if shape:
            with torch.no_grad():
                snn(torch.zeros((1,) + tuple(shape), device=device_of(snn)), timesteps=1)
    finally:
        rec.remove()
    lines = [f"{'layer':<24} {'type':<18} {'outputs':>9}  details", "-" * 78]
    for part, title in (("static_prefix", "computed once per input"), ("time_loop", "every step")):
        lines.append(f"[{part}: {title}]")
        sub = gm.get_submodule(part)
        for node in sub.graph.nodes:
            if node.op != "call_module":
                continue
            mod = sub.get_submodule(str(node.target))
            name = f"{part}.{node.target}"
            size = rec.out_numel.get(name)
            if isinstance(mod, IFNeuron):
                scale = "-" if mod.scale is None else _threshold_text(mod.scale)
                detail = f"threshold {_threshold_text(mod.threshold)}, scale {scale}"
            else:
                detail = mod.extra_repr()
            size_text = f"{size:,}" if size is not None else "?"
            lines.append(f"{name:<24} {type(mod).__name__:<18} {size_text:>9}  {detail}")
    n_layers = len(snn.neurons())
    n_neurons = sum(rec.out_numel.get(name, 0) for name, _ in snn.neurons())
    lines.append(f"{n_layers} IF layers, {n_neurons:,} neurons per sample")
    return "\n".join(lines)


@torch.no_grad()
def layer_report(
    snn: SpikingModel,
    loader: Iterable[Any],
    timesteps: int = 32,
    max_batches: Optional[int] = None,
    *,
    progress: bool = False,
) -> LayerReport:
    """Measure firing rates, synaptic operations and energy of each IF layer.

    Args:
        snn: a converted model.
        loader: input batches (tensors, ``(input, label)`` pairs or dicts).
        timesteps: time steps T to simulate per input.
        max_batches: use at most this many batches.
        progress: show a progress bar.

    Returns:
        A :class:`LayerReport`; ``report.table()`` formats it.

    Raises:
        ValueError: ``timesteps`` is not positive, or ``loader`` yields no batch.
    """
    from tqdm.auto import tqdm

    timesteps = positive_int("timesteps", timesteps)
    rec = _ShapeRecorder(snn.graph_module)
    samples = 0
    device = device_of(snn)
    example = None
    total = batch_count_bound(loader, max_batches)
    try:
        tally = RangeTally(timesteps, snn)
        with SpikeRecorder(snn, ranges=True) as spike_rec:
            bar = tqdm(
                loader, total=total, desc=f"layer report T={timesteps}", disable=not progress
            )
            for i, batch in enumerate(bar):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch_input(batch).to(device)
                example = x[:1] if example is None else example
                for _ in snn.simulate(x, timesteps):
                    pass
                tally.add_spikes(spike_rec.saturation_counts(timesteps))
                is_sequence = getattr(snn, "is_sequence", None)
                static = x.mean(0) if is_sequence is not None and is_sequence(x) else x
                tally.add_inputs(static.float())
                spike_rec.clear()
                samples += int(x.shape[0])
            bar.close()
    finally:
        rec.remove()
    if samples == 0:
        raise ValueError("the data for the layer report yielded no batch")
    fan_out = _fan_outs(snn, rec)
    rows = _neuron_rows(snn)
    spikes, steps = spike_rec.spikes, spike_rec.neuron_steps
    saturation = tally.summary()
    for row in rows:
        row.neurons = steps[row.name] // (samples * timesteps)
        row.firing_rate = spikes[row.name] / max(steps[row.name], 1)
        row.spikes = spikes[row.name] / samples
        row.fan_out, row.ann_macs = fan_out[row.name]
        row.synops = row.spikes * row.fan_out
        layer = saturation["layers"].get(row.name, {})
        row.saturated = layer.get("saturated", float("nan"))
        row.out_of_range = layer.get("out_of_range")
    static_macs = sum(v for k, v in rec.connections.items() if k.startswith("static_prefix."))
    ann = snn.ann
    ann_total = sum(ann_macs(ann, example).values()) if ann is not None else 0
    if ann is None:  # the SNN's own weighted layers are the ANN's, after folding
        ann_total = sum(rec.connections.values())
    synops = sum(r.synops for r in rows)
    for message in range_warnings(saturation):
        warnings.warn(message, RangeWarning, stacklevel=3)  # past torch.no_grad's wrapper
    return LayerReport(
        rows=rows,
        timesteps=timesteps,
        samples=samples,
        static_macs=int(static_macs),
        ann_macs_total=int(ann_total),
        synops_total=float(synops),
        ann_energy_uj=ann_total * ENERGY_PER_MAC_PJ * 1e-6,
        snn_energy_uj=(synops * ENERGY_PER_AC_PJ + static_macs * ENERGY_PER_MAC_PJ) * 1e-6,
        saturation=saturation,
    )


def count_neurons(snn: SpikingModel) -> Tuple[int, int]:
    """(IF layers, neurons per sample) of a converted model, measured on one zero input."""
    shape = tuple(snn.meta.get("input_shape") or ())
    with SpikeRecorder(snn) as rec, torch.no_grad():
        snn(torch.zeros((1,) + shape, device=device_of(snn)), timesteps=1)
    return len(rec.neurons), sum(rec.neuron_steps.values())
