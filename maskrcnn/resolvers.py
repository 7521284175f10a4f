"""OmegaConf resolvers the configs use; registered when ``maskrcnn`` is imported (train.py, evaluate.py)."""

from __future__ import annotations

from omegaconf import OmegaConf


def roi_id(name: str, impl: str = "ours") -> str:
    """The RoI variant as runs are named and reported: ``align``, or ``align-torchvision`` for roi.impl=torchvision.

    Keeps a sweep over ``roi.impl`` from writing two runs into one directory, and keeps them apart in
    metrics.json and the gap report.
    """
    return name if impl == "ours" else f"{name}-{impl}"


OmegaConf.register_new_resolver("roi_id", roi_id, replace=True)
