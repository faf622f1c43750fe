"""The prompts a localization test needs: signal_cv scales like 1/sqrt(n), and the extrapolated n is right.

Curves with known per-unit effects alpha and per-row SDs sigma are estimated at n rows as
a ~ N(alpha, sigma^2 / n), with joint draws a + N(0, sigma^2 / n) as the bootstrap would give them.
"""
import numpy as np

from deconfound.compare import MAX_SIGNAL_CV, debiased_indices
from deconfound.study import prompts_for_signal

ALPHA = np.array([0.02, -0.01, 0.015, 0.0])
SIGMA = np.array([0.12, 0.10, 0.12, 0.15])  # median cv 0.34 at n = 800; it reaches 0.3 near n = 1,000


def _cvs(n, reps=200, seed=0):
    rng = np.random.default_rng(seed)
    s = SIGMA / np.sqrt(n)
    out = np.empty(reps)
    for r in range(reps):
        a = ALPHA + s * rng.standard_normal(len(s))
        out[r] = debiased_indices(a, s, a + s * rng.standard_normal((400, len(s))))["signal_cv"]
    return out


def test_signal_cv_halves_when_n_quadruples():
    ratio = np.median(_cvs(3200, seed=1)) / np.median(_cvs(800, seed=2))
    assert 0.4 < ratio < 0.6, ratio  # 1/sqrt(4) = 0.5


def test_extrapolated_n_reaches_the_limit():
    n0 = 400  # median cv about 0.5: signal above the noise
    n_star = int(np.nanmedian(prompts_for_signal(_cvs(n0, seed=3), n0)))
    assert 800 < n_star < 1600, n_star
    reached = np.median(_cvs(n_star, seed=4))
    assert MAX_SIGNAL_CV / 1.25 < reached < MAX_SIGNAL_CV * 1.25, (n_star, reached)


def test_extrapolation_from_noise_is_conservative_within_2_5x():
    # at n = 100 the median cv is about 1.6 (S2 near its noise): the noise term of SD(S2) falls like 1/n, faster
    # than 1/sqrt(n), so n (cv / 0.3)^2 overstates the rows needed, within a factor 2.5 of the n where cv is 0.3
    cv = _cvs(100, seed=5)
    assert np.median(cv) > 1
    n_star = np.nanmedian(prompts_for_signal(cv[np.isfinite(cv)], 100))
    assert np.median(_cvs(int(n_star), seed=6)) < MAX_SIGNAL_CV  # enough rows, not too few
    assert np.median(_cvs(int(n_star / 2.5), seed=7)) > MAX_SIGNAL_CV  # and not 2.5x too many
