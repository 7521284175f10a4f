"""Build of the roi-gap wheel: the C++/CUDA ops compiled at install time, the configs inside the package.

    pip install --no-build-isolation .                  # CPU ops (+ CUDA ops when nvcc is found and a GPU is visible)
    ROI_OPS_CUDA=1 pip install --no-build-isolation .   # CUDA ops too, without a GPU (TORCH_CUDA_ARCH_LIST honoured)
    pip wheel --no-deps --no-build-isolation -w dist .  # the same, as a platform wheel

The ops are compiled against the torch of the build environment, as torchvision and mmcv do, so build without
isolation, in the environment that will run them: an isolated build would fetch another torch. The
installed copy refuses a prebuilt library built for another torch, and JIT-compiles instead (:mod:`ops._library`).

What is built, into ``ops/_lib/`` (project metadata and console scripts are in pyproject.toml):

* ``roi_ops_cpu_<isa>.so``: one CPU library per vector ISA in ``ROI_OPS_CPU_CAPABILITIES`` (comma-separated:
  ``default``, ``avx2``, ``avx512``; ``native`` = this machine's; default: all three on x86-64, ``default``
  elsewhere). The loader takes the widest that the running machine supports, so a wheel built on an AVX-512
  machine runs on an AVX2 one. Each is one ~1 min compile: ``ROI_OPS_CPU_CAPABILITIES=native`` builds one.
* ``roi_ops_cuda.so``: the CUDA kernels. ``ROI_OPS_CUDA=1`` (or ``FORCE_CUDA=1``) builds them, ``0`` never;
  unset, they are built when a CUDA toolkit is found and a GPU is visible. Architectures: ``TORCH_CUDA_ARCH_LIST``
  when set; else the visible GPUs (plus PTX) as torch does; else, with no GPU, ``ops.build.CHECK_ARCHS``.
* ``build_info.json``: the torch version, ISAs and CUDA settings the loader checks.

``ROI_GAP_BUILD_OPS=0`` builds none of it (a pure-Python wheel; the ops then JIT-compile on first use).
Editable installs (``pip install -e .``) build none either: a source checkout always JIT-compiles into
``.build/`` (``make build``, ``python -m ops.build``), so edited sources are rebuilt.

The compile commands are the JIT build's (:mod:`ops.build`: ``-O3 -ffp-contract=off``, OpenMP, the ISA flags,
nvcc ``-fmad=false``), without the Python interpreter's own CFLAGS (``-g -fwrapv -DNDEBUG ...``), so the
installed library computes exactly what the JIT one does.

The configs live at the repository's top level (``configs/``) and are installed as ``maskrcnn/configs``
(a package_dir mapping), where :data:`maskrcnn.config.CONFIG_DIR` finds them.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # ops.build (the shared compile flags) from this source tree

try:
    import torch
except ImportError:  # metadata only (egg_info, sdist) can do without torch; compiling cannot
    torch = None

NO_TORCH = (
    "roi-gap compiles its ops against the installed torch, and torch is not importable here. Install torch "
    "and torchvision first, then build without isolation: pip install --no-build-isolation . "
    "(or ROI_GAP_BUILD_OPS=0 for a pure-Python install whose ops JIT-compile on first use)"
)
ISAS = {"default": "DEFAULT", "avx2": "AVX2", "avx512": "AVX512"}
CSRC = "ops/csrc"


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value in (None, "") else value.lower() not in ("0", "false", "no", "off")


def cpu_capabilities() -> list[str]:
    """The ISAs of ROI_OPS_CPU_CAPABILITIES (see the module docstring), narrowest first."""
    from ops.build import cpu_capability

    spec = os.environ.get("ROI_OPS_CPU_CAPABILITIES", "all").lower()
    if spec == "all":
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        return ["DEFAULT", "AVX2", "AVX512"] if x86 else ["DEFAULT"]
    wanted = set()
    for name in filter(None, (n.strip() for n in spec.replace(";", ",").split(","))):
        if name == "native":
            wanted.add(cpu_capability())
        elif name in ISAS:
            wanted.add(ISAS[name])
        else:
            raise SystemExit(f"ROI_OPS_CPU_CAPABILITIES: unknown ISA {name!r} (default, avx2, avx512, native, all)")
    return [isa for isa in ("DEFAULT", "AVX2", "AVX512") if isa in wanted]


def want_cuda() -> bool:
    """ROI_OPS_CUDA / FORCE_CUDA, else: a toolkit is found and a GPU is visible."""
    from ops.build import cuda_home

    asked = _flag("ROI_OPS_CUDA")
    asked = _flag("FORCE_CUDA") if asked is None else asked
    if asked is False:
        return False
    found = torch.version.cuda is not None and cuda_home() is not None
    if asked and not found:
        why = "this torch has no CUDA" if torch.version.cuda is None else "no toolkit: set CUDA_HOME, or nvcc on PATH"
        raise SystemExit(f"ROI_OPS_CUDA=1: no CUDA build is possible here ({why})")
    return bool(asked) or (found and torch.cuda.is_available())


def extensions() -> list:
    headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC).rglob("*.h"))
    if torch is None:  # placeholders, so the wheel is still a platform wheel; build_ext then explains
        from setuptools import Extension

        return [Extension("ops._lib.roi_ops_cpu_default", [f"{CSRC}/roi_ops.cpp"])]
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    from ops.build import CHECK_ARCHS, _cpp_extension, cpu_flags, cuda_flags, include_dirs

    exts = [
        CppExtension(
            f"ops._lib.roi_ops_cpu_{isa.lower()}",
            [f"{CSRC}/roi_ops.cpp"],
            include_dirs=include_dirs(False),
            extra_compile_args={"cxx": cpu_flags(isa)},
            extra_link_args=["-fopenmp"],
            depends=headers,
        )
        for isa in cpu_capabilities()
    ]
    if want_cuda():
        _cpp_extension()  # points torch's CUDA_HOME at the toolkit that nvcc runs from
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = CHECK_ARCHS  # no GPU to build for: A100 + H100 code, PTX
        exts.append(
            CUDAExtension(
                "ops._lib.roi_ops_cuda",
                sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC / "cuda").glob("*.cu")),
                include_dirs=include_dirs(True),
                extra_compile_args={"cxx": [], "nvcc": cuda_flags()},
                depends=headers,
            )
        )
    return exts


if torch is None:

    class BuildOps(build_ext):
        def run(self):
            if not getattr(self, "editable_mode", False):
                raise SystemExit(NO_TORCH)

else:
    from torch.utils.cpp_extension import BuildExtension

    class BuildOps(BuildExtension):
        """torch's BuildExtension with the JIT build's exact compile commands, one temp folder per library, and
        build_info.json beside the libraries."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, no_python_abi_suffix=True, **kwargs)  # roi_ops_cpu_avx2.so: no PyInit

        def run(self):
            if getattr(self, "editable_mode", False):
                print("roi-gap: editable install: no prebuilt ops; the checkout JIT-compiles them (make build)")
                return
            # build/ is reused between builds (ninja skips up-to-date objects); a library of an earlier build
            # with other ISAs must not ride along into this wheel.
            libs = {Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions}
            for stale in next(iter(libs)).parent.glob("*.so"):
                if stale not in libs:
                    stale.unlink()
            super().run()
            self._write_build_info()

        def build_extensions(self):
            # The interpreter's CFLAGS (-g -fwrapv -O3 -Wall -DNDEBUG ...) go before ours on every compile line;
            # the JIT build has none of them. -fPIC is what both need.
            self.compiler.compiler_so = [self.compiler.compiler_so[0], "-fPIC"]
            super().build_extensions()

        def build_extension(self, ext):
            # The same source is compiled once per ISA: each library gets its own objects and ninja file.
            temp = self.build_temp
            self.build_temp = os.path.join(temp, ext.name.rpartition(".")[2])
            try:
                super().build_extension(ext)
            finally:
                self.build_temp = temp

        def _info_path(self) -> Path:
            return Path(self.get_ext_fullpath(self.extensions[0].name)).parent / "build_info.json"

        def _write_build_info(self):
            from ops.build import fmad

            libs = {ext.name.rpartition(".")[2]: Path(self.get_ext_fullpath(ext.name)).name for ext in self.extensions}
            cuda = libs.pop("roi_ops_cuda", None)
            info = {
                "torch": torch.__version__,
                "cpu": {name.rpartition("_")[2].upper(): lib for name, lib in libs.items()},
                "cuda": None if cuda is None else {
                    "library": cuda,
                    "cuda": torch.version.cuda,
                    "archs": os.environ.get("TORCH_CUDA_ARCH_LIST") or "the GPUs visible at build time, + PTX",
                    "fmad": fmad(),
                },
            }  # fmt: skip
            self._info_path().write_text(json.dumps(info, indent=1) + "\n")
            print(f"roi-gap: wrote {self._info_path()}: {info}")

        def get_outputs(self):
            return super().get_outputs() + [str(self._info_path())]


def data_packages(package: str, folder: str) -> list[str]:
    """``package`` and one (data-only) package per subfolder of ``folder``, as setuptools wants them listed."""
    subfolders = sorted(d for d in (ROOT / folder).rglob("*") if d.is_dir() and d.name != "__pycache__")
    return [package] + [f"{package}.{d.relative_to(ROOT / folder).as_posix().replace('/', '.')}" for d in subfolders]


SOURCES = data_packages("ops.csrc", CSRC)
CONFIGS = data_packages("maskrcnn.configs", "configs")  # configs/ -> maskrcnn/configs/ in the install

setup(
    packages=find_packages(include=["ops*", "roi_heads*", "maskrcnn*"]) + SOURCES + CONFIGS,
    package_dir={"maskrcnn.configs": "configs"},
    package_data={**{p: ["*.h", "*.cpp", "*.cu"] for p in SOURCES}, **{p: ["*.yaml"] for p in CONFIGS}},
    ext_modules=[] if _flag("ROI_GAP_BUILD_OPS") is False else extensions(),
    cmdclass={"build_ext": BuildOps},
)
