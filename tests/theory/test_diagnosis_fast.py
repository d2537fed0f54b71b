"""The fast paths behind ``pdlt diagnose`` at depth, and its progress reporting.

``pdlt.statistics`` folds every order-1/n statistic of one input of a plain
MLP as scalar affine recursions whose coefficients come from the one-variable
table for all layers at once (``statistics._affine_one_input``), and evaluates
the one-variable table once per distinct kernel value
(``statistics._DistinctTable``).

Two inputs (``pdlt diagnose``'s reference problem): two uncorrelated inputs of a
plain MLP fold as affine maps over all layers (``pdlt.theory._affine_two_input``),
the reference problem's kernel of uncorrelated inputs is the one-input flow with
factorized means off the diagonal, and where the test-input correction is withheld
only the training input is folded (``finite_training.finite_width_learning_size``);
within one diagnosis the kernel flows and one-variable tables are shared
(``statistics.shared_tables``). Each is compared with the general path with a
tolerance stated at its test, and each comparison rejects a layer off.

Tolerances. The affine recursions use the same table entries as the general
steps in another order of operations, so the two folds agree to float64
round-off of a ~200-layer recursion: asserted at 1e-13 of each statistic's
scale (measured <= 2.1e-15). The distinct-value table evaluates each one-variable average at
the same kernel value with the same rule; the engine states < 1e-14 per
average (``pdlt.gaussian.expect``), asserted entry by entry at 1e-14 of each
name's scale. Every comparison is shown able to fail: the same comparison
rejects the fold run one layer off (coefficients of layer l + 1 at layer l),
and a table read one layer off.
"""

import io
import sys

import numpy as np
import pytest

import pdlt
from pdlt.cli import main
from pdlt.theory import statistics as stats_mod
from pdlt.theory._averages import OneVariableTable

_ACTS = ["relu", "tanh", "gelu", "swish"]


def _rel(a, b):
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-300)


_STATS = ("V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")


def _uneven(act, depth=200):
    """Near-critical MLP whose C_W, lambda_W and widths change from layer to layer (K moves
    for relu too)."""
    crit = pdlt.criticality(act)
    l = np.arange(depth)
    C_W = crit.C_W * (1.0 + 0.01 * np.sin(l))
    widths = [int(w) for w in 60 + 30 * np.cos(0.7 * l[:-1])]     # hidden, n_1 .. n_{L-1}
    return pdlt.MLP(n0=1, widths=widths, activation=act, C_b=crit.C_b, C_W=C_W,
                    lambda_b=0.3, lambda_W=1.0 + 0.5 * np.cos(0.3 * l))


def _fold(mlp, monkeypatch, affine, shift=False):
    with monkeypatch.context() as mp:
        mp.setattr(stats_mod, "_AFFINE_ONE_INPUT", affine)
        if shift:       # the table of layer l + 1 read at layer l
            orig = stats_mod._affine_one_input

            class Shifted:
                def __init__(self, table):
                    self._t = table

                def __getitem__(self, name):
                    v = np.asarray(self._t[name])
                    return np.concatenate([v[1:], v[-1:]])

            mp.setattr(stats_mod, "_affine_one_input",
                       lambda mlp, table, *a: orig(mlp, Shifted(table), *a))
        names = [k for k in _STATS if k in stats_mod.defined(mlp)]
        s = stats_mod.statistics(mlp, K1=1.0, get=names)
    return {**{k: s[k] for k in names}, "err": s.integration_error}


@pytest.mark.parametrize("act", _ACTS)
def test_affine_one_input_fold_equals_the_layer_fold(act, monkeypatch):
    # every order-1/n statistic; tolerance: the two paths evaluate each layer's
    # coefficients in a different order of operations (a few ulps), carried through
    # 200 layers at chi ~ 1: <= 200 x 2 ulps ~ 1e-13 of the scale (measured <= 2.1e-15)
    mlp = _uneven(act)
    general = _fold(mlp, monkeypatch, False)
    fast = _fold(mlp, monkeypatch, True)
    assert set(fast) == set(general)
    for k in general:
        if np.any(general[k]):
            assert _rel(fast[k], general[k]) <= 1e-13, (k, _rel(fast[k], general[k]))
        else:           # e.g. relu's G1, P, R, U, H1: exactly 0 at every layer
            assert not np.any(fast[k]), k
    wrong = _fold(mlp, monkeypatch, True, shift=True)
    # V, D, A read averages that move with K for every activation here (relu's <p p> and
    # <p^4>, all B reads, do not), so a table one layer off is rejected there
    for k in ("V", "D", "A"):
        assert _rel(wrong[k], general[k]) > 1e-6, k


def test_affine_fold_refuses_R_like_the_layer_fold(monkeypatch):
    # elu (alpha != 1): sigma'' jumps at the kink, R is not defined; same error both ways
    mlp = pdlt.MLP(n0=1, width=10, depth=5, activation=pdlt.activation("elu", alpha=0.5))
    msgs = []
    for affine in (False, True):
        monkeypatch.setattr(stats_mod, "_AFFINE_ONE_INPUT", affine)
        with pytest.raises(ValueError) as exc:
            stats_mod.statistics(mlp, K1=1.0, get=("R",))
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]


def test_affine_fold_at_depth_1e4_matches_the_relu_closed_form():
    # critical relu: V^(l) = 5 (l - 1) K^2 exactly, G1 = 0; 10^4 layers in milliseconds
    mlp = pdlt.MLP(n0=1, width=1000, depth=10_000, C_W=2.0)
    s = pdlt.statistics(mlp, K1=1.0, get=("V", "G1"))
    want = 5.0 * np.arange(10_000)
    # per layer the sources and multipliers carry ~1e-15 relative: 1e4 layers, 1e-11
    tol = 1e-11 * want[-1]
    assert np.max(np.abs(s.V - want)) <= tol
    assert not np.any(s.G1)
    assert np.max(np.abs(s.V - 5.0 * np.arange(1, 10_001))) > 100 * tol    # one layer off


def test_affine_fold_reports_overflow_like_the_layer_fold(monkeypatch):
    # far from criticality V overflows; both paths name the same statistic and layer
    mlp = pdlt.MLP(n0=1, width=10, depth=400, activation="linear", C_W=4.0)
    msgs = []
    for affine in (False, True):
        monkeypatch.setattr(stats_mod, "_AFFINE_ONE_INPUT", affine)
        with pytest.raises(FloatingPointError) as exc:
            stats_mod.statistics(mlp, K1=1e-100, get=("V", "G1"))
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]


_NAMES = ("ss", "ssss", "pp", "pppp", "sspp", "dss", "dpp", "d4ss", "d4pp", "qs", "qq",
          "dqp", "m0s", "m1p", "m2pp")


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_distinct_value_table_equals_the_table(act):
    a = pdlt.MLP(n0=1, width=2, depth=1, activation=act).activation
    K = np.repeat(np.geomspace(0.05, 3.0, 40), 2).reshape(40, 2)    # each value twice
    K[::7] = 1.0                                                    # and a repeated row
    full, distinct = OneVariableTable(a, K), stats_mod._DistinctTable(a, K)
    shifted = OneVariableTable(a, np.concatenate([K[1:], K[-1:]]))
    for name in _NAMES:
        want = np.asarray(full[name])
        got = np.asarray(distinct[name])
        # the name's scale; at least 1e-2 where the average vanishes by symmetry (<tanh> = 0
        # is round-off of O(sqrt K) terms, K >= 0.05 here)
        scale = max(float(np.max(np.abs(want))), 1e-2)
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= 1e-14 * scale, name
        assert np.array_equal(np.asarray(distinct.at(5)[name]), got[5])
        if np.ptp(want) > 1e-6 * scale:    # varies with K (relu's <p^2> does not): the
            # same comparison rejects the table one layer off
            assert np.max(np.abs(np.asarray(shifted[name]) - want)) > 1e-6 * scale, name


# ---------------------------------------------------------------------------
# progress on stderr: on a terminal, or with --progress; never with --json
# ---------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def _diagnosis():
    from pdlt.theory.diagnosis import diagnose_architecture
    return diagnose_architecture(pdlt.activation("relu"), 6, 100)


def _diagnose_stderr(monkeypatch, capsys, diagnosis, *args, terminal):
    # the verb around a diagnosis whose fold shows a layer bar (the real one takes ~3 s)
    import pdlt._progress as progress
    from pdlt.theory import diagnosis as diag_mod

    pytest.importorskip("tqdm")

    def fake(*a, **k):
        assert list(progress.layers(range(1, 6), "V, G1, 2 inputs")) == [1, 2, 3, 4, 5]
        return diagnosis
    monkeypatch.setattr(diag_mod, "diagnose_architecture", fake)
    monkeypatch.setattr(progress, "_DELAY_S", 0.0)
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["diagnose", "--depth", "6", "--width", "100", *args]) == 0
    assert capsys.readouterr().out
    return err.getvalue()


def test_diagnose_progress_on_a_terminal_or_with_progress_never_in_json(monkeypatch, capsys,
                                                                         _diagnosis):
    def err(*args, terminal):
        return _diagnose_stderr(monkeypatch, capsys, _diagnosis, *args, terminal=terminal)
    assert "layer" in err(terminal=True)
    assert err(terminal=False) == ""
    assert "layer" in err("--progress", terminal=False)
    assert err("--json", terminal=True) == ""
    assert "layer" in err("--json", "--progress", terminal=False)


# ---------------------------------------------------------------------------
# two uncorrelated inputs: the order-1/n fold as affine maps over all layers
# (pdlt.theory._affine_two_input), the reference problem's kernel and its
# training-input-only branch (pdlt.learning.finite_training)
# ---------------------------------------------------------------------------

_ODD = ["tanh", "erf", "sin"]


def _uneven_two(act, depth=60):
    """Critical-ish odd MLP with per-layer C_W, lambda_W and widths; lambda_b != 0 (the NTK's
    cross entry grows), C_b = 0 (orthogonal inputs stay uncorrelated)."""
    crit = pdlt.criticality(act)
    l = np.arange(depth)
    widths = [int(w) for w in 60 + 30 * np.cos(0.7 * l[:-1])]
    return pdlt.MLP(n0=2, widths=widths, activation=act, C_b=0.0,
                    C_W=crit.C_W * (1.0 + 0.01 * np.sin(l)), lambda_b=0.3,
                    lambda_W=1.0 + 0.5 * np.cos(0.3 * l))


_X2 = np.array([[1.1, 0.0], [0.0, 0.8]])          # orthogonal, unequal norms


def _two_fold(mlp, monkeypatch, affine, shift=False, error=False):
    from pdlt.theory import _affine_two_input as two
    calls = []
    with monkeypatch.context() as mp:
        mp.setattr(stats_mod, "_AFFINE_TWO_INPUT", affine)
        orig = two.affine_two_input

        def spy(mlp_, table, *a):
            calls.append(1)
            if shift:       # the one-variable table of layer l + 1 read at layer l
                class Shifted:
                    def __init__(self, t):
                        self._t = t

                    def __getitem__(self, name):
                        v = np.asarray(self._t[name])
                        return np.concatenate([v[1:], v[-1:]])
                table = Shifted(table)
            return orig(mlp_, table, *a)
        mp.setattr(two, "affine_two_input", spy)
        s = stats_mod.statistics(mlp, _X2, get=_STATS, error=error)
    assert bool(calls) == affine           # the path under test was the one taken
    return s


@pytest.mark.parametrize("act", _ODD)
def test_affine_two_input_fold_equals_the_layer_fold(act, monkeypatch):
    # Tolerance: the general fold's four-variable averages of the two inputs come from a
    # two-variable rule; pdlt.gaussian._multi states them to <= 6e-11 of their
    # Cauchy-Schwarz scale for tanh at "default" (erf 1.2e-15), plus <= 2e-14 for pruning,
    # and estimates them itself (statistics(error=True): |default - high|, propagated; it
    # misses errors the two rules share, e.g. tanh's V_(00)(11) at layer 2 is -5.6e-15 at
    # both where independence makes it exactly 0, as the affine path gives it). The affine
    # path factorizes them into one-variable averages (< 1e-14 each). So: 1e-10 of each
    # statistic's scale (the stated accuracy, carried linearly through a 60-layer fold at
    # chi ~ 1) plus twice the general fold's own estimate at that layer. Measured: <= 1e-11.
    mlp = _uneven_two(act)
    general = _two_fold(mlp, monkeypatch, False, error=True)
    fast = _two_fold(mlp, monkeypatch, True)
    wrong = _two_fold(mlp, monkeypatch, True, shift=True)
    rejected = []
    for k in _STATS:
        scale = float(np.max(np.abs(general[k])))
        err = general.error[k]
        layer_err = np.max(err.reshape(len(err), -1), axis=1).reshape((-1,) + (1,) * (err.ndim - 1))
        tol = 2.0 * layer_err + 1e-10 * scale
        assert np.all(np.abs(fast[k] - general[k]) <= tol), \
            (k, float(np.max(np.abs(fast[k] - general[k]) / (tol + 1e-300))))
        assert float(np.max(tol)) <= 1e-8 * scale, k        # a tolerance that can bite
        rejected.append(np.any(np.abs(wrong[k] - general[k]) > 100 * tol))
    # the same comparison rejects the averages one layer off (V, A, D, ... read <s s>, <s^4>
    # at K^(l), which moves with l)
    assert sum(rejected) >= len(_STATS) - 2, rejected


def test_affine_two_input_fold_serves_only_uncorrelated_distinct_inputs():
    from pdlt.theory import _affine_two_input as two
    mlp = _uneven_two("tanh", 5)
    Ks = stats_mod.statistics(mlp, _X2).K
    assert two.applies(mlp, Ks, ["V", "H1"], stats_mod._AFFINE_NAMES)
    # correlated inputs (a bias), a kinked activation, three inputs, kappa3: the general fold
    Kc = stats_mod.statistics(mlp.with_(C_b=0.1), _X2).K
    assert not two.applies(mlp, Kc, ["V"], stats_mod._AFFINE_NAMES)
    relu = pdlt.MLP(n0=2, width=10, depth=5, C_W=2.0)
    assert not two.applies(relu, stats_mod.statistics(relu, _X2).K, ["V"],
                           stats_mod._AFFINE_NAMES)
    K3 = stats_mod.statistics(mlp, np.eye(3)[:, :2]).K
    assert not two.applies(mlp, K3, ["V"], stats_mod._AFFINE_NAMES)
    assert not two.applies(mlp, Ks, ["kappa3"], stats_mod._AFFINE_NAMES)


def test_affine_two_input_fold_reports_overflow_like_the_layer_fold(monkeypatch):
    # lambda_W = 1e154: B and A grow like lambda_W^2 (B / lambda_W^2 passes 1.8 near layer 20,
    # 17 at layer 200) and overflow partway while V stays finite; both paths name the same
    # statistic (the first in the fold's order) and layer
    mlp = pdlt.MLP(n0=2, width=10, depth=200, activation="tanh", C_W=1.0, C_b=0.0,
                   lambda_W=1e154)
    msgs = []
    for affine in (False, True):
        monkeypatch.setattr(stats_mod, "_AFFINE_TWO_INPUT", affine)
        with pytest.raises(FloatingPointError) as exc, np.errstate(over="ignore",
                                                                   invalid="ignore"):
            stats_mod.statistics(mlp, _X2, get=("V", "B", "A"))
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]
    assert "overflowed at layer" in msgs[0]


@pytest.mark.parametrize("act", _ODD)
def test_reference_kernel_of_uncorrelated_inputs_equals_the_two_input_fold(act):
    # the reference problem's kernel: one-input flow on the diagonal and factorized means off
    # it, against the general two-input fold (Mehler series, rho = 0). Tolerance: each
    # one-variable average < 1e-14 relative (the engine's statement), through a 60-layer
    # recursion at chi ~ 1: 1e-12 of each entry's scale (K: Cauchy-Schwarz sqrt(K_aa K_bb);
    # Theta likewise). K_01 is round-off (|rho| <= 1e-17) on both sides.
    from pdlt.learning.finite_training import _reference_kernel
    from pdlt.theory.kernel import first_layer_kernel, kernel_fold
    mlp = _uneven_two(act)
    s = float(np.sqrt(2.0 / mlp.C_W[0]))                 # K^(1) = 1 for both inputs
    x = s * np.eye(2)
    Ks, Ths = _reference_kernel(mlp, x, 1.0)
    Kg, Tg, _, _ = kernel_fold(mlp, *first_layer_kernel(mlp, x), susceptibilities=False)
    for got, want in ((Ks, Kg), (Ths, Tg)):
        d = np.sqrt(np.einsum("lii->li", want))
        cs = d[:, :, None] * d[:, None, :]
        assert np.max(np.abs(got - want) / cs) <= 1e-12
        assert np.max(np.abs(got[1:] - want[:-1]) / cs[1:]) > 1e-6     # one layer off
    assert np.max(np.abs(Ks[:, 0, 1]) / np.sqrt(Ks[:, 0, 0] * Ks[:, 1, 1])) <= 1e-17


@pytest.mark.parametrize("act,depth", [("relu", 110), ("gelu", 60)])
def test_training_input_alone_equals_the_two_input_reference_problem(act, depth,
                                                                     critical_mlp):
    # where the test-input correction is withheld (1 - rho < 5e-3), finite_width_learning_size
    # folds the training input alone (its entries of every statistic are its one-input
    # statistics); the general path folds both inputs and trains on them (training_statistics
    # + end_of_training). Tolerance: the training input's entries of the two-input fold are
    # the same one-variable averages (< 1e-14 each, the engine's statement) in another order,
    # and its first-layer kernel K1 itself instead of the rounded x.x/n0 (1 ulp); through a
    # ~100-layer fold and the end-of-training map: 1e-11 relative (measured <= 1e-13).
    import warnings

    from pdlt.learning.finite_training import (algorithm_schedule, end_of_training,
                                               finite_width_learning_size, training_statistics)

    def general(L):
        mlp = critical_mlp(act, 1000, L, n0=2, n_out=1)
        crit = pdlt.criticality(act)
        s = float(np.sqrt(2.0 * (1.0 - crit.C_b) / crit.C_W))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            st = training_statistics(mlp, [[s, 0.0]], [[0.0, s]])
        y, Th = float(np.sqrt(st.K[0, 0])), float(st.Theta[0, 0])
        r = end_of_training(st, np.array([y]), algorithm_schedule(
            st.Theta[:1, :1], "gd", learning_rate=0.5 / Th, steps=40))
        one = 1.0 - st.K[0, 1] / np.sqrt(st.K[0, 0] * st.K[1, 1])
        return np.array([float(r.ntk_change[0, 0]) / Th, Th, y, float(r.mean_infinite[0]), one])

    mlp = critical_mlp(act, 1000, depth, n0=2, n_out=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = finite_width_learning_size(mlp)
    assert r["prediction_correction"] is None                    # withheld: the branch tested
    got = np.array([r["ntk_change_coefficient"], r["Theta"], r["y"], r["test_mean_infinite"],
                    r["one_minus_rho"]])
    want = general(depth)
    assert np.all(np.abs(got - want) <= 1e-11 * np.abs(want)), (got - want) / want
    off = general(depth - 1)                                    # one layer off: rejected
    assert np.all(np.abs(got - off)[:2] > 1e-3 * np.abs(want)[:2])


def test_two_input_kernel_fold_in_chunks_under_a_bar_is_the_fold(monkeypatch):
    # the reference problem's general two-input kernel (activations without closed-form
    # pairs, e.g. swish: ~20 s at depth 1e4) runs in chunks of layers under a progress bar;
    # each chunk continues from the last on the same steps: bitwise the one-call fold
    from pdlt.learning import finite_training as ft
    from pdlt.theory.kernel import first_layer_kernel, kernel_fold
    monkeypatch.setattr(ft, "_KERNEL_CHUNK", 7)
    l = np.arange(30)
    mlp = pdlt.MLP(n0=2, widths=[int(w) for w in 60 + 30 * np.cos(0.7 * l[:-1])],
                   activation="swish", C_b=0.05, C_W=1.98 * (1.0 + 0.01 * np.sin(l)),
                   lambda_b=0.3, lambda_W=1.0 + 0.5 * np.cos(0.3 * l))
    K0, T0 = first_layer_kernel(mlp, np.array([[1.0, 0.2], [0.3, 0.9]]))
    got = ft._kernel_fold_shown(mlp, K0, T0)
    want = kernel_fold(mlp, K0, T0, susceptibilities=False)[:2]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert not np.array_equal(got[0][8:], want[0][7:-1])     # a chunk one layer off differs


def test_shared_tables_reuse_the_same_flow_and_table_only():
    # within shared_tables (pdlt diagnose) a one-input kernel flow and its one-variable table
    # are computed once for every fold over them; another network is not served from them
    mlp = _uneven("tanh", 50)
    alone = stats_mod.statistics(mlp, K1=1.0, get=("V", "A"))
    other = mlp.with_(C_W=1.1 * np.asarray(mlp.C_W))
    with stats_mod.shared_tables():
        first = stats_mod.statistics(mlp, K1=1.0, get=("chi_perp", "V"))
        again = stats_mod.statistics(mlp, K1=1.0, get=("V", "A"))
        shifted = stats_mod.statistics(other, K1=1.0, get=("V", "A"))
        assert len(stats_mod._SHARED) == 4               # two flows, two tables
    assert stats_mod._SHARED is None
    for k in ("K", "Theta", "V", "A"):
        assert np.array_equal(again[k], alone[k])
    assert np.array_equal(first.V, alone.V)
    assert _rel(shifted.V, alone.V) > 1e-3
