"""finite_width_posterior and residual output layers: the O(1/n) output three-point function.

A residual output layer ``z^(L) = xi [b + W sigma] + gamma z^(L-1)`` with a non-odd
activation gives the output an O(1/n) three-point function (same order as V), which
the posterior does not include: it must refuse rather than silently drop it. A plain
output layer (no three-point function) and an odd activation (none either) are served.
"""

import numpy as np
import pytest

import pdlt
from pdlt.learning.finite_bayes import finite_width_posterior

XA = np.array([[1.0, 0.5], [-0.4, 0.9]])
XB = np.array([[0.3, -0.7]])


def _mlp(n_out, act):
    # scalar gamma: residual in every layer l >= 2 with n_{l-1} == n_l (the output layer
    # too iff n_out == 4)
    return pdlt.MLP(2, width=4, depth=3, n_out=n_out, gamma=0.5, activation=act, C_W=1.0,
                    C_b=0.1)


def _kappa3_out(mlp):
    k3 = pdlt.statistics(mlp, XA[:1], get=("kappa3",)).kappa3
    return float(np.asarray(k3).reshape(3, -1)[-1, 0])


def test_residual_output_with_non_odd_activation_is_refused():
    mlp = _mlp(4, "relu")
    assert mlp.gamma[-1] == 0.5
    # the term that would be dropped is really there (one-input kappa3 at the output)
    assert abs(_kappa3_out(mlp)) > 0.1
    with pytest.raises(NotImplementedError, match=r"gamma\[2\] = 0.5.*'relu'.*three-point"):
        finite_width_posterior(mlp, XA, np.ones((2, 4)), XB, noise=0.1)


@pytest.mark.parametrize("n_out, act", [(1, "relu"), (4, "tanh")])
def test_plain_output_or_odd_activation_is_served(n_out, act):
    mlp = _mlp(n_out, act)
    # no output three-point function here, so nothing is dropped
    assert _kappa3_out(mlp) == 0.0
    post = finite_width_posterior(mlp, XA, np.ones((2, n_out)), XB, noise=0.1)
    assert post.mean.shape == (1, n_out) and np.all(np.isfinite(post.mean))
    # the O(1/n) correction is there (V, G1 of the residual net are served at N inputs)
    assert np.max(np.abs(post.mean - post.mean_infinite_width)) > 1e-6
