"""Theorem 2 (DP-InstaHide) and the Ma et al. poisoning ceiling."""

import math

import pytest

from augdefense import privacy


def test_k1_n1_is_the_classical_laplace_mechanism():
    for sigma in (0.1, 0.5, 2.0):
        assert privacy.mixup_laplace_epsilon(1, sigma, 1, 1) == pytest.approx(1 / sigma)
        assert privacy.mixup_laplace_epsilon(1, sigma, 1, 7) == pytest.approx(7 / sigma)


def test_matches_the_formula_where_it_is_safe():
    k, sigma, n, T = 4, 0.3, 1000, 50
    a = math.log(1 - k / n + math.exp(1 / (k * sigma)) * k / n)
    b = math.log(n / (n - k + k * math.exp(-1 / (k * sigma))))
    assert privacy.mixup_laplace_epsilon(k, sigma, n, T) == pytest.approx(T * max(a, b), rel=1e-12)


def test_epsilon_falls_with_k_and_sigma_and_respects_the_bound():
    n = T = 50_000
    for sigma in (0.05, 0.1, 0.5, 1.0):
        eps = [privacy.mixup_laplace_epsilon(k, sigma, n, T) for k in (1, 2, 4, 8, 16)]
        assert all(a > b for a, b in zip(eps, eps[1:]))
        for k, e in zip((1, 2, 4, 8, 16), eps):
            assert e <= privacy.mixup_laplace_epsilon_bound(k, sigma, T) * (1 + 1e-12)
    for k in (1, 4):
        eps = [privacy.mixup_laplace_epsilon(k, s, n, T) for s in (0.05, 0.1, 0.5, 1.0)]
        assert all(a > b for a, b in zip(eps, eps[1:]))


@pytest.mark.parametrize("sigma", [1e-6, 1e-3, 1.0, 1e3])
def test_no_overflow_or_nan_for_ten_million_points(sigma):
    eps = privacy.mixup_laplace_epsilon(4, sigma, 10_000_000, 10_000_000)
    assert math.isfinite(eps) and eps > 0
    assert eps <= privacy.mixup_laplace_epsilon_bound(4, sigma, 10_000_000) * (1 + 1e-9)


def test_sigma_from_noise_divides_by_the_l1_diameter():
    assert privacy.sigma_from_noise(8, (3, 32, 32)) == pytest.approx(8 / 255 / 3072)


def test_poison_ceiling():
    # No privacy loss -> no extra success; a strong guarantee keeps the attacker near the clean rate.
    assert privacy.poison_success_ceiling(1e-9, 0.0, 10, 0.1) == pytest.approx(0.1, abs=1e-6)
    assert privacy.poison_success_ceiling(0.01, 0.0, 5, 0.1) == pytest.approx(1 - math.exp(-0.05) * 0.9)
    # It grows with the number of poisons and epsilon, and is vacuous (1.0) for large l * eps.
    values = [privacy.poison_success_ceiling(0.05, 0.0, n, 0.1) for n in (1, 10, 100)]
    assert values == sorted(values) and values[-1] < 1
    assert privacy.poison_success_ceiling(1e4, 0.0, 50, 0.1) == 1.0
    # delta only loosens it.
    assert privacy.poison_success_ceiling(0.05, 1e-3, 10, 0.1) >= privacy.poison_success_ceiling(0.05, 0.0, 10, 0.1)


def test_figure4a_table(tmp_path):
    from augdefense import figures

    frame = figures.render_privacy_figure(png=tmp_path / "f.png", pdf=tmp_path / "f.pdf", csv=tmp_path / "f.csv")
    assert len(frame) == 5 * 16 and (tmp_path / "f.png").stat().st_size > 1000
    for _, group in frame.groupby("noise_over_255"):
        assert group.epsilon_unit_diameter.is_monotonic_decreasing
        assert (group.epsilon_unit_diameter <= group.bound_unit_diameter * (1 + 1e-12)).all()
        assert (group.epsilon_cifar_diameter > group.epsilon_unit_diameter).all()


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 0.1, 10, 1), r"^k must be an integer >= 1, got 0$"),
        ((1.5, 0.1, 10, 1), r"^k must be an integer >= 1, got 1\.5$"),
        ((4, 0.1, 3, 1), r"^n must be an integer >= k = 4, got 3$"),
        ((1, 0.0, 10, 1), r"^sigma must be > 0, got 0\.0$"),
        ((1, 0.1, 10, -1), r"^T must be >= 0, got -1$"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        privacy.mixup_laplace_epsilon(*args)


def test_terms_when_every_group_holds_the_point_and_past_the_overflow_guard():
    assert privacy.mixup_laplace_terms(5, 0.1, 5) == (2.0, 2.0)  # k = n: both terms are 1 / (k sigma)
    for k, sigma, n in ((1, 1 / 705, 1000), (2, 1 / 1404, 50), (1, 1 / 699.5, 10)):
        x, share = 1 / (k * sigma), k / n
        a, b = privacy.mixup_laplace_terms(k, sigma, n)
        assert a == pytest.approx(math.log(1 - share + share * math.exp(x)), rel=1e-12)
        assert b == pytest.approx(-math.log(1 - share + share * math.exp(-x)), rel=1e-12) and b > 0


def test_poison_ceiling_edges_and_the_delta_slack():
    assert privacy.poison_success_ceiling(0.0, 0.0, 5, 0.3) == 0.3  # no privacy loss: nothing gained
    assert privacy.poison_success_ceiling(0.5, 0.0, 5, 1.0) == 1.0
    assert privacy.poison_success_ceiling(0.5, 0.0, 5, 0.0) == pytest.approx(1 - math.exp(-2.5))
    with pytest.raises(ValueError, match=r"^clean_success must be in \[0, 1\], got 1\.5$"):
        privacy.poison_success_ceiling(0.5, 0.0, 5, 1.5)
    assert privacy.poison_success_ceiling(1.0, 0.0, 701, 0.0) == 1.0  # l * eps past 700: vacuous
    eps, delta, n, clean = 0.1, 1e-3, 3, 0.2
    slack = delta / math.expm1(eps)
    expected = 1 - (math.exp(-n * eps) * (1 - clean + slack) - slack)
    assert privacy.poison_success_ceiling(eps, delta, n, clean) == pytest.approx(expected, rel=1e-12)
    assert privacy.poison_success_ceiling(eps, 0.0, n, clean) == pytest.approx(1 - math.exp(-n * eps) * 0.8)
