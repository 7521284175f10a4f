"""A train.py run's trained detector, rebuilt from the run dir's last checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from maskrcnn.detector import MaskRCNN
from maskrcnn.plugins import add_to_sys_path, searchpath_dirs
from maskrcnn.trained_model import load_detector


def load_run(run_dir: Path) -> tuple[MaskRCNN, DictConfig]:
    """(the detector of <run_dir>/checkpoints/last.ckpt in eval mode, the run's full resolved config).

    maskrcnn.trained_model.load_detector reads every checkpoint format (with weights_only=True) and builds
    the backbone without its pretrained weights: every weight comes from the checkpoint. A user's extractor
    that the run imported through hydra.searchpath is imported from the same folder again.
    """
    import_run_modules(Path(run_dir))
    module, run_config = load_detector(Path(run_dir) / "checkpoints" / "last.ckpt")
    return module.model, OmegaConf.create(run_config)


def import_run_modules(run_dir: Path) -> list[Path]:
    """Puts the `file://` folders of the run's hydra.searchpath (<run_dir>/.hydra/hydra.yaml, as train.py wrote
    it) on sys.path, a relative one resolved against the directory the run was started from; returns those added.

    A folder that no longer exists is skipped: if the extractor needed it, building the model says which module
    it could not import.
    """
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return []
    hydra = OmegaConf.load(hydra_yaml).hydra
    started_in = OmegaConf.select(hydra, "runtime.cwd", default=None)
    folders = searchpath_dirs(hydra.get("searchpath") or [], Path(started_in) if started_in else None)
    return add_to_sys_path(folder for folder in folders if folder.is_dir())
