"""Collectives on picklable objects that are no-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order. Every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
