"""Training runs as the gap report sees them: one record per metrics.json, with the setting it belongs to.

A run directory (written by train.py) holds metrics.json and its config, `.hydra/config.yaml` (or, in runs
copied without it, `tensorboard/hparams.yaml`). A setting is model + data + schedule: runs of one setting differ
only in the RoI variant and the seed, so they can be compared, and paired by seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maskrcnn.nested import flatten

METRICS = [f"{kind}/{m}" for kind in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
REQUIRED = [*METRICS, "roi", "model", "data", "seed", "steps"]
ARCH_ORDER = ("c4", "c5", "fpn")  # the paper's Table 2c, 2d, then FPN


class ReportError(ValueError):
    """No runs, or a run directory that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Setting:
    arch: str  # the backbone's features (config model.backbone.features): c4 | c5 | fpn
    model: str
    data: str
    steps: int  # optimizer steps the run made (metrics.json)
    batch_size: int  # images per step and device
    lr: float
    lr_steps: tuple[float, ...]
    gamma: float
    tail: int = 1  # the metric is the mean of the last `tail` validations (train.report_tail)

    @property
    def label(self) -> str:
        """E.g. 'C4 · r18_c4 · shapes · 600 steps × 4 images, lr 0.02 (×0.1 at 450)', with ', mean of the last 3
        validations' where that is the metric; distinct settings differ."""
        decay = f" (×{self.gamma:g} at {', '.join(f'{s:g}' for s in self.lr_steps)})" if self.lr_steps else ""
        tail = f", mean of the last {self.tail} validations" if self.tail > 1 else ""
        return (f"{self.arch.upper()} · {self.model} · {self.data} · {self.steps} steps × {self.batch_size} images, "
                f"lr {self.lr:g}{decay}{tail}")

    def sort_key(self) -> tuple:
        rank = ARCH_ORDER.index(self.arch) if self.arch in ARCH_ORDER else len(ARCH_ORDER)
        return (rank, self.label)


def run_config(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The run's config as a plain dict (interpolations left as written) and the file it came from."""
    hydra_cfg, hparams = run_dir / ".hydra" / "config.yaml", run_dir / "tensorboard" / "hparams.yaml"
    for path in (hydra_cfg, hparams):
        if path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise ReportError(f"{path}: not valid YAML ({e})") from e
            if path == hparams and isinstance(cfg, dict):  # our hyper-parameters: run_config (format 2) or cfg (1)
                cfg = cfg.get("run_config") or cfg.get("cfg") or cfg
            if not isinstance(cfg, dict):
                raise ReportError(f"{path}: not a run config (a mapping)")
            return cfg, path
    raise ReportError(f"{run_dir}: no run config next to metrics.json (looked for {hydra_cfg} and {hparams})")


def _get(cfg: dict, dotted: str, path: Path) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ReportError(f"{path}: no key {dotted}")
        node = node[key]
    return node


def _backbone_features(cfg: dict, path: Path) -> Any:
    backbone = _get(cfg, "model.backbone", path)
    if isinstance(backbone, dict) and "kind" in backbone:  # runs from before the key was renamed to features
        return backbone["kind"]
    return _get(cfg, "model.backbone.features", path)


def setting_of(metrics: dict, cfg: dict, cfg_path: Path) -> Setting:
    return Setting(
        arch=str(_backbone_features(cfg, cfg_path)),
        model=metrics["model"],
        data=metrics["data"],
        steps=int(metrics["steps"]),
        batch_size=int(_get(cfg, "data.module.batch_size", cfg_path)),
        lr=float(_get(cfg, "optim.lr", cfg_path)),
        lr_steps=tuple(float(s) for s in _get(cfg, "optim.steps", cfg_path)),
        gamma=float(_get(cfg, "optim.gamma", cfg_path)),
        tail=int(cfg.get("train", {}).get("report_tail", 1)),
    )


def load_runs(dirs: list[Path]) -> list[dict]:
    """One record per metrics.json below `dirs`: setting (label), arch, roi, seed, metrics (what the table uses:
    the tail mean where the setting has one), final_metrics (the last validation's), tail_steps, convergence
    (the run's verdict, or None), git_commit / git_dirty (None for runs from before they were recorded),
    train_minutes, steps, device, run_dir; sorted by setting, then file. Raises ReportError naming the file for a
    bad run, two runs of one (setting, roi, seed), or runs of one setting whose model configs differ."""
    # resolve() + set: a run dir given next to its sweep dir counts once.
    files = sorted({f.resolve() for d in dirs for f in Path(d).rglob("metrics.json")})
    if not files:
        raise ReportError(f"no metrics.json found under {', '.join(str(d) for d in dirs)}")
    runs, settings, models, seen = [], {}, {}, {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from e
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ReportError(f"{path}: missing key(s) {', '.join(missing)}; is it a train.py metrics.json?")
        cfg, cfg_path = run_config(path.parent)
        setting = setting_of(data, cfg, cfg_path)
        key = (setting.label, data["roi"], data["seed"])
        if key in seen:
            raise ReportError(f"{seen[key]} and {path}: two runs of {data['roi']}, seed {data['seed']}, "
                              f"setting {setting.label}; give the report only one of them")
        seen[key] = path
        _check_same_model(models.setdefault(setting.label, (cfg_path, cfg.get("model", {}))),
                          (cfg_path, cfg.get("model", {})))
        settings[setting.label] = setting
        final = {k: data[k] for k in METRICS}
        tail = data.get("tail") if setting.tail > 1 else None
        if setting.tail > 1 and (not tail or tail["n"] != setting.tail):
            raise ReportError(f"{path}: its setting reports the mean of the last {setting.tail} validations, but the "
                              f"run recorded {tail['n'] if tail else 'no'} tail validations")
        runs.append({
            "setting": setting.label,
            "arch": setting.arch,
            "roi": data["roi"],
            "seed": data["seed"],
            "metrics": {k: tail["metrics"][k] for k in METRICS} if tail else final,
            "final_metrics": final,
            "tail_steps": tail["steps"] if tail else [data["steps"]],
            "convergence": data.get("convergence"),
            "git_commit": data.get("git_commit"),
            "git_dirty": data.get("git_dirty"),
            "train_minutes": data.get("train_minutes"),
            "steps": data["steps"],
            "device": data.get("device"),
            "run_dir": os.path.relpath(path.parent),
        })
    runs.sort(key=lambda r: settings[r["setting"]].sort_key())
    return runs


def _check_same_model(first: tuple[Path, dict], other: tuple[Path, dict]) -> None:
    """Runs of one setting must share their model config (keys that only one has, added to the configs
    later with a default, are not compared)."""
    (path_a, a), (path_b, b) = first, other
    flat_a, flat_b = flatten(a), flatten(b)
    differ = [k for k in sorted(flat_a.keys() & flat_b.keys()) if flat_a[k] != flat_b[k]]
    if differ:
        shown = "; ".join(f"model.{k}: {flat_a[k]!r} vs {flat_b[k]!r}" for k in differ[:5])
        raise ReportError(f"{path_a} and {path_b}: runs of one setting with different model configs ({shown})")

