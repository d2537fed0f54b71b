"""Bad input, faults and validity (issue 16): each case reproduces a report and
checks the clear error, the strict JSON or the warning that replaced it."""

import json
import math
import signal
import warnings

import numpy as np
import pytest

import pdlt
from conftest import needs_torch
from pdlt._validation import (ValidityWarning, as_inputs, check_checkpoint_path,
                              check_correction, describe_interrupt, json_document,
                              learning_rate_margin, Interrupted)


@pytest.fixture
def csvs(regression_csvs, tmp_path):
    return (tmp_path, *regression_csvs(7, 3)[:2])


MLP_ARGS = ["--activation", "tanh", "--depth", "3", "--C-b", "0.1", "--C-W", "1.2"]


# ---------------------------------------------------------------------------
# --json: strict JSON, non-finite values named
# ---------------------------------------------------------------------------

def test_json_document_is_strict_and_names_nonfinite_values():
    doc = json_document({"a": [1.0, math.nan, math.inf], "b": {"c": -np.inf},
                         "d": None, "e": np.float32(2.5), "f": np.arange(2)})
    text = json.dumps(doc, allow_nan=False)  # raises on NaN/Infinity tokens
    back = json.loads(text)
    assert back["a"] == [1.0, None, None] and back["b"]["c"] is None and back["d"] is None
    # overflowed / undefined values are named; "not computed" (d) is not
    assert back["nonfinite"] == {"a/1": "nan", "a/2": "inf", "b/c": "-inf"}
    assert back["e"] == 2.5 and back["f"] == [0, 1] and back["warnings"] == []


@needs_torch
def test_measure_json_names_nan_statistics(run_cli):
    # was: NaN written as null (indistinguishable from "not computed"), inf as "inf"
    code, out, err = run_cli("measure", "--depth", "2", "--width", "4",
                             "--networks", "4", "--stats", "V_pair", "--json")
    assert code == 0
    assert '"inf"' not in out and "NaN" not in out and "Infinity" not in out
    d = json.loads(out)
    # V_pair needs two neurons: NaN at the output layer of width 1
    assert d["layers"][1]["V_pair"]["mean"] is None
    assert d["nonfinite"]["layers/1/V_pair/mean"] == "nan"
    assert d["layers"][0]["V_pair"]["mean"] is not None


def test_measure_deep_chaotic_stderr_is_finite(run_cli):
    # was: standard errors "inf" (overflow in the squares) although the means were finite
    code, out, err = run_cli("measure", "--activation", "relu", "--depth", "60",
                             "--width", "8", "--networks", "20", "--C-W", "3000",
                             "--stats", "K", "--json")
    assert code == 0, err
    d = json.loads(out)
    last = d["layers"][-1]["K"]
    assert last["mean"] > 1e160 and 0 < last["stderr"] < last["mean"] * 10
    assert d["nonfinite"] == {}


def test_jackknife_sum_of_squares_does_not_overflow():
    from pdlt.experiment.estimators import GroupSums, jackknife
    rng = np.random.default_rng(1)
    vals = rng.standard_normal(200)
    g = GroupSums(200)
    g.add("x", vals * 1e300, 0)
    mean, se = jackknife(lambda m: m, g, ["x"])
    g1 = GroupSums(200)
    g1.add("x", vals, 0)
    mean1, se1 = jackknife(lambda m: m, g1, ["x"])
    assert np.isfinite(se) and se == pytest.approx(se1 * 1e300, rel=1e-12)


# ---------------------------------------------------------------------------
# pdlt fit
# ---------------------------------------------------------------------------

def test_fit_nan_test_target_is_an_error(csvs, run_cli):
    tmp, tr, te = csvs
    data = np.loadtxt(te, delimiter=",")
    data[1, -1] = np.nan
    np.savetxt(te, data, delimiter=",")
    code, out, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--train", tr,
                             "--test", te)
    assert code == 2 and out == ""
    assert "--test" in err and "non-finite" in err and "row 2, target column" in err


def test_fit_negative_learning_rate_without_steps_is_an_error(csvs, run_cli):
    _, tr, te = csvs
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "ntk", "--learning-rate",
                           "-1", "--train", tr, "--test", te)
    assert code == 2 and "--learning-rate must be a finite number > 0; got -1.0" in err
    from pdlt.learning import NTKRegressor
    X = np.linspace(-1, 1, 5)[:, None]
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        NTKRegressor(learning_rate=-1.0).fit(X, X[:, 0])


def test_fit_width_one_warns_that_the_expansion_is_invalid(csvs, run_cli):
    # was: a "correction" 10^4 times the prediction, silently
    _, tr, te = csvs
    code, out, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--width", "1",
                             "--noise", "1e-4", "--train", tr, "--test", te, "--json")
    assert code == 0
    d = json.loads(out)
    msgs = [w["message"] for w in d["warnings"]]
    assert any("order-1/n correction is" in m and "NNGP posterior" in m for m in msgs)
    assert "pdlt fit: warning:" in err
    # a wide network stays quiet
    code, out, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--width", "400",
                             "--noise", "1e-4", "--train", tr, "--test", te, "--json")
    assert code == 0 and json.loads(out)["warnings"] == [] and err == ""


def test_ntk_learning_rate_near_finite_width_bound_warns():
    from pdlt.learning import NTKRegressor
    # few inputs: the finite-width statistics cost ~N^5
    X = np.array([[-1.0], [0.2], [1.1]])
    y = np.sin(X[:, 0])
    Xb = np.array([[0.5]])
    mlp = pdlt.MLP(1, width=100, depth=3, activation="tanh", C_b=0.1, C_W=1.2)
    bound = NTKRegressor(mlp, steps=5).fit(X, y).stability_bound_
    # 0.97 of the infinite-width bound: stable at n = infinity, not at n = 8
    reg = NTKRegressor(mlp, learning_rate=0.97 * bound, steps=5, width=8).fit(X, y)
    with pytest.warns(ValidityWarning, match="stability bound of the finite-width NTK at n=8"):
        reg.finite_width_prediction(Xb)
    assert reg.finite_width_stability_bound_ < 0.97 * bound
    # half the bound is far from it
    reg = NTKRegressor(mlp, learning_rate=0.5 * bound, steps=5, width=2000).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidityWarning)
        reg.finite_width_prediction(Xb)


def test_learning_rate_margin_is_first_order_perturbation():
    # Theta = diag(2, 1): top eigenvector e0; H1 shifts it by H1[0,0]/n; the
    # variance is cov_H[0,0,0,0]/n
    Th = np.diag([2.0, 1.0])
    H1 = np.array([[4.0, 0.0], [0.0, 0.0]])
    cov = np.zeros((2, 2, 2, 2))
    cov[0, 0, 0, 0] = 9.0
    lam, hi = learning_rate_margin(Th, cov, H1, width=100)
    assert lam == pytest.approx(2.0) and hi == pytest.approx(2.0 + 0.04 + 3 * 0.3)


def test_check_correction_threshold():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidityWarning)
        assert check_correction([1.0, -1.0], [0.2, 0.2], "x") == pytest.approx(0.2)
    with pytest.warns(ValidityWarning, match="0.4 x the leading term"):
        check_correction([1.0, -1.0], [0.4, 0.4], "x")


# ---------------------------------------------------------------------------
# inputs: 1-D arrays, directories, CSV, devices
# ---------------------------------------------------------------------------

def test_one_dimensional_inputs_mean_one_input_in_api_and_cli(tmp_path, run_cli):
    x = np.array([0.3, -1.2, 0.7])
    assert as_inputs(x).shape == (1, 3)
    path = tmp_path / "x.npy"
    np.save(path, x)
    code, out, err = run_cli("kernel", "--activation", "tanh", "--depth", "2",
                             "--inputs", str(path), "--json")
    assert code == 0 and "read as ONE input of 3 features" in err
    K_cli = np.array(json.loads(out)["layers"][-1]["K"])
    api = pdlt.flow(pdlt.MLP(3, width=10, depth=2, activation="tanh"), x)
    assert K_cli.shape == (1, 1)
    np.testing.assert_allclose(K_cli, api.K[-1], rtol=1e-12)
    # the scikit-learn regressors keep scikit-learn's rule: X is 2-D
    from pdlt.learning import NNGPRegressor
    with pytest.raises(ValueError, match="reshape"):
        NNGPRegressor().fit(x, x)


@pytest.mark.parametrize("make, msg", [
    (lambda p: p.mkdir() or p, "is a directory"),
    (lambda p: (p.write_text("1,2\n3,4\n"), p)[1], "not a .npy file.*looks like text or CSV"),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)) or p, "not a plain numeric"),
    (lambda p: np.save(p, np.array([[1.0, np.nan]])) or p, "NaN or inf"),
    (lambda p: np.save(p, np.array([[1 + 1j]])) or p, "complex"),
])
def test_inputs_errors_are_one_line(tmp_path, run_cli, make, msg):
    path = make(tmp_path / "in.npy")
    code, out, err = run_cli("kernel", "--depth", "2", "--inputs", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("pdlt kernel: error: --inputs") or "--inputs" in err
    import re
    assert re.search(msg, err), err


def test_inputs_csv_says_how_to_convert(tmp_path, run_cli):
    p = tmp_path / "x.csv"
    p.write_text("0.1,0.2\n0.3,0.4\n")
    code, _, err = run_cli("kernel", "--depth", "2", "--inputs", str(p))
    assert code == 2 and "numpy.save('x.npy', numpy.loadtxt(path, delimiter=','))" in err


@needs_torch
def test_unknown_device_is_an_error(run_cli):
    code, out, err = run_cli("measure", "--depth", "2", "--width", "4",
                             "--networks", "4", "--device", "tpu9")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--device='tpu9' is not a torch device" in err and "'cpu'" in err


# ---------------------------------------------------------------------------
# float64 range of pdlt flow
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, msg", [
    (["--K1", "1e200"], "outside the range pdlt computes in float64"),
    (["--K1", "1e-200"], "outside the range pdlt computes in float64"),
    (["--C-W", "1e-300"], "C_W=1e-300: the kernel left the float64 range"),
])
def test_flow_extreme_scales_are_clear_errors(run_cli, args, msg):
    import re
    code, out, err = run_cli("flow", "--depth", "3", "--width", "10", *args)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Numerical result out of range" not in err and "float division by zero" not in err \
        or "left the float64 range" in err
    assert re.search(msg, err), err


def test_flow_at_the_edges_of_the_range_is_finite(run_cli):
    for K1 in ("1e-100", "1e100"):
        code, out, err = run_cli("flow", "--activation", "relu", "--depth", "3",
                                 "--width", "1000", "--C-W", "2", "--K1", K1, "--json")
        assert code == 0, err
        d = json.loads(out)
        assert d["nonfinite"] == {}
        # relu is scale invariant: K^(l) = K1 at criticality
        assert d["layers"][-1]["K"] == pytest.approx(float(K1), rel=1e-9)


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------

def test_complex_activation_is_refused():
    with pytest.raises(pdlt.ActivationError, match="returned complex values"):
        pdlt.activation(lambda z: np.tanh(z) + 0j)


def test_scalar_activation_is_refused():
    with pytest.raises(pdlt.ActivationError, match="returned a single number"):
        pdlt.activation(lambda z: 1.0)
    with pytest.raises(pdlt.ActivationError, match="returned a single number"):
        pdlt.activation(lambda z: float(np.tanh(z).sum()))
    # a constant derivative is fine (broadcast)
    a = pdlt.activation.__globals__["Activation"].from_callable(
        lambda z: 2.0 * z, d1=lambda z: 2.0, d2=lambda z: 0.0)
    assert np.allclose(a.d1(np.ones(3)), 2.0)


# ---------------------------------------------------------------------------
# checkpoints and interrupts
# ---------------------------------------------------------------------------

@needs_torch
def test_checkpoint_path_checked_before_running(tmp_path, run_cli):
    bad = tmp_path / "no" / "such" / "dir" / "ck.npz"
    code, out, err = run_cli("measure", "--depth", "2", "--width", "4",
                             "--networks", "4", "--checkpoint", str(bad))
    assert code == 2 and out == "" and "does not exist" in err and "no work is lost" in err
    with pytest.raises(ValueError, match="is a directory"):
        check_checkpoint_path(tmp_path)
    from pdlt.experiment import Ensemble
    with pytest.raises(ValueError, match="does not exist"):
        Ensemble(pdlt.MLP(1, width=4, depth=2), networks=4).measure(K1=1.0, checkpoint=bad)


def test_interrupt_messages_and_exit_codes():
    msg, code = describe_interrupt(KeyboardInterrupt())
    assert code == 130 and "Ctrl-C" in msg and "\n" not in msg
    msg, code = describe_interrupt(Interrupted(signal.SIGTERM, checkpoint="ck.npz", done=3,
                                               total=10))
    assert code == 143 and "'ck.npz' holds 3 of 10 shards" in msg and "resume" in msg


@needs_torch
def test_ctrl_c_in_measure_is_one_line_exit_130(tmp_path, run_cli, monkeypatch):
    from pdlt.experiment import distributed as D
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", 2)
    ck = tmp_path / "ck.npz"
    code, out, err = run_cli("measure", "--depth", "2", "--width", "4",
                             "--networks", "40", "--shards", "5", "--checkpoint", str(ck))
    assert code == 130 and out == ""
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"checkpoint {str(ck)!r} holds 2 of 5 shards" in err
    assert ck.exists()


# ---------------------------------------------------------------------------
# regressors
# ---------------------------------------------------------------------------

def test_nngp_regressor_checks_width_in_fit():
    from pdlt.learning import NNGPRegressor
    X = np.linspace(-1, 1, 5)[:, None]
    reg = NNGPRegressor(width=0)  # __init__ only stores
    with pytest.raises(ValueError, match="width must be a positive integer; got 0"):
        reg.fit(X, X[:, 0])


def test_nngp_log_evidence_for_huge_targets():
    from pdlt.learning import NNGPRegressor
    X = np.linspace(-1, 1, 5)[:, None]
    y = np.sin(3 * X[:, 0])
    # 1e150: the quadratic form 1e300 fits float64 although y * alpha did not overflow
    # only by luck before; the scaled form gives the exact shift
    small = NNGPRegressor(noise=1e-3).fit(X, y)
    big = NNGPRegressor(noise=1e-3).fit(X, y * 1e150)
    quad = -2 * (small.log_evidence_ - _log_evidence_constant(small, 5))
    assert big.log_evidence_ == pytest.approx(
        -0.5 * quad * 1e300 + _log_evidence_constant(small, 5), rel=1e-12)
    # 1e160: -y^T K^-1 y / 2 ~ -1e320 is beyond float64: a clear error, not NaN
    with pytest.raises(ValueError, match="log evidence overflows float64.*standardize"):
        NNGPRegressor(noise=1e-3).fit(X, y * 1e160)


def _log_evidence_constant(reg, N):
    # -1/2 log det(K + noise) - N/2 log 2 pi, from the stored Cholesky factor
    return float(-np.sum(np.log(np.diag(reg._cf[0]))) - 0.5 * N * math.log(2 * math.pi))


def test_check_estimator_passes_with_default_arguments():
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_estimator

    from pdlt.learning import NNGPRegressor, NTKRegressor
    for est in (NNGPRegressor(), NTKRegressor()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SkipTestWarning for pandas / array API
            results = check_estimator(est, on_fail=None)
        failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
                  if r["status"] == "failed"]
        assert failed == [], failed
        assert len(results) >= 40


def test_kernel_inputs_outside_float64_range(tmp_path, run_cli):
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1.0, 2.0], [1e200, 0.0]]))
    code, out, err = run_cli("kernel", "--depth", "2", "--inputs", str(path))
    assert code == 2 and "input row 1 has first-layer kernel" in err and "rescale" in err


@needs_torch
def test_ctrl_c_without_checkpoint_is_one_line(run_cli, monkeypatch):
    from pdlt.experiment import Ensemble

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(Ensemble, "_accumulate", interrupted)
    code, out, err = run_cli("measure", "--depth", "2", "--width", "4",
                             "--networks", "4")
    assert code == 130 and out == "" and err.count("\n") == 1
    assert "interrupted by Ctrl-C (SIGINT); nothing saved (pass --checkpoint FILE" in err


def test_other_warnings_still_reach_stderr(run_cli, monkeypatch):
    import pdlt._commands.flow as F

    real = F.check_flow_validity

    def noisy(*a, **k):
        warnings.warn("a plain runtime warning", RuntimeWarning)
        return real(*a, **k)
    monkeypatch.setattr(F, "check_flow_validity", noisy)
    # handed on to warnings.showwarning (stderr outside pytest), once
    with pytest.warns(RuntimeWarning, match="a plain runtime warning") as rec:
        code, out, err = run_cli("flow", "--activation", "tanh", "--depth", "2",
                                 "--width", "1000")
    assert code == 0 and len([w for w in rec if "plain runtime" in str(w.message)]) == 1
