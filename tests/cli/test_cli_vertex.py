"""CLI: V and G1 in `pdlt flow` / `pdlt kernel`, vertex_slope in criticality/diagnose."""


import numpy as np
import pytest


def test_flow_reports_relu_vertex_exactly(run_cli):
    d = run_cli.json("flow", "--activation", "relu", "--depth", "4", "--width", "64",
                     "--C-W", "2", "--K1", "2.0", "--json")
    V = [s["V"] for s in d["layers"]]
    # ReLU at criticality, equal widths: V^(l) = 5 (l - 1) K^2
    np.testing.assert_allclose(V, [5 * (l - 1) * 4.0 for l in range(1, 5)], rtol=1e-12, atol=1e-12)
    assert all(abs(s["G1"]) < 1e-12 for s in d["layers"])


def test_kernel_adds_V_and_G1_only_with_width(tmp_path, run_cli):
    x = np.random.default_rng(1).standard_normal((2, 3))
    np.save(tmp_path / "x.npy", x)
    base = ["kernel", "--activation", "tanh", "--depth", "3", "--inputs", str(tmp_path / "x.npy"),
            "--json"]
    plain = run_cli.json(*base)
    assert "V" not in plain["layers"][0]
    d = run_cli.json(*base, "--width", "32")
    V = np.array(d["layers"][2]["V"])
    assert V.shape == (2, 2, 2, 2) and np.array(d["layers"][2]["G1"]).shape == (2, 2)
    for name in "ABDFPQRSTU":
        assert np.array(d["layers"][2][name]).shape == (2, 2, 2, 2)
    # elu: R needs a sigma'' without jumps; the other nine are still given
    e = run_cli.json(*[a if a != "tanh" else "elu" for a in base], "--width", "32")
    assert "R" not in e["layers"][2] and np.array(e["layers"][2]["S"]).shape == (2, 2, 2, 2)
    np.testing.assert_allclose(V, V.transpose(1, 0, 2, 3), rtol=1e-12)
    np.testing.assert_allclose(V, V.transpose(2, 3, 0, 1), rtol=1e-12)


@pytest.mark.parametrize("act,slope", [("relu", 5.0), ("linear", 2.0), ("tanh", 2.0 / 3.0)])
def test_criticality_json_vertex_slope(run_cli, act, slope):
    d = run_cli.json("criticality", act, "--json")
    assert d["vertex_slope"] == pytest.approx(slope, rel=1e-12)


def test_diagnose_reports_finite_width_size(run_cli):
    d = run_cli.json("diagnose", "--activation", "relu", "--depth", "9", "--width", "64",
                     "--json")
    # V/(n K^2) at layer L = 5 (L - 1)/n for ReLU
    assert d["V_over_nK2_L"] == pytest.approx(5 * 8 / 64, rel=1e-12)
    assert d["vertex_slope"] == pytest.approx(5.0)


def test_criticality_reports_ntk_slopes(run_cli):
    d = run_cli.json("criticality", "relu", "--json")
    # ReLU (lambda_b = 1): B/(n Theta^2) and F/(n K Theta) slopes from the recursions
    assert set(d["ntk_slopes"]) == set("ABDFPQRSTU")
    g = run_cli.json("criticality", "gelu", "--json")
    # half-stable class, at K^(1) = K* (pdlt.theory.ntk_criticality.ntk_slopes)
    assert set(g["ntk_slopes"]) == set("ABDFPQRSTU") and "ntk_slopes_reason" not in g
    assert g["ntk_slopes"]["B"] == pytest.approx(0.686487735, rel=1e-8)


def test_criticality_reports_depth_powers_of_ntk_slopes(run_cli):
    g = run_cli.json("criticality", "gelu", "--json")
    # half-stable: D grows like L^2/n and A like L^3/n at K* (the chi_perp'(K*) feed)
    assert g["ntk_slope_depth_powers"]["A"] == 3 and g["ntk_slope_depth_powers"]["D"] == 2
    r = run_cli.json("criticality", "relu", "--json")
    assert set(r["ntk_slope_depth_powers"].values()) == {1}
