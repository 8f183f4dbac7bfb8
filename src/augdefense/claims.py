"""The papers' headline claims, each tested as a paired comparison over the same seeds.

A claim is declared in the config beside its experiment (``experiments.<name>.claims``): the cell it
is about (``attack``, ``defense``), the cell(s) it is compared with (``baseline``, one defense or a
list; ``baseline_attack`` when the comparison crosses attacks), the ``metric``, and the claimed
``direction`` of (claim cell - baseline): ``lower``, ``higher``, or ``not_lower`` (no lower by more
than ``margin``, in the metric's unit, which a ``not_lower`` claim must give). Per seed present in
both cells, the effect is the difference; the test and interval depend on what a seed yields
(``docs/statistics.md`` says why):

- **one 0/1 trial per seed** (a targeted attack's one target: ``poison_success`` with ``n_eval`` 1):
  the exact McNemar test on the discordant seeds (the sign test) and Newcombe's paired interval for
  the difference of the two success rates; ``not_lower`` uses the interval alone (McNemar tests no
  difference, not a margin);
- **a value per seed** (rates over many images, accuracy, log-odds margins): the t-interval of the
  mean effect and its t-test, beside the sign-flip test over seeds (distribution-free) as a check.
  Where every seed gives the same effect the t-interval is undefined and the sign-flip test decides.

The effect is tested against 0 (``lower``, ``higher``) or -margin (``not_lower``). **holds**: the
test's p is below 0.05 AND the interval lies strictly on the claimed side (for the t-interval the
two are the same statement); **contradicted**: the same on the other side; **inconclusive**
otherwise, with the seeds an effect of the observed size would need for 80% power. With several
baselines each comparison gets its verdict and the claim takes the weakest: an intersection-union
test, which needs no correction for the number of baselines. Across a run's claims, Holm's
adjustment gives a second, family-wise verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from augdefense.errors import ConfigError
from augdefense.metrics import (
    ALPHA,
    has_spread,
    mcnemar_exact_p,
    mean_interval,
    newcombe_p,
    newcombe_paired_interval,
    paired_table,
    sign_flip_min_seeds,
    sign_flip_p,
    t_test_p,
)
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
    "margin": Param(
        "number",
        "not_lower only, and required there: the largest decrease still counted as none, in the metric's unit "
        "(a fraction for rates and accuracy, 0.05 = 5 points; nats for goal_margin and goal_margin_shift)",
        default=OPTIONAL,
        minimum=0,
    ),
}
VERDICTS = ("contradicted", "inconclusive", "holds")  # weakest first
# The trial count behind each rate: a rate whose every seed is one trial is a 0/1 outcome.
TRIALS = {"poison_success": "n_eval", "poison_success_all_images": "n_eval_all_images", "clean_acc": "n_clean"}
POWER = 0.8
SEEDS_NEEDED_CAP = 1000
POWER_DRAWS = 4000  # simulated runs per seed count for 0/1 outcomes (a fixed generator: same answer each run)


def check_claim(claim: dict, where: str) -> None:
    """A ``not_lower`` claim names its margin (in the metric's unit: no default fits both points of
    a rate and nats of a log-odds margin); a ``lower``/``higher`` claim has none."""
    if claim["direction"] == "not_lower" and "margin" not in claim:
        raise ConfigError(
            f"{where}.margin: required for direction not_lower: the largest decrease still counted as none, "
            "in the metric's unit (a fraction for rates and accuracy, 0.05 = 5 points; nats for goal_margin)"
        )
    if claim["direction"] != "not_lower" and "margin" in claim:
        raise ConfigError(f"{where}.margin: only a not_lower claim has a margin (direction is {claim['direction']})")


def margin_of(claim: dict) -> float:
    """A claim's margin: its own for not_lower, 0 for lower and higher (``check_claim``). The effect
    is tested against -margin."""
    return claim.get("margin", 0.0)


def _sign(direction: str) -> int:
    """+1 where the claimed side is above the null value, -1 where below."""
    return -1 if direction == "lower" else 1


def verdict(effect: float, low: float, high: float, p_value: float, direction: str, margin: float) -> str:
    """holds / contradicted / inconclusive. ``p_value`` is the two-sided p of effect = -margin (0 for
    lower and higher); ``low``/``high`` the 95% interval, NaN where there is none (no spread: the test
    alone decides, on the side of ``effect``). Both must clear -margin on the same side, strictly."""
    if not p_value < ALPHA:
        return "inconclusive"
    null, sign = -margin, _sign(direction)
    if math.isnan(low):
        side = sign * (effect - null)
        return "holds" if side > 0 else "contradicted" if side < 0 else "inconclusive"
    near, far = (low, high) if sign > 0 else (high, low)
    if sign * (near - null) > 0:
        return "holds"
    if sign * (far - null) < 0:
        return "contradicted"
    return "inconclusive"


def _fewest_seeds(power_at) -> int:
    """The fewest seeds n >= 2 with power_at(n) >= POWER, found by doubling then halving (power grows
    with n, up to the saw-teeth of exact tests); SEEDS_NEEDED_CAP when none up to it is enough."""
    high = 2
    while power_at(high) < POWER:
        if high == SEEDS_NEEDED_CAP:
            return SEEDS_NEEDED_CAP
        high = min(2 * high, SEEDS_NEEDED_CAP)
    low = high // 2  # below the answer: it failed, or it is 1
    while high - low > 1:
        middle = (low + high) // 2
        if power_at(middle) < POWER:
            low = middle
        else:
            high = middle
    return high


def seeds_needed(effects, direction: str, margin: float = 0.0) -> int | None:
    """Seeds for 80% power of the verdict's t-test (two-sided, 5%; statsmodels' TTestPower, the
    noncentral t) if the true effect and seed-to-seed spread were those observed. With no spread,
    the fewest seeds at which the sign-flip test that then decides can reach 5%. None with fewer
    than two seeds, or where the observed effect is not on the claimed side of the null value (more
    seeds would not make it hold). At most SEEDS_NEEDED_CAP."""
    import numpy as np
    from statsmodels.stats.power import TTestPower

    effects = np.asarray(effects, dtype=float)
    effects = effects[np.isfinite(effects)]
    if len(effects) < 2:
        return None
    shift = _sign(direction) * (float(effects.mean()) + margin)
    if shift <= 0:
        return None
    if not has_spread(effects):
        return sign_flip_min_seeds()
    sd = float(effects.std(ddof=1))
    power = TTestPower()
    return _fewest_seeds(lambda n: power.power(effect_size=shift / sd, nobs=n, alpha=ALPHA))


def seeds_needed_paired_binary(table: tuple[int, int, int, int], direction: str, margin: float = 0.0) -> int | None:
    """Seeds for 80% power of the 0/1 verdict (exact McNemar p < 0.05 and Newcombe's interval clear
    of zero; for not_lower the interval above -margin) if each seed's outcome pair were drawn with
    the observed shares of (both, claim cell only, baseline only, neither): simulated, POWER_DRAWS
    runs per seed count. None with fewer than two seeds or where the observed difference is not on
    the claimed side. At most SEEDS_NEEDED_CAP."""
    import numpy as np

    counts = np.asarray(table, dtype=float)
    n = counts.sum()
    null, sign = -margin, _sign(direction)
    if n < 2 or sign * ((counts[1] - counts[2]) / n - null) <= 0:
        return None
    shares = counts / n

    def power_at(seeds: int) -> float:
        draws = np.random.default_rng(seeds).multinomial(seeds, shares, size=POWER_DRAWS).T
        low, high = newcombe_paired_interval(*draws)
        near = low if sign > 0 else high
        clear = sign * (near - null) > 0
        if direction != "not_lower":
            clear &= mcnemar_exact_p(draws[1], draws[2]) < ALPHA
        return float(clear.mean())

    return _fewest_seeds(power_at)


def _power_note(needed: int | None, n: int, kind: str, shift_on_claimed_side: bool, spread: bool) -> str:
    """The seeds-needed sentence of a comparison."""
    if n < 2:
        return "one seed: nothing to estimate a spread from"
    if not shift_on_claimed_side:
        return "no number of seeds: the observed effect is not on the claimed side"
    basis = "discordance estimated" if kind == BINARY else "spread estimated"
    if kind != BINARY and not spread:
        return (
            f"at least {needed} seeds: no spread in {n} seeds, and the sign-flip test that then decides "
            f"cannot reach p < {ALPHA} with fewer"
        )
    amount = f"more than {SEEDS_NEEDED_CAP - 1}" if needed >= SEEDS_NEEDED_CAP else f"about {needed}"
    return f"{amount} seeds for {POWER:.0%} power, {basis} from {n} seeds"


BINARY, VALUES = "0/1 per seed", "value per seed"


def paired_values(metrics: pd.DataFrame, claim: dict, baseline: str, control: str | None = None) -> pd.DataFrame:
    """Per seed present in both cells: the claim cell's and the baseline's metric (``ours``,
    ``theirs``) and, for a rate, their trial counts (``ours_trials``, ``theirs_trials``).
    ``goal_margin_shift`` is a cell's goal log-odds margin minus its same-seed, same-defense clean
    control's (``control``: the experiment's control attack), i.e. how far the poisons pushed."""
    metric = claim["metric"]
    column = "goal_margin" if metric == "goal_margin_shift" else metric
    trials = TRIALS.get(metric)

    def cell(attack: str, defense: str) -> pd.DataFrame:
        rows = metrics[(metrics.attack == attack) & (metrics.defense == defense)].set_index("seed")
        out = pd.DataFrame(index=rows.index)
        out["value"] = rows[column] if column in rows else math.nan
        if metric == "goal_margin_shift":
            twin = metrics[(metrics.attack == control) & (metrics.defense == defense)].set_index("seed")
            out["value"] = out["value"] - (twin[column] if column in twin else math.nan)
        out["trials"] = rows[trials] if trials in rows else math.nan
        return out

    ours = cell(claim["attack"], claim["defense"])
    theirs = cell(claim.get("baseline_attack", claim["attack"]), baseline)
    both = ours.merge(theirs, left_index=True, right_index=True, suffixes=("_ours", "_theirs"))
    both = both.rename(
        columns={
            "value_ours": "ours",
            "value_theirs": "theirs",
            "trials_ours": "ours_trials",
            "trials_theirs": "theirs_trials",
        }
    )
    return both.dropna(subset=["ours", "theirs"]).sort_index()


def _kind(pairs: pd.DataFrame) -> str:
    """0/1 per seed where every paired seed of both cells is one trial with a 0/1 outcome."""
    trials = pairs[["ours_trials", "theirs_trials"]].to_numpy()
    outcomes = pairs[["ours", "theirs"]].to_numpy()
    if len(pairs) and (trials == 1).all() and ((outcomes == 0) | (outcomes == 1)).all():
        return BINARY
    return VALUES


def compare(metrics: pd.DataFrame, claim: dict, baseline: str, control: str | None = None) -> dict:
    """One claim against one baseline defense: the paired per-seed effect, its interval, test,
    verdict and the seeds 80% power would need (module docstring)."""
    check_claim(claim, "claim")
    direction, margin = claim["direction"], margin_of(claim)
    null = -margin
    pairs = paired_values(metrics, claim, baseline, control)
    kind = _kind(pairs)
    effects = (pairs.ours - pairs.theirs).to_numpy(dtype=float)
    n = len(effects)
    effect = float(effects.mean()) if n else math.nan
    spread = has_spread(effects)
    distribution_free = sign_flip_p(effects, null) if kind == VALUES else math.nan
    discordant = ""
    if kind == BINARY:
        table = paired_table(pairs.ours.to_numpy(), pairs.theirs.to_numpy())
        discordant = f"{table[1]} claim cell only, {table[2]} baseline only"
        interval = "Newcombe"
        low, high = newcombe_paired_interval(*table) if n >= 2 else (math.nan, math.nan)
        if direction == "not_lower":
            test, p_value = "Newcombe interval", newcombe_p(*table, null)
            rests_on = f"Newcombe's paired interval against -margin (no exact test of a margin); {discordant}"
        else:
            test, p_value = "exact McNemar", mcnemar_exact_p(table[1], table[2])
            rests_on = f"exact McNemar test and Newcombe's paired interval ({discordant})"
        needed = seeds_needed_paired_binary(table, direction, margin)
    else:
        _, low, high, _ = mean_interval(effects)
        if spread:
            test, interval, p_value = "t", "t", t_test_p(effects, null)
            rests_on = (
                f"t-interval; the sign-flip test agrees (p = {distribution_free:.2g})"
                if distribution_free < ALPHA
                else f"t-interval alone, i.e. on normality (sign-flip p = {distribution_free:.2g})"
            )
        else:
            test, interval, p_value = "sign-flip", "none", distribution_free
            rests_on = "sign-flip test alone: every seed gives the same effect, so there is no t-interval"
        needed = seeds_needed(effects, direction, margin)
    if n < 2:
        test, p_value, rests_on = "no test", math.nan, "fewer than two seeds: no test"
    on_side = n >= 2 and _sign(direction) * (effect - null) > 0
    return {
        "baseline": baseline,
        "kind": kind,
        "effect": effect,
        "ci_low": low,
        "ci_high": high,
        "interval": interval,
        "test": test,
        "p_value": p_value,
        "sign_flip_p": distribution_free,
        "discordant": discordant,
        "n_seeds": n,
        "verdict": verdict(effect, low, high, p_value, direction, margin),
        "rests_on": rests_on,
        "seeds_needed": needed,
        "seeds_needed_note": _power_note(needed, n, kind, on_side, spread),
    }


def _strength(comparison: dict, claim: dict) -> float:
    """How far the interval's near end sits on the claimed side of the null value (negative: on the
    other side); -inf without an interval."""
    low, high = comparison["ci_low"], comparison["ci_high"]
    if low != low:
        return -math.inf
    null, sign = -margin_of(claim), _sign(claim["direction"])
    return sign * ((low if sign > 0 else high) - null)


def claim_p(comparisons: list[dict], claim_verdict: str) -> float:
    """The p-value a claim enters Holm's adjustment with. Holds (or not yet): the largest of its
    comparisons' p, the intersection-union test (it holds only where every comparison does).
    Contradicted: the smallest contradicting p times the number of baselines (Bonferroni: one
    contradiction of several tries suffices)."""
    ps = [c["p_value"] if c["p_value"] == c["p_value"] else 1.0 for c in comparisons]
    if claim_verdict == "contradicted":
        contradicting = [p for p, c in zip(ps, comparisons) if c["verdict"] == "contradicted"]
        return min(1.0, len(comparisons) * min(contradicting))
    return max(ps)


COLUMNS = [
    "experiment",
    "claim",
    "source",
    "cell",
    "metric",
    "direction",
    "margin",
    "baseline",
    "kind",
    "effect",
    "ci_low",
    "ci_high",
    "interval",
    "test",
    "p_value",
    "sign_flip_p",
    "discordant",
    "n_seeds",
    "verdict",
    "rests_on",
    "claim_p",
    "holm_p",
    "holm_verdict",
    "seeds_needed",
    "seeds_needed_note",
    "all_verdicts",
]


def evaluate(metrics: pd.DataFrame, experiments: dict) -> pd.DataFrame:
    """Every declared claim's row (its weakest comparison when it has several baselines), with its
    Holm-adjusted p and verdict across all the claims evaluated together."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for table, experiment in experiments.items():
        for claim in experiment.get("claims", []):
            baselines = claim["baseline"] if isinstance(claim["baseline"], list) else [claim["baseline"]]
            comparisons = [compare(metrics, claim, b, experiment.get("control")) for b in baselines]
            weakest = min(comparisons, key=lambda c: (VERDICTS.index(c["verdict"]), _strength(c, claim)))
            rows.append(
                {
                    "experiment": table,
                    "claim": claim["text"],
                    "source": claim["source"],
                    "cell": f"{claim['attack']} / {claim['defense']}",
                    "metric": claim["metric"],
                    "direction": claim["direction"],
                    "margin": claim.get("margin", math.nan),
                    **weakest,
                    "claim_p": claim_p(comparisons, weakest["verdict"]),
                    "all_verdicts": "; ".join(f"{c['baseline']}: {c['verdict']}" for c in comparisons),
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if len(frame):
        frame["holm_p"] = multipletests(frame.claim_p.to_numpy(), method="holm")[1]
        frame["holm_verdict"] = [v if p < ALPHA else "inconclusive" for v, p in zip(frame.verdict, frame.holm_p)]
    frame["seeds_needed"] = frame.seeds_needed.astype("Int64")
    return frame


def _effect(value: float, metric: str) -> str:
    if value != value:
        return "–"
    return f"{value:+.2f}" if metric.startswith("goal_margin") else f"{100 * value:+.1f}"


def _p(value: float) -> str:
    return "p –" if value != value else f"p = {value:.2g}" if value >= 0.001 else "p < 0.001"


def _claimed(r) -> str:
    """The direction in words, with a not_lower claim's margin in the metric's unit."""
    if r.direction != "not_lower":
        return r.direction
    unit = " nats" if r.metric.startswith("goal_margin") else " points"
    return f"not lower by more than {_effect(r.margin, r.metric).lstrip('+')}{unit}"


# The report's text: module-level prose (the tests check it is there; it is not logic to mutate).
CLAIMS_HEADER = (
    "# The papers' claims, tested on this run",
    "",
    "| claim | source | cell (vs baseline), metric, claimed | effect [95% CI] | seeds | test | verdict | with Holm |",
    "|---|---|---|---|---|---|---|---|",
)
CLAIMS_NOTE = (
    "Effect = the claim cell's metric minus the baseline's, paired by seed (points for rates, nats for "
    "the goal log-odds margin). Where each seed yields one 0/1 outcome (one target) the test is the exact "
    "McNemar test on the seeds where the two cells disagree and the interval is Newcombe's paired interval; "
    "otherwise the t-interval and t-test over seeds, with the sign-flip test (distribution-free) beside "
    "them. A claim holds when the test's p < 0.05 and its interval lies on the claimed side of zero "
    "(of -margin for 'not lower'), is contradicted when both say the other side, and is inconclusive "
    "otherwise; a verdict resting on the t-interval alone rests on normality (with 3 seeds no "
    "distribution-free test goes below p = 0.25). Seeds needed: for 80% power at the observed effect and "
    "spread (noncentral t; simulated for 0/1 outcomes). With several baselines the weakest comparison "
    "is shown (the CSV has each): an intersection-union test, which needs no correction for the number "
    "of baselines. 'With Holm' adjusts across the {claims} claims of this run (family-wise 5%). "
    "Method: docs/statistics.md. Claims are declared in the config beside their experiment."
)


def render_claims(
    *, metrics: str | Path, experiments: dict, scale: str, csv: str | Path, md: str | Path
) -> pd.DataFrame:
    """``results/claims.{csv,md}``: each declared claim, its paired effect over seeds, its test and
    verdict, Holm's family-wise verdict and the seeds 80% power would need."""
    from augdefense.tables import write_report

    frame = evaluate(pd.read_csv(metrics), experiments)
    lines = list(CLAIMS_HEADER)
    for r in frame.itertuples():
        interval = "" if r.ci_low != r.ci_low else f" [{_effect(r.ci_low, r.metric)}, {_effect(r.ci_high, r.metric)}]"
        if r.kind == BINARY:
            interval += f" (Newcombe; {r.discordant})"
        test = f"{r.test} {_p(r.p_value)}"
        if r.test == "t":
            test += f"; sign-flip {_p(r.sign_flip_p)}"
        verdict_text = (
            f"**{r.verdict}**"
            if r.verdict != "inconclusive"
            else f"**inconclusive at {r.n_seeds} seed{'s' * (r.n_seeds != 1)}**"
        )
        verdict_text += f": {r.rests_on}" if r.verdict != "inconclusive" else f" ({r.seeds_needed_note})"
        lines.append(
            f"| {r.claim} | {r.source} | {r.cell} (vs {r.baseline}), {r.metric}, {_claimed(r)} | "
            f"{_effect(r.effect, r.metric)}{interval} | {r.n_seeds} | {test} | {verdict_text} | "
            f"{r.holm_verdict} ({_p(r.holm_p)}) |"
        )
    note = CLAIMS_NOTE.format(claims=len(frame))
    write_report(frame, csv=csv, md=md, lines=lines, note=note, scale=scale)
    return frame
