"""Three- and four-variable Gaussian expectations (pdlt.gaussian._multi).

References: Isserlis' theorem (exact for polynomials, which the Gauss-Hermite
path integrates exactly), the closed-form two-variable kernels of
``pdlt.gaussian`` (ReLU, erf), a high-order tensor Gauss-Legendre reference
for tanh, and the accuracy claims stated in the module docstring.
"""

import itertools

import numpy as np
import pytest

from pdlt import activation
from pdlt.gaussian import KernelNotPSDError, pair_expectations
from pdlt.gaussian._multi import expect_nd, quad_expectations


def _random_cov(rng, d, scale=1.0):
    A = rng.normal(size=(d, d))
    return scale * (A @ A.T / d + 0.2 * np.eye(d))


def test_isserlis_polynomials_exact(rng):
    K = _random_cov(rng, 4)
    got = expect_nd([lambda z: z] * 4, K)
    want = K[0, 1] * K[2, 3] + K[0, 2] * K[1, 3] + K[0, 3] * K[1, 2]
    assert abs(got - want) < 1e3 * np.finfo(float).eps * np.abs(K).max() ** 2
    # z1^2 z2 z3: 2 K12 K13 + K11 K23
    got = expect_nd([lambda z: z ** 2, lambda z: z, lambda z: z], K[:3, :3])
    want = 2 * K[0, 1] * K[0, 2] + K[0, 0] * K[1, 2]
    assert abs(got - want) < 1e-12 * np.abs(K).max() ** 2


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_two_variable_against_closed_form(rng, name):
    act = activation(name)
    for _ in range(5):
        K = _random_cov(rng, 2)
        si = act.scale_invariant
        got = expect_nd([act.sigma] * 2, K, kinks=act.kinks, scale_invariant=si)
        want = pair_expectations(act, K)[("sigma", "sigma")][0, 1]
        # stated in the module docstring: ReLU (split path) and erf (smooth path) < 1e-6
        assert abs(got / want - 1) < 1e-6, (got, want)


def _tanh4_reference(K):
    """Tensor Gauss-Legendre on [-9, 9]^4 in Cholesky coordinates, 72 nodes/axis."""
    L = np.linalg.cholesky(K)
    x, w = np.polynomial.legendre.leggauss(72)
    x, w = 9 * x, 9 * w
    w = w * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    total = 0.0
    for i, u1 in enumerate(x):   # loop the outer axis to bound memory
        U = np.stack(np.meshgrid([u1], x, x, x, indexing="ij"), -1).reshape(-1, 4)
        W = w[i] * np.prod(np.stack(np.meshgrid([1.0], w, w, w, indexing="ij"), -1)
                           .reshape(-1, 4), axis=1)
        Z = U @ L.T
        total += np.prod(np.tanh(Z), axis=1) @ W
    return total


@pytest.mark.parametrize("seed", [3])
def test_tanh_four_variable_accuracy(seed):
    rng = np.random.default_rng(seed)
    K = _random_cov(rng, 4)
    ref = _tanh4_reference(K)
    scale = np.prod([float(expect_nd([lambda z: np.tanh(z) ** 4], [[k]]))
                     for k in np.diag(K)]) ** 0.25
    # stated in the module docstring, relative to the Cauchy-Schwarz scale
    for acc, tol in (("fast", 1e-4), ("default", 1e-5), ("high", 1e-6)):
        err = abs(expect_nd([np.tanh] * 4, K, accuracy=acc) - ref) / scale
        assert err < tol, (acc, err)


def test_relu_four_variable_against_three_variable_limit(rng):
    # z4 -> z3 (a duplicated input): four-variable value equals <s1 s2 s3^2>
    act = activation("relu")
    K = _random_cov(rng, 3)
    K4 = np.zeros((4, 4))
    idx = [0, 1, 2, 2]
    K4[:] = K[np.ix_(idx, idx)]
    got = expect_nd([act.sigma] * 4, K4, kinks=(0.0,), scale_invariant=(1.0, 0.0))
    want = expect_nd([act.sigma, act.sigma, lambda z: act.sigma(z) ** 2], K, kinks=(0.0,))
    assert abs(got / want - 1) < 1e-8


def test_relu_four_variable_orthant_exact():
    # independent inputs: product of one-variable means (sqrt(K/2pi) each)
    K = np.diag([1.0, 2.0, 0.5, 3.0])
    got = expect_nd([activation("relu").sigma] * 4, K, kinks=(0.0,), scale_invariant=(1.0, 0.0))
    want = np.prod(np.sqrt(np.diag(K) / (2 * np.pi)))
    assert abs(got / want - 1) < 1e-7   # stated accuracy of the split path


def test_quad_expectations_symmetry_and_reduction(rng):
    act = activation("tanh")
    K = _random_cov(rng, 3, 0.5)
    T = quad_expectations(act, K)
    for p in itertools.permutations(range(4)):
        assert np.array_equal(T, np.transpose(T, p))
    S = pair_expectations(act, K, (("sigma", "sigma"),))[("sigma", "sigma")]
    # <s_a s_a s_b s_b> >= <s_a s_b>^2 (Cauchy-Schwarz) and diag = <s^4>
    assert np.all(T[0, 0, 1, 1] >= S[0, 1] ** 2)
    from pdlt.gaussian import expect
    assert abs(T[1, 1, 1, 1] - expect(lambda z: np.tanh(z) ** 4, K[1, 1])) < 1e-14


def test_errors(rng):
    with pytest.raises(ValueError, match="1 to 4"):
        expect_nd([np.tanh] * 5, np.eye(5))
    with pytest.raises(ValueError, match="shape"):
        expect_nd([np.tanh] * 3, np.eye(4))
    with pytest.raises(KernelNotPSDError):
        expect_nd([np.tanh] * 2, np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="accuracy"):
        expect_nd([np.tanh] * 2, np.eye(2), accuracy="best")
