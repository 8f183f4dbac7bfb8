"""Per-run metrics, and the intervals, tests and aggregates over seeds (the unit of replication).
Torch is needed only by the callers of the per-run metrics (it is not imported here), so the claims
and the tables load without it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def run_metrics(
    clean_probs: torch.Tensor, clean_labels: torch.Tensor, eval_probs: torch.Tensor, eval_goals: torch.Tensor
) -> dict:
    """Clean accuracy, poison success (share of attack inputs classified as the attacker's goal) and
    the mean probability the model gives the goal class (a finer measure than 0/1 success)."""
    out = {
        "clean_acc": float((clean_probs.argmax(1) == clean_labels).float().mean()) if len(clean_labels) else math.nan,
        "n_clean": int(len(clean_labels)),
        "n_eval": int(len(eval_goals)),
    }
    if len(eval_goals):
        goal_prob = eval_probs.gather(1, eval_goals[:, None]).squeeze(1)
        out["poison_success"] = float((eval_probs.argmax(1) == eval_goals).float().mean())
        out["goal_probability"] = float(goal_prob.mean())
        out["goal_margin"] = float(goal_margin(eval_probs, eval_goals).mean())
    return out


def all_images_metrics(probs: torch.Tensor | None, goals: torch.Tensor | None) -> dict:
    """The success rate over an attack's wider test set (``all_eval_*``), when it has one."""
    if probs is None or goals is None or not len(goals):
        return {}
    return {
        "poison_success_all_images": float((probs.argmax(1) == goals).float().mean()),
        "n_eval_all_images": int(len(goals)),
    }


def goal_margin(probs: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
    """Log-odds margin of the goal class: log p_goal - log max_{c != goal} p_c (> 0 iff the attack
    succeeds). Unlike the probability it does not saturate at 0 when a target is far from flipping."""
    logp = probs.double().clamp_min(1e-30).log()
    goal = logp.gather(1, goals[:, None]).squeeze(1)
    others = logp.scatter(1, goals[:, None], -math.inf).max(1).values
    return goal - others


ALPHA = 0.05  # every interval is 95%, every test two-sided at 5%


def has_spread(values) -> bool:
    """Whether per-seed values differ by more than float rounding (1e-9 of their size): values
    computed as x + 0.01 - x differ in the last bits, which a t-test would read as near-certainty."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return len(values) >= 2 and float(np.ptp(values)) > 1e-9 * max(1.0, float(np.abs(values).max()))


def mean_interval(values) -> tuple[float, float, float, int]:
    """Mean of per-seed values with a 95% t-interval over seeds (scipy's t): (mean, low, high, n).
    The seed is the unit of replication: one value per seed, however many images each one scored.
    With fewer than two seeds, or no spread (``has_spread``), the interval is undefined (NaN): identical
    values say nothing about the spread the t-interval needs, and a zero-width interval would read
    as certainty (3 identical seeds are as likely as 1 in 4 under no effect at all)."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if not has_spread(values):
        return (mean, math.nan, math.nan, n)
    low, high = stats.t.interval(1 - ALPHA, n - 1, loc=mean, scale=stats.sem(values))
    return (mean, float(low), float(high), n)


def paired_shift(poisoned, control) -> tuple[float, float, float, int]:
    """Mean of poisoned - control over paired seeds with a 95% t-interval: (mean, low, high, n)."""
    import numpy as np

    return mean_interval(np.asarray(poisoned, dtype=float) - np.asarray(control, dtype=float))


def t_test_p(values, null: float = 0.0) -> float:
    """Two-sided p of the one-sample t-test of mean = ``null`` (scipy): the test whose inversion is
    ``mean_interval``. NaN with fewer than two values or no spread."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not has_spread(values):
        return math.nan
    return float(stats.ttest_1samp(values, null).pvalue)


SIGN_FLIP_EXACT_SEEDS = 20  # up to this many seeds the sign-flip test counts every sign pattern


def sign_flip_p(values, null: float = 0.0) -> float:
    """Two-sided p of the sign-flip (randomisation) test of mean = ``null`` over seeds: under the
    null each seed's deviation from it is as likely positive as negative (symmetry, no normality),
    so p is the share of the 2^n sign patterns whose |sum| reaches the observed one. Exact up to
    SIGN_FLIP_EXACT_SEEDS seeds; beyond, 100 000 random patterns from a fixed generator (so a rerun
    gives the same p). Its smallest possible p with n seeds is 2 / 2^n: 0.25 with 3 seeds, below
    0.05 from 6 seeds on. NaN without values. Written by hand: scipy's permutation_test computes
    the same p but enumerates 2^20 patterns in about ten seconds; splitting the seeds in two halves
    and adding every half-sum to every other is the same count in milliseconds."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    deviations = values[np.isfinite(values)] - null
    n = len(deviations)
    if n == 0:
        return math.nan
    sizes = np.abs(deviations)
    # a pattern ties the observed |sum| up to float rounding (sums of the same terms in another order)
    reach = abs(float(deviations.sum())) - 1e-9 * max(1.0, float(sizes.sum()))
    if n <= SIGN_FLIP_EXACT_SEEDS:
        half = n // 2

        def sums(part):  # the 2^len(part) signed sums of ``part``
            out = np.zeros(1)
            for size in part:
                out = np.concatenate([out + size, out - size])
            return out

        totals = sums(sizes[:half])[:, None] + sums(sizes[half:])[None, :]
        return float(np.count_nonzero(np.abs(totals) >= reach) / totals.size)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(100_000, n))
    hits = np.count_nonzero(np.abs(signs @ sizes) >= reach)
    return float((hits + 1) / (100_000 + 1))


def sign_flip_min_seeds(alpha: float = ALPHA) -> int:
    """The fewest seeds at which the sign-flip test can reach p < alpha (all seeds one way): 6."""
    return math.floor(1 - math.log2(alpha)) + 1


def clopper_pearson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Clopper-Pearson (exact) interval for a binomial proportion (scipy's binomtest): it covers
    at least 95% at every n and p, where Wilson's covers 85.7% at n = 3, p = 0.05."""
    if n == 0:
        return (math.nan, math.nan)
    from scipy import stats

    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - ALPHA, method="exact")
    return (float(ci.low), float(ci.high))


def paired_table(first, second) -> tuple[int, int, int, int]:
    """The paired 2x2 table of 0/1 outcomes over seeds: (both, first only, second only, neither)."""
    import numpy as np

    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    return (
        int((first & second).sum()),
        int((first & ~second).sum()),
        int((~first & second).sum()),
        int((~first & ~second).sum()),
    )


def mcnemar_exact_p(first_only, second_only):
    """Two-sided p of the exact McNemar test (the sign test on the discordant pairs: under no
    difference, each is first-only with probability 1/2), vectorised over numpy arrays; 1 without
    discordant pairs. Equals scipy's binomtest(first_only, discordant, 0.5) and statsmodels'
    mcnemar(exact=True)."""
    import numpy as np
    from scipy import stats

    b, c = np.asarray(first_only), np.asarray(second_only)
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(b, c), b + c, 0.5))  # 1 where b + c = 0
    return p if p.ndim else float(p)


def newcombe_paired_interval(both, first_only, second_only, neither, confidence: float = 1 - ALPHA):
    """Newcombe's interval for the difference of two paired proportions, p_first - p_second
    (Newcombe 1998, Stat Med 17:2635, method 10): the Wilson intervals of the two marginal
    proportions, combined with their correlation phi (phi's numerator shrunk by n/2 towards 0 when
    positive, as Newcombe and Fagerland et al. 2017, ch. 8, do). Unlike a t-interval over -1/0/+1
    differences it stays wide when every seed agrees. Vectorised over numpy arrays; NaN without
    seeds. Written by hand: statsmodels 0.15 and scipy have no paired interval (statsmodels'
    confint_proportions_paired comes later)."""
    import numpy as np
    from statsmodels.stats.proportion import proportion_confint

    a, b, c, d = (np.asarray(x, dtype=float) for x in (both, first_only, second_only, neither))
    n = a + b + c + d
    safe = np.where(n > 0, n, 1)
    p1, p2 = (a + b) / safe, (a + c) / safe
    alpha = 1 - confidence
    l1, u1 = proportion_confint(a + b, safe, alpha=alpha, method="wilson")
    l2, u2 = proportion_confint(a + c, safe, alpha=alpha, method="wilson")
    product = (a + b) * (c + d) * (a + c) * (b + d)  # 0 where a margin is empty, and then so is ad - bc
    association = a * d - b * c
    association = np.where(association > n / 2, association - n / 2, np.minimum(association, 0))
    phi = np.divide(association, np.sqrt(product), out=np.zeros_like(product), where=product > 0)
    low = p1 - p2 - np.sqrt(np.maximum(0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = p1 - p2 + np.sqrt(np.maximum(0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    low, high = np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
    if low.ndim == 0:
        return (float(low), float(high))
    return (low, high)


def newcombe_p(both, first_only, second_only, neither, null: float) -> float:
    """Two-sided p of difference = ``null`` by inverting Newcombe's interval: 1 - the confidence
    level at which its nearer end reaches ``null`` (for a non-zero null, where the exact McNemar
    test does not apply). 1 when the estimate equals ``null``, NaN without seeds."""
    from scipy import optimize

    n = both + first_only + second_only + neither
    if n == 0:
        return math.nan
    estimate = (first_only - second_only) / n
    if estimate == null:
        return 1.0
    end = 0 if estimate > null else 1

    def gap(alpha: float) -> float:
        return newcombe_paired_interval(both, first_only, second_only, neither, 1 - alpha)[end] - null

    smallest, largest = 1e-12, 1 - 1e-12
    if gap(smallest) * gap(largest) > 0:  # even the 1 - 1e-12 interval excludes the null
        return smallest
    return float(optimize.brentq(gap, smallest, largest))


def seed_interval(rates, trials) -> tuple[float, float, str]:
    """95% interval of a success rate over seeds (the unit of replication: the images of one seed
    share one model and one draw). Where every seed is one trial (a targeted attack's one target),
    the Clopper-Pearson interval of the successes over seeds; otherwise the t-interval of the
    per-seed rates, clipped to [0, 1] (a t-interval over rates 0.5, 0.9, 1.0 reaches 1.457; the
    clipped ends are the honest bounds of a rate). With fewer than two seeds, or per-seed rates
    with no spread, there is no interval over seeds: (NaN, NaN). Returns (low, high, method)."""
    import numpy as np

    rates, trials = np.asarray(rates, dtype=float), np.asarray(trials)
    keep = np.isfinite(rates)
    rates, trials = rates[keep], trials[keep]
    one_trial = len(rates) > 0 and bool((trials == 1).all())
    method = "clopper-pearson over seeds" if one_trial else "t over seeds"
    if len(rates) < 2:
        return (math.nan, math.nan, method)
    if one_trial:
        return (*clopper_pearson_interval(int(rates.sum()), len(rates)), method)
    _, low, high, _ = mean_interval(rates)
    if math.isnan(low):
        return (low, high, method)
    return (max(0.0, low), min(1.0, high), method)


def aggregate(frame, by: list[str], columns: list[str]):
    """Mean, std and count of ``columns`` per group of ``by`` (a pandas DataFrame in, one out)."""
    grouped = frame.groupby(by, sort=False)[columns]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{c}_{stat}" for c, stat in out.columns]
    return out.reset_index()
