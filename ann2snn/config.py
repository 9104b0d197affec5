"""The conversion options: one frozen :class:`ConversionConfig`, the single source of truth.

Every option that shapes a converted network is a field here, with its default, its check,
its help text and its flag on the command line. :func:`ann2snn.convert`, the pipeline,
:func:`ann2snn.analysis.rounding_ceiling.quantized_ann`, SNN files (``meta``) and the
``ann2snn`` command all
read the options from this class, so adding one means a field here and the pass that
reads it.

Example:
    >>> cfg = ConversionConfig(mode="max", v_init=0.25)
    >>> cfg.replace(channelwise=False).channelwise
    False
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ann2snn._checks import finite_float, positive_int
from ann2snn.modes import NormMode, parse_mode

#: Max-pooling conversion methods (``maxpool``), see ``converter_passes/convert_maxpool.py``.
MAXPOOL_METHODS: Dict[str, str] = {
    "auto": "pool before the neuron where its input is static, else 'cumulative'",
    "cumulative": "max pooling of the running input sum, differenced (exact on average)",
    "gate": "pass the spikes of the unit with the largest running spike count",
    "current": "pool the input current before the neuron (ANN unchanged)",
    "spikes": "max pooling of spikes at each step (over-counts; for comparison)",
}
READOUTS: Dict[str, str] = {
    "membrane": "the output layer integrates its input current",
    "spikes": "the output layer spikes and spikes are counted",
}


def check_maxpool_method(method: Any) -> str:
    """Return ``method`` if it names a max-pooling method.

    Raises:
        ValueError: listing the accepted methods.
    """
    if not isinstance(method, str) or method not in MAXPOOL_METHODS:
        choices = "\n".join(f"  {k!r}: {v}" for k, v in MAXPOOL_METHODS.items())
        raise ValueError(f"unknown maxpool method {method!r}; choose one of:\n{choices}")
    return method


def check_horizons(horizons: Any) -> Tuple[int, ...]:
    """Validate calibration horizons: distinct positive integers, returned sorted.

    Raises:
        ValueError: for an empty sequence or an entry that is not a positive integer.
    """
    bad = ValueError(
        "calibration_horizons must be a non-empty sequence of positive integers "
        f"(multiples of target_timesteps, e.g. (1, 2, 4)), got {horizons!r}"
    )
    if isinstance(horizons, (str, bytes)):
        raise bad
    try:
        values = tuple(positive_int("calibration_horizons", m) for m in horizons)
    except (TypeError, ValueError):
        raise bad from None
    if not values:
        raise bad
    return tuple(sorted(set(values)))


def _check_readout(readout: Any) -> str:
    if readout not in READOUTS:
        raise ValueError(
            f"invalid readout {readout!r}; use 'membrane' (the output layer integrates its "
            "input current) or 'spikes' (the output layer spikes and spikes are counted)"
        )
    return readout


def _check_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def _option(default: Any, doc: str, cli: Mapping[str, Any]) -> Any:
    """A config field: ``doc`` for the API docstring, ``cli`` for the ``ann2snn`` flag."""
    return field(default=default, metadata={"doc": doc, "cli": dict(cli)})


@dataclass(frozen=True)
class ConversionConfig:
    """Every option that shapes a converted network, checked when the config is made.

    Fields are documented in :func:`ann2snn.convert` (generated from ``doc`` below).

    Raises:
        ValueError: naming the option, the value and what is accepted.
    """

    mode: Union[str, float] = _option(
        "99.9%",
        "activation normalization: ``'max'``, a percentile ``'P%'`` such as ``'99.9%'``, "
        "or a float ``0 < s <= 1`` meaning ``s * max``.",
        {
            "kind": "value",
            "help": "activation normalization: 'max', a percentile such as '99.9%%' or "
            "'99.99%%', or a number 0 < s <= 1 meaning s * max (default: {default})",
        },
    )
    channelwise: bool = _option(
        True,
        "one normalization scale per channel instead of per layer.",
        {
            "kind": "switch",
            "on": ("--channelwise", "one normalization scale per channel"),
            "off": ("--layerwise", "one normalization scale per layer"),
        },
    )
    v_init: float = _option(
        0.5,
        "initial membrane potential as a fraction of the threshold, from 0 to 1.",
        {
            "kind": "value",
            "metavar": "F",
            "type": float,
            "help": "initial membrane potential as a fraction of the threshold (default: "
            "{default})",
        },
    )
    fold_scales: bool = _option(
        True,
        "fold normalization scales into weights where possible.",
        {
            "kind": "off",
            "flag": "--no-fold",
            "help": "keep normalization scales as neuron thresholds instead of folding them "
            "into the weights",
        },
    )
    maxpool: str = _option(
        "auto",
        "how max pooling of spike trains converts: ``'auto'`` (default), ``'cumulative'``, "
        "``'gate'``, ``'current'`` or ``'spikes'`` (see "
        "``ann2snn.converter_passes.convert_maxpool`` and docs/architectures.md).",
        {"kind": "choice", "choices": MAXPOOL_METHODS},
    )
    target_timesteps: int = _option(
        4,
        "the number of time steps T that ``threshold_search`` and ``potential_calibration`` "
        "tune the network for (the SNN still runs at any T).",
        {
            "kind": "value",
            "metavar": "T",
            "type": "positive_int",
            "help": "the number of time steps potential calibration and threshold search tune "
            "the network for (default: {default}; the SNN still runs at any T)",
        },
    )
    calibration_horizons: Tuple[int, ...] = _option(
        (1, 2),
        "both techniques minimize the error summed over the first ``m * target_timesteps`` "
        "steps for each multiple ``m`` given (default: after T and 2T steps), so a choice "
        "that only pays off at exactly T loses. The calibration simulates ``sweep_samples`` "
        "images for ``target_timesteps * max(calibration_horizons)`` steps, and its memory "
        "grows with both.",
        {
            "kind": "value",
            "metavar": "M,M,...",
            "type": "horizons",
            "help": "multiples of --target-timesteps after which the calibration error is "
            "summed (default: {default}; 1,2 tunes for T and 2T steps at once, 1,2,4 for T, 2T "
            "and 4T, 1 for T alone)",
        },
    )
    potential_calibration: bool = _option(
        True,
        "per channel, choose the initial membrane potential whose firing rates best match "
        "the ANN after ``target_timesteps`` steps, layer after layer on the calibration data "
        "(its effect fades as ``1/T``, so long runs still converge).",
        {
            "kind": "switch",
            "on": (
                "--potential-calibration",
                "per-channel initial membrane potentials fitted on data",
            ),
            "off": ("--no-potential-calibration", "no potential calibration"),
        },
    )
    threshold_search: bool = _option(
        False,
        "per layer (per channel with ``channelwise``), scale the threshold by the factor "
        "whose firing rate best matches the ANN after ``target_timesteps`` steps, layer after "
        "layer on the calibration data.",
        {
            "kind": "switch",
            "on": ("--threshold-search", "per-layer threshold factors searched on data"),
            "off": ("--no-threshold-search", "no threshold search"),
        },
    )
    sweep_samples: int = _option(
        256,
        "calibration images simulated by ``threshold_search`` and ``potential_calibration`` "
        "(the first ones of ``calib_data``).",
        {"kind": "none"},
    )
    readout: str = _option(
        "membrane",
        "``'membrane'``: the output layer integrates its input current (exact, keeps negative "
        "values); ``'spikes'``: the output layer spikes and the spike count is read (for "
        "comparison; see docs/accuracy.md).",
        {
            "kind": "choice",
            "choices": READOUTS,
            "help": "output layer: integrate its input current ('membrane') or spike and count "
            "spikes ('spikes') (default: {default})",
        },
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalized values are set once, here
        parse_mode(self.mode)
        for name in ("channelwise", "fold_scales", "potential_calibration", "threshold_search"):
            set_(self, name, _check_bool(name, getattr(self, name)))
        set_(self, "v_init", finite_float("v_init", self.v_init, 0.0, 1.0))
        check_maxpool_method(self.maxpool)
        set_(self, "target_timesteps", positive_int("target_timesteps", self.target_timesteps))
        set_(self, "calibration_horizons", check_horizons(self.calibration_horizons))
        set_(self, "sweep_samples", positive_int("sweep_samples", self.sweep_samples))
        _check_readout(self.readout)

    # -- what the fields are ------------------------------------------------------------

    @classmethod
    def option_names(cls) -> List[str]:
        """The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def default(cls, name: str) -> Any:
        """The default value of option ``name``."""
        return _FIELDS[name].default

    @classmethod
    def doc(cls, name: str) -> str:
        """The API documentation of option ``name``."""
        return _FIELDS[name].metadata["doc"]

    @classmethod
    def cli(cls, name: str) -> Dict[str, Any]:
        """How option ``name`` appears on the command line (see ``cli/common.py``)."""
        return dict(_FIELDS[name].metadata["cli"])

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], *, caller: str = "convert"
    ) -> ConversionConfig:
        """A config from keyword options, refusing unknown names.

        Raises:
            TypeError: naming the unknown options and listing the known ones.
            ValueError: for a bad value.
        """
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise TypeError(
                f"{caller}() got unknown option(s) {', '.join(unknown)}; the conversion options "
                f"are {', '.join(cls.option_names())}"
            )
        return cls(**options)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ConversionConfig:
        """The config recorded in a SpikingModel's ``meta`` (options it lacks: defaults)."""
        return cls(**{k: meta[k] for k in cls.option_names() if k in meta})

    # -- derived values ----------------------------------------------------------------

    @property
    def norm(self) -> NormMode:
        """The parsed normalization mode."""
        return parse_mode(self.mode)

    @property
    def calibrates_layers(self) -> bool:
        """Whether layer-by-layer calibration runs."""
        return self.threshold_search or self.potential_calibration

    def replace(self, **changes: Any) -> ConversionConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_meta(self) -> Dict[str, Any]:
        """The options as JSON-ready values, as recorded in ``SpikingModel.meta``."""
        meta = dataclasses.asdict(self)
        meta["mode"] = self.norm.text
        meta["calibration_horizons"] = list(self.calibration_horizons)
        return meta


_FIELDS = {f.name: f for f in dataclasses.fields(ConversionConfig)}


def describe_options(meta: Mapping[str, Any]) -> str:
    """One line naming the options of ``meta`` (a SpikingModel's), e.g. for ``ann2snn info``."""
    parts = [
        f"mode {meta.get('mode')}",
        "channel-wise" if meta.get("channelwise") else "layer-wise",
        f"v_init {meta.get('v_init')}",
    ]
    if meta.get("fold_scales") is False:
        parts.append("scales not folded")
    if meta.get("maxpool") not in (None, "auto"):
        parts.append(f"max pooling {meta['maxpool']}")
    tuned = [
        what
        for key, what in (
            ("potential_calibration", "potential calibration"),
            ("threshold_search", "threshold search"),
        )
        if meta.get(key)
    ]
    if tuned:
        target = meta.get("target_timesteps")
        multiples: Optional[Sequence[int]] = meta.get("calibration_horizons") or [1]
        steps = "/".join(str(target * m) for m in multiples) if isinstance(target, int) else target
        parts.append(" + ".join(tuned) + f" for T={steps}")
    if meta.get("readout") == "spikes":
        parts.append("spike-count readout")
    return ", ".join(parts)


def options_docstring(indent: str = "        ") -> str:
    """The ``Args:`` entries of every option, for docstrings of functions taking them."""
    import textwrap

    lines = []
    for name in ConversionConfig.option_names():
        text = f"{name}: {ConversionConfig.doc(name)}"
        lines.extend(
            textwrap.wrap(text, 88, initial_indent=indent, subsequent_indent=indent + "    ")
        )
    return "\n".join(lines)
