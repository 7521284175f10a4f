"""Which ``roi_ops`` library a process loads, and when (ops._library, ops.build.build_root, ops._registration).

* ``import ops`` loads nothing; the first op call does.
* An installed copy takes, among its prebuilt CPU libraries, the widest vector ISA that ATen uses on the machine,
  never a wider one; it JIT-compiles (into TORCH_EXTENSIONS_DIR or the user cache, never into the package)
  when none fits.

The wheel itself is built and used read-only in tests/test_packaging.py, which also checks the choice in a
process whose ATEN_CPU_CAPABILITY is lowered, and that a run with roi=align_legacy-torchvision loads no library.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ops import _library, build

REPO = Path(__file__).resolve().parents[1]
ALL = {"DEFAULT": "roi_ops_cpu_default.so", "AVX2": "roi_ops_cpu_avx2.so", "AVX512": "roi_ops_cpu_avx512.so"}


@pytest.mark.parametrize(
    "present, capability, expected",
    [
        (ALL, "AVX512", "AVX512"),
        (ALL, "AVX2", "AVX2"),
        (ALL, "DEFAULT", "DEFAULT"),
        ({"DEFAULT": "d", "AVX2": "a2"}, "AVX512", "AVX2"),  # the widest the wheel has, below the machine's
        ({"DEFAULT": "d", "AVX512": "a5"}, "AVX2", "DEFAULT"),  # never the AVX-512 library on an AVX2 machine
        ({"AVX512": "a5"}, "AVX2", None),  # nothing runnable: a JIT build
        ({"AVX2": "a2"}, "DEFAULT", None),
        (ALL, "SVE256", "DEFAULT"),  # an ISA this build does not know: only the baseline is safe
        (ALL, "NO AVX", "DEFAULT"),
    ],
)
def test_select_cpu_library_never_wider_than_the_machine(present, capability, expected):
    assert _library.select_cpu_library(present, capability) == (None if expected is None else present[expected])


def _info(**changes) -> dict:
    return {"torch": torch.__version__, "cpu": dict(ALL), "cuda": None, **changes}


def test_plan_jit_builds_when_the_prebuilt_library_does_not_fit(tmp_path):
    ok = _library.plan(_info(), tmp_path)
    assert ok.jit_reason is None and ok.libraries == (tmp_path / ALL[build.cpu_capability()],)
    other = _library.plan(_info(torch="2.0.0"), tmp_path)
    assert other.libraries == () and f"for torch 2.0.0, this is torch {torch.__version__}" in other.jit_reason
    if build.cpu_capability() != "AVX512":
        pytest.skip("the next case needs an AVX-512 machine")
    narrow = _library.plan(_info(cpu={"AVX512": ALL["AVX512"]}), tmp_path)
    assert narrow.jit_reason is None


def test_build_root_order(monkeypatch, tmp_path):
    """ROI_OPS_BUILD_DIR, else the checkout's .build, else TORCH_EXTENSIONS_DIR, else the user cache; an installed
    copy never builds into its package folder."""
    monkeypatch.setenv("ROI_OPS_BUILD_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert build.build_root()[0] == tmp_path / "explicit"
    monkeypatch.delenv("ROI_OPS_BUILD_DIR")
    assert build.is_checkout() and build.build_root()[0] == REPO / ".build"
    monkeypatch.setattr(build, "is_checkout", lambda: False)  # an installed copy
    assert build.build_root() == (tmp_path / "ext", "TORCH_EXTENSIONS_DIR")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    root, why = build.build_root()
    assert root == tmp_path / "cache" / "roi_gap" / f"torch-{torch.__version__}" and "user cache" in why


def test_a_cuda_tensor_without_cuda_kernels_is_a_clear_error(monkeypatch):
    """An install built without CUDA, on a machine with a GPU: the op says what to do, not the dispatcher's
    "could not run ... with arguments from the 'CUDA' backend"."""
    from types import SimpleNamespace

    import ops
    from ops import _registration

    ops.load()
    monkeypatch.setattr(_registration, "_cuda_kernels", False)
    with pytest.raises(RuntimeError, match="no CUDA kernels .* ROI_OPS_CUDA=1"):
        _registration.ready(SimpleNamespace(is_cuda=True))
    _registration.ready(SimpleNamespace(is_cuda=False))
