"""End-to-end tests of the `pdlt kernel` and `pdlt flow` commands."""

import json
import subprocess
import sys

import numpy as np
import pytest


def test_flow_json_shape_and_values(run_cli):
    code, out, err = run_cli("flow", "--activation", "relu", "--depth", "4",
                             "--width", "52", "--C-W", "2", "--K1", "1.5", "--json")
    # L/n = 0.077 is above 2 r* = 0.07 of relu: one validity warning, also in the JSON
    # (V/n = 15 K^2/52 stays below 0.3 K^2: at n = 50 it sits exactly on the threshold)
    assert code == 0 and err.startswith("pdlt flow: warning: L/n = 4/52") and err.count("\n") == 1
    d = json.loads(out)
    assert d["warnings"][0]["category"] == "ValidityWarning" and d["nonfinite"] == {}
    assert [s["layer"] for s in d["layers"]] == [1, 2, 3, 4]
    for s in d["layers"]:
        assert set(s) >= {"layer", "K", "Theta", "chi_parallel", "chi_perp"}
        assert s["K"] == pytest.approx(1.5)
    # Theta^(1) = lambda_b + lambda_W G0 with G0 = (K1 - C_b)/C_W
    assert d["layers"][0]["Theta"] == pytest.approx(1 + 0.75)


def test_flow_human_table(run_cli):
    code, out, err = run_cli("flow", "--activation", "tanh", "--depth", "3")
    assert code == 0 and err == ""
    assert "chi_parallel" in out and "layer" in out and len(out.splitlines()) == 6


def test_kernel_json(tmp_path, run_cli):
    x = np.random.default_rng(0).standard_normal((3, 4))
    path = tmp_path / "x.npy"
    np.save(path, x)
    code, out, err = run_cli("kernel", "--activation", "tanh", "--depth", "3",
                             "--C-b", "0", "--C-W", "1", "--inputs", str(path), "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert len(d["layers"]) == 3
    K1 = np.array(d["layers"][0]["K"])
    np.testing.assert_allclose(K1, x @ x.T / 4, rtol=1e-14)
    assert np.array(d["layers"][2]["Theta"]).shape == (3, 3)


def test_kernel_error_estimate(tmp_path, run_cli):
    """--error-estimate: per layer, every order-1/n entry's rule difference (pdlt.statistics
    error=True); equal to the library's, and absent without the flag."""
    x = np.array([[1.0, 0.3], [0.2, -0.9]])
    path = tmp_path / "x.npy"
    np.save(path, x)
    argv = ("kernel", "--activation", "tanh", "--depth", "3", "--width", "16",
            "--inputs", str(path), "--json")
    d = run_cli.json(*argv, "--error-estimate")
    e = d["layers"][2]["error"]
    assert set(e) >= {"V", "G1", "A", "B", "P", "T", "H1"}
    import pdlt
    want = pdlt.statistics(pdlt.MLP(n0=2, width=16, depth=3, activation="tanh"), x,
                           get="all", error=True).error
    np.testing.assert_allclose(np.array(e["A"]), want["A"][2], rtol=1e-12, atol=1e-300)
    assert "error" not in run_cli.json(*argv)["layers"][2]


@pytest.mark.parametrize("argv,match", [
    (["kernel", "--depth", "2", "--inputs", "/no/such.npy"], "no such file"),
    (["flow", "--depth", "0"], "depth must be a positive integer"),
    (["flow", "--depth", "3", "--activation", "nope"], "unknown activation"),
    (["flow", "--depth", "3", "--C-W", "-1"], "C_W must be > 0"),
])
def test_cli_errors_are_clear(run_cli, argv, match):
    code, out, err = run_cli(*argv)
    assert code == 2 and match in err and "Traceback" not in err


@pytest.mark.parametrize("argvs", [[["--help"]],
                                   [["criticality", "--help"], ["criticality", "tanh"]]])
def test_help_does_not_import_torch_or_matplotlib(argvs):
    code = ("import sys; from pdlt.cli import main\n"
            + "".join(f"try:\n    main({a!r})\nexcept SystemExit:\n    pass\n" for a in argvs)
            + "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('torch', 'matplotlib'))]")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
