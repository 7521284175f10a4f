"""OmegaConf resolvers the configs use; `register_resolvers` runs wherever configs are composed."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def run_roi_name(roi: Any) -> str:
    """``${run_roi_name:${roi}}``: the `roi` config's name, as run directories are named, after the check that
    a built-in name labels exactly the built-in config (maskrcnn.roi_config). It runs when Hydra names the run
    directory, so a missing or untrue name stops the run before anything is written."""
    from maskrcnn.roi_config import check_roi_config  # maskrcnn.config imports this module

    if isinstance(roi, DictConfig):
        roi = OmegaConf.to_container(roi, resolve=True)
    return check_roi_config(roi)


def _exiting(resolver):
    """The resolver, raising SystemExit with its message instead of an exception: Hydra resolves the run
    directory outside the task function, where its error report fails ("An error occurred during Hydra's
    exception formatting") and buries the message under a traceback."""

    def resolve(*args: Any) -> Any:
        try:
            return resolver(*args)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None

    return resolve


def register_resolvers(exit_on_error: bool = False) -> None:
    """Idempotent: train.py (exit_on_error: a bad config ends the command with its message alone), evaluate.py
    and `maskrcnn.config.compose_config` call it before composing."""
    resolver = _exiting(run_roi_name) if exit_on_error else run_roi_name
    OmegaConf.register_new_resolver("run_roi_name", resolver, replace=True)
