"""Non-parametric bootstrap confidence interval of a mean (section 4.5: B = 1000, 95 %)."""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 2025


def bootstrap_mean_ci(values: Sequence[float], resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                      seed: int = DEFAULT_SEED) -> Dict[str, float]:
    """Mean of the finite ``values`` with its percentile bootstrap CI.

    Non-finite values (a distance to an empty mask) are left out and counted in ``excluded``. The resampling
    uses its own ``numpy.random.Generator(seed)``, so the interval is a pure function of values and seed.
    Returns mean, std, ci_low, ci_high, n (values used), excluded.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n, excluded = int(finite.size), int(arr.size - finite.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0,
                "excluded": excluded}
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    if n == 1:
        low = high = mean
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        idx = rng.integers(0, n, size=(int(resamples), n))
        means = finite[idx].mean(axis=1)
        alpha = (1.0 - confidence) / 2.0
        low, high = (float(v) for v in np.quantile(means, [alpha, 1.0 - alpha]))
    return {"mean": mean, "std": std, "ci_low": low, "ci_high": high, "n": n, "excluded": excluded}
