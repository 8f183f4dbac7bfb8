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
