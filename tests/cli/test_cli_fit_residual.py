"""`pdlt fit --residual`: residual MLPs at infinite width and at finite width (--width)."""

import json

import numpy as np
import pytest

from pdlt.learning import ntk_prediction
from pdlt.theory.residual import residual_mlp


@pytest.fixture
def small_csvs(regression_csvs):
    return regression_csvs(3, 2, seed=1)[:5]


ARGS = ["--activation", "tanh", "--depth", "3", "--critical", "--residual", "0.5"]


def test_fit_residual_ntk_matches_the_api(small_csvs, run_cli):
    tr, te, Xa, ya, Xb = small_csvs
    code, out, err = run_cli("fit", *ARGS, "--method", "ntk", "--steps", "20",
                             "--learning-rate", "0.05", "--train", tr, "--test", te, "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    mlp = residual_mlp("tanh", 0.5, n0=2, width=100, depth=3)
    assert d["mlp"] == repr(mlp) and "gamma=(0, 0.5, 0)" in d["mlp"]
    ref = ntk_prediction(mlp, Xa, ya, Xb, learning_rate=0.05, steps=20)
    np.testing.assert_allclose(d["mean"], np.ravel(ref.mean), rtol=1e-10)
    plain = ntk_prediction(mlp.with_(gamma=0.0), Xa, ya, Xb, learning_rate=0.05, steps=20)
    assert not np.allclose(d["mean"], np.ravel(plain.mean), rtol=1e-3)


def test_fit_residual_width_and_bad_gamma(regression_csvs, run_cli):
    """--width on a residual MLP: the N-input residual statistics (two training inputs and
    one test input, N = 3: ~2.5 s per call; the 5-input data of the other tests cost
    ~17 s per call) give the API's finite-width mean."""
    from pdlt.learning.finite_training import finite_width_training
    tr, te, Xa, ya, Xb = regression_csvs(2, 1, seed=1)[:5]
    code, out, err = run_cli("fit", *ARGS, "--method", "ntk", "--width", "32", "--steps", "20",
                             "--learning-rate", "0.05", "--train", tr, "--test", te, "--json")
    assert code == 0, err
    mlp = residual_mlp("tanh", 0.5, n0=2, width=100, depth=3)
    r = finite_width_training(mlp, Xa, ya, Xb, learning_rate=0.05, steps=20, width=32)
    np.testing.assert_allclose(json.loads(out)["mean"], r.mean, rtol=1e-10)
    code, _, err = run_cli("fit", *ARGS[:-1], "1.2", "--method", "ntk", "--train", tr,
                           "--test", te)
    assert code == 2 and "|gamma| < 1" in err
