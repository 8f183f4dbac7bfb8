"""Claims: a paired comparison over seeds, its test, interval, verdict, power and Holm's adjustment."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from augdefense import claims
from augdefense.errors import ConfigError
from augdefense.params import complete


def _metrics(pairs, trials=100, defense="cutmix"):
    """Per seed: (claim cell, baseline cell) success rates, each scored on ``trials`` images; a
    third cell, mixup, sits 1 point above the claim cell."""
    rows = []
    for seed, (ours, theirs) in enumerate(pairs):
        rows += [
            {"attack": "p", "defense": defense, "seed": seed, "poison_success": ours, "n_eval": trials},
            {"attack": "p", "defense": "none", "seed": seed, "poison_success": theirs, "n_eval": trials},
            {"attack": "p", "defense": "mixup", "seed": seed, "poison_success": ours + 0.01, "n_eval": trials},
        ]
    frame = pd.DataFrame(rows)
    frame["clean_acc"] = np.where(frame.defense == "none", 0.95, 0.9) + 0.001 * frame.seed * (frame.defense == "none")
    frame["n_clean"] = 1000
    return frame


def _one_target(pairs):
    """Per seed: (claim cell, baseline) 0/1 outcomes of one target each."""
    return _metrics(pairs, trials=1)


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


NAN = math.nan


@pytest.mark.parametrize(
    "effect, low, high, p, direction, margin, expected",
    [
        # lower: strictly below zero, and the test agrees
        (-0.2, -0.3, -0.1, 0.01, "lower", 0, "holds"),
        (-0.2, -0.3, 0.0, 0.01, "lower", 0, "inconclusive"),  # touching zero is not clear of it
        (0.2, 0.1, 0.3, 0.01, "lower", 0, "contradicted"),
        (0.2, 0.0, 0.3, 0.01, "lower", 0, "inconclusive"),
        (-0.1, -0.3, 0.1, 0.01, "lower", 0, "inconclusive"),
        # higher
        (0.2, 0.1, 0.3, 0.01, "higher", 0, "holds"),
        (0.2, 0.0, 0.3, 0.01, "higher", 0, "inconclusive"),
        (-0.2, -0.3, -0.1, 0.01, "higher", 0, "contradicted"),
        (-0.2, -0.3, 0.0, 0.01, "higher", 0, "inconclusive"),  # contradicted is strict too
        # not_lower: against -margin
        (0.05, -0.04, 0.2, 0.01, "not_lower", 0.05, "holds"),
        (0.05, -0.05, 0.2, 0.01, "not_lower", 0.05, "inconclusive"),
        (-0.2, -0.3, -0.1, 0.01, "not_lower", 0.05, "contradicted"),
        (-0.1, -0.2, -0.05, 0.01, "not_lower", 0.05, "inconclusive"),
        (-0.1, -0.2, 0.0, 0.01, "not_lower", 0.05, "inconclusive"),  # above -margin: not contradicted
        (-0.1, -0.2, 0.04, 0.01, "not_lower", 0.05, "inconclusive"),
        # the test must agree: p at 0.05 is not below it
        (-0.2, -0.3, -0.1, 0.05, "lower", 0, "inconclusive"),
        (-0.2, -0.3, -0.1, 0.0499, "lower", 0, "holds"),
        (-0.2, -0.3, -0.1, NAN, "lower", 0, "inconclusive"),
        (-0.2, -0.37, -0.0004, 0.125, "lower", 0, "inconclusive"),  # interval clear, exact test not
        # no interval (every seed alike): the test and the effect's side decide
        (-1.0, NAN, NAN, 0.03, "lower", 0, "holds"),
        (1.0, NAN, NAN, 0.03, "lower", 0, "contradicted"),
        (-1.0, NAN, NAN, 0.25, "lower", 0, "inconclusive"),
        (0.0, NAN, NAN, 0.03, "higher", 0, "inconclusive"),
        (-0.05, NAN, NAN, 0.03, "not_lower", 0.05, "inconclusive"),
        (-0.04, NAN, NAN, 0.03, "not_lower", 0.05, "holds"),
    ],
)
def test_verdict_at_each_boundary(effect, low, high, p, direction, margin, expected):
    assert claims.verdict(effect, low, high, p, direction, margin) == expected


# -- the cases the verdicts must get right ---------------------------------------------------------


def test_three_identical_discordant_seeds_are_inconclusive():
    """The baseline flips the target on 3 of 3 seeds, the defense on none: the exact McNemar (sign)
    test gives p = 0.25, however certain zero spread looks."""
    result = claims.compare(_one_target([(0, 1)] * 3), _claim(), "none")
    assert result["kind"] == claims.BINARY and result["test"] == "exact McNemar"
    assert result["effect"] == -1.0 and result["p_value"] == pytest.approx(0.25)
    assert result["verdict"] == "inconclusive"
    assert result["discordant"] == "0 claim cell only, 3 baseline only"
    assert result["ci_low"] == pytest.approx(-1.0) and result["ci_high"] < 0  # Newcombe alone would say holds
    assert result["seeds_needed"] == 6  # all discordant one way: 6 seeds reach p = 1/32


def test_twenty_seeds_with_four_one_way_discordant_pairs_are_inconclusive():
    pairs = [(0, 1)] * 4 + [(1, 1)] * 8 + [(0, 0)] * 8
    result = claims.compare(_one_target(pairs), _claim(), "none")
    assert result["effect"] == pytest.approx(-0.2) and result["n_seeds"] == 20
    assert result["p_value"] == pytest.approx(0.125) and result["verdict"] == "inconclusive"
    # a t-interval over the -1/0/+1 differences would have said holds; Newcombe's alone would too
    t_interval = stats.t.interval(0.95, 19, loc=-0.2, scale=stats.sem([-1] * 4 + [0] * 16))
    assert t_interval == pytest.approx((-0.392, -0.008), abs=1e-3)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((-0.3695, -0.0004), abs=1e-4)
    assert result["seeds_needed"] > 20
    assert result["seeds_needed_note"] == (
        f"about {result['seeds_needed']} seeds for 80% power, discordance estimated from 20 seeds"
    )


def test_a_clear_one_target_effect_over_twenty_seeds_holds():
    pairs = [(0, 1)] * 13 + [(1, 1)] * 2 + [(0, 0)] * 5
    result = claims.compare(_one_target(pairs), _claim(), "none")
    assert result["p_value"] == pytest.approx(2 / 2**13) and result["verdict"] == "holds"
    assert result["ci_high"] < 0
    assert claims.compare(_one_target(pairs), _claim(direction="higher"), "none")["verdict"] == "contradicted"


def test_identical_rate_effects_are_not_certainty():
    """Rates with no spread over 3 seeds (every image flips under the baseline, none under the
    defense): no t-interval, and the sign-flip test gives 0.25; 6 such seeds give 1/32."""
    result = claims.compare(_metrics([(0.0, 1.0)] * 3), _claim(), "none")
    assert result["kind"] == claims.VALUES and result["test"] == "sign-flip"
    assert math.isnan(result["ci_low"]) and result["p_value"] == pytest.approx(0.25)
    assert result["verdict"] == "inconclusive" and result["seeds_needed"] == 6
    assert result["seeds_needed_note"].startswith("at least 6 seeds: no spread in 3 seeds")
    six = claims.compare(_metrics([(0.0, 1.0)] * 6), _claim(), "none")
    assert six["p_value"] == pytest.approx(1 / 32) and six["verdict"] == "holds"
    assert six["rests_on"] == "sign-flip test alone: every seed gives the same effect, so there is no t-interval"
    assert six["interval"] == "none"


def test_float_noise_is_no_spread():
    """mixup = cutmix + 0.01 every seed: the differences differ in their last bits only."""
    result = claims.compare(_metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)]), _claim(), "mixup")
    assert result["test"] == "sign-flip" and result["verdict"] == "inconclusive"


def test_a_consistent_rate_effect_holds_on_normality_and_a_reversed_claim_is_contradicted():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    held = claims.compare(metrics, _claim(), "none")
    assert held["effect"] == pytest.approx(-0.45) and held["n_seeds"] == 3 and held["verdict"] == "holds"
    assert held["ci_low"] < -0.45 < held["ci_high"] < 0
    effects = [-0.5, -0.5, -0.35]
    assert held["p_value"] == pytest.approx(stats.ttest_1samp(effects, 0).pvalue)
    assert held["sign_flip_p"] == pytest.approx(0.25)
    assert held["rests_on"] == "t-interval alone, i.e. on normality (sign-flip p = 0.25)"
    assert claims.compare(metrics, _claim(direction="higher"), "none")["verdict"] == "contradicted"
    accuracy = claims.compare(metrics, _claim(metric="clean_acc"), "none")
    assert accuracy["kind"] == claims.VALUES and accuracy["effect"] == pytest.approx(-0.051)
    assert accuracy["verdict"] == "holds"


def test_the_sign_flip_test_agreeing_is_said():
    rng = np.random.default_rng(0)
    pairs = [(0.2 + 0.05 * e, 0.6) for e in rng.normal(size=8)]
    result = claims.compare(_metrics(pairs), _claim(), "none")
    assert result["sign_flip_p"] == pytest.approx(2 / 2**8) and result["verdict"] == "holds"
    assert result["rests_on"].startswith("t-interval; the sign-flip test agrees")


# -- seeds needed: 80% power ---------------------------------------------------------------------


def _t_power(effect_size, n):
    """Power of the two-sided 5% one-sample t-test, from scipy's noncentral t (not statsmodels)."""
    critical = stats.t.ppf(0.975, n - 1)
    noncentral = stats.nct(n - 1, effect_size * math.sqrt(n))
    return noncentral.sf(critical) + noncentral.cdf(-critical)


def test_seeds_needed_is_the_fewest_with_80_percent_power():
    metrics = _metrics([(0.1, 0.6), (0.7, 0.5), (0.2, 0.4)])  # effects -0.5, +0.2, -0.2
    result = claims.compare(metrics, _claim(), "none")
    assert result["verdict"] == "inconclusive"
    effects = np.array([-0.5, 0.2, -0.2])
    size = abs(effects.mean()) / effects.std(ddof=1)
    needed = result["seeds_needed"]
    assert _t_power(size, needed) >= 0.8 > _t_power(size, needed - 1)
    assert result["seeds_needed_note"] == f"about {needed} seeds for 80% power, spread estimated from 3 seeds"
    # the old "just significant" count is about half the power: 80% needs more
    just_significant = next(n for n in range(2, 1000) if stats.t.ppf(0.975, n - 1) / math.sqrt(n) < size)
    assert needed > just_significant
    reversed_claim = claims.compare(metrics, _claim(direction="higher"), "none")
    assert reversed_claim["seeds_needed"] is None
    assert reversed_claim["seeds_needed_note"] == "no number of seeds: the observed effect is not on the claimed side"


def test_seeds_needed_is_never_below_what_already_failed():
    """An inconclusive claim never says fewer seeds than it had would settle it."""
    metrics = _metrics([(0.1, 0.6), (0.55, 0.5), (0.2, 0.4)])  # effects -0.5, +0.05, -0.2
    result = claims.compare(metrics, _claim(), "none")
    assert result["verdict"] == "inconclusive" and result["seeds_needed"] > 3


def test_seeds_needed_for_an_effect_of_exactly_zero_is_none():
    assert claims.seeds_needed([-0.1, 0.1, 0.0], "lower") is None
    assert claims.seeds_needed([-0.1, 0.1, 0.0], "higher") is None
    assert claims.seeds_needed([0.3], "lower") is None


def test_seeds_needed_for_not_lower_counts_from_minus_the_margin():
    effects = np.array([-0.02, 0.0, 0.02, -0.04])  # mean -0.01: 0.04 above -0.05
    needed = claims.seeds_needed(effects, "not_lower", margin=0.05)
    size = 0.04 / effects.std(ddof=1)
    assert _t_power(size, needed) >= 0.8 > _t_power(size, needed - 1)
    assert claims.seeds_needed(effects - 0.05, "not_lower", margin=0.05) is None  # mean -0.06: below
    assert claims.seeds_needed(effects, "not_lower", margin=0.0) is None  # mean -0.01 is below 0


def test_seeds_needed_is_capped():
    assert claims.seeds_needed([-0.001, -0.5, 0.5, 0.0], "lower") == claims.SEEDS_NEEDED_CAP
    assert claims.seeds_needed([0.001, -0.5, 0.5, 0.0], "lower") is None  # the other side
    result = claims.compare(_metrics([(0.1, 0.1), (0.6, 0.1), (0.1, 0.6), (0.1, 0.102)]), _claim(), "none")
    assert result["seeds_needed"] == claims.SEEDS_NEEDED_CAP
    assert result["seeds_needed_note"].startswith(f"more than {claims.SEEDS_NEEDED_CAP - 1} seeds for 80% power")


def test_seeds_needed_for_one_target_outcomes_reaches_80_percent_power():
    """The exact McNemar test's power at the seeds returned, computed exactly (the verdict also needs
    Newcombe's interval, so its power is at most this): at least 80%, up to simulation noise."""
    needed = claims.seeds_needed_paired_binary((8, 0, 4, 8), "lower")

    def mcnemar_power(n, p_discordant=0.2):
        total = 0.0
        for k in range(1, n + 1):
            critical = next((x for x in range(k + 1) if stats.binomtest(x, k).pvalue < 0.05), None)
            if critical is not None:  # all k discordant pairs fall one way (the observed pairs did)
                total += stats.binom.pmf(k, n, p_discordant) * (k >= critical)
        return total

    assert mcnemar_power(needed) >= 0.78 and mcnemar_power(needed - 5) < 0.8
    assert claims.seeds_needed_paired_binary((8, 0, 4, 8), "higher") is None
    assert claims.seeds_needed_paired_binary((10, 0, 0, 10), "lower") is None  # no difference at all
    assert claims.seeds_needed_paired_binary((0, 0, 1, 0), "lower") is None  # one seed
    assert claims.seeds_needed_paired_binary((8, 0, 4, 8), "lower") == needed  # the same draws each run


def test_a_one_target_not_lower_claim_rests_on_newcombes_interval():
    pairs = [(1, 1)] * 18 + [(0, 0)] * 2
    claim = _claim(direction="not_lower", margin=0.3)
    result = claims.compare(_one_target(pairs), claim, "none")
    assert result["test"] == "Newcombe interval" and result["verdict"] == "holds"
    assert result["rests_on"] == (
        "Newcombe's paired interval against -margin (no exact test of a margin); 0 claim cell only, 0 baseline only"
    )
    assert result["ci_low"] > -0.3 and result["p_value"] < 0.05
    tight = claims.compare(_one_target(pairs), _claim(direction="not_lower", margin=0.05), "none")
    assert tight["verdict"] == "inconclusive" and tight["p_value"] > 0.05 and tight["ci_low"] < -0.05
    assert tight["seeds_needed"] > 20


# -- pairing, cells and baselines -----------------------------------------------------------------


def test_goal_margin_shift_subtracts_the_same_seed_control():
    rows = []
    for seed, (poisoned, control) in enumerate([(3.0, 1.0), (2.5, 0.0), (4.0, 1.5)]):
        rows += [
            {"attack": "wb", "defense": "mixup", "seed": seed, "goal_margin": poisoned - 1.5 - 0.1 * seed},
            {"attack": "c", "defense": "mixup", "seed": seed, "goal_margin": control},
            {"attack": "wb", "defense": "none", "seed": seed, "goal_margin": poisoned},
            {"attack": "c", "defense": "none", "seed": seed, "goal_margin": control - 2.0},
        ]
    frame = pd.DataFrame(rows)
    claim = _claim(attack="wb", defense="mixup", metric="goal_margin_shift")
    result = claims.compare(frame, claim, "none", control="c")
    # (poisoned - 1.5 - 0.1 seed - control) - (poisoned - (control - 2)) = -3.5 - 0.1 seed
    assert result["effect"] == pytest.approx(-3.6) and result["kind"] == claims.VALUES
    assert result["verdict"] == "holds"
    raw = claims.compare(frame, _claim(attack="wb", defense="mixup", metric="goal_margin"), "none")
    assert raw["effect"] == pytest.approx(-1.6)


def test_seeds_are_paired_and_a_missing_seed_is_left_out():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    metrics = metrics[~((metrics.defense == "none") & (metrics.seed == 2))]
    result = claims.compare(metrics, _claim(), "none")
    assert result["n_seeds"] == 2 and result["effect"] == pytest.approx(-0.5)
    one = metrics[metrics.seed == 0]
    single = claims.compare(one, _claim(), "none")
    assert single["n_seeds"] == 1 and single["verdict"] == "inconclusive" and single["seeds_needed"] is None
    assert single["rests_on"] == "fewer than two seeds: no test"


def test_the_baseline_attack_is_the_baselines_cell():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    other = metrics[metrics.defense == "none"].assign(attack="q", poison_success=[0.05, 0.1, 0.12])
    metrics = pd.concat([metrics, other])
    result = claims.compare(metrics, _claim(baseline_attack="q"), "none")
    assert result["effect"] == pytest.approx((0.05 + 0.1 + 0.03) / 3)
    assert claims.compare(metrics, _claim(), "none")["effect"] == pytest.approx(-0.45)


def test_a_one_target_cell_compared_with_a_rate_is_a_value_comparison():
    metrics = _one_target([(0, 1), (1, 1), (0, 1)])
    metrics.loc[metrics.defense == "none", "n_eval"] = 50
    assert claims.compare(metrics, _claim(), "none")["kind"] == claims.VALUES


def test_several_baselines_report_the_weakest():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5), (0.12, 0.55)])
    metrics.loc[metrics.defense == "mixup", "poison_success"] = [0.3, 0.35, 0.29, 0.33]  # effects -0.2, -0.15, ...
    experiments = {"t1": {"claims": [_claim(baseline=["none", "mixup"])]}}
    row = claims.evaluate(metrics, experiments).iloc[0]
    assert row.all_verdicts == "none: holds; mixup: holds"
    assert row.baseline == "mixup"  # both hold: the one whose interval sits nearer zero
    experiments = {"t1": {"claims": [_claim(baseline=["mixup", "none"])]}}
    assert claims.evaluate(metrics, experiments).iloc[0].baseline == "mixup"  # not the order given
    metrics.loc[metrics.defense == "mixup", "poison_success"] = [0.05, 0.25, 0.1, 0.2]
    row = claims.evaluate(metrics, experiments).iloc[0]
    assert row.verdict == "inconclusive" and row.baseline == "mixup"
    assert row.claim_p == pytest.approx(max(claims.compare(metrics, _claim(), b)["p_value"] for b in ("none", "mixup")))


def test_among_inconclusive_baselines_the_one_nearer_the_other_side_is_shown():
    rng = np.random.default_rng(3)
    metrics = _metrics([(0.3 + 0.1 * e, 0.35) for e in rng.normal(size=4)])
    far = metrics[metrics.defense == "none"].assign(defense="cutout")
    far["poison_success"] = far.poison_success + 0.2
    metrics = pd.concat([metrics, far])
    claim = _claim(baseline=["cutout", "none"])
    near_zero, far_below = (claims.compare(metrics, claim, b) for b in ("none", "cutout"))
    assert near_zero["verdict"] == "inconclusive" == far_below["verdict"]
    assert claims.evaluate(metrics, {"t": {"claims": [claim]}}).iloc[0].baseline == "none"


# -- several claims: Holm ---------------------------------------------------------------------------


def test_holm_adjusts_across_the_runs_claims():
    metrics = _metrics([(0.1 + 0.01 * s, 0.2 + 0.03 * (s % 3)) for s in range(8)])
    experiments = {
        "a": {"claims": [_claim(text="one"), _claim(text="two", metric="clean_acc")]},
        "b": {"claims": [_claim(text="three", baseline="mixup", direction="higher")]},
    }
    frame = claims.evaluate(metrics, experiments)
    p = frame.claim_p.to_numpy()
    order = np.argsort(p)
    expected = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    holm = np.empty_like(expected)
    holm[order] = expected
    assert frame.holm_p.to_numpy() == pytest.approx(holm)
    for row in frame.itertuples():
        assert row.holm_verdict == (row.verdict if row.holm_p < 0.05 else "inconclusive")


def test_a_claim_that_holds_alone_can_fall_to_inconclusive_under_holm():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.6), (0.25, 0.5)])  # effects -0.5, -0.4, -0.25: t-test p = 0.034
    claim = _claim()
    single = claims.evaluate(metrics, {"a": {"claims": [claim]}}).iloc[0]
    assert single.verdict == "holds" and single.holm_verdict == "holds" and 0.025 < single.claim_p < 0.05
    many = claims.evaluate(metrics, {"a": {"claims": [claim, dict(claim, text="again")]}})
    assert many.holm_p.tolist() == pytest.approx([2 * single.claim_p] * 2)
    assert (many.verdict == "holds").all() and (many.holm_verdict == "inconclusive").all()


def test_a_contradiction_against_one_of_several_baselines_pays_for_the_number_tried():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    claim = _claim(direction="higher", baseline=["none", "mixup"])
    row = claims.evaluate(metrics, {"a": {"claims": [claim]}}).iloc[0]
    against_none = claims.compare(metrics, claim, "none")
    assert row.verdict == "contradicted" and row.baseline == "none"
    assert row.claim_p == pytest.approx(2 * against_none["p_value"])


# -- margins ----------------------------------------------------------------------------------------


def test_not_lower_needs_its_margin_and_only_it_has_one():
    with pytest.raises(ConfigError, match=r"^claim\.margin: required for direction not_lower"):
        claims.compare(_metrics([(0.1, 0.1)] * 3), _claim(direction="not_lower"), "none")
    with pytest.raises(ConfigError, match=r"^x\.margin: only a not_lower claim has a margin"):
        claims.check_claim(_claim(margin=0.1), "x")
    claims.check_claim(_claim(direction="not_lower", margin=0.1), "x")


def test_a_not_lower_margin_is_in_the_metrics_unit():
    rows = []
    for seed, shift in enumerate([-0.3, -0.1, -0.2, -0.25]):
        rows += [
            {"attack": "wb", "defense": "mixup", "seed": seed, "goal_margin": 2.0 + shift},
            {"attack": "wb", "defense": "none", "seed": seed, "goal_margin": 2.0},
        ]
    frame = pd.DataFrame(rows)
    in_nats = _claim(attack="wb", defense="mixup", metric="goal_margin", direction="not_lower", margin=0.5)
    assert claims.compare(frame, in_nats, "none")["verdict"] == "holds"  # 0.2 nats lower, within 0.5
    as_if_points = dict(in_nats, margin=0.05)
    assert claims.compare(frame, as_if_points, "none")["verdict"] == "contradicted"


# -- the rendered table ------------------------------------------------------------------------------


def _realistic_metrics(seeds=5):
    """A run's metrics.csv as collect_metrics writes it: patch backdoors scored on many images, a
    one-target attack and its clean control with goal margins, clean accuracy on every cell."""
    rng = np.random.default_rng(7)
    rows = []
    for seed in range(seeds):
        for defense, backdoor in (("none", 0.9), ("mixup", 0.88), ("cutmix", 0.2)):
            rows.append(
                {
                    "attack": "patch100",
                    "defense": defense,
                    "seed": seed,
                    "clean_acc": 0.93 + 0.01 * rng.normal(),
                    "poison_success": float(np.clip(backdoor + 0.05 * rng.normal(), 0, 1)),
                    "goal_probability": 0.5,
                    "goal_margin": 1.0,
                    "n_clean": 1797,
                    "n_eval": 180,
                    "n_poisons": 25,
                }
            )
        for defense, flips, margin in (("none", seed < 4, 2.0), ("mixup4", seed == 0, -1.0)):
            for attack, success, goal in (("wb", float(flips), margin), ("wb_control", 0.0, -3.0)):
                rows.append(
                    {
                        "attack": attack,
                        "defense": defense,
                        "seed": seed,
                        "clean_acc": 0.9 + 0.01 * rng.normal(),
                        "poison_success": success,
                        "goal_probability": 0.4,
                        "goal_margin": goal + 0.3 * rng.normal(),
                        "n_clean": 1797,
                        "n_eval": 1,
                        "n_poisons": 10,
                    }
                )
    frame = pd.DataFrame(rows)
    return frame[frame.seed != seeds - 1].pipe(lambda f: pd.concat([f, frame[frame.seed == seeds - 1]]))


def test_render_claims_on_a_realistic_run(tmp_path):
    path = tmp_path / "metrics.csv"
    _realistic_metrics().to_csv(path, index=False)
    experiments = {
        "table1": {
            "attacks": ["patch100"],
            "defenses": ["none", "mixup", "cutmix"],
            "claims": [
                _claim(text="CutMix lowers it", attack="patch100"),
                _claim(text="mixup does not", attack="patch100", defense="mixup", direction="not_lower", margin=0.1),
            ],
        },
        "table2": {
            "attacks": ["wb"],
            "defenses": ["none", "mixup4"],
            "control": "wb_control",
            "claims": [
                _claim(text="mixup4 lowers success", attack="wb", defense="mixup4"),
                _claim(text="mixup4 lowers the push", attack="wb", defense="mixup4", metric="goal_margin_shift"),
                _claim(text="accuracy", attack="wb", defense="mixup4", metric="clean_acc", direction="higher"),
            ],
        },
    }
    frame = claims.render_claims(
        metrics=path, experiments=experiments, scale="test", csv=tmp_path / "c.csv", md=tmp_path / "c.md"
    )
    assert list(frame.columns) == claims.COLUMNS and len(frame) == 5
    by_claim = frame.set_index("claim")
    assert by_claim.loc["CutMix lowers it", "verdict"] == "holds"
    assert by_claim.loc["mixup does not", "kind"] == claims.VALUES
    success = by_claim.loc["mixup4 lowers success"]
    assert success.kind == claims.BINARY and success.discordant == "0 claim cell only, 3 baseline only"
    assert success.verdict == "inconclusive" and success.p_value == pytest.approx(0.25)
    assert by_claim.loc["mixup4 lowers the push", "verdict"] == "holds"
    md = (tmp_path / "c.md").read_text()
    assert "| mixup4 lowers success | s | wb / mixup4 (vs none), poison_success, lower | -60.0 [" in md
    assert "(Newcombe; 0 claim cell only, 3 baseline only) | 5 | exact McNemar p = 0.25 |" in md
    assert f"**inconclusive at 5 seeds** (about {success.seeds_needed} seeds for 80% power" in md
    assert "patch100 / mixup (vs none), poison_success, not lower by more than 10.0 points" in md
    assert "| 5 | t p < 0.001; sign-flip p = 0.062 | **holds**: t-interval alone" in md
    assert "'With Holm' adjusts across the 5 claims" in md
    assert "intersection-union test" in md
    written = pd.read_csv(tmp_path / "c.csv")
    assert list(written.columns) == claims.COLUMNS and written.holm_verdict.notna().all()


# -- edges: two seeds, one seed, missing data, every column ------------------------------------------


def test_two_seeds_are_enough_to_test_and_to_estimate_a_spread():
    result = claims.compare(_metrics([(0.1, 0.6), (0.2, 0.5)]), _claim(), "none")
    assert result["n_seeds"] == 2 and result["test"] == "t" and result["interval"] == "t"
    assert result["p_value"] == pytest.approx(stats.ttest_1samp([-0.5, -0.3], 0).pvalue)
    assert result["rests_on"].startswith("t-interval alone") and result["discordant"] == ""
    assert (
        result["seeds_needed_note"]
        == f"about {result['seeds_needed']} seeds for 80% power, spread estimated from 2 seeds"
    )
    assert claims.seeds_needed([-0.5, -0.3], "lower") == result["seeds_needed"]
    binary = claims.compare(_one_target([(0, 1), (1, 1)]), _claim(), "none")
    assert binary["n_seeds"] == 2 and binary["ci_low"] < binary["ci_high"] and binary["p_value"] == 1.0
    assert math.isnan(binary["sign_flip_p"]) and binary["interval"] == "Newcombe"
    assert (
        binary["rests_on"] == "exact McNemar test and Newcombe's paired interval (0 claim cell only, 1 baseline only)"
    )
    assert claims.seeds_needed_paired_binary((1, 0, 1, 0), "lower") == binary["seeds_needed"] > 2


def test_one_seed_has_no_interval_and_no_power():
    for metrics in (_metrics([(0.1, 0.6)]), _one_target([(0, 1)])):
        result = claims.compare(metrics, _claim(), "none")
        assert result["n_seeds"] == 1 and math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])
        assert math.isnan(result["p_value"]) and result["verdict"] == "inconclusive"
        assert result["seeds_needed"] is None
        assert result["seeds_needed_note"] == "one seed: nothing to estimate a spread from"


def test_a_metric_the_run_did_not_record_gives_no_seeds():
    result = claims.compare(_metrics([(0.1, 0.6)] * 3), _claim(metric="poison_success_all_images"), "none")
    assert result["n_seeds"] == 0 and result["verdict"] == "inconclusive" and math.isnan(result["effect"])
    frame = pd.DataFrame(
        [
            {"attack": a, "defense": d, "seed": s, "goal_margin": 1.0 + s}
            for a in ("wb",)
            for d in ("mixup", "none")
            for s in range(3)
        ]
    )
    shift = _claim(attack="wb", defense="mixup", metric="goal_margin_shift")
    assert claims.compare(frame, shift, "none", control="c")["n_seeds"] == 0  # no control cells


def test_the_tests_run_against_minus_the_margin():
    effects = np.array([-0.02, 0.01, -0.04, 0.0, -0.03])
    metrics = _metrics([(0.5 + e, 0.5) for e in effects])
    result = claims.compare(metrics, _claim(direction="not_lower", margin=0.05), "none")
    assert result["p_value"] == pytest.approx(stats.ttest_1samp(effects, -0.05).pvalue)
    assert result["sign_flip_p"] == pytest.approx(2 / 2**5) and result["verdict"] == "holds"
    assert result["seeds_needed_note"].startswith("about ")  # -0.016 is above -0.05: the claimed side
    assert claims.compare(metrics, _claim(), "none")["sign_flip_p"] > 0.2  # against 0 instead


def test_a_one_target_not_lower_claims_seeds_are_counted_from_minus_the_margin():
    assert claims.seeds_needed_paired_binary((8, 0, 2, 10), "not_lower", 0.3) >= 2
    assert claims.seeds_needed_paired_binary((8, 0, 2, 10), "not_lower", 0.05) is None  # -0.1 is below -0.05
    assert 20 < claims.seeds_needed_paired_binary((20, 0, 0, 0), "not_lower", 0.05) < claims.SEEDS_NEEDED_CAP


def test_seeds_needed_can_be_two_and_is_exact_between_the_probes():
    assert claims.seeds_needed([-1.0, -1.001, -0.999], "lower") == 2  # power at 2 seeds is already 80%
    effects = np.array([-0.1, 0.3, -0.35, 0.05])  # about 0.28 sd: between 65 and 1000 seeds
    needed = claims.seeds_needed(effects, "lower")
    size = abs(effects.mean()) / effects.std(ddof=1)
    assert 64 < needed < claims.SEEDS_NEEDED_CAP
    assert _t_power(size, needed) >= 0.8 > _t_power(size, needed - 1)


def test_a_claim_without_a_test_enters_holm_with_p_one():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    single = metrics[(metrics.seed == 0) | (metrics.defense != "mixup")]
    row = claims.evaluate(single, {"a": {"claims": [_claim(baseline=["none", "mixup"])]}}).iloc[0]
    assert row.baseline == "mixup" and row.n_seeds == 1 and row.claim_p == 1.0 and row.holm_p == 1.0


def test_a_contradiction_p_is_at_most_one():
    comparisons = [
        {"p_value": 0.6, "verdict": "contradicted"},
        {"p_value": 0.01, "verdict": "holds"},
        {"p_value": 0.7, "verdict": "inconclusive"},
    ]
    assert claims.claim_p(comparisons, "contradicted") == 1.0
    comparisons[0]["p_value"] = 0.01
    assert claims.claim_p(comparisons, "contradicted") == pytest.approx(0.03)
    assert claims.claim_p(comparisons, "inconclusive") == pytest.approx(0.7)


def test_evaluate_without_claims_is_an_empty_table():
    frame = claims.evaluate(_metrics([(0.1, 0.6)] * 3), {"table4": {"attacks": ["p"], "defenses": ["none"]}})
    assert frame.empty and list(frame.columns) == claims.COLUMNS


def test_the_weakest_baseline_for_higher_and_not_lower_claims():
    rng = np.random.default_rng(5)
    rows = [(0.6 + 0.02 * e, 0.2) for e in rng.normal(size=5)]
    metrics = _metrics(rows)
    nearer = metrics[metrics.defense == "none"].assign(defense="cutout")
    nearer["poison_success"] = nearer.poison_success + 0.3
    metrics = pd.concat([metrics, nearer])
    for claim in (_claim(direction="higher"), _claim(direction="not_lower", margin=0.05)):
        claim = dict(claim, baseline=["none", "cutout"])
        row = claims.evaluate(metrics, {"a": {"claims": [claim]}}).iloc[0]
        assert row.all_verdicts == "none: holds; cutout: holds" and row.baseline == "cutout", claim["direction"]
    # without an interval (no spread) a comparison counts as the weakest among equal verdicts
    flat = _metrics([(0.1, 0.6)] * 6)
    noisy = flat[flat.defense == "none"].assign(defense="cutout", poison_success=[0.5, 0.6, 0.55, 0.7, 0.65, 0.6])
    flat = pd.concat([flat, noisy])
    row = claims.evaluate(flat, {"a": {"claims": [_claim(baseline=["none", "cutout"])]}}).iloc[0]
    assert row.all_verdicts == "none: holds; cutout: holds" and row.baseline == "none"
    row = claims.evaluate(flat, {"a": {"claims": [_claim(baseline=["cutout", "none"])]}}).iloc[0]
    assert row.baseline == "none"


def test_the_csv_keeps_the_margin_only_where_a_claim_has_one():
    metrics = _metrics([(0.1, 0.6), (0.2, 0.7), (0.15, 0.5)])
    claims_ = [_claim(), _claim(text="n", direction="not_lower", margin=0.05)]
    frame = claims.evaluate(metrics, {"a": {"claims": claims_}})
    assert math.isnan(frame.margin[0]) and frame.margin[1] == 0.05
    assert frame.experiment.tolist() == ["a", "a"] and frame.interval.tolist() == ["t", "t"]


def test_the_markdown_says_each_case(tmp_path):
    rows = []
    for seed in range(3):
        rows += [
            {"attack": "wb", "defense": "mixup", "seed": seed, "goal_margin": 0.5 + 0.1 * seed, "poison_success": 0.0},
            {"attack": "wb", "defense": "none", "seed": seed, "goal_margin": 0.9 - 0.05 * seed, "poison_success": 0.0},
        ]
    rows += [{"attack": "wb", "defense": "cutout", "seed": 0, "goal_margin": 1.0, "poison_success": 1.0}]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    claims_ = [
        _claim(text="a", attack="wb", defense="mixup", metric="goal_margin", direction="not_lower", margin=1.0),
        _claim(text="b", attack="wb", defense="cutout", metric="goal_margin"),
        _claim(text="c", attack="wb", defense="mixup", metric="goal_margin", baseline="cutout"),
    ]
    claims.render_claims(
        metrics=path, experiments={"t": {"claims": claims_}}, scale="s", csv=tmp_path / "c.csv", md=tmp_path / "c.md"
    )
    md = (tmp_path / "c.md").read_text()
    assert md.startswith("\n".join(claims.CLAIMS_HEADER) + "\n")
    assert claims.CLAIMS_NOTE.format(claims=3) in md
    assert (
        "wb / mixup (vs none), goal_margin, not lower by more than 1.00 nats | -0.25 [-0.62, +0.12] | 3 | t p = " in md
    )
    assert "**holds**: t-interval alone, i.e. on normality (sign-flip p = 0.25) |" in md
    assert (
        "| b | s | wb / cutout (vs none), goal_margin, lower | +0.10 | 1 | no test p – | **inconclusive at 1 seed**"
        in md
    )
    assert "| inconclusive (p = 1) |" in md
    assert md.endswith("\n\nComputed at: s.\n")
    rows = pd.read_csv(tmp_path / "c.csv")
    assert rows.claim.tolist() == ["a", "b", "c"]


def test_the_weakest_of_two_holding_baselines_is_the_one_whose_near_end_is_nearer():
    """For higher the near end is the low end: a wide interval reaching nearer zero is weaker than a
    tight one further off, though its far end is further."""
    wide = [(0.3 + d, 0.0) for d in (-0.2, 0.25, 0.1, -0.1, 0.2, -0.25)]  # +0.3, wide
    metrics = _metrics(wide)
    tight = metrics[metrics.defense == "none"].assign(defense="cutout")
    offsets = np.tile([0.15, 0.16, 0.14], 2)
    tight["poison_success"] = metrics[metrics.defense == "cutmix"].poison_success.to_numpy() - offsets
    metrics = pd.concat([metrics, tight])
    claim = _claim(direction="higher", baseline=["cutout", "none"])
    wide_result, tight_result = (claims.compare(metrics, claim, b) for b in ("none", "cutout"))
    assert wide_result["ci_low"] < tight_result["ci_low"] and wide_result["ci_high"] > tight_result["ci_high"]
    assert claims.evaluate(metrics, {"a": {"claims": [claim]}}).iloc[0].baseline == "none"


def test_for_lower_the_near_end_is_the_high_end():
    wide = [(0.0, 0.3 + d) for d in (-0.2, 0.25, 0.1, -0.1, 0.2, -0.25)]  # -0.3, wide
    metrics = _metrics(wide)
    tight = metrics[metrics.defense == "none"].assign(defense="cutout")
    offsets = np.tile([0.15, 0.16, 0.14], 2)
    tight["poison_success"] = metrics[metrics.defense == "cutmix"].poison_success.to_numpy() + offsets
    metrics = pd.concat([metrics, tight])
    claim = _claim(baseline=["cutout", "none"])
    wide_result, tight_result = (claims.compare(metrics, claim, b) for b in ("none", "cutout"))
    assert wide_result["ci_high"] > tight_result["ci_high"] and wide_result["ci_low"] < tight_result["ci_low"]
    assert claims.evaluate(metrics, {"a": {"claims": [claim]}}).iloc[0].baseline == "none"
