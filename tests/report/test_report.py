"""The report: runs end to end, writes a self-contained page, and fails when
theory and experiment disagree."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from pdlt.report import suite as S  # noqa: E402
from pdlt.report import write_report  # noqa: E402

TINY = [S.Case("relu", 16, 3, 1500, seed=1), S.Case("tanh", 16, 3, 1500, seed=2)]


@pytest.fixture(scope="module")
def tiny_suite():
    return S.run_suite(TINY, stats=("K", "Theta", "V"))


def test_suite_rows_and_pass(tiny_suite):
    assert len(tiny_suite.rows) == 6
    assert {r.statistic for r in tiny_suite.rows} == {"K", "Theta", "V"}
    assert tiny_suite.passed, [r for r in tiny_suite.rows if not r.passed]
    relu_K = next(r for r in tiny_suite.rows if r.activation == "relu" and r.statistic == "K")
    assert relu_K.theory == pytest.approx(1.0)  # ReLU at criticality keeps K1 = 1


def test_html_and_json_written(tiny_suite, tmp_path):
    path = write_report(tiny_suite, tmp_path / "rep", write_json=True)
    text = open(path, encoding="utf-8").read()
    assert "data:image/png;base64," in text and "<table>" in text and "FAIL" not in text
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["passed"] is True and len(data["rows"]) == 6


def test_a_wrong_theory_fails(monkeypatch):
    spec = S.STAT_SPECS["K"]
    wrong = S.StatSpec(theory=lambda ff, mlp: 1.1 * spec.theory(ff, mlp),
                       allowance=spec.allowance, label="wrong", note="10 % too large")
    monkeypatch.setitem(S.STAT_SPECS, "K", wrong)
    res = S.run_suite([S.Case("relu", 16, 3, 1500, seed=1)], stats=("K",))
    assert not res.passed


def test_cli_report_quick_exit_code(tmp_path, monkeypatch, capsys):
    from pdlt.cli import main

    monkeypatch.setattr(S, "default_cases", lambda quick=False: TINY[:1])
    monkeypatch.setattr(S, "default_studies", lambda quick=False: [])  # studies tested above
    code = main(["report", "--quick", "--out", str(tmp_path / "r"), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and "rows pass" in out
    assert (tmp_path / "r" / "index.html").exists()


def test_studies_rows_and_figures(tmp_path):
    from pdlt.report import studies as st

    lin = st.linear_kurtosis_study(widths=(8,), depth=4, networks=2000)
    hist = st.histogram_study(width=64, depth=3, networks=400)
    res = S.run_suite([S.Case("relu", 16, 3, 500, seed=1)], stats=("K",),
                      studies=[lambda: lin, lambda: hist])
    assert len(res.rows) == 3 and res.passed, res.rows
    # the deep-linear theory is exact: (1 + 2/8)^3 at layer 4
    assert lin.rows[0].theory == pytest.approx(1.25 ** 3, rel=1e-14)
    text = open(write_report(res, tmp_path / "r"), encoding="utf-8").read()
    assert text.count("data:image/png;base64,") == 1 + 2  # the K figure and the two studies


def test_learning_study_rows():
    from pdlt.report import studies as st

    s = st.learning_study(widths=(16, 32), networks=60, steps=5)
    assert [r.width for r in s.rows] == [16, 32, 32]
    gap_rows = s.rows[:2]
    assert all(r.theory == 0.0 and r.allowance == 2.0 / r.width for r in gap_rows)
    assert all(r.stderr > 0 for r in s.rows)


def test_residual_study_rows():
    from pdlt.report import studies as st

    s = st.residual_study(cases=(("tanh", 0.5, 32, 3),), networks=600)
    assert [r.statistic for r in s.rows] == ["K+G1/n (gamma=0.5)", "V/(nK^2) (gamma=0.5)"]
    assert all(r.passed for r in s.rows), s.rows
    assert set(s.figure()) == {"residual tanh", "optimal aspect ratio", "information"}


def test_derivative_statistics_rows(tmp_path):
    """P..U: a separate (smaller) network count, the last layer only, rows as
    two-width extrapolations, NaN at the other layers in the figure."""
    cases = [S.Case("tanh", n, 3, 300, seed=3, derivative_networks=400) for n in (8, 16)]
    res = S.run_suite(cases, stats=("K", "P", "S"), studies=[])
    names = [r.statistic for r in res.rows]
    assert names == ["K", "K", "P (n,2n extrap.)", "S (n,2n extrap.)"]
    s_meas = res.cases[0].measured["S"]
    assert s_meas.n_networks == 400 and np.isnan(s_meas.mean[:2]).all()
    assert res.cases[0].measured["K"].n_networks == 300
    assert all(r.passed for r in res.rows), res.rows
    text = open(write_report(res, tmp_path / "r"), encoding="utf-8").read()
    assert "S against depth" in text


def test_finite_training_study_rows_and_figure():
    from pdlt.report.finite_training import TrainingCase, finite_training_study

    case = TrainingCase("circle", "newton", widths=(16, 32, 64), networks=400)
    s = finite_training_study([case])
    names = [r.statistic for r in s.rows]
    # the largest-|m1| training input and the two test inputs, each at n_max and
    # extrapolated, and the NTK change
    assert len(names) == 3 * 2 + 2 and names[-2].startswith("NTK change")
    assert all(r.width == 64 and r.stderr > 0 and np.isfinite(r.measured) for r in s.rows)
    assert all(r.allowance == 0.0 for r in s.rows if r.statistic.startswith("1/n"))
    assert set(s.figure()) == {"finite_training"}
