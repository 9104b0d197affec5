"""Just-in-time build of the compiled kernels behind ``torch.ops.ann2snn.if_multistep``.

The C++ (and, where a GPU and nvcc exist, CUDA) sources in ``ann2snn/csrc`` are compiled
once with ``torch.utils.cpp_extension.load`` and cached (torch's extensions folder, or
``ANN2SNN_BUILD_DIR``); later imports only load the cached library. The library registers
its kernels with ``TORCH_LIBRARY_IMPL``, which take precedence over the pure-torch
reference registered in :mod:`ann2snn.ops`.

Environment variables:
    ANN2SNN_BACKEND: ``auto`` (default: build, fall back to the reference with one warning
        if that fails), ``compiled`` (a failed build raises), ``reference`` (never build).
    ANN2SNN_BUILD_DIR: folder for the build and its cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

# The sources sit beside this subpackage, in ann2snn/csrc.
CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"
CPU_SOURCES = tuple(CSRC_DIR / f for f in ("if_neuron.cpp", "spiking_pool.cpp", "if_sweep.cpp"))
CUDA_SOURCES = (CSRC_DIR / "if_neuron_cuda.cu", CSRC_DIR / "spiking_pool_cuda.cu")
BACKEND_ENV = "ANN2SNN_BACKEND"
BUILD_DIR_ENV = "ANN2SNN_BUILD_DIR"
_BACKENDS = ("auto", "compiled", "reference")


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_and_load` achieved.

    Attributes:
        cpu: ``"compiled"`` or ``"reference"``.
        cuda: ``"compiled"``, ``"reference"`` or ``"unavailable"`` (no usable GPU).
        reason: Why something is not compiled, or None.
        library: Path of the loaded shared library, or None.
        seconds: Time spent building/loading.
    """

    cpu: str
    cuda: str
    reason: Optional[str]
    library: Optional[str]
    seconds: float


def requested_backend() -> str:
    """The value of ``ANN2SNN_BACKEND`` (lower-cased), ``"auto"`` when unset or invalid."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        warnings.warn(
            f"ann2snn: ignoring {BACKEND_ENV}={value!r}; accepted values are "
            f"{', '.join(_BACKENDS)}. Using 'auto'.",
            stacklevel=3,
        )
        return "auto"
    return value


@contextlib.contextmanager
def _quiet_cpp_extension_import() -> Iterator[None]:
    # Importing torch.utils.cpp_extension logs "No CUDA runtime is found" on CPU-only
    # machines; that is expected here and would otherwise print on every import.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    # `pip install ninja` puts the binary next to the interpreter; a venv used without
    # activation does not have that folder on PATH, and torch looks ninja up on PATH.
    old_path = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        candidates = [Path(sys.executable).parent]
        try:
            import ninja  # type: ignore[import-not-found]

            candidates.insert(0, Path(ninja.BIN_DIR))
        except (ImportError, AttributeError):
            pass
        for folder in candidates:
            if (folder / "ninja").exists():
                os.environ["PATH"] = f"{folder}{os.pathsep}{old_path}"
                break
    try:
        yield
    finally:
        os.environ["PATH"] = old_path


def _cpu_flags() -> tuple[list[str], list[str]]:
    cflags = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
    ldflags: list[str] = []
    # at::parallel_for is only parallel when the extension is compiled with OpenMP and
    # torch uses the OpenMP backend; the library then shares torch's libgomp.so.1.
    uses_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    if uses_openmp and platform.system() == "Linux":
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def _cuda_home() -> Optional[str]:
    with _quiet_cpp_extension_import():
        from torch.utils import cpp_extension
    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return home
    return None


def cuda_library_include_dirs(cuda_home: str) -> list[str]:
    """Include folders of pip-installed CUDA libraries, when the toolkit lacks them.

    torch's CUDA headers include cuSPARSE/cuBLAS/cuSOLVER headers; a minimal toolkit
    (nvcc + runtime) does not ship them, but the ``nvidia-*`` wheels torch depends on do.
    """
    if (Path(cuda_home) / "include" / "cusparse.h").exists():
        return []
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return []
    wanted = ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h")
    folders: list[str] = []
    for root in getattr(nvidia, "__path__", []):
        for include in sorted(Path(root).glob("*/include")):
            if any((include / header).exists() for header in wanted):
                folders.append(str(include))
    return folders


def _library_name(with_cuda: bool) -> str:
    # One cache entry per torch installation and compiler: two virtual environments (or
    # compilers) sharing the default cache folder would otherwise rebuild it in turn, and
    # could load a library built against another torch.
    key = "|".join(
        [
            torch.__version__,
            str(Path(torch.__file__).resolve().parent),
            os.environ.get("CXX", "c++"),
            " ".join(_cpu_flags()[0]),
        ]
    )
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"ann2snn_if_neuron_{'cuda' if with_cuda else 'cpu'}_{tag}"


def _build_directory() -> Optional[str]:
    folder = os.environ.get(BUILD_DIR_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return folder


def _compile(with_cuda: bool) -> str:
    with _quiet_cpp_extension_import():
        from torch.utils import cpp_extension
    cflags, ldflags = _cpu_flags()
    sources = [str(p) for p in CPU_SOURCES]
    if with_cuda:
        sources += [str(p) for p in CUDA_SOURCES]
    name = _library_name(with_cuda)
    build_dir = _build_directory()
    cuda_cflags = ["-O3", "-fmad=false"]
    if with_cuda:
        # Appended after the toolkit's own include folder, so that only headers the
        # toolkit lacks come from the wheels (whose CUDA version may differ from nvcc's).
        for folder in cuda_library_include_dirs(cpp_extension.CUDA_HOME or ""):
            cuda_cflags += ["-isystem", folder]
    with _ninja_on_path():
        loaded = cpp_extension.load(
            name=name,
            sources=sources,
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_cflags,
            extra_ldflags=ldflags,
            extra_include_paths=[str(CSRC_DIR)],
            build_directory=build_dir,
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    # With is_python_module=False, torch returns the loaded library's path.
    return str(loaded) if isinstance(loaded, (str, os.PathLike)) else name


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # ninja failures end with the compiler's last lines; keep the useful head and tail.
    if len(text) > 12:
        text = text[:6] + ["..."] + text[-6:]
    return f"{type(error).__name__}: " + "\n".join(text)


def _warn_fallback(what: str, reason: str) -> None:
    warnings.warn(
        f"ann2snn: {what} Using the pure-torch reference of torch.ops.ann2snn.if_multistep "
        "instead (same results, much slower).\n"
        f"Reason: {reason}\n"
        "To fix: install a C++ compiler (g++ or clang++, or set CXX) and ninja "
        "(`pip install ninja`), then restart Python; for the CUDA kernel also the CUDA "
        "toolkit (set CUDA_HOME to the folder with bin/nvcc). "
        f"Set {BACKEND_ENV}=reference to use the reference without this warning.",
        RuntimeWarning,
        stacklevel=4,
    )


def build_and_load() -> BuildResult:
    """Builds (or loads from the cache) the compiled kernels and registers them.

    Returns:
        What is compiled and, if something is not, why.

    Raises:
        RuntimeError: If ``ANN2SNN_BACKEND=compiled`` and the build fails.
    """
    start = time.perf_counter()
    backend = requested_backend()
    gpu = torch.cuda.is_available()
    if backend == "reference":
        return BuildResult(
            cpu="reference",
            cuda="reference" if gpu else "unavailable",
            reason=f"{BACKEND_ENV}=reference",
            library=None,
            seconds=0.0,
        )

    cuda_reason = None
    want_cuda = False
    if gpu:
        if torch.version.cuda is None:
            cuda_reason = "the CUDA kernel is only built for CUDA (not ROCm) builds of torch"
        elif _cuda_home() is None:
            cuda_reason = "nvcc not found: set CUDA_HOME to a CUDA toolkit to build the CUDA kernel"
        else:
            want_cuda = True

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        reason = f"no C++ compiler found (looked for {compiler!r} on PATH)"
        if backend == "compiled":
            raise RuntimeError(f"ann2snn: {BACKEND_ENV}=compiled but {reason}")
        _warn_fallback("cannot build the C++ IF kernel.", reason)
        return BuildResult(
            cpu="reference",
            cuda="reference" if gpu else "unavailable",
            reason=reason,
            library=None,
            seconds=time.perf_counter() - start,
        )

    if want_cuda:
        try:
            library = _compile(with_cuda=True)
            return BuildResult("compiled", "compiled", None, library, time.perf_counter() - start)
        except Exception as error:  # any build failure means: fall back
            cuda_reason = f"CUDA build failed: {_short(error)}"
            if backend == "compiled":
                raise RuntimeError(f"ann2snn: {BACKEND_ENV}=compiled but {cuda_reason}") from error
            _warn_fallback(
                "the CUDA IF kernel failed to build; trying the C++ kernel alone.", cuda_reason
            )

    try:
        library = _compile(with_cuda=False)
    except Exception as error:  # any build failure means: fall back
        reason = f"C++ build failed: {_short(error)}"
        if backend == "compiled":
            raise RuntimeError(f"ann2snn: {BACKEND_ENV}=compiled but {reason}") from error
        _warn_fallback("the C++ IF kernel failed to build.", reason)
        return BuildResult(
            cpu="reference",
            cuda="reference" if gpu else "unavailable",
            reason="; ".join(r for r in (cuda_reason, reason) if r),
            library=None,
            seconds=time.perf_counter() - start,
        )
    return BuildResult(
        cpu="compiled",
        cuda="reference" if gpu else "unavailable",
        reason=cuda_reason,
        library=library,
        seconds=time.perf_counter() - start,
    )
