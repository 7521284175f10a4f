"""Mask R-CNN RoI heads: the part of the detector whose RoI feature extractor this project varies.

Shape shorthand used throughout the package:
    N: images in the batch        R: sampled RoIs / proposals (all images)
    C: feature channels           K: foreground classes (+1 for background where noted)
    P: positive RoIs              M: mask resolution (e.g. 28)
"""

from roi_heads.box_head import BoxPredictor, MLPBoxHead, Res5BoxHead
from roi_heads.extractor import RoIExtractor, level_of_boxes
from roi_heads.heads import RoIHeads
from roi_heads.mask_head import MaskConvHead, MaskPredictor
from roi_heads.roi_op import RoIOp
from roi_heads.sampling import ProposalSampler

__all__ = [
    "BoxPredictor",
    "MLPBoxHead",
    "MaskConvHead",
    "MaskPredictor",
    "ProposalSampler",
    "Res5BoxHead",
    "RoIExtractor",
    "RoIHeads",
    "RoIOp",
    "level_of_boxes",
]
