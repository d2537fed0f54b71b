"""The MLP specification and input validation."""

import numpy as np
import pytest

from pdlt import MLP
from pdlt.network import validate_inputs


def test_equal_widths_and_broadcast_hyperparameters():
    mlp = MLP(n0=3, width=8, depth=4, activation="tanh", C_W=1.5, lambda_b=[1, 2, 3, 4])
    assert mlp.widths == (3, 8, 8, 8, 1)
    assert mlp.depth == 4 and mlp.n0 == 3 and mlp.n_out == 1
    assert mlp.C_W == (1.5,) * 4 and mlp.lambda_b == (1.0, 2.0, 3.0, 4.0)
    assert mlp.fan_in(1) == 3 and mlp.fan_in(2) == 8


def test_unequal_widths():
    mlp = MLP(n0=2, widths=[5, 7], n_out=3)
    assert mlp.widths == (2, 5, 7, 3) and mlp.depth == 3


def test_depth_one_needs_no_width():
    assert MLP(n0=2, depth=1).widths == (2, 1)


def test_frozen_and_with():
    mlp = MLP(n0=2, width=4, depth=3)
    with pytest.raises(Exception):
        mlp.depth = 3  # noqa
    m2 = mlp.with_(C_W=2.0, depth=5)
    assert m2.depth == 5 and m2.C_W == (2.0,) * 5 and mlp.C_W == (1.0,) * 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(n0=0, width=4, depth=2), "n0 must be a positive integer"),
    (dict(n0=2, width=0, depth=2), "width must be a positive integer"),
    (dict(n0=2, width=4, depth=0), "depth must be a positive integer"),
    (dict(n0=2, width=4), "depth is required"),
    (dict(n0=2, width=4, depth=2, C_W=0.0), "C_W must be > 0"),
    (dict(n0=2, width=4, depth=2, C_b=-1.0), "C_b must be >= 0"),
    (dict(n0=2, width=4, depth=2, C_W=float("nan")), "C_W must be finite"),
    (dict(n0=2, width=4, depth=3, C_W=[1.0, 2.0]), "one value per layer"),
    (dict(n0=2, widths=[3, -1]), r"widths\[1\]"),
    (dict(n0=2, width=4, depth=2, activation="nope"), "unknown activation"),
])
def test_bad_parameters_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_validate_inputs():
    x = validate_inputs([1.0, 2.0], n0=2)
    assert x.shape == (1, 2)
    with pytest.raises(ValueError, match="3 features per input but the MLP has n0=2"):
        validate_inputs(np.ones((4, 3)), n0=2)
    with pytest.raises(ValueError, match="NaN or inf .*row 1"):
        validate_inputs([[1.0, 2.0], [np.nan, 1.0]], n0=2)
    with pytest.raises(ValueError, match="shape"):
        validate_inputs(np.ones((2, 2, 2)))


def test_equal_specifications_compare_equal_and_pickle():
    import pickle

    a = MLP(n0=2, width=3, depth=2, activation="gelu", C_W=1.5)
    assert a == MLP(n0=2, width=3, depth=2, activation="gelu", C_W=1.5)
    assert a != MLP(n0=2, width=3, depth=2, activation="tanh", C_W=1.5)
    assert pickle.loads(pickle.dumps(a)) == a
