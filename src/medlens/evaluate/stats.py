"""Summary statistics with bootstrap confidence intervals, and paired model comparison.

Undefined values (``NaN``, e.g. HD95 with an empty mask, see
:mod:`medlens.evaluate.segmentation`) are never averaged silently: :func:`summarize` leaves
them out and reports how many it left out (``n_undefined``); infinite values are treated the
same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from medlens.errors import MedlensError


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (finite values only).

    Deterministic for a given ``seed``. Returns ``(nan, nan)`` for no values.

    Example:
        >>> low, high = bootstrap_ci([0.8, 0.82, 0.85, 0.9, 0.7])
        >>> 0.7 < low < 0.81 < high < 0.9
        True
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return float("nan"), float("nan")
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    # chunked so that a large case list never needs num_resamples x n memory at once
    step = max(1, 4_000_000 // data.size)
    for start in range(0, num_resamples, step):
        count = min(step, num_resamples - start)
        picks = rng.integers(0, data.size, size=(count, data.size))
        means[start : start + count] = data[picks].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean, median, std (ddof=1), min, max and bootstrap CI of the finite values.

    Example:
        >>> s = summarize([1.0, 2.0, float("nan"), 3.0])
        >>> s["mean"], s["median"], s["n"], s["n_undefined"]
        (2.0, 2.0, 3, 1)
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = data[np.isfinite(data)]
    result: dict[str, Any] = {"n": int(finite.size), "n_undefined": int(data.size - finite.size)}
    if finite.size == 0:
        nan = float("nan")
        result.update(mean=nan, median=nan, std=nan, min=nan, max=nan, ci_low=nan, ci_high=nan)
        return result
    low, high = bootstrap_ci(finite, confidence=confidence, num_resamples=num_resamples, seed=seed)
    result.update(
        mean=float(finite.mean()),
        median=float(np.median(finite)),
        std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        min=float(finite.min()),
        max=float(finite.max()),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
    )
    return result


def paired_comparison(
    values_a: Sequence[float] | np.ndarray,
    values_b: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Is model B better than model A on the same cases? Two-sided Wilcoxon signed-rank test.

    ``values_a[i]`` and ``values_b[i]`` must be the same case. Pairs with an undefined value
    on either side are dropped and counted (``n_dropped``). Reports the mean and median
    difference ``B - A`` with a bootstrap CI of the mean difference, the p-value
    (``scipy.stats.wilcoxon``, zero differences handled by the "wilcox" method), and which
    model is better (``"B"``, ``"A"`` or ``"no significant difference"`` at p < 0.05).

    Example:
        >>> a = [0.80, 0.75, 0.90, 0.85, 0.70, 0.88, 0.79, 0.81]
        >>> b = [0.84, 0.78, 0.93, 0.86, 0.76, 0.90, 0.83, 0.85]
        >>> result = paired_comparison(a, b)
        >>> result["better"], result["p_value"] < 0.05
        ('B', True)
    """
    a = np.asarray(values_a, dtype=np.float64).reshape(-1)
    b = np.asarray(values_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise MedlensError(
            f"paired comparison needs the same cases on both sides, got {a.size} and {b.size}"
        )
    keep = np.isfinite(a) & np.isfinite(b)
    difference = b[keep] - a[keep]
    result: dict[str, Any] = {"n": int(keep.sum()), "n_dropped": int((~keep).sum())}
    if difference.size == 0:
        result.update(p_value=float("nan"), statistic=float("nan"), better="undefined")
        return result
    if np.all(difference == 0):
        p_value, statistic = 1.0, 0.0
    else:
        test = scipy_stats.wilcoxon(b[keep], a[keep], zero_method="wilcox")
        p_value, statistic = float(test.pvalue), float(test.statistic)
    low, high = bootstrap_ci(difference, seed=seed)
    mean = float(difference.mean())
    improved = mean > 0 if higher_is_better else mean < 0
    better = "no significant difference"
    if p_value < 0.05:
        better = "B" if improved else "A"
    result.update(
        mean_difference=mean,
        median_difference=float(np.median(difference)),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        statistic=statistic,
        better=better,
    )
    return result
