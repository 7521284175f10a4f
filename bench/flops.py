"""A training step's FLOPs, and the FLOP/s of a large fp32 GEMM on the same device and threads to compare with.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode around the forward and around the backward of
one (untimed) step; it sees every aten op the step dispatches, the backward's included (convolution_backward,
the mm of a Linear's weight gradient), which torch.profiler's `with_flops` does not (forward conv / mm only).
It counts matrix products and convolutions, 2 FLOPs per multiply-add: mm, addmm, bmm, baddbmm, convolution and
its backward (and attention, not used here). It does not count element-wise ops, batch norm, pooling, the RoI
ops, NMS, the losses or the optimizer: the count is the step's GEMM-shaped work, the part a GEMM-rate reference
is fair for.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

MIN_SAMPLE_S = 0.05  # a GEMM timing sample runs at least this long, so a fast device is not timing its launches


class FlopCount:
    """`section` for train_step: counts the FLOPs of its forward and backward sections into `flops`."""

    def __init__(self) -> None:
        self.flops: Counter = Counter()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if name not in ("forward", "backward"):
            yield
            return
        with FlopCounterMode(display=False) as counter:
            yield
        self.flops[name] += counter.get_total_flops()


def gemm_flops_per_s(device: torch.device, n: int = 2048, repeats: int = 5) -> list[float]:
    """FLOP/s of torch.mm on two fp32 [n, n] matrices (2 n^3 FLOPs a product), one value per timing sample."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=g) for _ in range(2))
    out = torch.empty(n, n, device=device)
    sync()
    start = time.perf_counter()
    torch.mm(a, b, out=out)  # warm-up (the BLAS handle, its workspace), which also sizes a sample
    sync()
    per_sample = max(1, math.ceil(MIN_SAMPLE_S / (time.perf_counter() - start)))
    rates = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(per_sample):
            torch.mm(a, b, out=out)
        sync()
        rates.append(2 * n**3 * per_sample / (time.perf_counter() - start))
    return rates


def flops_report(flops: dict[str, int], step_seconds: float, gemm_rates: list[float]) -> dict:
    """The step's FLOPs (forward, backward), achieved FLOP/s (over the median step's seconds, data and optimizer
    included) and its fraction of the median GEMM rate."""
    total = flops.get("forward", 0) + flops.get("backward", 0)
    achieved = total / step_seconds
    gemm = statistics.median(gemm_rates)
    return {
        "flops_per_step": {
            "forward": int(flops.get("forward", 0)),
            "backward": int(flops.get("backward", 0)),
            "total": int(total),
        },
        "achieved_flops_per_s": round(achieved, -6),
        "gemm_flops_per_s": round(gemm, -6),
        "gemm_fraction": round(achieved / gemm, 4),
    }
