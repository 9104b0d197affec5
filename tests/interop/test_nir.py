"""NIR export (type check, nir.read) and our own import (the same spikes, bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ann2snn
from ann2snn.interop.spikes import spike_trains

nir = pytest.importorskip("nir")

T = 32  # as in conftest.py

EXPORTABLE = ["mnist_cnn", "fmnist_avgpool_cnn", "fmnist_resnet"]


@pytest.mark.parametrize("name", EXPORTABLE)
def test_export_type_checks_reads_back_and_describes_the_semantics(name, exported, converted):
    graph = nir.read(str(exported(name)))  # type_check=True
    assert graph.check_types()
    assert graph.metadata["reset_mode"] == "subtract"
    assert graph.metadata["spike_condition"] == ">="
    assert int(graph.metadata["timesteps"]) == T
    ifs = {k: n for k, n in graph.nodes.items() if isinstance(n, nir.IF)}
    assert len(ifs) == len(converted(name).neurons())
    for node in graph.nodes.values():
        assert node.input_type is not None and all(v is not None for v in node.input_type.values())
    for node in ifs.values():
        shape = node.input_type["input"]
        assert node.v_threshold.shape == tuple(shape) == node.r.shape == node.v_reset.shape
        md = node.metadata
        assert md["reset_mode"] == "subtract" and md["spike_condition"] == ">="
        assert int(md["max_spikes_per_step"]) == 1 and float(md["dt"]) == 1.0
        assert md["v_init"].shape == tuple(shape)
    assert not any(isinstance(n, nir.AvgPool2d) for n in graph.nodes.values())
    # the readout: the last Affine feeds the output
    (src,) = [a for a, b in graph.edges if b == "output"]
    assert isinstance(graph.nodes[src], nir.Affine)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_our_import_reproduces_every_spike(name, exported, converted, images):
    snn = converted(name)
    back = ann2snn.from_nir(exported(name))
    ours, theirs = spike_trains(snn, images, T), spike_trains(back, images, T)
    assert len(ours) == len(theirs)
    for (a_name, a), (b_name, b) in zip(ours.items(), theirs.items()):
        if a_name == "output":
            continue
        assert a.shape == b.shape
        assert torch.equal(a, b), f"{name} {a_name} / {b_name}: {(a != b).sum()} spikes differ"
    # the readout: bit for bit where the folded pooling factor is a power of two (2x2);
    # the ResNet's 7x7 global pool folds 1/49 into the last weights (one rounding)
    if name == "fmnist_resnet":
        torch.testing.assert_close(theirs["output"], ours["output"], rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(theirs["output"], ours["output"])
    assert back.meta["input_shape"] == snn.meta["input_shape"]


def test_to_nir_method_and_an_in_memory_graph(converted):
    graph = converted("mnist_cnn").to_nir(timesteps=8)
    assert int(graph.metadata["timesteps"]) == 8
    back = ann2snn.from_nir(graph)
    assert len(back.neurons()) == 3


def test_max_pooling_is_refused_with_one_error_listing_every_node(converted):
    from ann2snn.interop import NIRExportError

    with pytest.raises(NIRExportError) as info:
        converted("fmnist_maxpool_cnn").to_nir()
    text = str(info.value)
    assert "2 node(s)" in text
    assert "static_prefix.3: max pooling (MaxPool2d)" in text
    assert "time_loop.7: max pooling (SpikingMaxPool)" in text


def test_a_foreign_graph_runs_with_our_semantics_and_other_neurons_are_refused():
    from ann2snn.interop import NIRImportError

    w = np.array([[1.0, -1.0], [0.5, 0.5]], dtype=np.float32)
    graph = nir.NIRGraph.from_list(
        nir.Input(input_type={"input": np.array([2])}),
        nir.Affine(weight=w, bias=np.zeros(2, dtype=np.float32)),
        nir.IF(r=np.ones(2, np.float32), v_threshold=np.ones(2, np.float32)),
        nir.Output(output_type={"output": np.array([2])}),
    )
    with pytest.warns(UserWarning, match="ann2snn's IF semantics"):
        snn = ann2snn.from_nir(graph)
    rates = snn(torch.tensor([[0.5, 0.25]]), timesteps=8)
    # currents 0.25 and 0.375 from v = 0: 2 and 3 spikes in 8 steps
    assert rates.tolist() == [[0.25, 0.375]]
    graph.nodes["if"] = nir.LIF(
        tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)
    )
    with pytest.raises(NIRImportError, match="LIF"):
        ann2snn.from_nir(graph)
