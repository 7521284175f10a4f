"""Mask R-CNN research framework: model assembly, data, training, evaluation.

``from maskrcnn import load_detector``: a checkpoint's trained detector (maskrcnn.trained_model), imported on
first use so that the analysis tools (maskrcnn.analysis) import neither torch nor the ops.
"""


def __getattr__(name: str):
    if name == "load_detector":
        from maskrcnn.trained_model import load_detector

        return load_detector
    raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")
