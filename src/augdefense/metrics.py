"""Per-run metrics, Wilson intervals and aggregation over seeds."""

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


def goal_margin(probs: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
    """Log-odds margin of the goal class: log p_goal - log max_{c != goal} p_c (> 0 iff the attack
    succeeds). Unlike the probability it does not saturate at 0 when a target is far from flipping."""
    logp = probs.double().clamp_min(1e-30).log()
    goal = logp.gather(1, goals[:, None]).squeeze(1)
    others = logp.scatter(1, goals[:, None], -math.inf).max(1).values
    return goal - others


def paired_shift(poisoned, control) -> tuple[float, float, float, int]:
    """Mean of poisoned - control over paired seeds with a 95% t-interval: (mean, low, high, n)."""
    import numpy as np
    from scipy import stats

    diff = np.asarray(poisoned, dtype=float) - np.asarray(control, dtype=float)
    diff = diff[np.isfinite(diff)]
    n = len(diff)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(diff.mean())
    if n == 1:
        return (mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n))
    return (mean, mean - half, mean + half, n)


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def aggregate(frame, by: list[str], columns: list[str]):
    """Mean, std and count of ``columns`` per group of ``by`` (a pandas DataFrame in, one out)."""
    grouped = frame.groupby(by, sort=False)[columns]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{c}_{stat}" for c, stat in out.columns]
    return out.reset_index()
