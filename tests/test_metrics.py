"""Per-run metrics and the intervals the tables report, against known values."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from augdefense import metrics, tables


@pytest.mark.parametrize(
    "hits, n, low, high", [(2, 3, 0.0943, 0.9916), (0, 10, 0.0, 0.3085), (10, 10, 0.6915, 1.0), (5, 10, 0.1871, 0.8129)]
)
def test_clopper_pearson_interval_known_values(hits, n, low, high):
    got = metrics.clopper_pearson_interval(hits, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_clopper_pearson_interval_of_nothing_is_undefined():
    assert all(math.isnan(v) for v in metrics.clopper_pearson_interval(0, 0))


def test_clopper_pearson_covers_at_least_95_percent_where_wilson_does_not():
    """At n = 3 and p = 0.05 Wilson's interval covers 85.7% of draws; Clopper-Pearson's at least 95%."""
    from statsmodels.stats.proportion import proportion_confint

    def coverage(interval):
        return sum(stats.binom.pmf(k, 3, 0.05) for k in range(4) if interval(k)[0] <= 0.05 <= interval(k)[1])

    assert coverage(lambda k: proportion_confint(k, 3, method="wilson")) == pytest.approx(0.857, abs=1e-3)
    assert coverage(lambda k: metrics.clopper_pearson_interval(k, 3)) >= 0.95


def test_newcombes_paired_interval_matches_the_published_example():
    """Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, ch. 8: Cavo et
    al.'s complete responses before and after consolidation, (59, 6, 16, 80): -0.0621, 95% CI
    -0.1186 to -0.0046 (the same in the book's R package, contingencytables)."""
    low, high = metrics.newcombe_paired_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    swapped = metrics.newcombe_paired_interval(59, 16, 6, 80)  # the two classifications exchanged
    assert swapped == pytest.approx((-high, -low))


def test_newcombes_interval_is_vectorised_and_wide_when_every_seed_agrees():
    tables = np.array([(59, 6, 16, 80), (0, 0, 3, 0), (3, 0, 0, 0), (8, 0, 4, 8)]).T
    low, high = metrics.newcombe_paired_interval(*tables)
    for i, table in enumerate(tables.T):
        assert (low[i], high[i]) == pytest.approx(metrics.newcombe_paired_interval(*table))
    assert low[2] < -0.5 and high[2] > 0.5  # 3 seeds, both cells succeed on each: far from certain
    assert all(math.isnan(v) for v in metrics.newcombe_paired_interval(0, 0, 0, 0))


def test_newcombe_p_inverts_the_interval():
    low, high = metrics.newcombe_paired_interval(59, 6, 16, 80)
    assert metrics.newcombe_p(59, 6, 16, 80, low) == pytest.approx(0.05, abs=1e-6)
    assert metrics.newcombe_p(59, 6, 16, 80, high) == pytest.approx(0.05, abs=1e-6)
    assert metrics.newcombe_p(59, 6, 16, 80, 0.0) < 0.05 < metrics.newcombe_p(59, 6, 16, 80, -0.11)
    assert metrics.newcombe_p(59, 6, 16, 80, (6 - 16) / 161) == 1.0
    assert metrics.newcombe_p(20, 0, 0, 0, -0.9) == pytest.approx(1e-12)  # beyond any level's reach
    assert math.isnan(metrics.newcombe_p(0, 0, 0, 0, 0.0))


@pytest.mark.parametrize("first_only, second_only", [(0, 4), (4, 0), (3, 0), (13, 0), (6, 16), (5, 5), (0, 0)])
def test_exact_mcnemar_is_the_sign_test_on_the_discordant_pairs(first_only, second_only):
    from statsmodels.stats.contingency_tables import mcnemar

    expected = mcnemar([[7, first_only], [second_only, 9]], exact=True).pvalue
    assert metrics.mcnemar_exact_p(first_only, second_only) == pytest.approx(expected)
    if first_only + second_only:
        assert expected == pytest.approx(stats.binomtest(first_only, first_only + second_only).pvalue)


def test_paired_table_counts_each_kind_of_seed():
    assert metrics.paired_table([1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 1, 1, 0, 0]) == (1, 2, 3, 2)


def test_mcnemar_exact_p_is_a_float_for_one_table_and_an_array_for_many():
    assert type(metrics.mcnemar_exact_p(3, 0)) is float
    assert metrics.mcnemar_exact_p(np.array([3, 0, 1]), np.array([0, 0, 0])).tolist() == pytest.approx([0.25, 1, 1])


def _square_and_add(table, phi):
    """Newcombe's method 10 written out for one table and a given phi (statsmodels' Wilson ends)."""
    from statsmodels.stats.proportion import proportion_confint

    a, b, c, d = table
    n = sum(table)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_confint(a + b, n, method="wilson")
    l2, u2 = proportion_confint(a + c, n, method="wilson")
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = p1 - p2 + math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    return low, high


@pytest.mark.parametrize(
    "table, phi",
    [
        ((5, 3, 3, 3), 0.0),  # ad - bc = 6, within n/2 = 7 of zero: counted as no association
        ((2, 1, 1, 2), 0.0),  # ad - bc = 3 = n/2
        ((3, 1, 1, 3), (8 - 4) / 16),  # ad - bc = 8 > n/2 = 4: shrunk by n/2
        ((1, 3, 3, 1), -8 / 16),  # a negative association is taken as it is
        ((0, 2, 3, 0), (0 - 6) / math.sqrt(2 * 3 * 3 * 2)),
    ],
)
def test_newcombes_correlation_term(table, phi):
    assert metrics.newcombe_paired_interval(*table) == pytest.approx(_square_and_add(table, phi))


def test_newcombes_interval_of_one_seed_is_defined_and_wide():
    low, high = metrics.newcombe_paired_interval(0, 1, 0, 0)
    assert high == pytest.approx(1.0) and -1 < low < 0  # one seed, the claim cell only: not certainty


@pytest.mark.parametrize("values", [[0.3, -0.1, 0.5, 0.2], [1.0, 2.0, 0.0, -0.5, 3.0, 1.5, 0.7], [0.0, 0.4, -0.4]])
def test_sign_flip_p_matches_scipys_permutation_test(values):
    expected = stats.permutation_test(
        (np.asarray(values),),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf,
    ).pvalue
    assert metrics.sign_flip_p(values) == pytest.approx(expected)
    assert metrics.sign_flip_p(np.asarray(values) + 0.2, null=0.2) == pytest.approx(expected)


def test_sign_flip_p_floor_is_two_over_two_to_the_n():
    assert metrics.sign_flip_p([-1.0] * 3) == pytest.approx(0.25)
    assert metrics.sign_flip_p([-1.0] * 5) == pytest.approx(1 / 16)
    assert metrics.sign_flip_p([-1.0] * 6) == pytest.approx(1 / 32)
    assert metrics.sign_flip_min_seeds() == 6
    assert metrics.sign_flip_p([-1.0] * 20) == pytest.approx(2 / 2**20)
    assert math.isnan(metrics.sign_flip_p([]))


def test_sign_flip_p_beyond_exact_enumeration_is_repeatable_and_close_to_exact(monkeypatch):
    values = np.random.default_rng(1).normal(0.1, 1, metrics.SIGN_FLIP_EXACT_SEEDS + 2)
    first = metrics.sign_flip_p(values)
    assert first == metrics.sign_flip_p(values)
    monkeypatch.setattr(metrics, "SIGN_FLIP_EXACT_SEEDS", len(values))
    exact = metrics.sign_flip_p(values)
    assert 0.05 < exact < 0.95 and first == pytest.approx(exact, abs=0.005)
    monkeypatch.undo()
    assert metrics.sign_flip_p([1.0] * 25) == pytest.approx(1 / 100_001)  # no random pattern reaches it


def test_t_test_p_agrees_with_the_interval():
    values = [0.1, 0.35, 0.2, 0.05]
    _, low, high, _ = metrics.mean_interval(values)
    assert metrics.t_test_p(values, low) == pytest.approx(0.05)
    assert metrics.t_test_p(values, high) == pytest.approx(0.05)
    assert math.isnan(metrics.t_test_p([0.2, 0.2, 0.2])) and math.isnan(metrics.t_test_p([0.2]))
    assert metrics.t_test_p(values) == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue)


def test_zero_spread_has_no_interval():
    """Identical per-seed values (or values that differ by float rounding) give no t-interval,
    rather than a zero-width one that reads as certainty."""
    mean, low, high, n = metrics.mean_interval([-1.0, -1.0, -1.0])
    assert (mean, n) == (-1.0, 3) and math.isnan(low) and math.isnan(high)
    noisy = np.array([0.1, 0.2, 0.15]) + 0.01 - np.array([0.1, 0.2, 0.15])
    assert noisy.std() > 0 and not metrics.has_spread(noisy)
    assert math.isnan(metrics.mean_interval(noisy)[1])
    assert metrics.has_spread([0.5, 0.5 + 1e-6]) and not metrics.has_spread([3.0])
    # the tolerance: 1e-9 of the values' size, at least 1e-9
    assert metrics.has_spread([0.0, 1.5e-9]) and not metrics.has_spread([0.0, 0.5e-9])
    assert metrics.has_spread([1000.0, 1000.0 + 2e-6]) and not metrics.has_spread([1000.0, 1000.0 + 5e-7])


def test_seed_interval_clips_a_t_interval_at_the_bounds_of_a_rate():
    """A t-interval over rates 0.5, 0.9, 1.0 reaches 1.457: the table's interval ends at 1 (and
    starts at 0 for rates near 0), keeping the t-interval's other end."""
    _, low, high, _ = metrics.mean_interval([0.5, 0.9, 1.0])
    assert high == pytest.approx(1.4572, abs=1e-4)
    assert metrics.seed_interval([0.5, 0.9, 1.0], [10, 10, 10]) == (pytest.approx(low), 1.0, "t over seeds")
    _, low, high, _ = metrics.mean_interval([0.0, 0.1, 0.5])
    assert low < 0 and metrics.seed_interval([0.0, 0.1, 0.5], [10, 10, 10]) == (
        0.0,
        pytest.approx(high),
        "t over seeds",
    )
    inside = metrics.seed_interval([0.4, 0.5, 0.6], [10, 10, 10])
    assert inside[:2] == pytest.approx(metrics.mean_interval([0.4, 0.5, 0.6])[1:3])


def test_seed_interval_by_kind_of_cell():
    low, high, method = metrics.seed_interval([1, 1, 0], [1, 1, 1])
    assert (low, high) == pytest.approx(metrics.clopper_pearson_interval(2, 3))
    assert method == "clopper-pearson over seeds"
    low, high, method = metrics.seed_interval([1.0], [1])  # one seed: no interval over seeds
    assert math.isnan(low) and math.isnan(high) and method == "clopper-pearson over seeds"
    low, high, method = metrics.seed_interval([0.7, 0.7, 0.7], [50, 50, 50])  # no spread
    assert math.isnan(low) and method == "t over seeds"
    low, high, method = metrics.seed_interval([], [])
    assert math.isnan(low) and method == "t over seeds"
    assert metrics.seed_interval([1, float("nan"), 0], [1, 1, 1])[:2] == pytest.approx(
        metrics.clopper_pearson_interval(1, 2)
    )


def test_paired_shift_is_the_mean_difference_with_a_t_interval():
    mean, low, high, n = metrics.paired_shift([3.0, 5.0, 7.0], [1.0, 1.0, 1.0])
    # differences 2, 4, 6: mean 4, sd 2, t(0.975, 2) = 4.3027 -> half width 4.3027 * 2 / sqrt(3)
    assert (mean, n) == (4.0, 3)
    assert (low, high) == pytest.approx((4 - 4.968, 4 + 4.968), abs=1e-3)
    assert metrics.paired_shift([1.0, float("nan")], [0.0, 0.0])[3] == 1


def test_run_metrics_count_hits_and_margins():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    record = metrics.run_metrics(probs, torch.tensor([0, 1, 0]), probs, torch.tensor([0, 0, 2]))
    assert record["clean_acc"] == pytest.approx(2 / 3) and record["n_clean"] == 3 and record["n_eval"] == 3
    assert record["poison_success"] == pytest.approx(2 / 3)
    assert record["goal_probability"] == pytest.approx((0.7 + 0.1 + 0.5) / 3)
    margins = [math.log(0.7 / 0.2), math.log(0.1 / 0.8), math.log(0.5 / 0.3)]
    assert record["goal_margin"] == pytest.approx(sum(margins) / 3)
    empty = metrics.run_metrics(probs[:0], torch.zeros(0, dtype=torch.long), probs, torch.tensor([0, 0, 2]))
    assert math.isnan(empty["clean_acc"]) and empty["n_clean"] == 0


def test_paired_shift_with_no_and_one_pair():
    assert all(math.isnan(v) for v in metrics.paired_shift([], [])[:3]) and metrics.paired_shift([], [])[3] == 0
    mean, low, high, n = metrics.paired_shift([2.5], [0.5])
    assert (mean, n) == (2.0, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = metrics.paired_shift([1, 2], [0, 0])  # integers are read as numbers
    assert n == 2 and mean == 1.5 and low < 1.5 < high


def test_aggregate_keeps_the_groups_in_their_order_of_appearance():
    frame = pd.DataFrame({"defense": ["z", "z", "a"], "clean_acc": [0.5, 0.7, 0.9]})
    out = metrics.aggregate(frame, ["defense"], ["clean_acc"])
    assert out.defense.tolist() == ["z", "a"]
    assert out.clean_acc_mean.tolist() == pytest.approx([0.6, 0.9]) and out.clean_acc_count.tolist() == [2, 1]


def _comparison(tmp_path, monkeypatch, paper_value, seeds=3):
    """compare_papers on 2 hits of 3 seeds (one image each; or 1 hit of 1 seed) against a paper value."""
    rows = [
        {
            "attack": "wb",
            "defense": "none",
            "seed": s,
            "clean_acc": 0.9,
            "n_clean": 100,
            "poison_success": float(s < 2),
            "n_eval": 1,
        }
        for s in range(seeds)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    reference = pd.DataFrame(
        [
            {
                "paper": "p",
                "table": "table2",
                "attack": "wb",
                "defense": "none",
                "metric": "poison_success",
                "value": paper_value,
            }
        ]
    )
    monkeypatch.setattr(tables, "reference_numbers", lambda table: reference)
    frame = tables.compare_papers(
        metrics=tmp_path / "m.csv",
        experiments={"table2": {"attacks": ["wb"], "defenses": ["none"]}},
        scale="test",
        csv=tmp_path / "c.csv",
        md=tmp_path / "c.md",
    )
    return frame.iloc[0]


def test_a_paper_value_on_the_interval_edge_is_inside(tmp_path, monkeypatch):
    low, high = metrics.clopper_pearson_interval(2, 3)
    for edge in (low, high):
        row = _comparison(tmp_path, monkeypatch, edge)
        assert bool(row.paper_inside_ci) is True and row.ci_method == "clopper-pearson over seeds"
    assert bool(_comparison(tmp_path, monkeypatch, low - 1e-6).paper_inside_ci) is False
    assert bool(_comparison(tmp_path, monkeypatch, high + 1e-6).paper_inside_ci) is False
    md = (tmp_path / "c.md").read_text()
    assert "| 9.4–99.2 | 3 | **no** |" in md and "The paper's own sampling error is not counted" in md


def test_a_one_seed_cell_has_no_interval_and_no_answer(tmp_path, monkeypatch):
    row = _comparison(tmp_path, monkeypatch, 0.5, seeds=1)
    assert row.paper_inside_ci is None and math.isnan(row.ci_low) and row.n_seeds == 1
    assert "| 50.0 | 100.0 | n/a | 1 | n/a |" in (tmp_path / "c.md").read_text()
    assert "nan" not in (tmp_path / "c.md").read_text()


def test_all_images_metrics_score_the_wider_test_set_when_there_is_one():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert metrics.all_images_metrics(probs, torch.tensor([0, 0, 0])) == {
        "poison_success_all_images": pytest.approx(2 / 3),
        "n_eval_all_images": 3,
    }
    assert metrics.all_images_metrics(None, torch.tensor([0])) == {}
    assert metrics.all_images_metrics(probs, None) == {}
    assert metrics.all_images_metrics(probs[:0], torch.zeros(0, dtype=torch.long)) == {}


def test_where_the_exact_mcnemar_test_rejects_newcombes_interval_clears_zero():
    """Every paired table of up to 30 seeds: the 0/1 verdict needs both, and the exact test is the
    stricter, so it decides lower/higher claims (docs/statistics.md)."""
    for n in range(2, 31):
        tables = np.array(
            [(a, b, c, n - a - b - c) for a in range(n + 1) for b in range(n + 1 - a) for c in range(n + 1 - a - b)]
        ).T
        rejects = metrics.mcnemar_exact_p(tables[1], tables[2]) < 0.05
        low, high = metrics.newcombe_paired_interval(*tables)
        assert not (rejects & (low <= 0) & (high >= 0)).any(), n
