"""Datasets (COCO-format, built-in synthetic shapes), transforms, samplers and the Lightning DataModule."""

from maskrcnn.data.coco import BadDataError, CocoInstances, DatasetNotFoundError
from maskrcnn.data.shapes import SHAPE_CLASSES, ensure_shapes_dataset

__all__ = ["SHAPE_CLASSES", "BadDataError", "CocoInstances", "DatasetNotFoundError", "ensure_shapes_dataset"]
