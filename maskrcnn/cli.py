"""The commands: console scripts of an installed copy (pyproject.toml), and the checkout's entry points.

    roi-gap-train [key=value ...]                     python train.py [key=value ...]
    roi-gap-evaluate ckpt_path=... [key=value ...]    python evaluate.py ckpt_path=...
    roi-gap-predict ckpt_path=... input=... [...]     python -m maskrcnn.predict ckpt_path=... input=...
    roi-gap-export ckpt_path=... [output=...]         python -m maskrcnn.export ckpt_path=... [output=...]

Each is a Hydra app over the configs that ship in the package (:data:`maskrcnn.config.CONFIG_DIR`), so it works
from any working directory, and writes its outputs (``outputs/``, ``data/``) under that directory, never into
the installed package. A user's own configs join through ``hydra.searchpath=[file:///path/to/conf]``, and the
Python modules in that folder become importable for ``_target_`` (:mod:`maskrcnn.plugins`).

A new command is one :func:`command` line here and one line in pyproject.toml's ``[project.scripts]``, as
``export = command("export", "maskrcnn.export:run")`` is for ``roi-gap-export``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskrcnn.config import CONFIG_DIR
from maskrcnn.plugins import import_searchpath_modules
from maskrcnn.resolvers import register_resolvers


def command(config_name: str, target: str) -> Callable[[], None]:
    """A console-script entry point: Hydra composes ``configs/<config_name>.yaml`` with the command line, then
    calls ``target`` ("module:function", imported only then) with the config.

    The job name (Hydra's ``<name>.log``) is ``hydra.job.name`` of that config, not this module's name.
    """
    module, _, function = target.partition(":")

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def app(cfg: DictConfig) -> None:
        # The one place where a user's modules (beside their hydra.searchpath config dir) join sys.path.
        import_searchpath_modules(HydraConfig.get().searchpath)
        getattr(importlib.import_module(module), function)(cfg)

    def main() -> None:
        register_resolvers(exit_on_error=True)  # before Hydra composes the config; a bad roi name: one line
        app()

    main.__doc__ = f"{config_name}: configs/{config_name}.yaml + the command line -> {target}(cfg)"
    return main


train = command("train", "maskrcnn.training:train")
evaluate = command("evaluate", "maskrcnn.evaluate_checkpoint:evaluate")
predict = command("predict", "maskrcnn.predict:run")
export = command("export", "maskrcnn.export:run")
