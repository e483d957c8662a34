"""Non-parametric bootstrap confidence interval of a mean (section 4.5: B = 1000, 95 %), and of a paired
difference between two scorings of the same cases."""

from __future__ import annotations

import math
from typing import Dict, Hashable, Mapping, Sequence

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


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float], resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED) -> Dict[str, float]:
    """Mean over the cases of (``a`` − ``b``), case id -> score, with its percentile bootstrap CI, and on how many
    cases ``a`` is better and worse. Both must score the same cases: a difference over different cases is not
    paired (ValueError)."""
    ids = sorted(set(a) & set(b))
    if len(ids) != len(a) or len(ids) != len(b):
        raise ValueError(f"the two scorings hold different cases ({len(a)} and {len(b)}, {len(ids)} in common)")
    diff = [a[i] - b[i] for i in ids]
    ci = bootstrap_mean_ci(diff, resamples=resamples, seed=seed)
    return {"mean": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": len(ids),
            "better": sum(d > 0 for d in diff), "worse": sum(d < 0 for d in diff)}
