"""QCFS-style ANN fine-tuning: the quantized activation, the training routine, its output."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.training.finetune import QuantClip, finetune
from tests.conftest import loader, pretrained

L = 4


@pytest.mark.parametrize("levels", [1, 4, 7])
def test_quantclip_is_the_rate_of_an_if_neuron_with_constant_input(levels):
    """For a constant input an IF neuron starting half-charged fires floor(x L / lam + 1/2)
    times in L steps (at most L): QuantClip outputs that count times lam / L."""
    lam = 1.7
    x = torch.linspace(-1.0, 2.5, 301)
    neuron = IFNeuron(threshold=lam, v_init=0.5)
    spikes = sum(neuron(x.clone()) for _ in range(levels))
    rate = lam * spikes / levels
    q = QuantClip(levels, lam)(x)
    assert torch.allclose(q, rate, atol=1e-5)


def test_quantclip_trains_its_clip_and_never_exceeds_the_original_clip():
    q = QuantClip(L, 10.0, clip=6.0)
    x = torch.linspace(0, 12, 100, requires_grad=True)
    y = q(x)
    assert float(y.detach().max()) == pytest.approx(6.0)
    q2 = QuantClip(L, 2.0)
    q2(x).sum().backward()
    assert q2.lam.grad is not None and float(q2.lam.grad) > 0  # the saturated part pulls lam up


@pytest.fixture(scope="module")
def tuned(fmnist_train, fmnist_test, single_thread):
    model = pretrained("fmnist_maxpool_cnn")
    before = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(Subset(fmnist_train, range(0, 6400)), 128, shuffle=True, generator=gen)
    calib = loader(fmnist_train, 1000, offset=50000)
    val = loader(fmnist_test, 1000)  # the bundled net was trained on every training image
    gm, history = finetune(
        model,
        train,
        levels=L,
        epochs=1,
        lr=1e-3,
        init_percentile=99.0,
        calib_data=calib,
        eval_loader=val,
        progress=False,
    )
    return model, before, gm, history, calib, val


def test_finetune_raises_the_quantized_accuracy_and_leaves_the_model_alone(tuned):
    model, before, gm, history, _, _ = tuned
    assert history[0].eval_accuracy is not None and history[-1].eval_accuracy is not None
    assert history[-1].eval_accuracy > history[0].eval_accuracy + 1.0
    assert history[-1].step == 50 and history[-1].loss is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    clips = gm.meta["finetune"]["clips"]
    acts = [m for m in gm.modules() if isinstance(m, (nn.ReLU, nn.Hardtanh, QuantClip))]
    assert len(acts) == len(clips) == 3
    assert all(type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val > 0 for m in acts)
    assert not gm.training


def test_finetuned_net_converts_and_its_snn_at_t_levels_matches_the_quantized_ann(tuned):
    _, _, gm, history, calib, val = tuned
    snn = ann2snn.convert(gm, calib_data=calib)
    curve = ann2snn.evaluate(snn, val, [L])
    # the SNN at T = L computes (nearly) the quantized network it was trained as
    assert abs(curve.accuracy[L] - history[-1].eval_accuracy) < 1.5


def test_finetune_refuses_bad_options_and_models_without_activations(fmnist_train):
    data = loader(fmnist_train, 256, batch_size=128)
    model = pretrained("fmnist_maxpool_cnn")
    with pytest.raises(ValueError, match="levels"):
        finetune(model, data, levels=0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        finetune(model, data, epochs=0, progress=False)
    with pytest.raises(ValueError, match="not an iterator"):  # it looped forever
        finetune(model, iter(data), progress=False)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="no ReLU-family activation"):
        finetune(linear, data, progress=False)


def test_a_loader_that_yields_nothing_is_an_error_not_an_endless_loop(fmnist_train):
    class Hollow:
        def __len__(self):
            return 3

        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="yielded no batch"):
        finetune(
            pretrained("fmnist_maxpool_cnn"),
            Hollow(),
            calib_data=loader(fmnist_train, 256),
            progress=False,
        )
