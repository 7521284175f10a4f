"""Build and load the ``roi_ops`` C++/CUDA extension: the JIT build, and the flags the wheel build shares.

    python -m ops.build          # build (if needed) and load the extension; says which library it loaded
    python -m ops.build --cuda   # compile + link the CUDA sources too (no GPU needed); does not load

The first use of an op (:func:`ops.load`) loads the library. An installed copy (a wheel, ``pip install .``)
loads the one that ``setup.py`` compiled at install time (:mod:`ops._library`). A source checkout, or an
install that has no usable prebuilt library, calls :func:`load` here, which JIT-compiles the extension with
``torch.utils.cpp_extension`` and caches it in :func:`build_root`: ``<repo>/.build/`` in a checkout, else
``TORCH_EXTENSIONS_DIR``, else ``~/.cache/roi_gap/torch-<version>/`` (``ROI_OPS_BUILD_DIR`` overrides all);
it says on stderr where it builds. ``MAX_JOBS`` sets the ninja parallelism. The CUDA sources (``ops/csrc/cuda/*.cu``) are
included only when a GPU is visible. ``--cuda`` exits non-zero when they do not compile.
:func:`load_emulation` builds and loads the CPU emulation of the CUDA kernels (a separate library, for tests).

Nothing machine-specific is written here:

* CUDA_HOME: ``CUDA_HOME`` or ``CUDA_PATH`` when set, else the toolkit root that the ``nvcc`` on PATH runs
  from, asked from nvcc itself (``nvcc -dryrun`` prints it). torch guesses it from where ``nvcc`` sits, which a
  wrapper script or a symlink on PATH misleads.
* Architectures: ``TORCH_CUDA_ARCH_LIST`` when set. Otherwise :func:`load` leaves it to torch, which builds for
  the visible GPUs plus PTX of the newest (so a later GPU can JIT-compile it), and ``--cuda`` compile-checks
  :data:`CHECK_ARCHS` (A100 and H100/H200 machine code, plus PTX).
* CPU vector width: the C++ sources build for the vector ISA of the machine that loads them (AVX-512, AVX2 or
  the baseline), as ATen picks it at run time (:func:`cpu_capability`; ``ATEN_CPU_CAPABILITY=avx2`` or
  ``default`` lowers it, as it does for ATen), so ``at::vec`` in the CPU kernels uses that machine's widest
  vectors. Each capability has its own build directory (``.build/roi_ops_cpu_avx512`` ...): a build cache
  shared by machines of different ISAs never hands one a library it cannot run.
* Rounding: the CUDA sources build with ``-fmad=false`` and the CPU sources with ``-ffp-contract=off``, so
  neither side fuses a multiply and an add into one rounding: both round every product and sum alike, and the
  max modes pick the same samples on the CPU and the GPU (the tests require that bitwise). ``ROI_OPS_FMAD=1``
  lets nvcc fuse them again (its own build directory), to measure what that costs.

``setup.py`` compiles with the same flags (:func:`cpu_flags`, :func:`cuda_flags`, :func:`include_dirs`), so an
installed library computes what the JIT one does.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OPS = Path(__file__).resolve().parents[1]
CSRC = OPS / "csrc"
CHECKOUT = OPS.parent  # the repository root, in a source checkout
CHECKOUT_BUILD_ROOT = CHECKOUT / ".build"
CHECK_ARCHS = "8.0;9.0+PTX"
CPU_FLAGS = ["-O3", "-fopenmp", "-DAT_PARALLEL_OPENMP=1", "-ffp-contract=off"]  # OpenMP as at::parallel_for uses it
# ATen's flags for its own kernels of each capability (CPU_CAPABILITY names at::vec's inline namespace).
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
    "DEFAULT": [],
}


def cpu_capability() -> str:
    """The x86 vector ISA ATen uses on this machine (``AVX512``, ``AVX2``), else ``DEFAULT``."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in CAPABILITY_FLAGS else "DEFAULT"


def cpu_flags(capability: str) -> list[str]:
    """The C++ flags of the CPU library for ``capability`` (a key of :data:`CAPABILITY_FLAGS`)."""
    return CPU_FLAGS + CAPABILITY_FLAGS[capability] + [f"-DCPU_CAPABILITY={capability}"]


def fmad() -> bool:
    return os.environ.get("ROI_OPS_FMAD") == "1"


def cuda_flags() -> list[str]:
    """nvcc's flags for the CUDA sources (torch adds its own and the architectures)."""
    return ["-O3", "-lineinfo", f"-fmad={str(fmad()).lower()}"]


def include_dirs(with_cuda: bool) -> list[str]:
    return [str(CSRC)] + (_nvidia_include_dirs() if with_cuda else [])


def is_checkout() -> bool:
    """True in a source checkout (the repository's setup.py beside the ops package), False in an installed copy."""
    return (CHECKOUT / "setup.py").is_file() and (CHECKOUT / "pyproject.toml").is_file()


def _writable(path: Path) -> bool:
    """Whether a build could write ``path`` (or create it in its nearest existing parent)."""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return os.access(path, os.W_OK)


def build_root() -> tuple[Path, str]:
    """Where JIT builds go, and why there: ``(folder, reason)``.

    ``ROI_OPS_BUILD_DIR`` when set; else ``<repo>/.build`` in a source checkout where it can be written; else
    ``TORCH_EXTENSIONS_DIR`` when set; else ``$XDG_CACHE_HOME/roi_gap/torch-<version>`` (``~/.cache`` by
    default). An installed copy never writes into its own package folder.
    """
    if os.environ.get("ROI_OPS_BUILD_DIR"):
        return Path(os.environ["ROI_OPS_BUILD_DIR"]).expanduser(), "ROI_OPS_BUILD_DIR"
    if is_checkout() and _writable(CHECKOUT_BUILD_ROOT):
        return CHECKOUT_BUILD_ROOT, "the source checkout's build folder"
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]).expanduser(), "TORCH_EXTENSIONS_DIR"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    # one folder per torch: two environments that share the cache never overwrite each other's library
    return cache / "roi_gap" / f"torch-{torch.__version__}", "the user cache; TORCH_EXTENSIONS_DIR is not set"


def _cuda_sources() -> list[str]:
    return sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))


def _nvidia_include_dirs() -> list[str]:
    """Include dirs of pip's ``nvidia-*`` packages (CUDA runtime headers etc.), when installed."""
    try:
        import nvidia  # namespace package installed by the CUDA wheels
    except ImportError:
        return []
    found = set()
    for root in getattr(nvidia, "__path__", []):
        found.update(p for p in glob.glob(os.path.join(root, "*", "include")) + glob.glob(
            os.path.join(root, "*", "*", "include")) if os.path.isdir(p))
    return sorted(found)


def cuda_home() -> str | None:
    """The CUDA toolkit root to build with (see the module docstring); None without a toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cu"
        probe.write_text("")
        dryrun = subprocess.run([nvcc, "-dryrun", "-E", str(probe)], capture_output=True, text=True)
    top = re.search(r"^#\$ TOP=(.+)$", dryrun.stdout + dryrun.stderr, re.MULTILINE)
    return str(Path(top.group(1).strip()).resolve()) if top else str(Path(nvcc).resolve().parent.parent)


def _cpp_extension():
    """``torch.utils.cpp_extension`` with its CUDA_HOME (read once at its import) pointed at :func:`cuda_home`."""
    # torch warns "No CUDA runtime is found" on import when there is no GPU; irrelevant here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    home = cuda_home()
    if home is not None:
        cpp_extension.CUDA_HOME = home
    return cpp_extension


@contextlib.contextmanager
def _arch_list(default: str | None):
    """TORCH_CUDA_ARCH_LIST = ``default`` for the duration, unless the environment sets it."""
    if default is None or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        yield
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = default
    try:
        yield
    finally:
        del os.environ["TORCH_CUDA_ARCH_LIST"]


def _build_args(
    name: str, sources: list[str], with_cuda: bool, cflags: list[str], build_dir: Path
) -> dict:
    build_dir.mkdir(parents=True, exist_ok=True)
    return dict(
        name=name,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags() if with_cuda else None,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=include_dirs(with_cuda),
        build_directory=str(build_dir),
        with_cuda=with_cuda,
    )


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_library(name: str, sources: list[str], with_cuda: bool, verbose: bool, cflags: list[str] = CPU_FLAGS) -> str:
    """Compile (if needed) and load one library into this process; once per process. -> the library's path."""
    for path in torch.ops.loaded_libraries:
        if Path(path).parent.name == name and Path(path).name.startswith(name):
            return path
    root, why = build_root()
    build_dir = root / name
    if not any(build_dir.glob(f"{name}*.so")):
        _say(f"building {name} in {build_dir} ({why}); first use, ~1 min per translation unit…")
    t0 = time.time()
    _cpp_extension().load(
        **_build_args(name, sources, with_cuda, cflags, build_dir), is_python_module=False, verbose=verbose
    )
    if time.time() - t0 > 2.0:  # a real compile happened (a cached load takes well under a second)
        _say(f"building {name}… done in {time.time() - t0:.0f} s")
    return str(next(build_dir.glob(f"{name}*.so")))


def jit_library_name(use_cuda: bool, capability: str) -> str:
    kind = ("roi_ops_cuda_fmad" if fmad() else "roi_ops_cuda") if use_cuda else "roi_ops_cpu"
    return f"{kind}_{capability.lower()}"


def load(verbose: bool = False) -> str:
    """Compile (if needed) and load the extension into this process; registers ``torch.ops.roi_ops``.

    The JIT build, whatever the install: :func:`ops.load` is the loader that prefers an installed copy's
    prebuilt library. -> the library's path.
    """
    use_cuda = torch.cuda.is_available() and bool(_cuda_sources())
    capability = cpu_capability()
    sources = [str(CSRC / "roi_ops.cpp")] + (_cuda_sources() if use_cuda else [])
    return _load_library(jit_library_name(use_cuda, capability), sources, use_cuda, verbose, cpu_flags(capability))


def load_emulation(verbose: bool = False) -> str:
    """Compile (if needed) and load the CPU emulation of the CUDA kernels: ``torch.ops.roi_ops_emulated``, the
    schema pair on CPU tensors, running the CUDA path's driver and kernel bodies serially (for tests)."""
    return _load_library("roi_ops_emulated", [str(CSRC / "emulation" / "roi_ops_emulated.cpp")], False, verbose)


def build_cuda(verbose: bool = False) -> int:
    """Compile and link the CUDA sources into a separate build, without loading it. Returns an exit code."""
    cu = _cuda_sources()
    if not cu:
        _say("no CUDA sources found in ops/csrc/cuda/")
        return 1
    name = "roi_ops_cuda_check"
    cpp_extension = _cpp_extension()
    build_dir = build_root()[0] / name
    with _arch_list(CHECK_ARCHS):
        _say(f"building {name} in {build_dir} (archs {os.environ['TORCH_CUDA_ARCH_LIST']}, "
             f"CUDA_HOME={cpp_extension.CUDA_HOME})…")  # fmt: skip
        t0 = time.time()
        try:
            # Writes the ninja file and builds the library without loading it (there may be no GPU); private,
            # because the public API always loads.
            cpp_extension._write_ninja_file_and_build_library(
                **_build_args(name, [str(CSRC / "roi_ops.cpp")] + cu, True, cpu_flags(cpu_capability()), build_dir),
                extra_sycl_cflags=None, with_sycl=False, verbose=verbose,
            )
        except Exception as exc:  # compile errors surface as RuntimeError / CalledProcessError
            _say(f"CUDA build FAILED after {time.time() - t0:.0f} s: {exc}")
            return 1
    _say(f"building {name}… done in {time.time() - t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cuda", action="store_true", help="also compile the CUDA sources (no GPU needed)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.cuda:
        return build_cuda(args.verbose)
    from .. import _library  # the loader that prefers an installed copy's prebuilt library

    t0 = time.time()
    paths = _library.load(args.verbose)
    _say(f"roi_ops ready: {', '.join(paths)} ({time.time() - t0:.0f} s)")
    return 0
