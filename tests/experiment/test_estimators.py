"""Estimators on synthetic data where the truth is known.

The synthetic "networks" mimic the neuron structure of a layer: inside one
network the n neurons share a random scale ``s_m`` (that is what makes
different neurons correlated at finite width), across networks everything is
independent. With ``z_i = sqrt(s_m) u_i``, ``u_i ~ N(0, 1)`` i.i.d.:

* ``E[z^2] = E[s]`` (K), ``n Cov(z_i^2, z_j^2) = n Var(s)`` (V_pair), and the
  same-neuron cumulant ``E z^4 - 3 (E z^2)^2 = 3 Var(s)``, so V_same = n Var(s).
* With an NTK ``H_ii = c s_m + e_i`` (e_i ~ N(0, 1) i.i.d.) and off-diagonal
  ``H_ij = beta y_ij + gamma z_i z_j`` (y symmetric, N(0, 1)):
  Theta = c E[s], A = n c^2 Var(s), D = n c Var(s),
  B = n (beta^2 + gamma^2 E[s^2]), F = n gamma E[s^2].

``s_m = kappa * chi2_k / k`` gives E[s] = kappa, Var(s) = 2 kappa^2 / k,
E[s^2] = kappa^2 (1 + 2/k). Every estimator is exactly unbiased
(estimators.py), so the tests check (i) the replicate average against the
truth within 4 of its own standard errors and (ii) the coverage of 2-sigma
intervals against its binomial spread.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pdlt.experiment.ensemble import _sufficient  # noqa: E402
from pdlt.experiment.estimators import (GroupSums, Estimate, estimate_statistic,  # noqa: E402
                                        group_of, jackknife, n_groups)

KAPPA, K_DOF, C, BETA, GAMMA = 1.3, 6, 0.8, 0.5, 0.7
N_NEURONS = 6
VAR_S = 2 * KAPPA ** 2 / K_DOF
ES2 = KAPPA ** 2 * (1 + 2 / K_DOF)
TRUTH = {
    "K": KAPPA, "V_pair": N_NEURONS * VAR_S, "V_same": N_NEURONS * VAR_S, "Theta": C * KAPPA,
    "A": N_NEURONS * C ** 2 * VAR_S, "D": N_NEURONS * C * VAR_S,
    "B": N_NEURONS * (BETA ** 2 + GAMMA ** 2 * ES2), "F": N_NEURONS * GAMMA * ES2,
}


def synthetic(rng, M, n=N_NEURONS):
    s = KAPPA * rng.chisquare(K_DOF, size=M) / K_DOF
    z = np.sqrt(s)[:, None] * rng.standard_normal((M, n))
    y = rng.standard_normal((M, n, n))
    y = np.triu(y, 1)
    y = y + np.swapaxes(y, 1, 2)
    H = BETA * y + GAMMA * z[:, :, None] * z[:, None, :]
    diag = C * s[:, None] + rng.standard_normal((M, n))
    idx = np.arange(n)
    H[:, idx, idx] = diag
    zt = torch.as_tensor(z[:, :, None])                # (M, n, N=1)
    Ht = torch.as_tensor(H[:, None, :, None, :])       # (M, N, n, N, n)
    return zt, Ht


def measure_synthetic(rng, M, names=tuple(TRUTH)):
    zt, Ht = synthetic(rng, M)
    need = {"zz", "zzzz_same", "zzzz_pair", "Hd", "HH_A", "HH_B", "Hzz_D", "Hzz_F"}
    sums = GroupSums(M)
    # two chunks of unequal size, to exercise the group bookkeeping
    cut = M // 3
    for lo, hi in ((0, cut), (cut, M)):
        for k, v in _sufficient(zt[lo:hi], Ht[lo:hi], need).items():
            sums.add(k, v, lo)
    return {name: estimate_statistic(name, sums, N_NEURONS) for name in names}


def test_unbiased_and_calibrated():
    rng = np.random.default_rng(2024)
    R, M = 300, 120
    ests = [measure_synthetic(rng, M) for _ in range(R)]
    for name, truth in TRUTH.items():
        mean = np.array([float(np.ravel(e[name].mean)[0]) for e in ests])
        se = np.array([float(np.ravel(e[name].stderr)[0]) for e in ests])
        # (i) unbiased: replicate average within 4 standard errors of the average
        z = (mean.mean() - truth) / (mean.std(ddof=1) / np.sqrt(R))
        assert abs(z) < 4, f"{name}: replicate mean {mean.mean():.4g} vs truth {truth:.4g} (z={z:.1f})"
        # (ii) calibrated standard errors: the rms reported stderr matches the
        # replicate scatter. The scatter of R = 300 replicates of these
        # fourth-moment statistics is itself uncertain by ~5-7 %, hence 15 %.
        ratio = np.sqrt(np.mean(se ** 2)) / mean.std(ddof=1)
        assert 0.85 < ratio < 1.15, f"{name}: stderr / scatter = {ratio:.3f}"
        # (iii) coverage of 2-sigma intervals. For statistics linear in the
        # ensemble means the pivot is t-distributed (99 dof: 95.2 %); the
        # binomial spread over R = 300 is 1.2 %, so [0.91, 0.99] is > 3 sigma.
        # For the variance-type estimators (V, A, D) the sampling distribution
        # at M = 120 is skewed (the estimate and its stderr are positively
        # correlated), and coverage is measurably lower: 0.83-0.92 here, 0.90-0.92
        # at M = 1000 (measured, see the module docstring of estimators.py);
        # that is a property of the data, so it is bounded, not hidden.
        cover = np.mean(np.abs(mean - truth) <= 2 * se)
        if name in ("K", "Theta", "B", "F"):
            assert 0.91 <= cover <= 0.99, f"{name}: 2-sigma coverage {cover:.3f}"
        else:
            assert 0.78 <= cover <= 0.99, f"{name}: 2-sigma coverage {cover:.3f}"


def test_multi_input_vertex_wishart():
    """Per-network covariance Sigma_m ~ Wishart(Sigma0, k)/k: Cov(Sigma_ab, Sigma_cd) =
    (S0_ac S0_bd + S0_ad S0_bc)/k, so V_pair = n (S0_ac S0_bd + S0_ad S0_bc)/k and
    V_same = n/3 * (sum of the three pairings of that covariance)."""
    rng = np.random.default_rng(7)
    S0 = np.array([[1.0, 0.4, -0.2], [0.4, 0.8, 0.1], [-0.2, 0.1, 1.5]])
    k, n, M = 8, 5, 4000
    Lc = np.linalg.cholesky(S0)
    A = Lc @ rng.standard_normal((M, 3, k)) / np.sqrt(k)       # Sigma_m = A A^T
    z = np.einsum("mak,mik->mia", A, rng.standard_normal((M, n, k)))
    sums = GroupSums(M)
    for key, v in _sufficient(torch.as_tensor(z), None, {"zz", "zzzz_pair", "zzzz_same"}).items():
        sums.add(key, v, 0)
    cov = (np.einsum("ac,bd->abcd", S0, S0) + np.einsum("ad,bc->abcd", S0, S0)) / k
    Vp = estimate_statistic("V_pair", sums, n)
    assert np.max(np.abs(Vp.mean - n * cov) / Vp.stderr) < 4.5
    sym = (cov + np.swapaxes(cov, 1, 2) + np.einsum("adbc->abcd", cov)) / 3
    Vs = estimate_statistic("V_same", sums, n)
    assert np.max(np.abs(Vs.mean - n * sym) / Vs.stderr) < 4.5
    Kest = estimate_statistic("K", sums, n)
    assert np.max(np.abs(Kest.mean - S0) / Kest.stderr) < 4.5
    assert Vp.mean.shape == (3, 3, 3, 3) and Kest.mean.shape == (3, 3)


def test_jackknife_of_product_is_u_statistic():
    """Bias-corrected jackknife of mean(a) * mean(b) equals the U-statistic over groups."""
    rng = np.random.default_rng(1)
    M = 37
    a, b = rng.normal(size=M), rng.normal(size=M)
    sums = GroupSums(M)
    sums.add("a", a, 0)
    sums.add("b", b, 0)
    est, _ = jackknife(lambda x, y: x * y, sums, ["a", "b"])
    u = (a.sum() * b.sum() - (a * b).sum()) / (M * (M - 1))
    assert est == pytest.approx(u, rel=1e-12)


def test_groups_and_errors():
    assert n_groups(10) == 10 and n_groups(10_000) == 100
    g = group_of(np.arange(1000), 1000)
    assert g.min() == 0 and g.max() == 99 and np.all(np.bincount(g) == 10)
    with pytest.raises(ValueError, match="K_theory"):
        estimate_statistic("G1", GroupSums(3), 4)
    with pytest.raises(ValueError, match="unknown statistic"):
        estimate_statistic("W", GroupSums(3), 4)
    e = Estimate(np.array([1.0, 2.0]), np.array([0.5, 0.5]), 10)
    assert e.to_dict() == {"mean": [1.0, 2.0], "stderr": [0.5, 0.5]}
    assert np.allclose(e.zscore([0.0, 2.0]), [2.0, 0.0])


def test_gaussian_expectation_is_exact_where_gauss_hermite_is_not():
    # control variates need the exact conditional mean: 96-node Gauss-Hermite is 8e-4 off for
    # tanh^2 at G = 10 (poles at i pi / 2); the two-rule check hands such values to
    # pdlt.gaussian.expect (1e-14). relu^2 stays exact (even node count: no node at the kink)
    import pdlt
    from pdlt.experiment.estimators import gaussian_expectation
    G = np.array([[0.1, 1.0], [3.0, 10.0]])
    f = lambda z: np.tanh(z) ** 2                 # noqa: E731
    ref = pdlt.gaussian.expect(f, G)
    assert np.max(np.abs(gaussian_expectation(f, G) / ref - 1)) < 1e-12
    assert np.max(np.abs(gaussian_expectation(f, G, nodes=400)[1, 1] / ref[1, 1] - 1)) < 1e-12
    np.testing.assert_allclose(gaussian_expectation(lambda z: np.maximum(z, 0) ** 2, G), G / 2,
                               rtol=1e-14)
