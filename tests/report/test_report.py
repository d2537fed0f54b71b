"""The report: runs end to end, writes a self-contained page, and fails when
theory and experiment disagree."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from pdlt.report import suite as S  # noqa: E402
from pdlt.report import write_report  # noqa: E402

TINY = [S.Case(a, n, 4, 1000, seed=k, cv_networks=600) for k, a in enumerate(("relu", "tanh"))
        for n in (16, 32)]
TINY_STATS = ("K", "G1", "Theta", "H1", "V")


@pytest.fixture(scope="module")
def tiny_suite():
    return S.run_suite(TINY, stats=TINY_STATS)


def test_suite_rows_and_pass(tiny_suite):
    # one (n, 2n) extrapolated row per statistic and activation
    assert len(tiny_suite.rows) == 2 * len(TINY_STATS)
    assert {r.family for r in tiny_suite.rows} == set(TINY_STATS)
    assert tiny_suite.passed, [r for r in tiny_suite.rows if not r.passed]
    relu_K = next(r for r in tiny_suite.rows if r.activation == "relu" and r.family == "K")
    assert relu_K.theory == pytest.approx(1.0)  # ReLU at criticality keeps K1 = 1
    # ReLU's one-input G1 and H1 vanish: absolute bounds, not relative resolutions
    for key in ("G1", "H1"):
        r = next(r for r in tiny_suite.rows if r.activation == "relu" and r.family == key)
        assert not r.relative and r.status == "pass"
    # per-piece cost (wall, CPU) of every case, in the suite and in report.json
    # (relu: K, Theta plain and V by control variates; tanh: all five by control variates)
    pieces = [lab.split(": ")[-1] for lab, _, _ in tiny_suite.timings]
    assert pieces == ["theory", "plain", "control variates"] * 2 + ["theory",
                                                                    "control variates"] * 2
    assert all(w >= 0 and c >= 0 for _, w, c in tiny_suite.timings)
    # every row carries its resolution and its negative controls
    for r in tiny_suite.rows:
        assert np.isfinite(r.resolution) and dict(r.control_z).keys() == {0.0, 0.5, 2.0}
        assert r.status in ("pass", "unresolved")


def test_resolved_rows_reject_wrong_theories(tiny_suite):
    """The negative controls of every report spec: the same rows, fed the theory x0, x0.5
    and x2, fail wherever the row passed with resolution <= 25 % (tanh's K, Theta, V here).
    (A row resolved to 25-50 % rejects x0 and x2 but may pass x0.5: its control z is in
    the table.)"""
    from dataclasses import replace

    resolved = {(r.family, r.activation) for r in tiny_suite.rows if r.status == "pass"
                and r.relative and r.resolution <= 0.25}
    assert {("V", "tanh"), ("K", "tanh"), ("Theta", "tanh")} <= resolved
    for factor in (0.0, 0.5, 2.0):
        scaled = [replace(res, theory={k: factor * v for k, v in res.theory.items()})
                  for res in tiny_suite.cases]
        rows = S._extrapolated_rows(scaled)
        for r in rows:
            if (r.family, r.activation) in resolved:
                assert not r.passed, (factor, r)


def test_html_and_json_written(tiny_suite, tmp_path):
    path = write_report(tiny_suite, tmp_path / "rep", write_json=True)
    text = open(path, encoding="utf-8").read()
    assert "data:image/png;base64," in text and "<table>" in text and "FAIL" not in text
    assert "Summary: best resolution" in text and "resolution" in text
    assert "Cost per piece" in text and "tanh n=32 L=4: control variates" in text
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["passed"] is True and len(data["rows"]) == 2 * len(TINY_STATS)
    assert {d["key"] for d in data["summary"]} == set(TINY_STATS)
    assert sum(data["counts"].values()) == len(data["rows"])


def test_unresolved_rows_are_not_passes():
    from pdlt.report.rows import make_row, summarize

    good = make_row("X", "tanh", 16, 3, 1.0, 1.01, 0.01, 0.0)
    vague = make_row("X", "relu", 16, 3, 1.0, 1.2, 0.2, 0.0)      # resolution 0.8
    bad = make_row("X", "gelu", 16, 3, 1.0, 2.0, 0.01, 0.0)
    assert (good.status, vague.status, bad.status) == ("pass", "unresolved", "FAIL")
    assert vague.passed and vague.resolution == pytest.approx(0.8)
    table = {d["activation"]: d for d in summarize([good, vague, bad])}
    assert table["relu"]["passed"] == 0 and table["relu"]["unresolved"] == 1
    assert table["tanh"]["best_resolution"] == pytest.approx(0.04)
    zero = make_row("Y", "relu", 16, 3, 0.0, 0.01, 0.01, 0.02)
    assert not zero.relative and zero.resolution == pytest.approx(0.06)


def test_cli_report_quick_exit_code(tmp_path, monkeypatch, capsys):
    from pdlt.cli import main

    monkeypatch.setattr(S, "default_cases", lambda quick=False, full=False: TINY[:2])
    # the studies are tested on their own below
    monkeypatch.setattr(S, "default_studies", lambda quick=False, full=False: [])
    code = main(["report", "--quick", "--stats", "K,V", "--out", str(tmp_path / "r"), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and "best resolution" in out and " 0 fail" in out
    assert (tmp_path / "r" / "index.html").exists()


def test_studies_rows_and_figures(tmp_path):
    from pdlt.report import studies as st

    lin = st.linear_kurtosis_study(widths=(8,), depth=4, networks=2000)
    hist = st.histogram_study(width=64, depth=3, networks=400)
    res = S.run_suite([S.Case("relu", n, 3, 500, seed=1) for n in (16, 32)], stats=("K",),
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

    # the r* figure on 4 residual strengths (its default 60 took ~50 s here)
    s = st.residual_study(cases=(("tanh", 0.5, 32, 3),), networks=600,
                          aspect_gammas=(0.0, 0.3, 0.6, 0.9))
    assert [r.family for r in s.rows] == ["residual G1", "residual V"]
    assert all(r.passed for r in s.rows), s.rows
    assert set(s.figure()) == {"residual tanh", "optimal aspect ratio", "information"}


def test_derivative_statistics_rows(tmp_path):
    """P..U: a separate (smaller) network count, the last layer only, rows as
    two-width extrapolations, NaN at the other layers in the figure."""
    cases = [S.Case("tanh", n, 3, 300, seed=3, derivative_networks=400) for n in (8, 16)]
    res = S.run_suite(cases, stats=("K", "P", "S"), studies=[])
    names = [r.statistic for r in res.rows]
    assert names == ["K (n,2n extrap.)", "P (n,2n extrap.)", "S (n,2n extrap.)"]
    s_meas = res.cases[0].measured["S"]
    assert s_meas.n_networks == 400 and np.isnan(s_meas.mean[:2]).all()
    assert res.cases[0].measured["K"].n_networks == 300
    assert all(r.passed for r in res.rows), res.rows
    text = open(write_report(res, tmp_path / "r"), encoding="utf-8").read()
    assert "S against depth" in text


def test_default_training_cases_widths():
    """The default study keeps the diabetes case (widths to 128), pair/gd, the first
    trained-variance case and gelu's Newton leap; --full runs the five mean cases with width
    256, gelu's leap to width 64 and all three variance cases."""
    from pdlt.report.finite_training import (GELU_MEAN_CASES, TRAINING_NETWORKS, VARIANCE_CASES,
                                             default_training_cases)

    d, f = default_training_cases(), default_training_cases(full=True)
    assert [c.label for c in d] == ["pair, gd (100 steps)", "diabetes, newton+gd (5 steps)",
                                    VARIANCE_CASES[0].label, GELU_MEAN_CASES[0].label]
    assert d[1].widths == (32, 64, 128) and d[1].networks == TRAINING_NETWORKS
    assert d[2] == VARIANCE_CASES[0] and d[2].variance and not d[2].mean
    assert d[3] == GELU_MEAN_CASES[0] and d[3].activation == "gelu" and d[3].mean
    assert len(f) == 8 and {c.label for c in d} < {c.label for c in f}
    assert f[-3:] == [GELU_MEAN_CASES[1], *VARIANCE_CASES[1:]]
    assert [c.widths[-1] for c in f if c.algorithm != "gd" and not c.variance
            and c.activation == "tanh"] == [256] * 4


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


# P..U at CI size, in the passes of the default report (P over every neuron, Q..U over 8)
DERIV_CI = {"gelu": 1000, "relu": 1000}


@pytest.fixture(scope="module")
def derivative_ci_rows():
    out = {}
    for k, (act, M) in enumerate(DERIV_CI.items()):
        cases = [S.Case(act, n, 3, 100, seed=5 + j, derivative_passes=(("P", M, 64),
                                                                      ("QRSTU", M, 8)))
                 for j, n in enumerate((16, 32))]
        out[act] = {r.family: r for r in S.run_suite(cases, stats=S.DERIVATIVE_STATS,
                                                     studies=[]).rows}
    return out


def test_derivative_rows_resolved_and_reject_wrong_theories(derivative_ci_rows):
    """The (16, 32) P..U rows of GELU and ReLU at depth 3 (the report's passes at CI size):
    each passes; each nonzero statistic is resolved to <= 50 % and its negative controls
    (theory x0, x0.5, x2) are rejected (control z above Z_PASS, in units of stderr +
    allowance / Z_PASS); ReLU's P, R, U vanish exactly and are bounded to a few percent of
    Q's (P) and S's (R, U) size."""
    from pdlt.report.rows import Z_PASS

    for act, rows in derivative_ci_rows.items():
        assert set(rows) == set(S.DERIVATIVE_STATS)
        for key, r in rows.items():
            assert r.passed, (act, r)
            if r.theory == 0.0:
                assert act == "relu" and key in "PRU"
                scale = abs(rows["Q" if key == "P" else "S"].theory)
                assert not r.relative and r.resolution <= 0.1 * scale, (act, r)
                continue
            assert r.status == "pass" and r.resolution <= 0.5, (act, r)
            z = dict(r.control_z)
            assert min(z[0.0], z[0.5], z[2.0]) > Z_PASS, (act, r)
    # the same comparison fails for the scaled theory (what control_z says)
    from pdlt.report.rows import make_row

    for rows in derivative_ci_rows.values():
        for r in rows.values():
            if r.theory != 0.0:
                for f in (0.5, 2.0):
                    assert not make_row("x", r.activation, r.width, r.layer, f * r.theory,
                                        r.measured, r.stderr, r.allowance).passed


def test_derivative_passes_split_same_numbers():
    """P alone (same-neuron-pair recursion) and Q..U in their own pass give the numbers
    of one pass over the same networks and neurons; a pass naming a statistic twice or
    outside P..U is refused."""
    one = S.run_case(S.Case("gelu", 6, 3, 50, seed=2, derivative_networks=60,
                            derivative_neurons=4), stats=S.DERIVATIVE_STATS)
    two = S.run_case(S.Case("gelu", 6, 3, 50, seed=2, derivative_passes=(("P", 60, 4),
                                                                        ("QRSTU", 60, 4))),
                     stats=S.DERIVATIVE_STATS)
    for k in S.DERIVATIVE_STATS:
        a, b = one.measured[k], two.measured[k]
        assert a.n_networks == b.n_networks == 60
        assert abs(a.mean[-1] - b.mean[-1]) <= 1e-10 * abs(a.mean[-1]), k
        assert abs(a.stderr[-1] - b.stderr[-1]) <= 1e-10 * a.stderr[-1], k
    none = S.run_case(S.Case("gelu", 6, 3, 50, seed=2, derivative_passes=()),
                      stats=("K",) + S.DERIVATIVE_STATS)
    assert set(none.measured) == {"K"}
    for bad in ((("P", 10, 4), ("PQ", 10, 4)), (("PX", 10, 4),)):
        with pytest.raises(ValueError, match="derivative_passes"):
            S.run_case(S.Case("gelu", 6, 3, 50, derivative_passes=bad),
                       stats=S.DERIVATIVE_STATS)


def test_page_with_cases_measuring_subsets(tmp_path):
    """A first case without P..U (the default's width 32) leaves the P..U notes and figures
    on the page, and the networks column shows each estimate's own networks."""
    cases = [S.Case("tanh", 4, 3, 80, seed=1, derivative_passes=())]
    cases += [S.Case("tanh", n, 3, 80, seed=2 + k, derivative_passes=(("P", 70, 4),
                                                                      ("QRSTU", 60, 4)))
              for k, n in enumerate((8, 16))]
    res = S.run_suite(cases, stats=("K", "P", "S"), studies=[])
    assert set(res.cases[0].measured) == {"K"}
    text = open(write_report(res, tmp_path / "r"), encoding="utf-8").read()
    assert "P against depth" in text and "S against depth" in text
    assert "<b>P</b>" in text and "<b>S</b>" in text
    assert "<td>P (n,2n extrap.)</td><td>tanh</td>" in text
    # first row of each statistic: P, S from (8, 16), K from (4, 8)
    for stat, n, nets in (("P", 8, 70), ("S", 8, 60), ("K", 4, 80)):
        row = text.split(f"<td>{stat} (n,2n extrap.)</td>")[1].split("</tr>")[0]
        assert f"<td>{n}</td><td>3</td><td>{nets}</td>" in row, (stat, row)
