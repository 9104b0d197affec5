"""Bootstrap fine-tuning: the fitted activation, ANN/SNN modes and the training routine."""

import copy
import inspect
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import ann2snn
from ann2snn.converter_passes.bootstrap_fit import bootstrap_fit
from ann2snn.runtime.neuron import IFNeuron
from ann2snn.runtime.pooling import SpikingMaxPool
from ann2snn.training.bootstrap import BootstrapModel, PiecewiseLinear, bootstrap, fits_of
from tests.conftest import loader, pretrained

T = 4


def basic_convert(model, data, **kwargs):
    """Convert without the low-T tuning of newer defaults (layer-wise 99.9%, v_init 0.5):
    such an SNN loses accuracy at small T, which is what bootstrap addresses."""
    options = {"channelwise": False, "threshold_search": False, "potential_calibration": False}
    accepted = inspect.signature(ann2snn.convert).parameters
    chosen = {k: v for k, v in options.items() if k in accepted}
    return ann2snn.convert(model, calib_data=data, **chosen, **kwargs)


@pytest.fixture(scope="module")
def converted(fmnist_train):
    return basic_convert(pretrained("fmnist_avgpool_cnn"), loader(fmnist_train, 500))


@pytest.fixture(scope="module")
def fitted(converted, fmnist_train):
    snn = copy.deepcopy(converted)
    bootstrap_fit(snn.graph_module, loader(fmnist_train, 500, offset=500), T)
    return snn


# -- PiecewiseLinear --------------------------------------------------------------------


def test_piecewise_linear_uses_the_threshold_per_channel():
    f = PiecewiseLinear(torch.tensor([0.0, 0.0, 1.0, 1.0]), -1.0, 2.0, threshold=[1.0, 2.0])
    x = torch.tensor([[0.5, 0.5], [3.0, -4.0]]).reshape(2, 2, 1, 1)
    y = f(x).reshape(2, 2)
    assert torch.allclose(y, torch.tensor([[0.5, 0.25], [1.0, 0.0]]))


def test_learnable_knots_stay_monotone_under_training():
    f = PiecewiseLinear(torch.linspace(-1, 2, 7).clamp(0, 1), -1.0, 2.0, learnable=True)
    assert torch.allclose(f.values(), torch.linspace(-1, 2, 7).clamp(0, 1), atol=1e-6)
    opt = torch.optim.SGD(f.parameters(), lr=5.0)
    x = torch.linspace(-1, 2, 50)
    for _ in range(20):
        loss = ((f(x) - (-x)) ** 2).mean()  # pulls toward a decreasing function
        opt.zero_grad()
        loss.backward()
        opt.step()
    v = f.values()
    assert bool((v[1:] >= v[:-1] - 1e-7).all())


def test_piecewise_linear_rejects_decreasing_values():
    with pytest.raises(ValueError, match="non-decreasing"):
        PiecewiseLinear(torch.tensor([0.0, 1.0, 0.5]), -1.0, 2.0)
    with pytest.raises(ValueError, match="lo < hi"):
        PiecewiseLinear(torch.tensor([0.0, 1.0]), 1.0, 1.0)


# -- ANN mode / SNN mode ----------------------------------------------------------------


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().mean() / ref.abs().mean())


def test_ann_mode_matches_the_snn_better_than_the_relu_ann(fitted, fmnist_test):
    x = fmnist_test.tensors[0][:300]
    boot = BootstrapModel(fitted)
    with torch.no_grad():
        snn_out = boot(x, timesteps=T)
        relu_out = fitted.ann(x)
        ann_mode_out = boot.ann_mode()(x)
    boot.snn_mode()
    err_fit = _relative_error(ann_mode_out, snn_out)
    err_relu = _relative_error(relu_out, snn_out)
    assert err_fit < 0.95 * err_relu, (err_fit, err_relu)


def test_hybrid_pass_returns_the_snn_output_with_gradients(fitted, fmnist_test):
    snn = copy.deepcopy(fitted)
    boot = BootstrapModel(snn)
    x = fmnist_test.tensors[0][:50]
    expected = snn(x, timesteps=T)
    out = boot.hybrid(x, T)
    assert boot.mode == "ann"
    assert torch.allclose(out, expected, atol=1e-5)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in boot.layer_parameters())
    boot.snn_mode()


def test_switching_modes_keeps_the_neurons_and_the_trained_weights(fitted, fmnist_train):
    snn = copy.deepcopy(fitted)
    boot = BootstrapModel(snn)
    neurons_before = dict(snn.neurons())
    params_before = dict(snn.graph_module.named_parameters())
    x, y = fmnist_train.tensors[0][:64], fmnist_train.tensors[1][:64]
    snn_before = snn(x, timesteps=T)

    boot.ann_mode()
    assert boot.mode == "ann" and snn.neurons() == []
    assert params_before == dict(snn.graph_module.named_parameters())
    opt = torch.optim.SGD(boot.layer_parameters(), lr=0.5)
    loss = torch.nn.functional.cross_entropy(boot(x), y)
    loss.backward()
    opt.step()
    trained = {k: p.detach().clone() for k, p in snn.graph_module.named_parameters()}

    boot.snn_mode()
    assert boot.mode == "snn"
    after = dict(snn.neurons())
    assert after.keys() == neurons_before.keys()
    assert all(after[k] is neurons_before[k] for k in after)  # the same IF modules
    for name, p in snn.graph_module.named_parameters():
        assert p is params_before[name]  # the same tensors, not copies
        assert torch.equal(p.detach(), trained[name])
    assert any(not torch.equal(trained[k], fitted.graph_module.get_parameter(k)) for k in trained)
    assert not torch.equal(snn(x, timesteps=T), snn_before)  # the SNN runs the new weights


def test_ann_mode_needs_a_fit(converted):
    boot = BootstrapModel(copy.deepcopy(converted))
    with pytest.raises(ValueError, match="fit"):
        boot.ann_mode()
    with pytest.raises(ValueError, match="timesteps"):
        boot(torch.zeros(1, 1, 28, 28))


# -- the routine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maxpool_snn(fmnist_train):
    # the max-pooling model loses ~10 points at T=4 when converted plainly: room to gain
    return basic_convert(pretrained("fmnist_maxpool_cnn"), loader(fmnist_train, 500))


def test_max_pooling_passes_gradients_in_ann_mode(maxpool_snn, fmnist_train, fmnist_test):
    # the fused spike-train pooling op has no backward: ANN mode must pool the rates with
    # a plain (differentiable) max pooling, and put the spiking pooling back afterwards
    snn = copy.deepcopy(maxpool_snn)
    bootstrap_fit(snn.graph_module, loader(fmnist_train, 200, offset=500), T)
    pools = {n: m for n, m in snn.graph_module.named_modules() if isinstance(m, SpikingMaxPool)}
    assert pools
    boot = BootstrapModel(snn)
    x = fmnist_test.tensors[0][:50]
    expected = snn(x, timesteps=T)
    out = boot.hybrid(x, T)
    assert torch.allclose(out, expected, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "autograd kernel was not registered" warning
        out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in boot.layer_parameters())
    boot.snn_mode()
    after = dict(snn.graph_module.named_modules())
    assert all(after[n] is m for n, m in pools.items())
    assert torch.equal(snn(x, timesteps=T), expected)


def test_bootstrap_raises_low_t_accuracy_and_reports_it(maxpool_snn, fmnist_train, fmnist_test):
    converted = maxpool_snn
    torch.manual_seed(0)
    train = DataLoader(Subset(fmnist_train, range(2000, 3280)), batch_size=128, shuffle=True)
    test = loader(fmnist_test, 400, batch_size=200)
    plain = ann2snn.evaluate(converted, test, [T]).accuracy[T]
    before = {k: p.detach().clone() for k, p in converted.graph_module.named_parameters()}
    snn, history = bootstrap(
        converted,
        train,
        timesteps=T,
        epochs=1,
        resample_every=0.5,
        lr=1e-3,
        sample_batches=2,
        eval_loader=test,
        progress=False,
    )
    assert [r.step for r in history] == [0, 5, 10]
    assert history[0].snn_accuracy[T] == pytest.approx(plain)
    assert all(T in r.snn_accuracy for r in history)
    assert history[1].loss is not None and history[1].fit_rmse is not None
    final = ann2snn.evaluate(snn, test, [T]).accuracy[T]
    assert final == pytest.approx(history[-1].snn_accuracy[T])
    assert final >= plain + 3.0, (plain, final)
    # a plain SNN again: IF neurons back, no fitted functions left, input untouched
    assert all(isinstance(m, IFNeuron) for _, m in snn.neurons())
    assert len(snn.neurons()) == len(converted.neurons())
    assert not hasattr(snn.graph_module, "bootstrap_fits")
    assert snn.meta["bootstrap"]["timesteps"] == T
    assert not hasattr(converted.graph_module, "bootstrap_fits")
    for name, p in converted.graph_module.named_parameters():
        assert torch.equal(p, before[name])
    assert any(not torch.equal(p, before[name]) for name, p in snn.graph_module.named_parameters())
    # The calibrated ranges follow the trained weights: the data they were measured on (here
    # the training data) lies inside them, so coverage raises no false alarm.
    seen = DataLoader(Subset(fmnist_train, range(2000, 3280)), batch_size=320)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ann2snn.RangeWarning)
        assert ann2snn.evaluate(snn, seen, [T]).saturation["out_of_range"] == 0.0
    assert any(
        not torch.equal(a.calib_max, b.calib_max)
        for (_, a), (_, b) in zip(snn.neurons(), converted.neurons())
    )


def test_bootstrap_converts_an_ann(fmnist_train):
    model = pretrained("fmnist_avgpool_cnn")
    train = loader(fmnist_train, 256, batch_size=128)
    snn, history = bootstrap(model, train, timesteps=2, epochs=0.5, calib_batches=1, progress=False)
    assert isinstance(snn, ann2snn.SpikingModel) and len(history) == 2
    assert history[-1].snn_accuracy == {}  # nothing measured without eval_loader
    assert torch.equal(
        next(model.parameters()), next(pretrained("fmnist_avgpool_cnn").parameters())
    )


def test_bootstrap_takes_a_generator_as_calibration_data(fmnist_train):
    # A one-shot iterator is sampled at every re-fit: it gives the same SNN as the list.
    model = pretrained("fmnist_avgpool_cnn")
    train = loader(fmnist_train, 256, batch_size=128)
    calib = [x for x, _ in loader(fmnist_train, 256, batch_size=128, offset=1000)]
    runs = []
    for data in (calib, (x for x in calib)):
        torch.manual_seed(0)
        runs.append(bootstrap(model, train, timesteps=2, epochs=0.5, calib_data=data))
    (a, history_a), (b, history_b) = runs
    assert [r.fit_rmse for r in history_a] == [r.fit_rmse for r in history_b]
    assert torch.equal(a(calib[0][:16], timesteps=2), b(calib[0][:16], timesteps=2))


def test_bootstrap_rejects_bad_arguments(converted, fmnist_train):
    train = loader(fmnist_train, 128)
    with pytest.raises(ValueError, match="timesteps"):
        bootstrap(converted, train, timesteps=0)
    with pytest.raises(ValueError, match="epochs"):
        bootstrap(converted, train, timesteps=4, epochs=0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap(converted, [], timesteps=4)
    with pytest.raises(TypeError, match="SpikingModel or an nn.Module"):
        bootstrap("model.pt", train, timesteps=4)


def test_fits_live_on_the_graph(fitted):
    fits = fits_of(fitted.graph_module)
    assert sorted(name for name, _ in fits.items()) == sorted(n for n, _ in fitted.neurons())


def test_bootstrap_refuses_a_one_shot_iterator_as_training_data(converted, fmnist_train):
    """iter(DataLoader) has a length but yields one epoch only: the loop used to spin."""
    with pytest.raises(ValueError, match="not an iterator"):
        bootstrap(converted, iter(loader(fmnist_train, 256)), timesteps=T, progress=False)
