"""Build and load the ``roi_ops`` C++/CUDA extension (implementation behind ``ops.build``).

The extension is compiled with :func:`torch.utils.cpp_extension.load` (JIT, ``is_python_module=False``)
on first use and cached in ``<repo>/.build/``. The CUDA sources (``ops/csrc/cuda/*.cu``) are included
only when ``torch.cuda.is_available()`` at load time.

Command line::

    python -m ops.build          # build (and load) the CPU extension ahead of time
    python -m ops.build --cuda   # compile + link the CUDA sources too (works without a GPU), do not load

``MAX_JOBS`` is honoured (ninja parallelism). ``--cuda`` exits non-zero when the CUDA sources do not compile.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
REPO = HERE.parent
BUILD_ROOT = REPO / ".build"
CUDA_ARCHS = "9.0"  # H100 / H200 (sm_90); extend with e.g. "8.0;9.0" if needed

_loaded = False


def _cpp_sources() -> list[str]:
    return [str(CSRC / "roi_ops.cpp")]


def _cuda_sources() -> list[str]:
    return sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))


def _nvidia_include_dirs() -> list[str]:
    """Include dirs of pip's ``nvidia-*`` packages (cuda runtime headers etc.)."""
    try:
        import nvidia  # namespace package installed by the CUDA wheels
    except ImportError:
        return []
    dirs: set[str] = set()
    for root in list(getattr(nvidia, "__path__", [])):
        for inc in glob.glob(os.path.join(root, "*", "include")) + glob.glob(
            os.path.join(root, "*", "*", "include")
        ):
            if os.path.isdir(inc):
                dirs.add(inc)
    return sorted(dirs)


def _setup_cuda_env() -> None:
    """Point CUDA_HOME at the toolkit that ``nvcc`` on PATH really runs (torch's guess can be wrong).

    Must run before ``torch.utils.cpp_extension`` is imported (it reads CUDA_HOME at import time).
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for candidate in ("/usr/local/cuda-13.0", "/usr/local/cuda"):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = candidate
            break
    else:
        nvcc = shutil.which("nvcc")
        if nvcc:
            os.environ["CUDA_HOME"] = str(Path(nvcc).resolve().parent.parent)
    # torch.utils.cpp_extension caches CUDA_HOME at import time (in case it was imported already)
    cpp_ext = sys.modules.get("torch.utils.cpp_extension")
    if cpp_ext is not None and os.environ.get("CUDA_HOME"):
        cpp_ext.CUDA_HOME = os.environ["CUDA_HOME"]


def _cflags() -> list[str]:
    # OpenMP flags as torch's cpp_extension uses them for at::parallel_for
    return ["-O3", "-fopenmp", "-DAT_PARALLEL_OPENMP=1"]


def _load(name: str, sources: list[str], with_cuda: bool, verbose: bool, is_python_module: bool = False):
    _setup_cuda_env()
    # torch warns "No CUDA runtime is found" on import when there is no GPU; irrelevant for a CPU build
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    build_dir = BUILD_ROOT / name
    build_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCHS)
        kwargs["extra_cuda_cflags"] = ["-O3", "-lineinfo"]
        kwargs["extra_include_paths"] = [str(CSRC)] + _nvidia_include_dirs()
    else:
        kwargs["extra_include_paths"] = [str(CSRC)]
    return cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=_cflags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=is_python_module,
        verbose=verbose,
        **kwargs,
    )


def _say(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def load(verbose: bool = False) -> None:
    """Compile (if needed) and load the extension into this process; registers ``torch.ops.roi_ops``."""
    global _loaded
    if _loaded:
        return
    use_cuda = torch.cuda.is_available() and bool(_cuda_sources())
    sources = _cpp_sources() + (_cuda_sources() if use_cuda else [])
    name = "roi_ops_cuda" if use_cuda else "roi_ops_cpu"
    if not any((BUILD_ROOT / name).glob(f"{name}*.so")):
        _say(
            f"building roi_ops ({'CPU+CUDA' if use_cuda else 'CPU'}, first use; ~1 min per translation unit)…"
        )
    t0 = time.time()
    _load(name, sources, with_cuda=use_cuda, verbose=verbose)
    dt = time.time() - t0
    if dt > 2.0:  # a real compile happened (a cached load takes well under a second)
        _say(f"building roi_ops ({'CPU+CUDA' if use_cuda else 'CPU'})… done in {dt:.0f} s")
    _loaded = True


def build_cuda(verbose: bool = False) -> int:
    """Compile and link the CUDA sources into a separate build (without loading). Returns an exit code."""
    cu = _cuda_sources()
    if not cu:
        _say("no CUDA sources found in ops/csrc/cuda/")
        return 1
    _setup_cuda_env()
    from torch.utils import cpp_extension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCHS)
    name = "roi_ops_cuda_check"
    build_dir = BUILD_ROOT / name
    build_dir.mkdir(parents=True, exist_ok=True)
    _say(
        f"building {name} (CPU + CUDA, archs {os.environ['TORCH_CUDA_ARCH_LIST']}, "
        f"CUDA_HOME={os.environ.get('CUDA_HOME')})…"
    )
    t0 = time.time()
    try:
        # Write the ninja file and build the shared library, but do not load it (there may be no GPU).
        cpp_extension._write_ninja_file_and_build_library(  # private: the public API always loads
            name=name,
            sources=_cpp_sources() + cu,
            extra_cflags=_cflags(),
            extra_cuda_cflags=["-O3", "-lineinfo"],
            extra_sycl_cflags=None,
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(CSRC)] + _nvidia_include_dirs(),
            build_directory=str(build_dir),
            verbose=verbose,
            with_cuda=True,
            with_sycl=False,
        )
    except Exception as exc:  # compile errors surface as RuntimeError / CalledProcessError
        _say(f"CUDA build FAILED after {time.time() - t0:.0f} s: {exc}")
        return 1
    _say(f"building {name}… done in {time.time() - t0:.0f} s")
    return 0
