"""OmegaConf resolvers the configs use; `register_resolvers` runs wherever configs are composed."""

from __future__ import annotations

from omegaconf import OmegaConf


def roi_id(name: str, impl: str = "ours") -> str:
    """The RoI variant as runs are named and reported: ``align``, or ``align-torchvision`` for roi.impl=torchvision.

    Keeps a sweep over ``roi.impl`` from writing two runs into one directory, and keeps them apart in
    metrics.json and the gap report.
    """
    return name if impl == "ours" else f"{name}-{impl}"


def register_resolvers() -> None:
    """Idempotent: train.py, evaluate.py and `maskrcnn.config.compose_config` call it before composing."""
    OmegaConf.register_new_resolver("roi_id", roi_id, replace=True)
