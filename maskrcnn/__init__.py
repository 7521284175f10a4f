"""Mask R-CNN research framework: model assembly, data, training, evaluation."""
