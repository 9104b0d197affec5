"""Tests of torch.ops.ann2snn.if_multistep: schema, kernels vs reference, errors, build."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from ann2snn import ops
from ann2snn.ops import (
    backend_info,
    compiled_cpu_available,
    if_multistep,
    if_multistep_reference,
)
from ann2snn.ops.op_inputs import if_op_inputs

OP = torch.ops.ann2snn.if_multistep.default
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])

needs_compiled_cpu = pytest.mark.skipif(
    not compiled_cpu_available(), reason="compiled C++ kernel not in use: " + str(backend_info())
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    # Bitwise view, so that -0.0 != +0.0. Every NaN maps to one pattern: a NaN's sign and
    # payload depend on the order of an instruction's operands, not on the math.
    ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    t = t.contiguous()
    return torch.where(torch.isnan(t), torch.full_like(t, float("nan")), t).view(ints[t.dtype])


def assert_bit_identical(got: tuple, expected: tuple) -> None:
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype and g.device == e.device
        assert torch.equal(_bits(g), _bits(e))


def _check_against_reference(x, v, threshold):
    expected = if_multistep_reference(x, v, threshold)
    v_before = v.clone()
    got = OP(x, v, threshold)
    assert_bit_identical(got, expected)
    assert torch.equal(_bits(v), _bits(v_before)), "the op must not modify v"
    assert got[0].is_contiguous()
    return got


# ---------------------------------------------------------------- schema / opcheck


@pytest.mark.parametrize("per_channel", [False, True])
def test_opcheck(per_channel):
    x, v, threshold = if_op_inputs((3, 2, 4, 3, 3), per_channel)
    torch.library.opcheck(OP, (x, v, threshold))


def test_opcheck_expanded_and_empty():
    x, v, threshold = if_op_inputs((1, 2, 3, 4), per_channel=True)
    torch.library.opcheck(OP, (x.expand(5, 2, 3, 4), v, threshold))
    torch.library.opcheck(OP, (x[:0], v, threshold))


def test_fake_kernel_shapes():
    x = torch.empty(6, 2, 3, 5, device="meta", dtype=torch.float16)
    spikes, v_out = OP(x, torch.empty(2, 3, 5, device="meta"), torch.empty(3, device="meta"))
    assert spikes.shape == x.shape and spikes.dtype == torch.float16
    assert v_out.shape == (2, 3, 5) and v_out.dtype == torch.float32


# ---------------------------------------------------------------- reference semantics


def test_reference_matches_definition():
    x = torch.tensor([0.6, 0.6, 0.6, 0.6, -2.0, 3.0]).reshape(6, 1)
    spikes, v_out = if_multistep_reference(x, torch.zeros(1), torch.tensor([1.0]))
    v, expected = torch.zeros(1), []
    for t in range(6):
        v = v + x[t]
        s = (v >= 1.0).float()
        v = v - s * 1.0
        expected.append(s)
    assert torch.equal(spikes, torch.stack(expected))
    assert torch.equal(v_out, v)


def test_python_float_threshold():
    x, v, _ = if_op_inputs((4, 3, 5), per_channel=False)
    assert_bit_identical(
        if_multistep(x, v, 0.75), if_multistep_reference(x, v, torch.tensor([0.75]))
    )


# ---------------------------------------------------------------- kernels vs reference


SHAPES = [
    (1, 2, 3, 4, 5),  # T = 1
    (9, 2, 3, 4, 5),
    (7, 3, 5),  # [T, B, F]
    (16, 37, 19, 3),  # odd sizes: vector head/tail paths
    (5, 3, 4, 7, 9),  # channel runs of 63 elements, split across blocks
    (5, 1000),  # 1-D S: scalar threshold only
    (3, 2, 4, 64, 65),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_kernel_bit_identical(device, shape, per_channel):
    if device == "cpu" and not compiled_cpu_available():
        pytest.skip("compiled C++ kernel not in use")
    if per_channel and len(shape) < 3:
        pytest.skip("no channel dimension")
    _check_against_reference(*if_op_inputs(shape, per_channel, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision_input(device, dtype):
    if device == "cpu" and not compiled_cpu_available():
        pytest.skip("compiled C++ kernel not in use")
    spikes, v_out = _check_against_reference(*if_op_inputs((6, 2, 3, 7), True, device, dtype))
    assert spikes.dtype == dtype and v_out.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_large_output(device):
    # > 16 MB of spikes: the CPU kernel's streaming-store / huge-page path, with rows
    # that are not multiples of 4 elements (unaligned heads and tails).
    if device == "cpu" and not compiled_cpu_available():
        pytest.skip("compiled C++ kernel not in use")
    for per_channel in (False, True):
        _check_against_reference(*if_op_inputs((4, 3, 7, 211, 251), per_channel, device))


@needs_compiled_cpu
def test_cpu_kernel_without_avx2():
    """The SSE2 (streaming) and generic paths, which AVX2 machines otherwise never run."""
    code = """
import torch
from ann2snn.ops.op_inputs import if_op_inputs
from tests.ops.test_ops import _check_against_reference
for shape in [(4, 3, 7, 211, 251), (9, 2, 3, 4, 5), (5, 3, 4, 7, 9), (16, 37, 19, 3)]:
    for per_channel in (False, True):
        _check_against_reference(*if_op_inputs(shape, per_channel))
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "ANN2SNN_DISABLE_AVX2": "1"},
        cwd=str(pathlib.Path(__file__).resolve().parents[2]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_special_values(device):
    if device == "cpu" and not compiled_cpu_available():
        pytest.skip("compiled C++ kernel not in use")
    specials = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 1e-38]
    )
    gen = torch.Generator().manual_seed(1)
    x = specials[torch.randint(0, len(specials), (5, 2, 4, 8), generator=gen)]
    v = specials[torch.randint(0, len(specials), (2, 4, 8), generator=gen)]
    threshold = torch.tensor([1.0, 0.0, -1.0, float("inf")])
    _check_against_reference(x.to(device), v.to(device), threshold.to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_kernel_non_contiguous_x(device, per_channel):
    if device == "cpu" and not compiled_cpu_available():
        pytest.skip("compiled C++ kernel not in use")
    x, _, threshold = if_op_inputs((8, 4, 3, 6, 10), per_channel, device)
    views = {
        "transposed": x.transpose(3, 4),
        "sliced_inner": x[..., 1:8],
        "strided_time": x[::3],
        "channels_last": x.flatten(0, 1)
        .contiguous(memory_format=torch.channels_last)
        .view(x.shape),
        "permuted_batch": x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4),
    }
    for name, xv in views.items():
        v = torch.randn(xv.shape[1:], device=device) * 0.3
        got = _check_against_reference(xv, v, threshold)
        assert got[0].shape == xv.shape, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_kernel_expanded_constant_input(device, per_channel):
    if device == "cpu" and not compiled_cpu_available():
        pytest.skip("compiled C++ kernel not in use")
    x, v, threshold = if_op_inputs((1, 3, 4, 5, 7), per_channel, device)
    x_const = x[0].unsqueeze(0).expand(20, 3, 4, 5, 7)
    assert x_const.stride(0) == 0
    got = _check_against_reference(x_const, v, threshold)
    assert_bit_identical(got, OP(x_const.contiguous(), v, threshold))
    # A non-contiguous per-step block that is also constant in time.
    x_t = x[0].transpose(1, 2).unsqueeze(0).expand(6, 3, 5, 4, 7)
    _check_against_reference(x_t, torch.zeros(3, 5, 4, 7, device=device), threshold[:1])


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_empty(device):
    x, v, threshold = if_op_inputs((4, 2, 3, 5), True, device)
    spikes, v_out = _check_against_reference(x[:0], v, threshold)  # T = 0
    assert spikes.shape == (0, 2, 3, 5) and torch.equal(v_out, v)
    assert v_out.data_ptr() != v.data_ptr()
    spikes, v_out = _check_against_reference(x[:, :0], v[:0], threshold)  # empty S
    assert spikes.shape == (4, 0, 3, 5) and v_out.shape == (0, 3, 5)
    spikes, v_out = _check_against_reference(
        torch.zeros(0, device=device), torch.zeros((), device=device), threshold[:1]
    )
    assert spikes.shape == (0,) and v_out.shape == ()


@pytest.mark.parametrize("device", DEVICES)
def test_scalar_steps(device):
    # S = () : x is [T], v is a 0-dim tensor.
    x = torch.tensor([0.4, 0.4, 0.4, 0.9], device=device)
    spikes, v_out = _check_against_reference(
        x, torch.tensor(0.0, device=device), torch.tensor([1.0], device=device)
    )
    assert spikes.tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_chunked_in_time_equals_one_call(device, per_channel):
    x, v, threshold = if_op_inputs((13, 2, 3, 4, 4), per_channel, device)
    spikes, v_out = OP(x, v, threshold)
    s1, v1 = OP(x[:5], v, threshold)
    s2, v2 = OP(x[5:], v1, threshold)
    assert torch.equal(torch.cat([s1, s2]), spikes)
    assert torch.equal(v2, v_out)


# ---------------------------------------------------------------- errors


def _error_cases():
    x = torch.zeros(3, 2, 4, 5)
    v = torch.zeros(2, 4, 5)
    th = torch.ones(1)
    return [
        ((x.double(), v, th), TypeError, "x must be float32, float16 or bfloat16"),
        ((x, v.double(), th), TypeError, r"v \(membrane potential\) must be float32"),
        ((x, v, th.double()), TypeError, "threshold must be float32"),
        ((x, torch.zeros(2, 4), th), ValueError, r"v must have shape x.shape\[1:\] = \[2, 4, 5\]"),
        ((x, v, torch.ones(5)), ValueError, r"S\[1\] = 4 elements \(one per channel"),
        ((x, v, torch.ones(1, 4)), ValueError, r"be 1-D with S\[1\] = 4 elements"),
        (
            (torch.zeros(3, 5), torch.zeros(5), torch.ones(5)),
            ValueError,
            "has no channel dimension",
        ),
        ((torch.tensor(1.0), torch.zeros(()), th), ValueError, "at least 1 dimension"),
    ]


@pytest.mark.parametrize("case", range(len(_error_cases())))
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_clear_errors(case, impl):
    args, error, message = _error_cases()[case]
    fn = OP if impl == "op" else if_multistep_reference
    # The reference raises TypeError / ValueError; the C++ kernel RuntimeError.
    expected = (error, RuntimeError) if impl == "op" else error
    with pytest.raises(expected, match=message):
        fn(*args)


def test_device_mismatch_error():
    x = torch.zeros(3, 2, 4, device="meta")
    with pytest.raises(ValueError, match="must be on the same device"):
        if_multistep_reference(x, torch.zeros(2, 4), torch.ones(1))
    if CUDA:
        with pytest.raises(RuntimeError, match="must be on the same device"):
            OP(x.to("cuda"), torch.zeros(2, 4), torch.ones(1))


# ---------------------------------------------------------------- build / backend


def test_backend_info_keys():
    info = backend_info()
    assert info["cpu"] in ("compiled", "reference")
    assert info["cuda"] in ("compiled", "reference", "unavailable")
    assert "reason" in info
    assert compiled_cpu_available() == (info["cpu"] == "compiled")


def test_compiled_kernel_in_use_when_compiler_present():
    """CI has a C++ compiler, so the compiled kernel must be what the op runs there."""
    if os.environ.get("ANN2SNN_BACKEND", "").strip().lower() == "reference":
        pytest.skip("ANN2SNN_BACKEND=reference")
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    info = backend_info()
    assert info["cpu"] == "compiled", f"a C++ compiler exists but the op uses the reference: {info}"


def test_backend_env_reference_runs_the_reference():
    # A fresh process: here the compiled kernel is already registered.
    code = (
        "import torch, ann2snn.ops as o; print(o.backend_info()['cpu']); "
        "s, v = o.if_multistep(torch.full((4, 2), 0.6), torch.zeros(2), 1.0); "
        "print(s[:, 0].tolist())"
    )
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env={**os.environ, "ANN2SNN_BACKEND": "reference"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["reference", "[0.0, 1.0, 0.0, 1.0]"]
    assert "Warning" not in result.stderr


def test_missing_compiler_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setenv("ANN2SNN_BACKEND", "auto")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(RuntimeWarning) as record:
        result = ops._build.build_and_load()
    assert len(record) == 1
    message = str(record[0].message)
    assert "no C++ compiler found" in message and "pure-torch reference" in message
    assert "To fix" in message
    assert result.cpu == "reference" and "no C++ compiler found" in result.reason


def test_missing_compiler_with_backend_compiled_raises(monkeypatch):
    monkeypatch.setenv("ANN2SNN_BACKEND", "compiled")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(RuntimeError, match=r"ANN2SNN_BACKEND=compiled but no C\+\+ compiler"):
        ops._build.build_and_load()


def test_backend_env_reference_skips_build(monkeypatch):
    monkeypatch.setenv("ANN2SNN_BACKEND", "Reference")
    result = ops._build.build_and_load()
    assert result.cpu == "reference" and result.library is None


# ---------------------------------------------------------------- CUDA compile check


@pytest.mark.skipif(
    os.environ.get("ANN2SNN_TEST_CUDA_COMPILE") != "1",
    reason="set ANN2SNN_TEST_CUDA_COMPILE=1 to compile (not run) the CUDA kernel",
)
def test_cuda_source_compiles(tmp_path):
    """Compiles if_neuron_cuda.cu with nvcc; needs no GPU (CUDA_HOME must have nvcc)."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        pytest.skip(f"no nvcc at {nvcc}")
    from torch.utils import cpp_extension

    torch_dir = os.path.dirname(torch.__file__)
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0").split()[0].replace(".", "")
    cmd = [
        nvcc,
        "-c",
        str(ops._build.CUDA_SOURCES[0]),
        "-o",
        str(tmp_path / "if_neuron_cuda.o"),
        "-std=c++20",
        "-O3",
        "-fmad=false",
        *cpp_extension.COMMON_NVCC_FLAGS,
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xcompiler",
        "-fPIC",
        "-D_GLIBCXX_USE_CXX11_ABI=" + str(int(torch.compiled_with_cxx11_abi())),
        "-I" + str(ops._build.CSRC_DIR),
        "-isystem",
        os.path.join(torch_dir, "include"),
        "-isystem",
        os.path.join(torch_dir, "include", "torch", "csrc", "api", "include"),
        "-isystem",
        os.path.join(cuda_home, "include"),
    ]
    for folder in ops._build.cuda_library_include_dirs(cuda_home):
        cmd += ["-isystem", folder]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
