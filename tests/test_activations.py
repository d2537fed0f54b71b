"""Activations: values, derivatives, structure, lookup and errors."""

import math

import numpy as np
import pytest

import pdlt
from pdlt.activations import ActivationError, leaky_relu, monomial

from conftest import ALL_NAMED

Z = np.linspace(-4.0, 4.0, 81) + 0.0123  # avoid sitting exactly on kinks


def _fd(f, z, h=1e-5):
    return (f(z + h) - f(z - h)) / (2 * h)


@pytest.mark.parametrize("name", ALL_NAMED + ["monomial"])
def test_derivatives_match_finite_differences(name):
    act = pdlt.activation(name) if name != "monomial" else monomial(3)
    np.testing.assert_allclose(act.d1(Z), _fd(act.sigma, Z), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(act.d2(Z), _fd(act.d1, Z), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["tanh", "sin", "erf", "sigmoid", "softplus", "swish", "gelu"])
def test_taylor_coefficients_match_function(name):
    act = pdlt.activation(name)
    z = np.array([1e-2, -2e-2, 3e-2])
    series = sum(c * z**p / math.factorial(p) for p, c in enumerate(act.taylor))
    # truncation after z^4: error |sigma_5| |z|^5 / 5! with |sigma_5| <= 16 here
    np.testing.assert_allclose(series, act.sigma(z), rtol=0, atol=16 * 0.03**5 / 120)


def test_known_values():
    assert pdlt.activation("relu")(-1.0) == 0.0 and pdlt.activation("relu")(2.0) == 2.0
    np.testing.assert_allclose(pdlt.activation("gelu")(1.0), 0.8413447460685429, rtol=1e-14)
    np.testing.assert_allclose(pdlt.activation("swish")(1.0), 1 / (1 + math.exp(-1)), rtol=1e-14)
    np.testing.assert_allclose(pdlt.activation("elu")(-1.0), math.exp(-1) - 1, rtol=1e-14)
    assert pdlt.activation("leaky_relu(0.1)")(-2.0) == pytest.approx(-0.2)
    assert pdlt.activation("monomial(3)")(2.0) == 8.0
    assert pdlt.activation("silu").name == "swish"


def test_scale_invariant_structure():
    assert pdlt.activation("relu").scale_invariant == (1.0, 0.0)
    assert leaky_relu(0.2).scale_invariant == (1.0, 0.2)
    assert pdlt.activation("linear").scale_invariant == (1.0, 1.0)
    assert pdlt.activation("tanh").scale_invariant is None
    assert pdlt.activation("relu").kinks == (0.0,)
    assert pdlt.activation("tanh").is_smooth


def test_user_callable_numerical_derivatives_are_accurate():
    act = pdlt.activation(lambda z: np.tanh(z))
    assert act.derivatives == "numerical"
    ref = pdlt.activation("tanh")
    # documented accuracy: ~1e-11 relative for sigma', ~1e-9 for sigma''
    np.testing.assert_allclose(act.d1(Z), ref.d1(Z), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(act.d2(Z), ref.d2(Z), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(act.taylor[:4], ref.taylor[:4], atol=1e-8)


def test_user_callable_with_exact_derivatives():
    act = pdlt.Activation.from_callable(np.sin, np.cos, lambda z: -np.sin(z), name="mysin")
    assert act.derivatives == "exact" and act.name == "mysin"


@pytest.mark.parametrize("bad,match", [
    ("swishy", "unknown activation"),
    (42, "name, an Activation or a callable"),
    (lambda z: np.log(z), "non-finite"),
    (lambda z: z[:3], "shape"),
    ("leaky_relu(x)", "parse"),
    ("tanh(2)", "takes no parameter"),
])
def test_bad_activations_raise_clear_errors(bad, match):
    with pytest.raises(ActivationError, match=match):
        pdlt.activation(bad)


def test_monomial_power_validated():
    with pytest.raises(ActivationError, match="integer >= 1"):
        monomial(0)


@pytest.mark.parametrize("spec", ["relu", "leaky_relu(0.2)", "monomial(3)", "gelu", "elu", "sin"])
def test_named_activations_pickle(spec):
    import pickle

    act = pdlt.activation(spec)
    back = pickle.loads(pickle.dumps(act))
    assert back == act and back.parameters == act.parameters
    np.testing.assert_array_equal(back.d1(Z), act.d1(Z))


# ---------------------------------------------------------------------------
# user callables: scale invariance, kinks, jumps
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn, slopes", [
    (lambda z: np.maximum(z, 0), (1.0, 0.0)),
    (np.abs, (1.0, -1.0)),
    (lambda z: np.where(z > 0, z, 0.2 * z), (1.0, 0.2)),
])
def test_user_scale_invariant_is_exact(fn, slopes):
    act = pdlt.activation(fn)
    assert act.scale_invariant == slopes and act.kinks == (0.0,)
    assert act.derivatives == "exact"
    named = pdlt.activation("leaky_relu", slope=slopes[1]) if slopes != (1.0, -1.0) else None
    if named is not None:
        np.testing.assert_array_equal(act.d1(Z), named.d1(Z))
    # criticality and the vertex slope work as for the named ones
    crit = pdlt.criticality(act)
    assert crit.universality_class == "scale-invariant"
    assert crit.C_W == pytest.approx(2.0 / (slopes[0] ** 2 + slopes[1] ** 2), rel=1e-15)
    from pdlt.theory.vertex import vertex_slope
    ap, am = slopes
    assert vertex_slope(act) == pytest.approx(6 * (ap ** 4 + am ** 4) / (ap ** 2 + am ** 2) ** 2 - 1,
                                              rel=1e-15)


def test_user_relu_theta_matches_named_relu_deep():
    # the case: Theta off by 15% at L = 1000 with finite-difference derivatives
    mk = lambda a: pdlt.MLP(n0=1, width=10, depth=1000, activation=a, C_W=2.0, C_b=0.0)
    f_user = pdlt.flow(mk(pdlt.activation(lambda z: np.maximum(z, 0))), K1=1.0)
    f_named = pdlt.flow(mk("relu"), K1=1.0)
    np.testing.assert_allclose(f_user.Theta, f_named.Theta, rtol=1e-13)
    np.testing.assert_allclose(f_user.chi_perp, 1.0, rtol=1e-13)


def test_undeclared_kink_refused_with_the_fix():
    f = lambda z: np.where(z > 0.5, np.tanh(z), np.tanh(0.5) + 0.3 * (z - 0.5))
    with pytest.raises(pdlt.ActivationError, match=r"kinks=\[0\.5\]"):
        pdlt.activation(f)
    act = pdlt.activation(f, kinks=[0.5])
    assert act.kinks == (0.5,)
    # the declared kink keeps the finite differences on one side
    assert act.d1(np.array([0.5 - 1e-4]))[0] == pytest.approx(0.3, abs=1e-9)
    assert act.d1(np.array([0.5 + 1e-4]))[0] == pytest.approx(1 - np.tanh(0.5 + 1e-4) ** 2, abs=1e-9)


def test_step_function_refused():
    with pytest.raises(pdlt.ActivationError, match="continuous"):
        pdlt.activation(lambda z: np.where(z > 0, 1.0, 0.0))


@pytest.mark.parametrize("fn", [np.tanh, np.sin, lambda z: np.exp(-z * z), lambda z: z * z * z])
def test_smooth_user_activations_not_flagged(fn):
    act = pdlt.activation(fn)
    assert act.kinks == () and act.scale_invariant is None


def test_gelu_is_torch_exact_gelu_with_exact_derivatives():
    """pdlt's gelu is torch's exact (erf) GELU, with sigma' and sigma'' equal to autograd's.

    The experiments build networks with the erf form (``nn.GELU()``, approximate='none');
    the tanh approximation differs by up to 4.7e-4 and would be a different activation.
    Tolerance: float64 round-off of z Phi(z) and its derivatives, a few ulp of (1 + |z|).
    """
    torch = pytest.importorskip("torch")
    act = pdlt.activation("gelu")
    z = np.linspace(-10.0, 10.0, 4001) + 0.00123
    t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    s = torch.nn.functional.gelu(t, approximate="none")
    (d1,) = torch.autograd.grad(s.sum(), t, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), t)
    tol = 8 * np.finfo(float).eps * (1.0 + np.abs(z))
    for ours, ref in ((act(z), s), (act.d1(z), d1), (act.d2(z), d2)):
        assert np.all(np.abs(ours - ref.detach().numpy()) <= tol)
    s_tanh = torch.nn.functional.gelu(t, approximate="tanh").detach().numpy()
    assert np.abs(s_tanh - act(z)).max() > 1e-4      # the approximation is not pdlt's gelu


def test_gelu_criticality_and_one_input_V_G1_against_quadrature():
    """GELU's K*, C_W, C_b and the one-input V, G1 flow against an independent computation.

    Independent: scipy quad of the NOTATION.md / book recursions (K* from <sigma sigma''> = 0,
    which is (3 + sqrt 17)/2 exactly; V^(l+1) = C_W^2 (<s^4> - <s^2>^2) + chi_par^2 V^(l);
    G1^(l+1) = chi_par G1^(l) + (C_W / 8) <s^2 (z^4 - 6 K z^2 + 3 K^2)> / K^4 V^(l), book
    eqs. 4.90, 4.115 at equal widths), to relative 1e-13 per average.
    """
    from scipy import integrate, optimize, special

    def avg(f, K):
        r = math.sqrt(K)
        return integrate.quad(lambda u: f(r * u) * math.exp(-0.5 * u * u), -np.inf, np.inf,
                              epsabs=0, epsrel=1e-13, limit=200)[0] / math.sqrt(2 * math.pi)

    def phi(z):
        return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def s(z):
        return z * special.ndtr(z)

    def s1(z):
        return special.ndtr(z) + z * phi(z)

    def s2(z):
        return (2.0 - z * z) * phi(z)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        Ks = optimize.brentq(lambda K: avg(lambda z: s(z) * s2(z), K), 3.0, 4.0, xtol=1e-15)
        CW = 1.0 / avg(lambda z: s1(z) ** 2, Ks)
        Cb = Ks - CW * avg(lambda z: s(z) ** 2, Ks)
        crit = pdlt.criticality("gelu")
        assert Ks == pytest.approx((3 + math.sqrt(17)) / 2, rel=1e-14)
        assert crit.K_star == pytest.approx(Ks, rel=1e-12)
        assert crit.C_W == pytest.approx(CW, rel=1e-12)
        assert crit.C_b == pytest.approx(Cb, rel=1e-12)
        K, V, G = 1.0, 0.0, 0.0
        ref = [(K, V, G)]
        for _ in range(3):
            m2, m4 = avg(lambda z: s(z) ** 2, K), avg(lambda z: s(z) ** 4, K)
            chi = CW * avg(lambda z: z * s(z) * s1(z), K) / K
            g = avg(lambda z: s(z) ** 2 * (z ** 4 - 6 * K * z * z + 3 * K * K), K) / K ** 4
            K, V, G = Cb + CW * m2, CW ** 2 * (m4 - m2 * m2) + chi ** 2 * V, chi * G + CW * g * V / 8
            ref.append((K, V, G))
    mlp = pdlt.MLP(n0=1, width=8, depth=4, n_out=1, activation="gelu", C_b=crit.C_b,
                   C_W=crit.C_W)
    st = pdlt.statistics(mlp, K1=1.0, get=("K", "V", "G1"))
    ref = np.array(ref)
    for j, name in enumerate(("K", "V", "G1")):
        np.testing.assert_allclose(np.ravel(st[name]), ref[:, j], rtol=1e-11, atol=1e-13,
                                   err_msg=name)


def test_joint_values_equal_the_three_calls_to_the_bit():
    # Activation.values (one pass, e.g. one expit for swish) is a fast special case of
    # (sigma, d1, d2); the engine mixes both, so they must agree exactly
    z = np.concatenate([np.linspace(-40.0, 40.0, 4001), [0.0, -0.0, 1e-300, -1e-300, 1e-8,
                        -750.0, 750.0, 1e300, -1e300]])
    z2 = np.random.default_rng(0).standard_normal((7, 33)) * 5.0
    have = [n for n in ALL_NAMED if pdlt.activation(n).joint is not None]
    assert {"tanh", "swish", "gelu", "erf", "sigmoid", "softplus"} <= set(have)
    for name in ALL_NAMED + ["silu"]:
        act = pdlt.activation(name)
        for x in (z, z2):
            with np.errstate(all="ignore"):
                got = act.values(x)
                want = (act.sigma(x), act.d1(x), act.d2(x))
            for g, w in zip(got, want):
                assert np.asarray(g).shape == x.shape
                assert np.array_equal(g, w, equal_nan=True), name
    # powered: the same derivative in another (equal up to rounding) form is caught
    sw = pdlt.activation("swish")
    e = 1.0 / (1.0 + np.exp(-z[:4001]))
    assert not np.array_equal(sw.values(z[:4001])[1], e * (1.0 + z[:4001] * (1.0 - e)))
