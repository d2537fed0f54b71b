"""CLI: optimal_aspect_ratio, --residual and --output-width in `pdlt criticality` / `pdlt diagnose`."""

import json
import math

import pytest

from pdlt.cli import main
from pdlt.theory.residual import residual_vertex_slope


def _json(capsys, *argv):
    assert main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)


def test_criticality_reports_optimal_aspect_ratio(capsys):
    d = _json(capsys, "criticality", "relu", "--json")
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (23 * 5), rel=1e-12)
    d = _json(capsys, "criticality", "tanh", "--output-width", "10", "--json")
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (50 * 2 / 3), rel=1e-12)
    assert d["output_width"] == 10


def test_criticality_residual(capsys):
    g = 0.6
    d = _json(capsys, "criticality", "relu", "--residual", str(g), "--json")
    assert d["C_W"] == pytest.approx(2 * (1 - g * g), rel=1e-14) and d["C_b"] == 0
    nu = residual_vertex_slope("relu", g)        # exact (two-depth terms)
    assert nu > (1 - g * g) * (5 - g * g + 16 / math.pi * g * (1 + g))   # three-point form
    assert d["vertex_slope"] == pytest.approx(nu, rel=1e-12)
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (23 * nu), rel=1e-12)
    assert d["residual"] == {"gamma": g, "xi": 1.0}
    assert d["plain"]["C_W"] == 2.0


def test_criticality_residual_text(capsys):
    assert main(["criticality", "tanh", "--residual", "0.9"]) == 0
    out, err = capsys.readouterr()
    assert "residual gamma = 0.9" in out and "optimal L/n" in out and err == ""


def test_criticality_residual_out_of_range(capsys):
    assert main(["criticality", "relu", "--residual", "1.2"]) == 2
    _, err = capsys.readouterr()
    assert "|gamma| < 1" in err


def test_diagnose_residual(capsys):
    d = _json(capsys, "diagnose", "--activation", "relu", "--depth", "20", "--width", "64",
              "--residual", "0.9", "--output-width", "2", "--json")
    nu = residual_vertex_slope("relu", 0.9)      # 2.5359 (three-point form: 2.4508)
    assert nu == pytest.approx(2.53585455, rel=1e-8)
    assert d["vertex_slope"] == pytest.approx(nu, rel=1e-12)
    assert d["optimal_aspect_ratio"] == pytest.approx(4 / (26 * nu), rel=1e-12)
    assert d["C_W"] == pytest.approx(2 * 0.19, rel=1e-14) and d["at_criticality"]
    assert d["residual"] == 0.9 and d["output_width"] == 2
    assert any("x r*" in n for n in d["notes"])


def test_diagnose_says_where_l_over_n_is(capsys):
    d = _json(capsys, "diagnose", "--activation", "relu", "--depth", "30", "--width", "64",
              "--json")
    assert any("above the information-theoretic optimum" in n for n in d["notes"])
    d = _json(capsys, "diagnose", "--activation", "tanh", "--depth", "4", "--width", "256",
              "--json")
    assert any("well below the information-theoretic optimum" in n for n in d["notes"])
    assert main(["diagnose", "--activation", "relu", "--depth", "3", "--width", "8"]) == 0
    out, _ = capsys.readouterr()
    assert "optimal L/n (r*)" in out
