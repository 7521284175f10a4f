"""Mask R-CNN research framework: model assembly, data, evaluation."""

from maskrcnn import resolvers  # noqa: F401  (registers the configs' ${roi_id:...} resolver)
