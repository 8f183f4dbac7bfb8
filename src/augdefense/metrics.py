"""Per-run metrics, and intervals and aggregates over seeds (the unit of replication)."""

from __future__ import annotations

import math

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


def mean_interval(values) -> tuple[float, float, float, int]:
    """Mean of per-seed values with a 95% t-interval over seeds (scipy's t): (mean, low, high, n).
    The seed is the unit of replication: one value per seed, however many images each one scored."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if n == 1:
        return (mean, math.nan, math.nan, 1)
    if values.std() == 0:  # every seed agrees: the t-interval has zero width
        return (mean, mean, mean, n)
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(values))
    return (mean, float(low), float(high), n)


def paired_shift(poisoned, control) -> tuple[float, float, float, int]:
    """Mean of poisoned - control over paired seeds with a 95% t-interval: (mean, low, high, n)."""
    import numpy as np

    return mean_interval(np.asarray(poisoned, dtype=float) - np.asarray(control, dtype=float))


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (scipy's binomtest)."""
    if n == 0:
        return (math.nan, math.nan)
    from scipy import stats

    ci = stats.binomtest(int(successes), n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def seed_interval(rates, trials) -> tuple[float, float, str]:
    """95% interval of a success rate over seeds (the unit of replication: the images of one seed
    share one model and one draw). Where every seed is one trial (a targeted attack's one target),
    the Wilson interval of the successes over seeds; otherwise the t-interval of the per-seed
    rates, clipped to [0, 1]. Returns (low, high, method)."""
    import numpy as np

    rates, trials = np.asarray(rates, dtype=float), np.asarray(trials)
    keep = np.isfinite(rates)
    rates, trials = rates[keep], trials[keep]
    if len(rates) and (trials == 1).all():
        return (*wilson_interval(int(rates.sum()), len(rates)), "wilson over seeds")
    _, low, high, _ = mean_interval(rates)
    if math.isnan(low):
        return (low, high, "t over seeds")
    return (max(0.0, low), min(1.0, high), "t over seeds")


def aggregate(frame, by: list[str], columns: list[str]):
    """Mean, std and count of ``columns`` per group of ``by`` (a pandas DataFrame in, one out)."""
    grouped = frame.groupby(by, sort=False)[columns]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{c}_{stat}" for c, stat in out.columns]
    return out.reset_index()
