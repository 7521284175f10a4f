"""Custom RoI operators: RoIAlign (avg/max), RoIPool and RoIWarp, with CPU and CUDA kernels.

The C++ extension registers ``torch.ops.roi_ops.*``. ``import ops`` loads nothing: the first op call loads it
(an installed copy's prebuilt library; in a source checkout a JIT build, cached in ``<repo>/.build``), and
``ops.load()`` does so explicitly, for code that calls ``torch.ops.roi_ops`` itself. Public API::

    ops.roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                  pool_mode="avg")
    ops.roi_pool(input, boxes, output_size, spatial_scale=1.0)
    ops.roi_warp(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max")
    ops.RoIAlign / ops.RoIPool / ops.RoIWarp   (nn.Module versions)
    ops.multilevel_roi(features, rois, levels, output_size, spatial_scales, kind="align", ...)
                                               (all FPN levels in one call)
    ops.load()                                 (load the library now; -> the paths of the libraries in use)

``input`` is [N, C, H, W]; ``boxes`` is Tensor[K, 5] or a list of Tensor[L, 4]; outputs are [K, C, ph, pw].
"""

from ._registration import load
from .functional import multilevel_roi, roi_align, roi_pool, roi_warp
from .modules import RoIAlign, RoIPool, RoIWarp

__all__ = ["RoIAlign", "RoIPool", "RoIWarp", "load", "multilevel_roi", "roi_align", "roi_pool", "roi_warp"]
