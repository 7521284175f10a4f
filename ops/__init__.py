"""Custom RoI operators: RoIAlign (avg/max), RoIPool and RoIWarp, with CPU and CUDA kernels.

``import ops`` builds (first time, cached in ``<repo>/.build``) and loads the C++ extension, which registers
``torch.ops.roi_ops.*``. Public API::

    ops.roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                  pool_mode="avg")
    ops.roi_pool(input, boxes, output_size, spatial_scale=1.0)
    ops.roi_warp(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max")
    ops.RoIAlign / ops.RoIPool / ops.RoIWarp   (nn.Module versions)
    ops.multilevel_roi(features, rois, levels, output_size, spatial_scales, kind="align", ...)
                                               (all FPN levels in one call)

``input`` is [N, C, H, W]; ``boxes`` is Tensor[K, 5] or a list of Tensor[L, 4]; outputs are [K, C, ph, pw].
"""

from .functional import multilevel_roi, roi_align, roi_pool, roi_warp
from .modules import RoIAlign, RoIPool, RoIWarp

__all__ = ["RoIAlign", "RoIPool", "RoIWarp", "multilevel_roi", "roi_align", "roi_pool", "roi_warp"]
