"""The fast paths behind ``pdlt diagnose`` at depth, and its progress reporting.

``pdlt.statistics`` folds every order-1/n statistic of one input of a plain
MLP as scalar affine recursions whose coefficients come from the one-variable
table for all layers at once (``statistics._affine_one_input``), and evaluates
the one-variable table once per distinct kernel value
(``statistics._DistinctTable``).

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
