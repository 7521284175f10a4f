"""The installable package, used as a user would: ``pip wheel`` -> a platform wheel with the compiled ops, the
configs and the console scripts; ``pip install --target`` into a folder made read-only; then, from a third
working directory with an empty TORCH_EXTENSIONS_DIR and user cache, the ops against torchvision (and bitwise
against the checkout's JIT build), the ISA choice, the predict console script on a smoke checkpoint, and the
packaged configs joined by a user's own through ``hydra.searchpath``. Nothing may be written under the install
folder, and nothing may be compiled.

Cost: the wheel builds in the checkout's ``build/`` (setuptools' build folder, which pip reuses for a local
directory; ninja skips objects that are up to date), with ``ROI_OPS_CPU_CAPABILITIES=native``: one CPU library,
this machine's ISA. The first run in a checkout compiles it (~1 min on 2 cores); later runs re-link and zip.
The three-ISA default build is the same code with two more compiles.

Also here: ``roi=align_legacy-torchvision`` builds and runs the detector with no compiled ops (``import ops`` is lazy).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("roi-gap-train", "roi-gap-evaluate", "roi-gap-predict", "roi-gap-export")


@dataclass
class Install:
    wheel: Path
    site: Path  # pip install --target, made read-only
    cwd: Path  # the user's working directory
    ext: Path  # TORCH_EXTENSIONS_DIR, empty
    cache: Path  # XDG_CACHE_HOME, empty
    before: dict  # the site's listing before any use

    def env(self, **extra: str) -> dict[str, str]:
        """The installed copy first on the path (the environment's site-packages still give torch etc.)."""
        drop = ("PYTHONPATH", "ROI_OPS_BUILD_DIR", "ATEN_CPU_CAPABILITY", "ROI_OPS_FMAD")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        return {**env, "PYTHONPATH": str(self.site), "TORCH_EXTENSIONS_DIR": str(self.ext),
                "XDG_CACHE_HOME": str(self.cache), **extra}  # fmt: skip

    def run(self, args: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=self.cwd, env=self.env(**extra), capture_output=True, text=True, timeout=300)

    def python(self, code: str, **extra: str) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", code], **extra)

    def assert_untouched(self) -> None:
        """No file or folder under the install was added, removed or modified, and nothing was compiled."""
        assert listing(self.site) == self.before
        assert not any(self.ext.iterdir()) and not (self.cache / "roi_gap").exists()  # (matplotlib caches there)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def _pip(*args: str, cwd: Path = REPO, **env: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--disable-pip-version-check", "-q"],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    # One ISA (this machine's) unless the caller asks for more: see the module docstring.
    isas = os.environ.get("ROI_OPS_CPU_CAPABILITIES", "native")
    _pip("wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
         ROI_OPS_CPU_CAPABILITIES=isas)  # fmt: skip
    (wheel,) = (root / "dist").glob("*.whl")
    site = root / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel))
    for path in [site, *site.rglob("*")]:  # chmod -R a-w
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    dirs = [root / name for name in ("work", "ext", "cache")]
    for d in dirs:
        d.mkdir()
    yield Install(wheel, site, *dirs, before=listing(site))
    for path in [site, *site.rglob("*")]:  # so that pytest can remove it
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_wheel_is_a_platform_wheel_with_compiled_ops_configs_and_commands(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        tags = [line.split(": ", 1)[1] for line in whl.read(meta).decode().splitlines() if line.startswith("Tag: ")]
        info = json.loads(whl.read("ops/_lib/build_info.json"))
        scripts = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert tags and not any(t.endswith("-none-any") for t in tags), tags
    assert "-none-any" not in installed.wheel.name
    libraries = sorted(n for n in names if n.startswith("ops/_lib/roi_ops_cpu_") and n.endswith(".so"))
    assert libraries == sorted(f"ops/_lib/{lib}" for lib in info["cpu"].values()) and libraries
    assert info["torch"] == torch.__version__
    assert {"maskrcnn/configs/train.yaml", "maskrcnn/configs/roi/align.yaml", "ops/csrc/roi_ops.cpp"} <= names
    assert all(f"{s} = maskrcnn.cli:" in scripts for s in SCRIPTS)
    assert all((installed.site / "bin" / s).is_file() for s in SCRIPTS)


OPS_CHECK = """
import json, sys, torch, torchvision
import maskrcnn, ops, roi_heads
site = sys.argv[1]
assert all(m.__file__.startswith(site) for m in (maskrcnn, ops, roi_heads)), [maskrcnn.__file__, ops.__file__]
x, boxes = torch.load("inputs.pt")
x.requires_grad_()
for aligned in (False, True):
    for sr in (-1, 2):
        ours = ops.roi_align(x, boxes, (5, 4), 0.25, sr, aligned)
        ref = torchvision.ops.roi_align(x, boxes, (5, 4), 0.25, sr, aligned)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
        g, g_ref = torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0]
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)
torch.testing.assert_close(ops.roi_pool(x, boxes, 3, 0.25), torchvision.ops.roi_pool(x, boxes, 3, 0.25))
xf = x.detach().float().requires_grad_()
outs = {kind: fn(xf, boxes.float(), 5, 0.25) for kind, fn in [
    ("align_max", lambda *a: ops.roi_align(*a, 2, True, "max")), ("pool", ops.roi_pool), ("warp", ops.roi_warp),
    ("align", lambda *a: ops.roi_align(*a, 2, True))]}
grads = {kind: torch.autograd.grad(out.square().sum(), xf)[0] for kind, out in outs.items()}
torch.save({"outs": {k: v.detach() for k, v in outs.items()}, "grads": grads}, "ops_results.pt")
print(json.dumps({"loaded": sorted(p for p in torch.ops.loaded_libraries if "roi_ops" in p)}))
"""


def test_installed_ops_match_torchvision_and_the_jit_build(installed):
    """The prebuilt library, read-only, from elsewhere: equal to torchvision, and bitwise equal to the library the
    checkout JIT-compiles (the same flags), forward and backward."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 24, 20, dtype=torch.float64)
    boxes = torch.tensor([[0, 1.2, 2.5, 60.0, 40.2], [1, 10.0, 3.0, 30.3, 70.0], [0, -4.0, -3.0, 90.0, 100.0]],
                         dtype=torch.float64)  # fmt: skip
    torch.save((x, boxes), installed.cwd / "inputs.pt")
    proc = installed.run([sys.executable, "-c", OPS_CHECK, str(installed.site)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (library,) = json.loads(proc.stdout.splitlines()[-1])["loaded"]
    assert library.startswith(str(installed.site / "ops" / "_lib" / "roi_ops_cpu_")), library
    assert "JIT" not in proc.stderr and "building" not in proc.stderr
    import ops  # the checkout's, JIT-built

    got = torch.load(installed.cwd / "ops_results.pt")
    x, boxes = x.float().requires_grad_(), boxes.float()
    calls = {"align_max": lambda *a: ops.roi_align(*a, 2, True, "max"), "pool": ops.roi_pool, "warp": ops.roi_warp,
             "align": lambda *a: ops.roi_align(*a, 2, True)}  # fmt: skip
    for kind, fn in calls.items():
        out = fn(x, boxes, 5, 0.25)
        assert torch.equal(out, got["outs"][kind]), kind
        assert torch.equal(torch.autograd.grad(out.square().sum(), x)[0], got["grads"][kind]), kind
    installed.assert_untouched()


ISA_CHECK = """
import json, torch
from ops import _library
isas = {"DEFAULT": "roi_ops_cpu_default.so", "AVX2": "roi_ops_cpu_avx2.so", "AVX512": "roi_ops_cpu_avx512.so"}
plans = [_library.plan(), _library.plan({"torch": torch.__version__, "cpu": isas, "cuda": None})]
print(json.dumps([[p.libraries[0].name if p.libraries else None, p.jit_reason] for p in plans]))
"""


def test_installed_copy_never_loads_a_wider_isa(installed):
    """With ATEN_CPU_CAPABILITY=default, the installed copy takes the default library if the wheel has it, else
    none (a JIT build), never a wider one; a wheel with all three ISAs gives the default one. (Every pair of ISAs:
    tests/test_ops_loading.py.)"""
    from ops._library import select_cpu_library

    proc = installed.python(ISA_CHECK, ATEN_CPU_CAPABILITY="default")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (library, jit_reason), (from_all, _) = json.loads(proc.stdout)
    present = json.loads((installed.site / "ops" / "_lib" / "build_info.json").read_text())["cpu"]
    assert library == select_cpu_library(present, "DEFAULT")
    assert library in (None, "roi_ops_cpu_default.so") and (library is None) == (jit_reason is not None)
    if library is None:
        assert "no prebuilt library that runs on this CPU's DEFAULT vector ISA" in jit_reason
    assert from_all == "roi_ops_cpu_default.so"
    installed.assert_untouched()


@pytest.fixture(scope="module")
def smoke_checkpoint(untrained_checkpoint):
    return untrained_checkpoint


def test_installed_predict_console_script(installed, smoke_checkpoint):
    """roi-gap-predict from the install's bin/, in the user's folder: outputs there (a relative output=), the
    prebuilt ops, nothing compiled, nothing written into the install."""
    import numpy as np
    from PIL import Image

    images = installed.cwd / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / f"{i}.png")
    script = str(installed.site / "bin" / "roi-gap-predict")
    proc = installed.run([script, f"ckpt_path={smoke_checkpoint}", "input=images", "output=predictions",
                          "score_thresh=0", "device=cpu"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = installed.cwd / "predictions"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["error"] is None
    assert (out / "drawn" / "0.png").is_file() and (out / "predict.log").is_file()
    assert isinstance(json.loads((out / "predictions.json").read_text()), list)
    assert "building" not in proc.stderr and "JIT" not in proc.stderr
    installed.assert_untouched()


def test_installed_export_console_script(installed, smoke_checkpoint):
    """roi-gap-export from the install's bin/: the ONNX file in the user's folder, checked by the command in
    onnxruntime against the installed PyTorch model (two image sizes), with the prebuilt ops; nothing compiled,
    nothing written into the install."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    script = str(installed.site / "bin" / "roi-gap-export")
    proc = installed.run([script, f"ckpt_path={smoke_checkpoint}", "output=model.onnx", "hydra.run.dir=export_run"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (installed.cwd / "model.onnx").is_file()
    assert (installed.cwd / "export_run" / "export.log").read_text().count("'equal': True") == 2
    assert "building" not in proc.stderr and "JIT" not in proc.stderr
    installed.assert_untouched()


USER_MODULE = '''
import torch
from torch import nn


class MyOp(nn.Module):
    """A user's extractor (its behaviour does not matter here, only that the config and module are found)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
'''


def test_installed_configs_with_a_users_searchpath(installed):
    """The packaged configs, composed by the installed console script, joined by a user's config dir through
    hydra.searchpath; the user's module beside it is importable for _target_."""
    user = installed.cwd / "myconf"
    (user / "roi").mkdir(parents=True)
    (user / "roi" / "mine.yaml").write_text("_target_: myext.MyOp\nname: mine\nkind: align\n")
    (user / "myext.py").write_text(USER_MODULE)
    searchpath = f"hydra.searchpath=[file://{user}]"
    train = installed.run([str(installed.site / "bin" / "roi-gap-train"), "--cfg", "job", "experiment=smoke",
                           searchpath, "roi=mine"])  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "_target_: myext.MyOp" in train.stdout and "task_name: smoke" in train.stdout
    evaluate = installed.run([str(installed.site / "bin" / "roi-gap-evaluate"), "--cfg", "job", "ckpt_path=x.ckpt"])
    assert evaluate.returncode == 0 and "task_name: evaluate" in evaluate.stdout, evaluate.stderr[-3000:]
    code = (
        "import sys, hydra\n"
        "from maskrcnn.config import CONFIG_DIR, compose_config\n"
        "from maskrcnn.plugins import import_searchpath_modules\n"
        f"assert str(CONFIG_DIR) == {str(installed.site / 'maskrcnn' / 'configs')!r}, CONFIG_DIR\n"
        f"cfg = compose_config('train', ['{searchpath}', 'roi=mine'], return_hydra_config=True)\n"
        "import_searchpath_modules(cfg.hydra.searchpath)\n"
        "op = hydra.utils.instantiate({k: v for k, v in cfg.roi.items() if k != 'name'})\n"
        "print(type(op).__module__, type(op).__name__, op.kwargs['kind'])\n"
    )
    proc = installed.python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["myext", "MyOp", "align"]
    assert not (installed.site / "outputs").exists() and not (installed.site / "data").exists()
    installed.assert_untouched()


TORCHVISION_FORWARD = """
import torch
from maskrcnn.config import compose_config
from maskrcnn.training import build_module
cfg = compose_config("train", ["experiment=smoke", "roi=align_legacy-torchvision", "paths.output_dir=."])
torch.manual_seed(0)
model = build_module(cfg, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]).model.eval()
with torch.no_grad():
    (found,) = model([torch.rand(3, 128, 128)])
assert set(found) >= {"boxes", "labels", "scores", "masks"}, found.keys()
assert not hasattr(torch.ops.roi_ops, "multilevel_roi_forward")
print(sorted(p for p in torch.ops.loaded_libraries if "roi_ops" in p))
"""


def test_torchvisions_op_runs_without_compiled_ops(tmp_path):
    """roi=align_legacy-torchvision: a fresh process imports ops and roi_heads, builds the detector and runs a forward
    without ever loading or compiling roi_ops (the build folder is an empty, read-only one that a compile would
    have to write)."""
    build_dir = tmp_path / "build"
    build_dir.mkdir(mode=0o555)
    env = {**os.environ, "ROI_OPS_BUILD_DIR": str(build_dir), "TORCH_EXTENSIONS_DIR": str(build_dir)}
    proc = subprocess.run([sys.executable, "-c", TORCHVISION_FORWARD], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "[]"
    assert list(build_dir.iterdir()) == []
