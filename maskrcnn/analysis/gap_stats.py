"""Seed statistics of the gap report: mean ± std over seeds, and paired (same-seed) differences with a t interval.

Pairing by seed removes what two runs of one seed share (the data order and augmentation draws, the
initialisation), so the paired interval is the honest one for "variant minus RoIPool".
"""

from __future__ import annotations

import math
import statistics
from functools import lru_cache

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample std); std is None for a single value (no spread to show)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


@lru_cache(maxsize=64)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with `df` degrees of freedom.

    No scipy here: the CDF is 0.5 + the integral of the density from 0 (Simpson's rule, 4000 intervals,
    error < 1e-9 for the quantiles used), inverted by bisection.
    """
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4001)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
        weights = np.ones_like(t)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return 0.5 + float(density @ weights) * (x / 4000) / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(values: dict[int, float], baseline: dict[int, float], level: float = 0.95) -> dict | None:
    """Seed-paired `values - baseline` ({seed: value} each): {"n", "seeds", "mean", "std", "ci"}, where
    ci = mean ± t_{(1+level)/2, n-1} · std / sqrt(n), or None with fewer than 2 pairs. None if no seed is shared."""
    seeds = sorted(values.keys() & baseline.keys())
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    mean, std = mean_std(diffs)
    ci = None
    if std is not None:
        half = t_quantile((1 + level) / 2, len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = [mean - half, mean + half]
    return {"n": len(seeds), "seeds": seeds, "mean": mean, "std": std, "ci": ci}
