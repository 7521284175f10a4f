"""The RoI heads' extractors from a `roi` config: an op wrapped in our level mapping, or a user's pooler.

The config's `_target_` builds either

* an **op** (roi_heads.contract.RoIFeatureOp, or any callable ``op(feature, rois, output_size, spatial_scale)``),
  built once and shared by the box and mask branches, each wrapping it in a roi_heads.RoIExtractor; or
* a **pooler factory**, torchvision style: a class like ``torchvision.ops.MultiScaleRoIAlign`` whose constructor
  takes ``featmap_names`` and ``output_size`` (the config sets neither), or any target with ``_partial_: true``.
  It is called once per branch, ``factory(featmap_names=[...], output_size=S)``, as torchvision's MaskRCNN takes
  ``box_roi_pool`` / ``mask_roi_pool``.

Either way each extractor runs one tiny forward here, when the model is built (roi_heads.contract.check_op /
check_pooler), and the config's name must be the truth about it (maskrcnn.roi_config).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskrcnn.backbones import Backbone
from maskrcnn.roi_config import check_roi_config, constructor_config, describe
from roi_heads import RoIExtractor
from roi_heads.contract import ExtractorError, RoIPooler, as_op, check_op, check_pooler

log = logging.getLogger(__name__)

POOLER_ARGS = {"featmap_names", "output_size"}  # a constructor that takes both builds a torchvision-style pooler
CONTRACT = (
    "An op is called as op(feature [N, C, H, W], rois [R, 5], output_size, spatial_scale) -> [R, C, S, S]; a "
    "torchvision-style pooler is built per branch as factory(featmap_names=..., output_size=S) and called as "
    "pooler(features, boxes, image_sizes) (README: Your own RoI extractor)."
)


def build_poolers(
    roi: Mapping[str, Any], backbone: Backbone, output_sizes: dict[str, int], canonical_scale: float,
    canonical_level: int,
) -> dict[str, RoIPooler]:
    """{branch: pooler} for output_sizes {branch: S} (e.g. box 7, mask 14), each checked with one tiny forward.

    Raises RoIConfigError for a missing or untrue name, ExtractorError (naming the class, the call, the expected
    and actual output) for an extractor that cannot be built or breaks the contract.
    """
    if isinstance(roi, DictConfig):
        roi = OmegaConf.to_container(roi, resolve=True)
    name = check_roi_config(roi)
    who = f"{roi.get('_target_')} (roi.name={name})"
    accepted = constructor_params(roi.get("_target_"))
    spec, left_out = constructor_config(roi, accepted)
    if left_out:
        log.info("roi.%s: not arguments of %s, left out (they come from the built-in roi config it overrides)",
                 ", roi.".join(left_out), roi["_target_"])  # fmt: skip
    is_pooler = bool(roi.get("_partial_")) or (
        accepted is not None and accepted >= POOLER_ARGS and not POOLER_ARGS & spec.keys()
    )
    try:
        built = instantiate(spec, _partial_=is_pooler)
    except InstantiationException as e:
        hint = (
            "A module of your own must be importable: put it on PYTHONPATH, or next to your config directory "
            "given by hydra.searchpath=[file://DIR]."
            if "Error locating target" in str(e)
            else "Every key of the roi config but `name` goes to the constructor."
        )
        raise ExtractorError(f"{who}: could not build {describe(roi)}: {e}\n{hint}") from e
    names, strides, channels = backbone.featmap_names, backbone.strides, backbone.out_channels
    try:
        if is_pooler:
            return {branch: _pooler(built, who, names, strides, channels, size)
                    for branch, size in output_sizes.items()}  # fmt: skip
        op = as_op(built)
        for size in sorted(set(output_sizes.values())):
            check_op(op, who, strides, channels, size)
    except ExtractorError as e:
        raise ExtractorError(f"{e}\n{CONTRACT}") from e
    return {
        branch: RoIExtractor(op, names, strides, size, canonical_scale, canonical_level)
        for branch, size in output_sizes.items()
    }


def _pooler(factory: Any, who: str, names: list[str], strides: list[int], channels: int, size: int) -> RoIPooler:
    try:
        pooler = factory(featmap_names=list(names), output_size=size)
    except TypeError as e:
        raise ExtractorError(f"{who}: factory(featmap_names={names}, output_size={size}) raised TypeError: {e}") from e
    check_pooler(pooler, who, names, strides, channels, size)
    return pooler


def constructor_params(target: str | None) -> set[str] | None:
    """The keyword arguments `target` (a dotted path) takes; None when it takes **kwargs or cannot be
    inspected (then every key is passed, and instantiate reports what is wrong)."""
    try:
        target_object = get_object(target)
        if isinstance(target_object, type) and target_object.__init__ in (nn.Module.__init__, object.__init__):
            return set()  # nn.Module's own __init__ takes (*args, **kwargs) only to refuse them
        params = inspect.signature(target_object).parameters.values()
    except Exception:  # not importable (instantiate names it), or no signature: pass everything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
