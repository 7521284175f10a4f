"""Composing the run configs from code (tools, benchmarks, tests), as train.py's @hydra.main does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from maskrcnn.resolvers import register_resolvers

_PACKAGE = Path(__file__).resolve().parent
# The Hydra configs: inside the package in an installed copy (setup.py installs the repository's configs/ as
# maskrcnn/configs), at the repository's top level in a source checkout.
CONFIG_DIR = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"


def compose_config(name: str = "train", overrides: list[str] | None = None, **kwargs: Any) -> DictConfig:
    """configs/<name>.yaml with Hydra command-line style overrides, outside a Hydra app.

    kwargs go to `hydra.compose` (e.g. return_hydra_config=True).
    """
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [], **kwargs)
