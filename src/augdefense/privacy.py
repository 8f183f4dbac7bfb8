"""Differential-privacy bounds: DP-InstaHide's Theorem 2 and Ma et al.'s poisoning bound.

Theorem 2 (Borgnia et al. 2021, DP-InstaHide): k-way mixup with equal weights (groups drawn
without replacement from n points) followed by isotropic Laplacian noise of scale sigma, releasing
T mixed points, is (epsilon, 0)-DP with

    epsilon = T * max(A, B) <= T / (k sigma),
    A = log(1 - k/n + e^{1/(k sigma)} k/n),   B = log(n / (n - k + k e^{-1/(k sigma)})),

for data of l1-diameter at most 1. sigma is the noise scale *relative to that diameter*: for images
in [0, 1]^d (l1-diameter d = C*H*W) noised with scale s/255 per pixel, sigma = (s/255) / d; see
``sigma_from_noise``. (The paper's Figure 4a plots epsilon against the noise level s directly,
i.e. as if the data had unit diameter.)
"""

from __future__ import annotations

import math


def _check(k: int, sigma: float, n: int, T: int) -> None:
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not (isinstance(n, int) and n >= k):
        raise ValueError(f"n must be an integer >= k = {k}, got {n!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not T >= 0:
        raise ValueError(f"T must be >= 0, got {T!r}")


def mixup_laplace_terms(k: int, sigma: float, n: int) -> tuple[float, float]:
    """Theorem 2's A and B, computed without overflow or cancellation for n in the millions."""
    _check(k, sigma, n, 0)
    x, share = 1.0 / (k * sigma), k / n
    if k == n:  # every group holds the removed point
        return x, x
    # A = log(1 + share * (e^x - 1)); B = -log(1 + share * (e^-x - 1))
    if x < 700:
        a = math.log1p(share * math.expm1(x))
    else:  # e^x overflows: log((1 - share) + share e^x) = x + log(share) + log1p(...)
        a = x + math.log(share) + math.log1p((1 - share) / share * math.exp(-x))
    b = -math.log1p(share * math.expm1(-x))
    return a, b


def mixup_laplace_epsilon(k: int, sigma: float, n: int, T: int) -> float:
    """epsilon of Theorem 2 for T released points."""
    _check(k, sigma, n, T)
    return T * max(mixup_laplace_terms(k, sigma, n))


def mixup_laplace_epsilon_bound(k: int, sigma: float, T: int) -> float:
    """The paper's closed-form upper bound T / (k sigma) (attained when n = k)."""
    return T / (k * sigma)


def sigma_from_noise(noise_over_255: float, image_shape: tuple[int, ...]) -> float:
    """Theorem 2's sigma for Laplacian noise of scale s/255 on images in [0, 1] of this shape:
    the noise scale divided by the data's l1-diameter (C*H*W)."""
    return (noise_over_255 / 255.0) / math.prod(image_shape)


def poison_success_ceiling(epsilon: float, delta: float, n_poisons: int, clean_success: float) -> float:
    """The highest poison success an attacker with ``n_poisons`` modified points can reach against
    an (epsilon, delta)-DP learner, given the success rate without poisons (Ma, Zhu & Hsu 2019,
    Theorem 1 in DP-InstaHide). Uses the non-negative cost C = 1 - [attack succeeds], bounded by
    B = 1, for which Ma et al. give J(D') >= max{e^{-l eps} (J(D) + B delta / (e^eps - 1)) -
    B delta / (e^eps - 1), 0}; success = 1 - J. Returns 1.0 where the guarantee is vacuous."""
    if not 0 <= clean_success <= 1:
        raise ValueError(f"clean_success must be in [0, 1], got {clean_success!r}")
    if epsilon <= 0 or n_poisons * epsilon > 700:
        return 1.0 if epsilon > 0 else clean_success
    slack = delta / math.expm1(epsilon) if delta > 0 else 0.0
    cost_floor = max(math.exp(-n_poisons * epsilon) * (1 - clean_success + slack) - slack, 0.0)
    return min(1.0, 1.0 - cost_floor)
