"""NTK-family recursions (A, B, D, F, P, Q, R, S, T, U) against ensembles of real networks.

Method. The estimators are unbiased for ``n x`` the finite-width correlator,
which is the leading-order statistic plus ``c1 / n + O(1/n^2)``. At the small
widths CI can afford, ``c1 / n`` is many standard errors (measured: B of
GELU at layer 4 is off by 6.1, 3.2, 1.6 at n = 32, 64, 128, a clean 1/n
law). So each test measures two widths ``n`` and ``2n`` with the same seed
and compares the Richardson extrapolation ``2 m(2n) - m(n)`` (which removes
``c1/n``) with the recursion, in standard errors
``se = sqrt(4 se(2n)^2 + se(n)^2)``, within 4 se plus a stated allowance for
the residual ``O(1/n^2)`` term: half the observed first-order shift
``|m(2n) - m(n)|`` (the expansion decays at least geometrically with ratio
1/2 between n and 2n, so the second-order term after extrapolation is at
most that). Layer 1 is exact (all statistics vanish) and is checked
separately.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from conftest import powered  # noqa: E402
from pdlt.experiment import Ensemble  # noqa: E402
from pdlt.report.rows import width_extrapolation  # noqa: E402

CRITICAL = {"relu": dict(C_W=2.0, C_b=0.0), "tanh": dict(C_W=1.0, C_b=0.0),
            "gelu": dict(C_W=1.98, C_b=0.0), "linear": dict(C_W=1.0, C_b=0.0)}


def _mlp(act, n, depth):
    return pdlt.MLP(n0=2, width=n, depth=depth, n_out=n, activation=act, lambda_b=0.5,
                    lambda_W=1.5, **CRITICAL[act])


def _two_widths(act, n, depth, M, stats, seed):
    """Ensembles at widths n and 2n, extrapolated (:func:`width_extrapolation`):
    ``{stat: (ext, se, allowance, theory, estimate n, estimate 2n)}``."""
    m1 = Ensemble(_mlp(act, n, depth), networks=M, seed=seed).measure(
        K1=1.0, stats=stats, progress=False)
    m2 = Ensemble(_mlp(act, 2 * n, depth), networks=M, seed=seed).measure(
        K1=1.0, stats=stats, progress=False)
    th = pdlt.statistics(_mlp(act, n, depth), K1=1.0, get=stats)
    th2 = pdlt.statistics(_mlp(act, 2 * n, depth), K1=1.0, get=stats)
    out = {}
    for s in stats:
        np.testing.assert_allclose(th[s], th2[s], rtol=1e-12)   # equal widths: n-free
        a, b = m1[s], m2[s]
        ext, se, allowance = width_extrapolation(a.mean, a.stderr, b.mean, b.stderr)
        out[s] = (ext, se, allowance, th[s], a, b)
    return out


def _powered(res, s, label, **kw):
    """conftest.powered on layers 2..L (layer 1 vanishes exactly)."""
    ext, se, al, th, _, _ = res[s]
    return powered(th[1:], ext[1:], se[1:], al[1:], label=f"{label} {s}", **kw)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_ntk_fluctuations_vs_ensemble(act):
    stats = ["A", "B", "D", "F"]
    res = _two_widths(act, 32, 4, 3000, stats, seed=11)
    for s in stats:
        a = res[s][4]
        assert np.all(np.abs(a.mean[0]) < 1e-10), f"{s} must vanish at layer 1"
        _powered(res, s, act)


#: P..U at n = 4 / 8, depth 3 (layers 2, 3): the statistics each activation resolves to
#: <= 50 % with these network counts (measured: tanh P 0.43, R 0.38, S 0.18, U 0.35;
#: relu Q 0.33, S 0.14, T 0.18; gelu Q 0.34, R 0.50, S 0.17, T 0.15, U 0.40), which must
#: also reject the theory x0, x0.5 and x2. The others are agreement checks only: tanh Q
#: (1.1) and T (1.2), gelu P (1.0) are unresolved at CI cost (``pdlt report`` measures them
#: at widths 32-128); ReLU's P, R, U and the linear network's P, R, U vanish exactly (an
#: absolute bound).
DERIV_POWERED = {"tanh": ("P", "R", "S", "U"), "relu": ("Q", "S", "T"),
                 "gelu": ("Q", "R", "S", "T", "U"), "linear": ()}
DERIV_NETWORKS = {"tanh": 3000, "relu": 2000, "gelu": 2000, "linear": 1000}


@pytest.mark.parametrize("act", ["linear", "tanh", "relu", "gelu"])
def test_dntk_ddntk_vs_ensemble(act):
    # autodiff through the ddNTK costs (n N)^3 P per network: tiny widths
    stats = ["P", "Q", "R", "S", "T", "U"]
    res = _two_widths(act, 4, 3, DERIV_NETWORKS[act], stats, seed=5)
    for s in stats:
        if s in DERIV_POWERED[act]:
            _powered(res, s, act, max_resolution=0.5)
        else:
            _powered(res, s, act, factors=(), zero=False)


def test_linear_dntk_statistics_that_vanish_shrink_like_one_over_n():
    """Deep linear net: P = R = U = 0 at leading order; the measured n x correlator is O(1/n)."""
    stats = ["P", "R", "U"]
    vals = {}
    for n in (4, 8):
        m = Ensemble(_mlp("linear", n, 3), networks=1000, seed=3).measure(
            K1=1.0, stats=stats, layers=[3], progress=False)
        vals[n] = m
    for s in stats:
        a, b = float(vals[4][s].mean[0]), float(vals[8][s].mean[0])
        sb = float(vals[8][s].stderr[0])
        # halving of the width halves the value (within 4 se of each and a 25 % systematic)
        assert abs(b - a / 2) < 4 * np.hypot(sb, float(vals[4][s].stderr[0]) / 2) + 0.25 * abs(b)


@pytest.mark.slow
def test_gelu_ddntk_at_C_W_not_one_vs_ensemble():
    """Critical GELU has C_W = 1.98: the single-input S recursion with C_W^3 instead of
    C_W^2 in its B term gave z = -3.4 here; the corrected one gives |z| < 1 (about 60 s)."""
    res = _two_widths("gelu", 6, 3, 1500, ["R", "S", "T", "U"], seed=5)
    for s in "RSTU":
        _powered(res, s, "gelu")


DERIV = ["P", "Q", "R", "S", "T", "U"]


def test_subset_estimator_is_the_full_one_when_it_holds_every_neuron():
    """derivative_neurons >= n averages over every ordered pair: the full estimator
    (reduced here by hand from the full dNTK/ddNTK tensors), to float rounding."""
    from pdlt.experiment.ntk import ddntk_autodiff, dntk_autodiff, preactivations
    mlp = _mlp("tanh", 4, 3)
    ens = Ensemble(mlp, networks=6, seed=2)
    a = ens.measure(K1=1.0, stats=DERIV, layers=[3], derivative_neurons=4, progress=False)
    b = ens.measure(K1=1.0, stats=DERIV, layers=[3], derivative_neurons=50, progress=False)
    W, bias = ens.parameters()
    x = torch.as_tensor(ens.single_input(1.0))
    z = preactivations(W, bias, x, mlp)[-1][..., 0]
    dH = dntk_autodiff(W, bias, x, mlp, 3)[..., 0, 0, 0]
    ddI, ddII = (t[..., 0, 0, 0, 0] for t in ddntk_autodiff(W, bias, x, mlp, 3))
    off = 1 - torch.eye(4, dtype=torch.float64)
    per_net = {
        "P": torch.einsum("mijj,mi,ij->m", dH, z, off), "Q": torch.einsum("miij,mj,ij->m", dH, z, off),
        "R": torch.einsum("miijj,ij->m", ddI, off), "S": torch.einsum("miijj,ij->m", ddII, off),
        "T": torch.einsum("mijij,ij->m", ddII, off), "U": torch.einsum("mijji,ij->m", ddII, off)}
    for s in DERIV:
        ref = 4 * per_net[s].mean().item() / 12  # n x mean over the 12 ordered pairs
        assert a[s].mean[0] == b[s].mean[0]
        assert a[s].mean[0] == pytest.approx(ref, rel=1e-12), s


def test_subset_estimator_agrees_with_the_full_one_within_errors():
    """s = 2 of n = 8 neurons: same expectation as all 8 (exchangeability); the
    difference of the two means on the same networks is compared with the sum of
    their standard errors (conservative: the two are positively correlated)."""
    ens = Ensemble(_mlp("tanh", 8, 3), networks=600, seed=4)
    full = ens.measure(K1=1.0, stats=DERIV, layers=[3], derivative_neurons=8, progress=False)
    sub = ens.measure(K1=1.0, stats=DERIV, layers=[3], derivative_neurons=2, progress=False)
    for s in DERIV:
        f, g = full[s], sub[s]
        assert abs(g.mean[0] - f.mean[0]) < 4 * (g.stderr[0] + f.stderr[0]), s
        assert g.stderr[0] >= 0.9 * f.stderr[0], s  # fewer pairs cannot beat all of them
        assert abs(g.mean[0] - f.mean[0]) > 0, s      # genuinely different neuron pairs


def test_derivative_neurons_validated():
    ens = Ensemble(_mlp("tanh", 4, 2), networks=4, seed=0)
    for bad in (1, 0, 2.5, True, "4"):
        with pytest.raises(ValueError, match="derivative_neurons"):
            ens.measure(K1=1.0, stats=["P"], derivative_neurons=bad, progress=False)


def test_sharded_runs_and_checkpoints_carry_derivative_neurons(tmp_path):
    ens = Ensemble(_mlp("tanh", 6, 2), networks=12, seed=0)
    local = ens.measure(K1=1.0, stats=["P", "R"], derivative_neurons=4, progress=False)
    sharded = ens.measure(K1=1.0, stats=["P", "R"], derivative_neurons=4, shards=3,
                          progress=False)
    for s in ("P", "R"):
        np.testing.assert_allclose(sharded[s].mean, local[s].mean, rtol=1e-12, atol=1e-14)
    ck = str(tmp_path / "ck.npz")
    ens.measure(K1=1.0, stats=["P"], derivative_neurons=4, shards=3, checkpoint=ck,
                progress=False)
    with pytest.raises(ValueError, match="derivative_neurons"):
        ens.measure(K1=1.0, stats=["P"], derivative_neurons=2, shards=3, checkpoint=ck,
                    progress=False)


@pytest.mark.slow
def test_dntk_ddntk_vs_ensemble_at_width_32():
    """P..U of tanh at widths 32 and 64 (depth 3) against the recursions, on 2 neurons
    per network (10 s on a quiet machine, 2 minutes on a busy one; ``pdlt report``
    compares tanh P..U at widths 32-128). Its P resolves to 0.48, the rest to 0.5-1.2:
    negative controls where resolved."""
    res = _two_widths("tanh", 32, 3, 1500, DERIV, seed=21)
    for s in DERIV:
        c = _powered(res, s, "tanh", factors=(), zero=False)
        if c.resolution <= 0.5:
            _powered(res, s, "tanh")


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_dntk_ddntk_vs_ensemble_wide_and_deep(act):
    """P..U at depth 6 from the width pairs (32, 64) and (64, 128), M = 1500 each
    (about 1.5 minutes per activation on 2 cores)."""
    stats, depth, M = DERIV, 6, 1500
    ms = {n: Ensemble(_mlp(act, n, depth), networks=M, seed=31).measure(
        K1=1.0, stats=stats, layers=[depth], progress=False) for n in (32, 64, 128)}
    th = pdlt.statistics(_mlp(act, 32, depth), K1=1.0, get=stats)
    for n in (32, 64):
        for s in stats:
            a, b = ms[n][s], ms[2 * n][s]
            ext, se, allowance = width_extrapolation(a.mean[0], a.stderr[0], b.mean[0],
                                                     b.stderr[0])
            powered(th[s][-1], ext, se, allowance, label=f"{act} {s} ({n},{2 * n})")
