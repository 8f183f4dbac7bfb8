"""The papers' headline claims, each tested as a paired comparison over the same seeds.

A claim is declared in the config beside its experiment (``experiments.<name>.claims``): the cell it
is about (``attack``, ``defense``), the cell(s) it is compared with (``baseline``, one defense or a
list; ``baseline_attack`` when the comparison crosses attacks), the ``metric``, and the claimed
``direction`` of (claim cell - baseline): ``lower``, ``higher``, or ``not_lower`` (no lower by more
than ``margin``). Per seed present in both cells, the effect is the difference; over seeds its
mean gets a 95% t-interval, and the verdict is:

- **holds**: the interval lies on the claimed side (for ``not_lower``: above -margin);
- **contradicted**: it lies on the other side;
- **inconclusive at n seeds**: it straddles, with the number of seeds the observed effect would
  need for its interval to clear zero (about (2 sd / |mean|)^2, when the mean has the claimed sign).

With several baselines, each comparison gets its verdict and the claim takes the weakest.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from augdefense.params import OPTIONAL, Param

CLAIM_PARAMS = {
    "text": Param("string", "the claim, in words"),
    "source": Param("string", "where the papers make it (e.g. 'DP-InstaHide Table 1')"),
    "attack": Param("string", "the attack of the claim's cell"),
    "defense": Param("string", "the defense of the claim's cell"),
    "baseline": Param(
        any_of=(Param("string"), Param("array", items=Param("string"))),
        doc="the defense (or defenses) the claim's cell is compared with",
    ),
    "baseline_attack": Param("string", "the baseline cells' attack (default: the claim's)", default=OPTIONAL),
    "metric": Param(
        "string",
        "what is compared",
        default="poison_success",
        enum=(
            "poison_success",
            "clean_acc",
            "goal_margin",
            "goal_margin_shift",
            "goal_probability",
            "poison_success_all_images",
        ),
    ),
    "direction": Param("string", "the claimed sign of (claim cell - baseline)", enum=("lower", "higher", "not_lower")),
    "margin": Param("number", "not_lower: the largest decrease still counted as none", default=0.05, minimum=0),
}
VERDICTS = ("contradicted", "inconclusive", "holds")  # weakest first


def verdict(low: float, high: float, direction: str, margin: float) -> str:
    if math.isnan(low):
        return "inconclusive"
    if direction == "lower":
        return "holds" if high < 0 else "contradicted" if low > 0 else "inconclusive"
    if direction == "higher":
        return "holds" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    return "holds" if low > -margin else "contradicted" if high < -margin else "inconclusive"


SEEDS_NEEDED_CAP = 10_000


def seeds_needed(effects, direction: str) -> int | None:
    """The fewest seeds at which an effect with the observed mean and spread would have a 95%
    t-interval clear of zero (t_{0.975, n-1} sd / sqrt(n) < |mean|), when its mean has the claimed
    sign; None when it does not (more seeds would not make it hold) or beyond SEEDS_NEEDED_CAP."""
    import numpy as np
    from scipy import stats

    effects = np.asarray(effects, dtype=float)
    if len(effects) < 2:
        return None
    mean, sd = float(effects.mean()), float(effects.std(ddof=1))
    sign = {"lower": -1, "higher": 1, "not_lower": 1}[direction]
    if mean * sign <= 0 or direction == "not_lower":
        return None
    if sd == 0:
        return 2
    n = max(2, math.ceil((1.96 * sd / abs(mean)) ** 2))  # the normal approximation, a lower bound
    while n <= SEEDS_NEEDED_CAP:
        if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
        n += 1
    return None


def compare(metrics: pd.DataFrame, claim: dict, baseline: str, control: str | None = None) -> dict:
    """One claim against one baseline defense: the paired per-seed effect and its verdict.
    ``goal_margin_shift`` is a cell's goal log-odds margin minus its same-seed, same-defense clean
    control's (``control``: the experiment's control attack), i.e. how far the poisons pushed."""
    from augdefense.metrics import mean_interval

    metric = claim["metric"]
    column = "goal_margin" if metric == "goal_margin_shift" else metric

    def values(attack: str, defense: str) -> pd.Series:
        cell = metrics[(metrics.attack == attack) & (metrics.defense == defense)]
        return cell.set_index("seed")[column] if column in cell else pd.Series(dtype=float)

    def per_seed(attack: str, defense: str) -> pd.Series:
        if metric == "goal_margin_shift":
            return values(attack, defense) - values(control, defense)
        return values(attack, defense)

    ours = per_seed(claim["attack"], claim["defense"])
    theirs = per_seed(claim.get("baseline_attack", claim["attack"]), baseline)
    effects = (ours - theirs).dropna()
    mean, low, high, n = mean_interval(effects.to_numpy())
    return {
        "baseline": baseline,
        "effect": mean,
        "ci_low": low,
        "ci_high": high,
        "n_seeds": n,
        "verdict": verdict(low, high, claim["direction"], claim["margin"]),
        "seeds_needed": seeds_needed(effects.to_numpy(), claim["direction"]),
    }


def _margin(comparison: dict, claim: dict) -> float:
    """How far the interval's near end sits on the claimed side (negative: on the other side)."""
    low, high = comparison["ci_low"], comparison["ci_high"]
    if low != low:
        return -math.inf
    return {"lower": -high, "higher": low, "not_lower": low + claim["margin"]}[claim["direction"]]


def evaluate(metrics: pd.DataFrame, experiments: dict) -> pd.DataFrame:
    """Every declared claim's row (its weakest comparison when it has several baselines)."""
    rows = []
    for table, experiment in experiments.items():
        for claim in experiment.get("claims", []):
            baselines = claim["baseline"] if isinstance(claim["baseline"], list) else [claim["baseline"]]
            comparisons = [compare(metrics, claim, b, experiment.get("control")) for b in baselines]
            weakest = min(comparisons, key=lambda c: (VERDICTS.index(c["verdict"]), _margin(c, claim)))
            rows.append(
                {
                    "experiment": table,
                    "claim": claim["text"],
                    "source": claim["source"],
                    "cell": f"{claim['attack']} / {claim['defense']}",
                    "metric": claim["metric"],
                    "direction": claim["direction"],
                    **weakest,
                    "all_verdicts": "; ".join(f"{c['baseline']}: {c['verdict']}" for c in comparisons),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "experiment",
            "claim",
            "source",
            "cell",
            "metric",
            "direction",
            "baseline",
            "effect",
            "ci_low",
            "ci_high",
            "n_seeds",
            "verdict",
            "seeds_needed",
            "all_verdicts",
        ],
    )


def _effect(value: float, metric: str) -> str:
    if value != value:
        return "–"
    return f"{value:+.2f}" if metric.startswith("goal_margin") else f"{100 * value:+.1f}"


def render_claims(
    *, metrics: str | Path, experiments: dict, scale: str, csv: str | Path, md: str | Path
) -> pd.DataFrame:
    """``results/claims.{csv,md}``: each declared claim, its paired effect over seeds and its verdict."""
    from augdefense.tables import write_report

    frame = evaluate(pd.read_csv(metrics), experiments)
    lines = [
        "# The papers' claims, tested on this run",
        "",
        "| claim | source | cell (vs baseline) | effect [95% CI] | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in frame.itertuples():
        interval = "" if r.ci_low != r.ci_low else f" [{_effect(r.ci_low, r.metric)}, {_effect(r.ci_high, r.metric)}]"
        verdict_text = (
            r.verdict
            if r.verdict != "inconclusive"
            else f"inconclusive at {r.n_seeds} seeds"
            + (
                f" (an effect of this mean and spread needs about {int(r.seeds_needed)})"
                if r.seeds_needed == r.seeds_needed and r.seeds_needed is not None
                else ""
            )
        )
        lines.append(
            f"| {r.claim} | {r.source} | {r.cell} (vs {r.baseline}), {r.metric} {r.direction} | "
            f"{_effect(r.effect, r.metric)}{interval} | {r.n_seeds} | **{verdict_text}** |"
        )
    note = (
        "Effect = the claim cell's metric minus the baseline's, paired by seed (points for rates, nats for "
        "the goal log-odds margin), with a 95% t-interval over seeds. A claim holds when the interval lies on "
        "the claimed side of zero, is contradicted when it lies on the other, and is inconclusive otherwise; "
        "with several baselines the weakest comparison is shown (the CSV has each). Claims are declared in "
        "the config beside their experiment."
    )
    write_report(frame, csv=csv, md=md, lines=lines, note=note, scale=scale)
    return frame
