"""End-to-end tests of `pdlt fit`."""

import json

import numpy as np
import pytest

import pdlt
from pdlt.learning import ntk_prediction, nngp_posterior


@pytest.fixture
def csvs(regression_csvs):
    return regression_csvs(7, 3, header=True)


MLP_ARGS = ["--activation", "tanh", "--depth", "4", "--C-b", "0.1", "--C-W", "1.2"]


def _mlp():
    return pdlt.MLP(2, width=100, depth=4, activation="tanh", C_b=0.1, C_W=1.2)


def test_nngp_json_matches_api(csvs, run_cli):
    tr, te, Xa, ya, Xb, _ = csvs
    code, out, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--noise", "0.01",
                             "--train", tr, "--test", te, "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    post = nngp_posterior(_mlp(), Xa, ya, Xb, noise=0.01)
    np.testing.assert_allclose(d["mean"], post.mean[:, 0], rtol=1e-10)
    np.testing.assert_allclose(d["std"], post.std, rtol=1e-8)
    assert d["log_evidence"] == pytest.approx(post.log_evidence, rel=1e-10)
    assert list(d) == sorted(d)


def test_ntk_json_steps_and_convergence(csvs, run_cli):
    tr, te, Xa, ya, Xb, _ = csvs
    code, out, err = run_cli("fit", *MLP_ARGS, "--lambda-W", "2", "--method", "ntk",
                             "--steps", "30", "--learning-rate", "0.05", "--train", tr,
                             "--test", te, "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    ref = ntk_prediction(_mlp().with_(lambda_W=2.0), Xa, ya, Xb, learning_rate=0.05, steps=30)
    np.testing.assert_allclose(d["mean"], ref.mean[:, 0], rtol=1e-10)
    np.testing.assert_allclose(d["std"], ref.std, rtol=1e-8)
    assert d["log_evidence"] is None and d["steps"] == 30
    code, out, _ = run_cli("fit", *MLP_ARGS, "--method", "ntk", "--train", tr,
                           "--test", te, "--json")
    ref = ntk_prediction(_mlp(), Xa, ya, Xb)
    np.testing.assert_allclose(json.loads(out)["mean"], ref.mean[:, 0], rtol=1e-9)


def test_human_output(csvs, run_cli):
    tr, te, *_ = csvs
    code, out, err = run_cli("fit", "--activation", "relu", "--depth", "3", "--critical",
                             "--method", "nngp", "--noise", "1e-3", "--train", tr, "--test", te)
    assert code == 0 and err == ""
    assert "log evidence" in out and "mean" in out and len(out.splitlines()) == 8


def test_errors(csvs, tmp_path, run_cli):
    tr, te, Xa, ya, *_ = csvs
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "ntk", "--steps", "3",
                           "--learning-rate", "100", "--train", tr, "--test", te)
    assert code == 2 and "2 / lambda_max(Theta_train)" in err
    dup = tmp_path / "dup.csv"
    np.savetxt(dup, np.c_[np.r_[Xa, Xa[:1]], np.r_[ya, ya[:1]]], delimiter=",")
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--noise", "0",
                           "--train", str(dup), "--test", te)
    assert code == 2 and "add noise > 0" in err
    # the default --noise auto jitters just enough for the duplicate
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--train", str(dup),
                           "--test", te)
    assert code == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,nan,6\n")
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--train", str(bad),
                           "--test", te)
    assert code == 2 and "NaN" in err
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--train", tr,
                           "--test", str(tmp_path / "missing.csv"))
    assert code == 2 and "cannot read" in err
    one = tmp_path / "one.csv"
    np.savetxt(one, np.c_[np.ones(3), np.ones(3)], delimiter=",")
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--train", tr,
                           "--test", str(one))
    assert code == 2 and "feature columns" in err


@pytest.fixture
def small_csvs(regression_csvs):
    return regression_csvs(3, 2, seed=1)[:5]


def test_ntk_width_json_has_the_infinite_width_mean_beside(small_csvs, run_cli):
    from pdlt.learning.finite_training import finite_width_training
    tr, te, Xa, ya, Xb = small_csvs
    # depth 3 (not MLP_ARGS' 4): the N-input NTK tensors are the cost of this test
    args = ["--activation", "tanh", "--depth", "3", "--C-b", "0.1", "--C-W", "1.2"]
    mlp = pdlt.MLP(2, width=100, depth=3, activation="tanh", C_b=0.1, C_W=1.2)
    code, out, _ = run_cli("fit", *args, "--method", "ntk", "--width", "32",
                           "--steps", "20", "--learning-rate", "0.05", "--train", tr,
                           "--test", te, "--json")
    assert code == 0
    d = json.loads(out)
    r = finite_width_training(mlp, Xa, ya, Xb, learning_rate=0.05, steps=20, width=32)
    np.testing.assert_allclose(d["mean"], r.mean, rtol=1e-10)
    np.testing.assert_allclose(d["mean_infinite_width"], r.mean_infinite, rtol=1e-10)
    np.testing.assert_allclose(d["std"], r.std, rtol=1e-10)
    infinite = ntk_prediction(mlp, Xa, ya, Xb, learning_rate=0.05, steps=20)
    np.testing.assert_allclose(d["mean_infinite_width"], np.ravel(infinite.mean), rtol=1e-10)
    assert d["width"] == 32 and not np.allclose(d["mean"], d["mean_infinite_width"])


def test_nngp_width_json_matches_the_finite_width_posterior(small_csvs, run_cli):
    from pdlt.learning import finite_width_posterior
    tr, te, Xa, ya, Xb = small_csvs
    code, out, _ = run_cli("fit", *MLP_ARGS, "--method", "nngp", "--width", "16",
                           "--noise", "0.01", "--train", tr, "--test", te, "--json")
    assert code == 0
    d = json.loads(out)
    post = finite_width_posterior(_mlp().with_(width=16), Xa, ya, Xb, noise=0.01)
    np.testing.assert_allclose(d["mean"], post.mean[:, 0], rtol=1e-10)
    np.testing.assert_allclose(d["mean_infinite_width"], post.mean_infinite_width[:, 0],
                               rtol=1e-10)
    assert d["log_evidence"] == pytest.approx(post.log_evidence)


def test_width_errors_are_clear(small_csvs, run_cli):
    tr, te, *_ = small_csvs
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "ntk", "--width", "0",
                           "--train", tr, "--test", te)
    assert code != 0 and "width" in err
    code, _, err = run_cli("fit", *MLP_ARGS, "--method", "ntk", "--width", "32",
                           "--noise", "0.1", "--train", tr, "--test", te)
    assert code != 0 and "noise" in err


def test_several_targets_with_width_train_the_outputs_together(tmp_path, run_cli):
    # --targets 2: the last two CSV columns are the targets of two outputs; with --width the
    # finite-width NTK prediction of pdlt.learning.finite_training for n_out = 2
    from pdlt.learning.finite_training import finite_width_training
    rng = np.random.default_rng(5)
    Xa, Xb = rng.standard_normal((3, 2)), rng.standard_normal((2, 2))
    Ya = np.c_[np.sin(Xa.sum(1)), np.cos(Xa[:, 0])]
    Yb = np.c_[np.sin(Xb.sum(1)), np.cos(Xb[:, 0])]
    tr, te = tmp_path / "tr.csv", tmp_path / "te.csv"
    np.savetxt(tr, np.c_[Xa, Ya], delimiter=",", header="x1,x2,y1,y2", comments="")
    np.savetxt(te, np.c_[Xb, Yb], delimiter=",")
    args = ["--activation", "tanh", "--depth", "2", "--C-W", "1.0", "--method", "ntk",
            "--targets", "2", "--steps", "6", "--learning-rate", "0.2", "--train", str(tr),
            "--test", str(te)]
    code, out, err = run_cli("fit", *args, "--width", "64", "--json")
    assert code == 0 and err == "", err
    d = json.loads(out)
    mlp = pdlt.MLP(2, width=64, depth=2, n_out=2, activation="tanh", C_b=0.0, C_W=1.0)
    ref = finite_width_training(mlp, Xa, Ya, Xb, learning_rate=0.2, steps=6)
    np.testing.assert_allclose(d["mean"], ref.mean, rtol=1e-10)
    np.testing.assert_allclose(d["std"], ref.std, rtol=1e-10)
    np.testing.assert_allclose(d["mean_correction"], ref.mean_correction, rtol=1e-10)
    assert np.shape(d["std_infinite_width"]) == (2, 2)
    assert d["mse"] == pytest.approx(np.mean((ref.mean - Yb) ** 2), rel=1e-10)
    # the human table has one row per (input, output)
    code, out, _ = run_cli("fit", *args, "--width", "64")
    assert code == 0 and "output" in out and len(out.splitlines()) == 2 + 2 + 4 + 1 + 1
    # infinite width: both outputs, one std per input repeated for each output
    code, out, _ = run_cli("fit", *args, "--json")
    d = json.loads(out)
    assert code == 0 and np.shape(d["mean"]) == (2, 2) and np.shape(d["std"]) == (2, 2)
    code, _, err = run_cli("fit", *args[:-4], "--targets", "4", "--train", str(tr),
                           "--test", str(te))
    assert code == 2 and "--targets 4" in err
