"""Per-run metrics and the intervals the tables report, against known values."""

import math

import pandas as pd
import pytest
import torch

from augdefense import metrics, tables


@pytest.mark.parametrize(
    "hits, n, low, high", [(2, 3, 0.2077, 0.9385), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634)]
)
def test_wilson_interval_known_values(hits, n, low, high):
    got = metrics.wilson_interval(hits, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined():
    assert all(math.isnan(v) for v in metrics.wilson_interval(0, 0))


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


def _comparison(tmp_path, monkeypatch, paper_value):
    """compare_papers on 2 hits of 3 seeds (one image each) against a paper value."""
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
        for s in range(3)
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
    low, high = metrics.wilson_interval(2, 3)
    for edge in (low, high):
        assert bool(_comparison(tmp_path, monkeypatch, edge).paper_inside_ci) is True
    assert bool(_comparison(tmp_path, monkeypatch, low - 1e-6).paper_inside_ci) is False
    assert bool(_comparison(tmp_path, monkeypatch, high + 1e-6).paper_inside_ci) is False
