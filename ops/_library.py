"""Which ``roi_ops`` library this process loads, and loading it.

An installed copy (a wheel, or ``pip install .``) carries the libraries that ``setup.py`` compiled at install
time, in ``ops/_lib/``, described by ``ops/_lib/build_info.json``:

* ``roi_ops_cpu_<isa>.so``: the schemas and the CPU kernels, one library per CPU vector ISA (``default``,
  ``avx2``, ``avx512`` on x86; ``ROI_OPS_CPU_CAPABILITIES`` chooses which at build time);
* ``roi_ops_cuda.so`` (when built with CUDA): the CUDA kernels alone, registered for the schemas of the CPU
  library, which is loaded first. nvcc's flags do not depend on the CPU ISA, so one CUDA library serves all.

One library per ISA, not one baseline library: the CPU kernels vectorise over channels with ``at::vec``, whose
width is fixed at compile time by ``-mavx2`` / ``-mavx512*`` (as ATen compiles its own kernels once per ISA).
A baseline build would give up the wide vectors everywhere; a single AVX-512 build would crash with SIGILL on
an AVX2 machine. So the loader takes, among the libraries present, the widest ISA that is not wider than what
ATen uses on this machine (``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` lowers):
:func:`select_cpu_library`. A library for a wider ISA is never loaded. All of them compute the same bits (no
fused multiply-add anywhere; the vectors only run several channels at once): the three libraries of one wheel
gave equal outputs and gradients for every kind, on NCHW and channels_last maps.

Loading a prebuilt library is ``torch.ops.load_library``: no lock, no compiler, no write. A JIT build
(:func:`ops.build.load`) happens instead in a source checkout (always: developers edit the sources), and in an
installed copy only when no prebuilt library fits: installed with ``ROI_GAP_BUILD_OPS=0``, built against
another torch, no library for this machine's ISA, or ``ROI_OPS_FMAD`` other than at build time. It says so on
stderr, with the folder it builds in (never the package folder; see :func:`ops.build.build_root`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import build

LIB_DIR = Path(__file__).resolve().parent / "_lib"
BUILD_INFO = LIB_DIR / "build_info.json"
# narrowest first: each ISA runs every library of the ISAs before it
CAPABILITY_ORDER = ("DEFAULT", "AVX2", "AVX512")


@dataclass(frozen=True)
class Plan:
    """What :func:`load` will do: load ``libraries`` (prebuilt, in order), or JIT-build because of ``jit_reason``."""

    libraries: tuple[Path, ...] = ()
    jit_reason: str | None = None
    cuda: bool = False  # whether the libraries include the CUDA kernels


def read_build_info(path: Path = BUILD_INFO) -> dict | None:
    """The build record ``setup.py`` writes beside the prebuilt libraries; None where there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def select_cpu_library(libraries: dict[str, str], capability: str) -> str | None:
    """The library (a value of ``libraries``, keyed by ISA name) for a machine whose ATen ISA is ``capability``:
    the widest ISA not wider than it; None when every library present needs a wider ISA."""
    if capability not in CAPABILITY_ORDER:
        capability = "DEFAULT"  # non-x86, or an ISA this build does not know: only the baseline is safe
    runnable = CAPABILITY_ORDER[: CAPABILITY_ORDER.index(capability) + 1]
    for isa in reversed(runnable):
        if isa in libraries:
            return libraries[isa]
    return None


def plan(info: dict | None = None, lib_dir: Path = LIB_DIR) -> Plan:
    """Decides between the prebuilt libraries described by ``info`` (default: this install's build_info.json)
    and a JIT build, for this process (torch version, CPU ISA, whether a GPU is visible)."""
    if build.is_checkout() and info is None:
        return Plan(jit_reason="source checkout")
    info = read_build_info(lib_dir / "build_info.json") if info is None else info
    if info is None:
        return Plan(jit_reason="this install has no prebuilt library (it was installed with ROI_GAP_BUILD_OPS=0)")
    if info["torch"] != torch.__version__:
        return Plan(jit_reason=f"its prebuilt library is for torch {info['torch']}, this is torch {torch.__version__}")
    capability = build.cpu_capability()
    cpu = select_cpu_library(info["cpu"], capability)
    if cpu is None:
        return Plan(jit_reason=f"it has no prebuilt library that runs on this CPU's {capability} vector ISA "
                               f"(it has {', '.join(sorted(info['cpu']))})")  # fmt: skip
    libraries = [lib_dir / cpu]
    use_cuda = torch.cuda.is_available() and info.get("cuda") is not None
    if use_cuda:
        if bool(info["cuda"]["fmad"]) != build.fmad():
            return Plan(jit_reason=f"its CUDA library was built with -fmad={str(info['cuda']['fmad']).lower()}, "
                                   f"and ROI_OPS_FMAD asks for -fmad={str(build.fmad()).lower()}")  # fmt: skip
        libraries.append(lib_dir / info["cuda"]["library"])
    return Plan(libraries=tuple(libraries), cuda=use_cuda)


def _loaded(path: Path) -> bool:
    return any(Path(p).resolve() == path.resolve() for p in torch.ops.loaded_libraries)


def load(verbose: bool = False) -> list[str]:
    """Loads the library :func:`plan` chooses (once per process) -> the paths of the libraries in use."""
    decision = plan()
    if decision.jit_reason is None:
        for path in decision.libraries:
            if not _loaded(path):
                torch.ops.load_library(str(path))
        return [str(p) for p in decision.libraries]
    if decision.jit_reason != "source checkout":
        print(f"roi_ops: this installed copy needs a JIT build: {decision.jit_reason}", file=sys.stderr, flush=True)
    return [build.load(verbose)]


def has_cuda_kernels() -> bool:
    """Whether the loaded library has the CUDA kernels (call after :func:`load`)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("roi_ops::multilevel_roi_forward", "CUDA")
