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
