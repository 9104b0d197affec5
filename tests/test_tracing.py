import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.tracing import failing_submodule, trace


class ShapeBranch(nn.Module):
    """A block whose control flow depends on a shape: fx cannot record it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.size(1) > 2:  # LINE-BRANCH
            return torch.relu(self.conv(x))
        return x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 1), ShapeBranch())

    def forward(self, x):
        return self.body(x).mean((2, 3))


def test_failed_trace_names_the_submodule_its_line_and_the_fixes():
    with pytest.raises(ann2snn.ConversionError) as err:
        ann2snn.convert(Net(), "max", [torch.rand(2, 3, 8, 8)])
    msg = str(err.value)
    assert "submodule 'body.1'" in msg and "ShapeBranch" in msg
    assert "test_tracing.py" in msg and "LINE-BRANCH" in msg
    assert "leaf_modules=(ShapeBranch,)" in msg and "concrete_args" in msg


def test_failure_in_the_models_own_forward_is_reported_as_such():
    class Top(nn.Module):
        def forward(self, x):
            for _ in range(x.shape[0]):  # iterating over a traced size
                x = x + 1
            return x

    with pytest.raises(ann2snn.ConversionError, match=r"It failed in Top\.forward") as err:
        trace(Top())
    assert "leaf_modules=(TheBlockClass,)" in str(err.value)


def test_failing_submodule_walks_the_traceback():
    net = Net()
    assert failing_submodule(net, RuntimeError("never raised")) == ("", None)
    with pytest.raises(ann2snn.ConversionError) as err:
        trace(net)
    name, module = failing_submodule(net, err.value.__cause__)
    assert name == "body.1" and module is net.body[1]
