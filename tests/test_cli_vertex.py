"""CLI: V and G1 in `pdlt flow` / `pdlt kernel`, vertex_slope in criticality/diagnose."""

import json

import numpy as np
import pytest

from pdlt.cli import main


def _json(capsys, *argv):
    assert main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)


def test_flow_reports_relu_vertex_exactly(capsys):
    d = _json(capsys, "flow", "--activation", "relu", "--depth", "4", "--width", "64",
              "--C-W", "2", "--K1", "2.0", "--json")
    V = [s["V"] for s in d["layers"]]
    # ReLU at criticality, equal widths: V^(l) = 5 (l - 1) K^2
    np.testing.assert_allclose(V, [5 * (l - 1) * 4.0 for l in range(1, 5)], rtol=1e-12, atol=1e-12)
    assert all(abs(s["G1"]) < 1e-12 for s in d["layers"])


def test_kernel_adds_V_and_G1_only_with_width(tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((2, 3))
    np.save(tmp_path / "x.npy", x)
    base = ["kernel", "--activation", "tanh", "--depth", "3", "--inputs", str(tmp_path / "x.npy"),
            "--json"]
    plain = _json(capsys, *base)
    assert "V" not in plain["layers"][0]
    d = _json(capsys, *base, "--width", "32")
    V = np.array(d["layers"][2]["V"])
    assert V.shape == (2, 2, 2, 2) and np.array(d["layers"][2]["G1"]).shape == (2, 2)
    for name in "ABDFPQRSTU":
        assert np.array(d["layers"][2][name]).shape == (2, 2, 2, 2)
    # elu: R needs a sigma'' without jumps; the other nine are still given
    e = _json(capsys, *[a if a != "tanh" else "elu" for a in base], "--width", "32")
    assert "R" not in e["layers"][2] and np.array(e["layers"][2]["S"]).shape == (2, 2, 2, 2)
    np.testing.assert_allclose(V, V.transpose(1, 0, 2, 3), rtol=1e-12)
    np.testing.assert_allclose(V, V.transpose(2, 3, 0, 1), rtol=1e-12)


@pytest.mark.parametrize("act,slope", [("relu", 5.0), ("linear", 2.0), ("tanh", 2.0 / 3.0)])
def test_criticality_json_vertex_slope(capsys, act, slope):
    d = _json(capsys, "criticality", act, "--json")
    assert d["vertex_slope"] == pytest.approx(slope, rel=1e-12)


def test_diagnose_reports_finite_width_size(capsys):
    d = _json(capsys, "diagnose", "--activation", "relu", "--depth", "9", "--width", "64",
              "--json")
    # V/(n K^2) at layer L = 5 (L - 1)/n for ReLU
    assert d["V_over_nK2_L"] == pytest.approx(5 * 8 / 64, rel=1e-12)
    assert d["vertex_slope"] == pytest.approx(5.0)


def test_criticality_reports_ntk_slopes(capsys):
    d = _json(capsys, "criticality", "relu", "--json")
    # ReLU (lambda_b = 1): B/(n Theta^2) and F/(n K Theta) slopes from the recursions
    assert set(d["ntk_slopes"]) == set("ABDFPQRSTU")
    g = _json(capsys, "criticality", "gelu", "--json")
    # half-stable class, at K^(1) = K* (pdlt.theory.ntk_criticality.ntk_slopes)
    assert set(g["ntk_slopes"]) == set("ABDFPQRSTU") and "ntk_slopes_reason" not in g
    assert g["ntk_slopes"]["B"] == pytest.approx(0.686487735, rel=1e-8)


def test_criticality_reports_depth_powers_of_ntk_slopes(capsys):
    g = _json(capsys, "criticality", "gelu", "--json")
    # half-stable: D grows like L^2/n and A like L^3/n at K* (the chi_perp'(K*) feed)
    assert g["ntk_slope_depth_powers"]["A"] == 3 and g["ntk_slope_depth_powers"]["D"] == 2
    r = _json(capsys, "criticality", "relu", "--json")
    assert set(r["ntk_slope_depth_powers"].values()) == {1}
