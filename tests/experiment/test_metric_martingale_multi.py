"""The N-input metric control variate (metric_martingale_multi) on exact chains.

The chain is simulated directly in numpy as the model states it: conditional on
layer l-1 the n preactivation vectors of layer l are i.i.d. N(0, G_l), G_l =
C_b + C_W S_{l-1}, S = mean_j sigma(z_j) sigma(z_j)^T. A network's raw neuron
average R_l = mean_i z_i z_i^T has E[R_l] = E[z z]; Y_l must have the same mean
exactly (any fixed chi), so the per-network difference Y - R has mean zero. The
tests compare it with 0 within 4 standard errors at tiny width (n = 3, where
any bias of Y would be largest) and show that the same comparison detects a
bias of 0.1 put into g (the negative control).
"""

import numpy as np
import pytest

from pdlt.activations import activation
from pdlt.experiment.estimators import (gaussian_expectation, gaussian_pair_expectation,
                                        kernel_map_jacobian, metric_martingale,
                                        metric_martingale_multi)
from pdlt.gaussian import pair_expectations

K1 = np.array([[1.0, 0.6], [0.6, 0.8]])


def chain(sigma, K1, C_b, C_W, n, L, M, seed):
    """S and the raw neuron averages R, each (M, L, N, N), of M simulated networks."""
    rng = np.random.default_rng(seed)
    N = K1.shape[0]
    G = np.broadcast_to(K1, (M, N, N)).copy()
    S, R = np.empty((M, L, N, N)), np.empty((M, L, N, N))
    for l in range(L):
        ch = np.linalg.cholesky(G)
        z = rng.standard_normal((M, n, N)) @ np.swapaxes(ch, 1, 2)
        s = sigma(z)
        S[:, l] = np.swapaxes(s, 1, 2) @ s / n
        R[:, l] = np.swapaxes(z, 1, 2) @ z / n
        if l + 1 < L:
            G = C_b + C_W * S[:, l]
    return S, R


def infinite_width(g, K1, C_b, C_W, L):
    K = [K1]
    for _ in range(L - 1):
        K.append(C_b + C_W * g(K[-1]))
    return np.array(K)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_pair_rule_matches_pair_expectations(name):
    act = activation(name)
    for K in (np.array([[1.0, 0.5, 0.2], [0.5, 1.3, -0.3], [0.2, -0.3, 0.7]]),
              np.array([[2.0, 1.9], [1.9, 2.0]]), np.array([[4.0, -3.9], [-3.9, 4.0]]),
              np.array([[4.0, 0.0], [0.0, 0.2]])):
        ref = pair_expectations(act, K)[("sigma", "sigma")]
        got = gaussian_pair_expectation(act, np.stack([K, K]))
        # stated accuracy of the rule: 1e-10 absolute (the reference: rtol 1e-12)
        np.testing.assert_allclose(got, np.stack([ref, ref]), rtol=0, atol=1e-10)
        assert np.array_equal(got, np.swapaxes(got, -1, -2))


def test_one_input_equals_metric_martingale():
    act = activation("tanh")
    L, M = 5, 400
    C_b, C_W = np.zeros(L), np.ones(L)
    S, _ = chain(act, np.array([[0.9]]), 0.0, 1.0, 4, L, M, seed=3)

    def g(G):
        return gaussian_pair_expectation(act, G)

    K = infinite_width(g, np.array([[0.9]]), 0.0, 1.0, L)
    chi = kernel_map_jacobian(g, K, C_W)
    multi = metric_martingale_multi(S, [[0.9]], C_b, C_W, g, chi)
    one = metric_martingale(S[:, :, 0, 0], 0.9, C_b, C_W,
                            lambda G: gaussian_expectation(lambda z: act(z) ** 2, G),
                            chi[:, 0, 0, 0, 0])
    for k in ("Y", "G", "Lambda", "d"):
        # the one-variable rule (96 Gauss-Hermite nodes) against the pair rule's diagonal
        np.testing.assert_allclose(multi[k][..., 0, 0], one[k], rtol=0, atol=1e-10)
    # the kernel map's slope C_W g'(K) by the closed form d/dK E[tanh^2] = E[(z^2/K-1) tanh^2]/2K
    k = K[:-1, 0, 0]
    slope = (gaussian_expectation(lambda z: act(z) ** 2 * z * z, k) / (2 * k * k)
             - gaussian_expectation(lambda z: act(z) ** 2, k) / (2 * k))
    np.testing.assert_allclose(chi[1:, 0, 0, 0, 0], slope, rtol=1e-7)


def test_linear_network_exact():
    """sigma(z) = z: E[z z] = K exactly at any width; with chi = C_W (the exact Jacobian)
    Y = K for every network, with any other chi still E[Y] = K."""
    L, M, C_W = 4, 4000, 1.2
    lin = lambda z: z  # noqa: E731
    S, R = chain(lin, K1, 0.1, C_W, 3, L, M, seed=5)
    K = infinite_width(lambda G: G, K1, 0.1, C_W, L)
    eye = np.einsum("ac,bd->abcd", np.eye(2), np.eye(2))
    chi = np.broadcast_to(C_W * eye, (L, 2, 2, 2, 2)).copy()
    chi[0] = 0
    Y = metric_martingale_multi(S, K1, 0.1, C_W, lambda G: G, chi)["Y"]
    np.testing.assert_allclose(Y, np.broadcast_to(K, Y.shape), rtol=1e-12)
    rng = np.random.default_rng(0)
    chi_any = rng.normal(size=chi.shape)
    chi_any[0] = 0
    Y = metric_martingale_multi(S, K1, 0.1, C_W, lambda G: G, chi_any)["Y"]
    se = Y.std(0, ddof=1) / np.sqrt(M)
    assert np.all(np.abs(Y.mean(0) - K) <= 4 * se + 1e-12)
    # and the raw neuron averages too (the chain is right)
    seR = R.std(0, ddof=1) / np.sqrt(M)
    assert np.all(np.abs(R.mean(0) - K) <= 4 * seR)


@pytest.mark.parametrize("name,C_b,C_W,L", [("tanh", 0.0, 1.0, 4), ("gelu", 0.17, 1.98, 3)])
def test_unbiased_at_tiny_width_and_detects_a_bias(name, C_b, C_W, L):
    # (gelu at n = 3 grows heavy-tailed kernels: 3 layers keep its pair rule cheap)
    act = activation(name)
    M, n = 6000, 3
    S, R = chain(act, K1, C_b, C_W, n, L, M, seed=11)

    def g(G):
        return gaussian_pair_expectation(act, G)

    K = infinite_width(g, K1, C_b, C_W, L)
    chi = kernel_map_jacobian(g, K, C_W)
    assert np.any(chi[1:, 0, 1, 0, 1] != 0) and np.all(chi[1:, 0, 0, 1, 1] == 0)
    Y = metric_martingale_multi(S, K1, C_b, C_W, g, chi)["Y"]
    D = Y - R
    se = D.std(0, ddof=1) / np.sqrt(M)
    assert np.all(np.abs(D.mean(0)) <= 4 * se), (D.mean(0), se)
    # it reduces the scatter of the raw neuron average at the last layer
    assert np.all(Y[:, -1].std(0) < R[:, -1].std(0))
    # negative control: the same comparison rejects a g that is off by 0.1 (the resolution of
    # D = Y - R at n = 3 and 6000 networks: 4 se = 0.01..0.04 (tanh), 0.03..0.3 (gelu))
    Yb = metric_martingale_multi(S, K1, C_b, C_W, lambda G: g(G) + 0.1, chi)["Y"]
    Db = Yb - R
    seb = Db.std(0, ddof=1) / np.sqrt(M)
    assert np.any(np.abs(Db.mean(0)) > 4 * seb)


def test_bad_input():
    g = lambda G: G  # noqa: E731
    with pytest.raises(ValueError, match="S must have shape"):
        metric_martingale_multi(np.zeros((3, 2, 2)), K1, 0, 1, g, np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="chi must have shape"):
        metric_martingale_multi(np.zeros((3, 2, 2, 2)), K1, 0, 1, g, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="K1 must be"):
        metric_martingale_multi(np.zeros((3, 2, 2, 2)), np.eye(3), 0, 1, g,
                                np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="G must have shape"):
        gaussian_pair_expectation(np.tanh, np.zeros(3))
