"""Claims: a paired comparison over seeds, its interval and verdict."""

import math

import pandas as pd
import pytest
from scipy import stats

from augdefense import claims
from augdefense.params import complete


def _metrics(pairs):
    """Per seed: (claim cell, baseline cell) success rates."""
    rows = []
    for seed, (ours, theirs) in enumerate(pairs):
        rows += [
            {"attack": "p", "defense": "cutmix", "seed": seed, "poison_success": ours, "clean_acc": 0.9},
            {"attack": "p", "defense": "none", "seed": seed, "poison_success": theirs, "clean_acc": 0.95},
            {"attack": "p", "defense": "mixup", "seed": seed, "poison_success": ours + 0.01, "clean_acc": 0.9},
        ]
    return pd.DataFrame(rows)


def _claim(**changes):
    spec = {
        "text": "t",
        "source": "s",
        "attack": "p",
        "defense": "cutmix",
        "baseline": "none",
        "direction": "lower",
        **changes,
    }
    return complete(spec, claims.CLAIM_PARAMS, "claim")


@pytest.mark.parametrize(
    "direction, low, high, margin, expected",
    [
        ("lower", -0.3, -0.1, 0, "holds"),
        ("lower", 0.1, 0.3, 0, "contradicted"),
        ("lower", -0.3, 0.1, 0, "inconclusive"),
        ("higher", 0.1, 0.3, 0, "holds"),
        ("higher", -0.3, -0.1, 0, "contradicted"),
        ("not_lower", -0.04, 0.2, 0.05, "holds"),
        ("not_lower", -0.3, -0.1, 0.05, "contradicted"),
        ("not_lower", -0.1, 0.1, 0.05, "inconclusive"),
        ("lower", math.nan, math.nan, 0, "inconclusive"),
    ],
)
def test_verdict(direction, low, high, margin, expected):
    assert claims.verdict(low, high, direction, margin) == expected


def test_a_consistent_effect_holds_and_a_reversed_claim_is_contradicted():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    held = claims.compare(metrics, _claim(), "none")
    assert held["effect"] == pytest.approx(-0.45) and held["n_seeds"] == 3 and held["verdict"] == "holds"
    assert held["ci_low"] < -0.45 < held["ci_high"] < 0
    assert claims.compare(metrics, _claim(direction="higher"), "none")["verdict"] == "contradicted"
    accuracy = claims.compare(metrics, _claim(metric="clean_acc"), "none")
    assert accuracy["effect"] == pytest.approx(-0.05) and accuracy["verdict"] == "holds"


def test_a_noisy_effect_is_inconclusive_with_the_seeds_it_would_need():
    metrics = _metrics([(0.1, 0.6), (0.7, 0.5), (0.2, 0.4)])  # effects -0.5, +0.2, -0.2
    result = claims.compare(metrics, _claim(), "none")
    assert result["verdict"] == "inconclusive"
    sd, mean = pd.Series([-0.5, 0.2, -0.2]).std(), 0.5 / 3
    needed = result["seeds_needed"]
    # the fewest seeds whose t-interval would clear zero: n works, n - 1 does not
    assert stats.t.ppf(0.975, needed - 1) * sd / math.sqrt(needed) < mean
    assert stats.t.ppf(0.975, needed - 2) * sd / math.sqrt(needed - 1) >= mean
    assert claims.compare(metrics, _claim(direction="higher"), "none")["seeds_needed"] is None


def test_seeds_needed_is_never_below_what_already_failed():
    """An inconclusive claim never says fewer seeds than it had would settle it."""
    metrics = _metrics([(0.1, 0.6), (0.55, 0.5), (0.2, 0.4)])  # effects -0.5, +0.05, -0.2
    result = claims.compare(metrics, _claim(), "none")
    assert result["verdict"] == "inconclusive" and result["seeds_needed"] > 3


def test_goal_margin_shift_subtracts_the_same_seed_control():
    rows = []
    for seed, (poisoned, control) in enumerate([(3.0, 1.0), (2.5, 0.0), (4.0, 1.5)]):
        rows += [
            {"attack": "wb", "defense": "mixup", "seed": seed, "goal_margin": poisoned - 1.5},
            {"attack": "c", "defense": "mixup", "seed": seed, "goal_margin": control},
            {"attack": "wb", "defense": "none", "seed": seed, "goal_margin": poisoned},
            {"attack": "c", "defense": "none", "seed": seed, "goal_margin": control - 2.0},
        ]
    frame = pd.DataFrame(rows)
    claim = _claim(attack="wb", defense="mixup", metric="goal_margin_shift")
    result = claims.compare(frame, claim, "none", control="c")
    # (poisoned - 1.5 - control) - (poisoned - (control - 2)) = -3.5 every seed
    assert result["effect"] == pytest.approx(-3.5) and result["verdict"] == "holds"
    raw = claims.compare(frame, _claim(attack="wb", defense="mixup", metric="goal_margin"), "none")
    assert raw["effect"] == pytest.approx(-1.5)


def test_seeds_are_paired_and_a_missing_seed_is_left_out():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    metrics = metrics[~((metrics.defense == "none") & (metrics.seed == 2))]
    assert claims.compare(metrics, _claim(), "none")["n_seeds"] == 2


def test_several_baselines_report_the_weakest(tmp_path):
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    experiments = {"t1": {"claims": [_claim(baseline=["none", "mixup"])]}}
    frame = claims.evaluate(metrics, experiments)
    row = frame.iloc[0]
    assert row.baseline == "mixup" and row.verdict == "holds"  # -0.01 every seed: holds, but the weaker one
    assert row.all_verdicts == "none: holds; mixup: holds"
    metrics.to_csv(tmp_path / "m.csv", index=False)
    claims.render_claims(
        metrics=tmp_path / "m.csv", experiments=experiments, scale="test", csv=tmp_path / "c.csv", md=tmp_path / "c.md"
    )
    md = (tmp_path / "c.md").read_text()
    assert "| t | s | p / cutmix (vs mixup), poison_success lower | -1.0 [" in md and "**holds**" in md
