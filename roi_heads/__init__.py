"""Mask R-CNN RoI heads: the part of the detector whose RoI feature extractor this project varies.

The extractor contract (what a user's own extractor implements) is in roi_heads.contract: RoIFeatureOp (an
op: subclass it), RoIPooler (a torchvision-style pooler), SingleLevelOp.

Shape shorthand used throughout the package:
    N: images in the batch        R: sampled RoIs / proposals (all images)
    C: feature channels           K: foreground classes (+1 for background where noted)
    P: positive RoIs              M: mask resolution (e.g. 28)
"""

from roi_heads.box_head import BoxPredictor, MLPBoxHead, Res5BoxHead
from roi_heads.contract import ExtractorError, RoIFeatureOp, RoIPooler, SingleLevelOp
from roi_heads.extractor import RoIExtractor, level_of_boxes
from roi_heads.heads import RoIHeads
from roi_heads.mask_head import MaskConvHead, MaskPredictor
from roi_heads.roi_op import RoIOp
from roi_heads.sampling import ProposalSampler
from roi_heads.torchvision_op import TorchvisionRoIOp

__all__ = [
    "BoxPredictor",
    "ExtractorError",
    "MLPBoxHead",
    "MaskConvHead",
    "MaskPredictor",
    "ProposalSampler",
    "Res5BoxHead",
    "RoIExtractor",
    "RoIFeatureOp",
    "RoIHeads",
    "RoIOp",
    "RoIPooler",
    "SingleLevelOp",
    "TorchvisionRoIOp",
    "level_of_boxes",
]
