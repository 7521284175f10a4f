"""The Lightning callbacks that keep the LightningModule thin: evaluation, pictures, guards and bookkeeping."""

from maskrcnn.callbacks.coco_evaluation import CocoEvaluation
from maskrcnn.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError
from maskrcnn.callbacks.rng_state import RNGStates
from maskrcnn.callbacks.skipped_images import SkippedImages
from maskrcnn.callbacks.validation_images import ValidationImages

__all__ = ["CocoEvaluation", "NonFiniteGuard", "NonFiniteLossError", "RNGStates", "SkippedImages", "ValidationImages"]
