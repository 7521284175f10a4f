"""Mask R-CNN research framework: model assembly, data, evaluation."""
