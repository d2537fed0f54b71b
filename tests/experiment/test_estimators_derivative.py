"""The batched dNTK/ddNTK pair patterns (layer recursions) against the autodiff path.

Both compute the same numbers in float64 by different operation orders, so they
agree to round-off: a few 1e-16 relative to the largest entry measured; the
bound 1e-11 leaves room for depth and activation without admitting a wrong
term (a missing or doubled term changes entries at O(1)).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from pdlt.experiment import Ensemble  # noqa: E402
from pdlt.experiment import ntk as _ntk  # noqa: E402
from pdlt.experiment.estimators_derivative import derivative_pairs_batched  # noqa: E402

CASES = [  # activation, inputs N, subset s, depth, layer
    ("tanh", 1, 2, 3, 3),
    ("gelu", 2, 3, 3, 3),
    ("relu", 2, 2, 4, 3),
    ("tanh", 3, 2, 2, 2),
    ("swish", 1, 5, 3, 3),   # s capped at the width of the layer (n_out = 4)
]


def _nets(act, N, L, M=3, seed=1):
    mlp = pdlt.MLP(n0=3, width=5, depth=L, n_out=4, activation=act, C_b=0.1, C_W=1.3,
                   lambda_b=[0.7] + [1.2] * (L - 1), lambda_W=[1.5] + [0.8] * (L - 1))
    Ws, bs = Ensemble(mlp, networks=M, seed=seed).parameters(0, M)
    x = torch.as_tensor(np.random.default_rng(seed).standard_normal((N, 3)))
    return mlp, Ws, bs, x


@pytest.mark.parametrize("act,N,s,L,layer", CASES)
def test_batched_pairs_equal_autodiff(act, N, s, L, layer):
    mlp, Ws, bs, x = _nets(act, N, L)
    ref = _ntk.derivative_pairs(Ws, bs, x, mlp, layer, s)
    new = derivative_pairs_batched(Ws, bs, x, mlp, layer, s)
    for k in ref._fields:
        a, b = getattr(ref, k), getattr(new, k)
        assert a.shape == b.shape, k
        scale = a.abs().max().item()
        assert scale > 0, k   # a nonzero pattern: the comparison tests something
        assert (a - b).abs().max().item() <= 1e-11 * scale, (k, (a - b).abs().max().item(), scale)


def test_batched_pairs_fields_and_fallback():
    mlp, Ws, bs, x = _nets("tanh", 2, 3)
    only = derivative_pairs_batched(Ws, bs, x, mlp, 3, 2, fields=("dH_iij", "ddII_ijji"))
    assert only.ddI_iijj is None and only.dH_ijj is None
    assert only.dH_iij.shape == (3, 2, 2, 2, 2, 2) and only.ddII_ijji.shape == (3, 2, 2) + (2,) * 4
    with pytest.raises(ValueError, match="fields"):
        derivative_pairs_batched(Ws, bs, x, mlp, 3, 2, fields=("dH_jij",))
    # residual MLPs go to the autodiff path (same result by construction)
    res = pdlt.MLP(n0=3, width=5, depth=3, n_out=4, activation="tanh", C_b=0.1, C_W=1.3,
                   gamma=0.5)
    a = derivative_pairs_batched(Ws, bs, x, res, 3, 2, fields=("dH_ijj",)).dH_ijj
    b = _ntk.derivative_pairs(Ws, bs, x, res, 3, 2, fields=("dH_ijj",)).dH_ijj
    assert torch.equal(a, b)


def test_measure_uses_batched_pairs_same_estimates():
    """Ensemble.measure's P..U (batched path) equal the estimates built on the autodiff
    pairs, network for network (same draws)."""
    from pdlt.experiment import ensemble as E

    mlp = pdlt.MLP(n0=1, width=6, depth=3, n_out=6, activation="tanh", C_b=0.0, C_W=1.0)
    stats = ["P", "Q", "R", "S", "T", "U"]
    new = Ensemble(mlp, networks=40, seed=4).measure(K1=1.0, stats=stats, layers=[3],
                                                      progress=False)
    orig = E.derivative_pairs_batched
    try:
        E.derivative_pairs_batched = _ntk.derivative_pairs
        ref = Ensemble(mlp, networks=40, seed=4).measure(K1=1.0, stats=stats, layers=[3],
                                                          progress=False)
    finally:
        E.derivative_pairs_batched = orig
    for k in stats:
        a, b = float(np.ravel(ref[k].mean)[0]), float(np.ravel(new[k].mean)[0])
        assert abs(a - b) <= 1e-10 * max(abs(a), float(np.ravel(ref[k].stderr)[0])), k


@pytest.mark.parametrize("act,N,s,L", [("gelu", 2, 3, 3), ("tanh", 1, 4, 4), ("relu", 2, 2, 3)])
def test_p_alone_same_neuron_pairs(act, N, s, L):
    """dH_ijj alone takes the same-neuron-pair recursion (s N^2 second-order jets instead
    of (s N)^2): the same numbers as the full recursion and as autodiff."""
    mlp, Ws, bs, x = _nets(act, N, L)
    ref = _ntk.derivative_pairs(Ws, bs, x, mlp, L, s, fields=("dH_ijj",)).dH_ijj
    full = derivative_pairs_batched(Ws, bs, x, mlp, L, s, fields=("dH_ijj", "dH_iij")).dH_ijj
    alone = derivative_pairs_batched(Ws, bs, x, mlp, L, s, fields=("dH_ijj",)).dH_ijj
    scale = ref.abs().max().item()
    assert scale > 0
    for new in (full, alone):
        assert new.shape == ref.shape
        assert (new - ref).abs().max().item() <= 1e-11 * scale
