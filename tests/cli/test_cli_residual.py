"""CLI: optimal_aspect_ratio, --residual and --output-width in `pdlt criticality` / `pdlt diagnose`."""

import math

import pytest

from pdlt.theory.residual import residual_vertex_slope


def test_criticality_reports_optimal_aspect_ratio(run_cli):
    d = run_cli.json("criticality", "relu", "--json")
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (23 * 5), rel=1e-12)
    d = run_cli.json("criticality", "tanh", "--output-width", "10", "--json")
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (50 * 2 / 3), rel=1e-12)
    assert d["output_width"] == 10


def test_criticality_residual(run_cli):
    g = 0.6
    d = run_cli.json("criticality", "relu", "--residual", str(g), "--json")
    assert d["C_W"] == pytest.approx(2 * (1 - g * g), rel=1e-14) and d["C_b"] == 0
    nu = residual_vertex_slope("relu", g)        # exact (two-depth terms)
    assert nu > (1 - g * g) * (5 - g * g + 16 / math.pi * g * (1 + g))   # three-point form
    assert d["vertex_slope"] == pytest.approx(nu, rel=1e-12)
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (23 * nu), rel=1e-12)
    assert d["residual"] == {"gamma": g, "xi": 1.0}
    assert d["plain"]["C_W"] == 2.0


def test_criticality_residual_text(run_cli):
    code, out, err = run_cli("criticality", "tanh", "--residual", "0.9")
    assert code == 0 and "residual gamma = 0.9" in out and "optimal L/n" in out and err == ""


def test_criticality_residual_out_of_range(run_cli):
    code, _, err = run_cli("criticality", "relu", "--residual", "1.2")
    assert code == 2 and "|gamma| < 1" in err


def test_diagnose_residual(run_cli):
    d = run_cli.json("diagnose", "--activation", "relu", "--depth", "20", "--width", "64",
                     "--residual", "0.9", "--output-width", "2", "--json")
    nu = residual_vertex_slope("relu", 0.9)      # 2.5359 (three-point form: 2.4508)
    assert nu == pytest.approx(2.53585455, rel=1e-8)
    assert d["vertex_slope"] == pytest.approx(nu, rel=1e-12)
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (26 * nu), rel=1e-12)
    assert d["C_W"] == pytest.approx(2 * 0.19, rel=1e-14) and d["at_criticality"]
    assert d["residual"] == 0.9 and d["output_width"] == 2
    assert any("x r*" in n for n in d["notes"])


def test_diagnose_says_where_l_over_n_is(run_cli):
    d = run_cli.json("diagnose", "--activation", "relu", "--depth", "30", "--width", "64",
                     "--json")
    assert any("above the information-theoretic optimum" in n for n in d["notes"])
    d = run_cli.json("diagnose", "--activation", "tanh", "--depth", "4", "--width", "256",
                     "--json")
    assert any("well below the information-theoretic optimum" in n for n in d["notes"])
    code, out, _ = run_cli("diagnose", "--activation", "relu", "--depth", "3", "--width", "8")
    assert code == 0 and "optimal L/n (r*)" in out


def test_diagnose_residual_prints_the_residual_ntk_slopes(run_cli):
    """--residual: the ten NTK slopes are the residual ones (pdlt.theory.residual.
    residual_slopes at its default depth), not the plain ones, and the representation-learning
    ratio (P + 2Q)/(A + 2B) is printed; tanh (K*=0 class) gets its fitted slopes and their
    stated error."""
    from pdlt.theory.ntk_criticality import ntk_slopes
    from pdlt.theory.residual import residual_slopes
    d = run_cli.json("diagnose", "--activation", "relu", "--depth", "20", "--width", "64",
                     "--residual", "0.5", "--json")
    rs = residual_slopes("relu", 0.5)
    assert set(d["ntk_slopes"]) == set("ABDFPQRSTU")
    for k in "ABDFPQRSTU":
        assert d["ntk_slopes"][k] == pytest.approx(rs[k], rel=1e-12, abs=1e-15)
    plain = ntk_slopes("relu")
    assert abs(d["ntk_slopes"]["Q"] / plain["Q"] - 1) > 0.1     # 0.1260 vs 1/9
    assert d["learning_to_fluctuation"] == pytest.approx(rs["learning_to_fluctuation"],
                                                         rel=1e-12)
    code, out, err = run_cli("diagnose", "--activation", "relu", "--depth", "20", "--width",
                             "64", "--residual", "0.5")
    assert code == 0 and err == ""
    assert f"Q {rs['Q']:.3g}" in out and "(P + 2Q)/(A + 2B) = 0.128" in out
    assert "not derived" not in out
    d = run_cli.json("diagnose", "--activation", "tanh", "--depth", "20", "--width", "64",
                     "--residual", "0.5", "--json")
    rt = residual_slopes("tanh", 0.5)
    assert set(d["ntk_slopes"]) == set("ABDFPQRSTU")
    for k in "ABDFPQRSTU":
        assert d["ntk_slopes"][k] == pytest.approx(rt[k], rel=1e-12, abs=1e-15)
        assert d["ntk_slope_errors"][k] == pytest.approx(rt["slope_error"][k], rel=1e-12,
                                                        abs=1e-15)
    assert any("K*=0 NTK slopes: fitted" in n for n in d["notes"])
