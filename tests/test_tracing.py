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


def test_ctrl_c_in_a_lazy_torch_import_reaches_the_caller() -> None:
    """fx imports torch._dynamo / torch._inductor lazily on the first traced node, partly
    under a C++ call that swallowed KeyboardInterrupt (the trace then went on, leaving a
    half-imported module). A real SIGINT the moment torch._dynamo.utils starts to import
    must come out of convert as KeyboardInterrupt. In a subprocess: it breaks torch's
    imports for the rest of the process."""
    import subprocess
    import sys

    script = """
import os, signal, sys
# Python keeps SIGINT ignored when it starts ignored, as under a background job (`cmd &`
# in a script), and then this test's SIGINT would never be delivered.
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
from torch import nn
import ann2snn

class SigintAt:
    fired = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch._dynamo.utils" and not self.fired:
            SigintAt.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, SigintAt())
model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
try:
    ann2snn.convert(model, "max", [torch.rand(8, 4)], potential_calibration=False)
    print("converted", SigintAt.fired)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
except BaseException as exc:
    print("other", type(exc).__name__, exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    if result.stdout.strip() == "converted False":
        pytest.skip("torch._dynamo.utils is imported before tracing with this torch version")
    assert result.stdout.strip() == "KeyboardInterrupt", (result.stdout, result.stderr)


def test_an_error_that_a_ctrl_c_caused_is_not_a_model_error() -> None:
    class SwallowsInterrupt(nn.Module):
        def forward(self, x):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("a library turned Ctrl-C into this") from None

    with pytest.raises(RuntimeError, match="a library turned Ctrl-C") as info:
        trace(SwallowsInterrupt())
    assert not isinstance(info.value, ann2snn.ConversionError)
