"""Composing the run configs from code (tools, benchmarks, tests), as train.py's @hydra.main does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from maskrcnn.plugins import import_searchpath_modules
from maskrcnn.resolvers import register_resolvers

_PACKAGE = Path(__file__).resolve().parent
# The Hydra configs: inside the package in an installed copy (setup.py installs the repository's configs/ as
# maskrcnn/configs), at the repository's top level in a source checkout.
CONFIG_DIR = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"


def compose_config(name: str = "train", overrides: list[str] | None = None, **kwargs: Any) -> DictConfig:
    """configs/<name>.yaml with Hydra command-line style overrides, outside a Hydra app.

    kwargs go to `hydra.compose` (e.g. return_hydra_config=True). The folders of `hydra.searchpath=[file://DIR]`
    go on sys.path, as train.py puts them (maskrcnn.plugins).
    """
    register_resolvers()
    with_hydra = kwargs.pop("return_hydra_config", False)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides or [], return_hydra_config=True, **kwargs)
    import_searchpath_modules(cfg.hydra.searchpath)
    if not with_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
