"""End-to-end tests of `pdlt criticality`, `pdlt diagnose` and `pdlt flow --critical`."""

import json
import textwrap

import pytest

KEYS = {"activation", "universality_class", "C_b", "C_W", "K_star", "chi_parallel", "chi_perp",
        "solutions", "reason", "asymptotics"}


@pytest.mark.parametrize("name, cls, C_W", [("relu", "scale-invariant", 2.0), ("tanh", "K*=0", 1.0),
                                            ("gelu", "half-stable", 1.983058257437547),
                                            ("softplus", "none", None)])
def test_criticality_json(run_cli, name, cls, C_W):
    rc, out, err = run_cli("criticality", name, "--json")
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert KEYS <= set(d), KEYS - set(d)  # later issues add keys (vertex_slope, ...)
    assert d["universality_class"] == cls and d["activation"] == name
    if C_W is None:
        assert d["C_W"] is None and "no critical" in d["reason"]
    else:
        assert d["C_W"] == pytest.approx(C_W, rel=1e-12)
        assert abs(d["chi_parallel"] - 1) < 1e-10 and isinstance(d["solutions"], list)


def test_criticality_table(run_cli):
    rc, out, err = run_cli("criticality", "swish")
    assert rc == 0 and err == ""
    assert "half-stable" in out and "14.3201736180" in out


def test_user_module_function(tmp_path, run_cli, monkeypatch):
    (tmp_path / "myact.py").write_text(textwrap.dedent("""
        import numpy as np
        def mytanh(z):
            return np.tanh(z)
        def bad(z):
            return np.full_like(z, np.nan)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, out, err = run_cli("criticality", "myact:mytanh", "--json")
    d = json.loads(out)
    assert rc == 0 and d["universality_class"] == "K*=0" and d["activation"] == "myact:mytanh"
    assert d["C_W"] == pytest.approx(1.0, rel=1e-9)
    rc, out, err = run_cli("criticality", "myact:bad")
    assert rc == 2 and "non-finite" in err
    rc, out, err = run_cli("criticality", "myact:nothere")
    assert rc == 2 and "no function" in err


def test_unknown_activation(run_cli):
    rc, out, err = run_cli("criticality", "nosuch")
    assert rc == 2 and "unknown activation" in err


def test_diagnose(run_cli):
    rc, out, err = run_cli("diagnose", "--activation", "gelu", "--depth", "50", "--width", "128")
    assert rc == 0 and err == ""
    assert "half-stable" in out and "0.3906" in out and "1.983058257" in out
    rc, out, err = run_cli("diagnose", "--activation", "tanh", "--depth", "20", "--width", "10",
                           "--json")
    d = json.loads(out)
    assert d["L_over_n"] == 2.0 and d["regime"] == "strongly-coupled" and d["at_criticality"]
    rc, out, err = run_cli("diagnose", "--activation", "sigmoid", "--depth", "5", "--width", "10")
    assert rc == 2 and "no critical point" in err


def test_flow_critical(run_cli):
    rc, out, err = run_cli("flow", "--activation", "relu", "--depth", "3", "--critical", "--json")
    assert rc == 0
    ks = [layer["K"] for layer in json.loads(out)["layers"]]
    assert ks == pytest.approx([1.0, 1.0, 1.0], rel=1e-14)


def test_phase_diagram_figure(tmp_path, run_cli):
    pytest.importorskip("matplotlib")
    path = tmp_path / "phase.png"
    rc, out, err = run_cli("criticality", "tanh", "--phase-diagram", str(path))
    assert rc == 0 and path.stat().st_size > 1000


def test_diagnose_reports_ntk_slopes_and_finite_width_learning(run_cli):
    d = {}
    for n in (64, 128):
        d[n] = run_cli.json("diagnose", "--activation", "tanh", "--depth", "6", "--width", str(n),
                            "--json")
    assert set(d[64]["ntk_slopes"]) == set("ABDFPQRSTU")
    f64, f128 = d[64]["finite_width_learning"], d[128]["finite_width_learning"]
    # order 1/n: the sizes halve when the width doubles; the coefficients do not change
    assert f64["representation_learning"] == pytest.approx(2 * f128["representation_learning"])
    assert f64["prediction_correction"] == pytest.approx(2 * f128["prediction_correction"])
    assert f64["ntk_change_coefficient"] != 0
    code, out, _ = run_cli("diagnose", "--activation", "tanh", "--depth", "6", "--width", "64")
    assert code == 0 and "representation learning" in out
