"""Four ReLU-family variables with one nearly coinciding pair (``_near_pair_quad``).

Against ``benchmarks/relu_quad_reference.json`` (mpmath factor, nested Gauss-Legendre with
the last axis in closed form: no code shared with the engine; its own accuracy ~1e-16):
the default path within 1e-12 (measured <= 6.3e-14) and within its estimate at ``1 -
rho^2 = 1e-6, 1e-10``; the former path (the orthant form's split-path fallback) was up to
2.2e-5 off with estimates ~1e-14, and fails the same comparison. A rank-3 covariance (four
inputs in two dims, the first layer's) with a pair at ``1 - rho^2 = 6.7e-4``: within 1e-11
of the orthant closed form (its cone form, exact on rank-deficient K: independent code).
Well-separated covariances do not reach the new form (bit-identical).

Thin rows (the fourth variable nearly determined: ``s3 < |c33| / 2``) take their inner
``(g_3, g_4)`` average in closed form (h64): the near-1 bivariate CDF and the inner form
against mpmath at correlations 0.91 .. 1 - 1e-12 .. 1 (<= 1.1e-16 and 2.4e-15 of scale),
rejecting a wrong kink distance, a dropped spread and the former graded ``g_3`` panels.
The other rows (``s3 >= |c33| / 2``, h66) take the same closed form: against mpmath at
``s3 / |c33| = 0.5 .. 1e3`` and ``c33 = 0`` (<= 3.9e-16 of scale), rejecting the value x
(1 + 10 tol) and the former 3 x 12-node ``g_3`` panels where the kinks are within a width.
"""

from __future__ import annotations

import json
import pathlib

import mpmath as mp
import numpy as np
import pytest

from pdlt.gaussian import _multi
from pdlt.gaussian._multi import PiecewiseMonomial, _bvn_near1, _pm_pair_normal, expect_nd
from pdlt.gaussian._orthant import orthant_expect

REF = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "relu_quad_reference.json"
TOL = 1e-12


def _rows():
    rows = json.loads(REF.read_text())
    pick = [r for r in rows if r["one_minus_rho2"] in (1e-6, 1e-10)]
    return [r for k, r in enumerate(pick) if k % 2 == 0]      # 12 rows, every function set


def _fs(r):
    return [PiecewiseMonomial(cp, cm, n) for n, cp, cm in r["fs"]]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['one_minus_rho2']:g}-{r['fs']}")
def test_against_reference(row):
    K, ref = np.array(row["K"]), float(row["value"])
    v, e = expect_nd(_fs(row), K, return_error=True)
    assert row["check"] <= 1e-15
    assert abs(v - ref) <= TOL
    assert abs(v - ref) <= e + row["check"]
    assert e <= 1e-10


def test_former_path_fails_the_same_comparison(monkeypatch):
    """theta^4 and theta theta relu relu at 1 - rho^2 = 1e-6: the split path was 2.2e-5 and
    1.4e-5 off (estimate ~1e-14); the comparison also rejects theory x0.5 and x2."""
    monkeypatch.setattr(_multi, "_near_pair_quad",
                        lambda fs, K, a, r: (np.zeros(len(K), bool), np.zeros(len(K)),
                                             np.zeros(len(K))))
    rows = [r for r in json.loads(REF.read_text())
            if r["one_minus_rho2"] == 1e-6 and r["fs"][0] == [0, 1, 0] and r["fs"][1] == [0, 1, 0]]
    assert len(rows) == 4
    for r in rows:
        ref = float(r["value"])
        v, e = expect_nd(_fs(r), np.array(r["K"]), return_error=True)
        assert abs(v - ref) > 1000 * TOL and abs(v - ref) > e
        assert abs(0.5 * ref - ref) > 1000 * TOL and abs(2 * ref - ref) > 1000 * TOL


def test_rank3_pair_against_orthant_cone_form():
    x = np.array([[1.0, 0.3], [1.0, 0.33], [0.2, -1.0], [-0.7, 0.4]])
    K = 0.1 + 0.75 * x @ x.T                   # rank 3; 1 - rho^2 = 6.7e-4 for (0, 1)
    fs = [PiecewiseMonomial(1, 0.1, 0)] * 2 + [PiecewiseMonomial(1, 0.1, 1)] * 2
    ref, rerr, ok = orthant_expect(fs, K[None], True)
    took, v, e = _multi._near_pair_quad(fs, K[None], "default", True)
    assert ok[0] and took[0] and rerr[0] < 1e-13
    assert abs(v[0] - ref[0]) <= 1e-11 and abs(v[0] - ref[0]) <= e[0] + rerr[0]


def test_well_separated_untouched(monkeypatch):
    """Four random covariances in 8 dims never reach the near-pair form."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 4, 8))
    K = np.einsum("bia,bja->bij", X, X) / 8
    monkeypatch.setattr(_multi, "_near_pair_quad", lambda *a: pytest.fail("reached"))
    for f in (PiecewiseMonomial(1, 0, 1), PiecewiseMonomial(1, 0.1, 0)):
        expect_nd([f] * 4, K, return_error=True)


# --- thin rows: the (g_3, g_4) average in closed form (h64) -------------------------------
# A thin row (the fourth variable nearly determined by the first three, s3 < |c33| / 2) had
# its inner average E_{g_3, g_4}[f_2 f_3] by 12 Gauss-Legendre nodes on each of 20 graded
# g_3 panels (~0.6 .. 1.2 s per average); it is now a bivariate normal with correlation
# c33 / hypot(c33, s3) ~ 1 in closed form (_multi._pm_pair_normal, _bvn_near1). The
# references below are mpmath: the bivariate CDF as a 1D integral over x of phi(x)
# Phi((k - r x) / s) (30 digits), and the inner average as a 1D integral over g_3 of f_2
# times the g_4 average of f_3 (truncated normal moments; 17 digits), both split at the
# kinks and at widths around them: their own error <= ~1e-17, so the comparisons resolve
# the float64 round-off of the closed forms (a few eps of the scale).

BVN_TOL = 2e-15          # absolute, on a probability: its terms are O(1), a few eps
#: of the Cauchy-Schwarz scale sqrt(E f_2(u)^2 E f_3(v)^2), floored at 0.01: a node's
#: inner average enters the four-variable one under the outer Gaussian weight, so its
#: round-off counts against that average's scale (~0.01 .. 1 for the relu family at unit
#: variances), not against a far tail's own (~1e-20: 1.5e-10 of it in the recursion's
#: cancellations, 3e-30 absolute)
INNER_TOL = 2e-14


def _mp_bvn(h, t1, s):
    """Phi_2(h, k; r) with k = r h + s t1, r = sqrt(1 - s^2) (returns it, r and k as floats)."""
    with mp.workdps(30):
        s_, h_, t_ = mp.mpf(s), mp.mpf(h), mp.mpf(t1)
        r = mp.sqrt(1 - s_ * s_)
        k = r * h_ + s_ * t_
        x0 = k / r
        pts = sorted(p for p in {x0 + o * s_ for o in (-60, -8, -1, 0, 1, 8, 60)} | {mp.mpf(-12)}
                     if p < h_)
        val = mp.quad(lambda x: mp.npdf(x) * mp.ncdf((k - r * x) / s_), [-mp.inf] + pts + [h_])
        return float(val), float(r), float(k)


@pytest.mark.parametrize("s", [0.38, 1e-2, 1e-4, 1e-8, 1e-12])
def test_bvn_near1_against_mpmath(s):
    """Genz's near-1 form within 2e-15 (measured <= 1.1e-16) at 1 - r = 0.075 .. 5e-25,
    the remainder integral kept (s >= 3e-3) and dropped; t1 off by a factor 2 (the kinks'
    distance) is rejected."""
    rng = np.random.default_rng(11)
    for _ in range(5):
        h, t1 = rng.uniform(-2.0, 2.0), rng.uniform(0.5, 3.0) * rng.choice([-1.0, 1.0])
        ref, r, k = _mp_bvn(h, t1, s)
        v = _bvn_near1(np.array([h]), np.array([k]), r, s, np.array([t1]))[0]
        assert abs(v - ref) <= BVN_TOL
        if s >= 1e-8:     # below, t1 moves Phi_2 by ~s: under float64's resolution
            wrong = _bvn_near1(np.array([h]), np.array([k]), r, s, np.array([2.0 * t1]))[0]
            assert abs(wrong - ref) > 10 * BVN_TOL


def _mp_pm_normal(f, m, sg):
    """E[f(m + sg Z)] for a PiecewiseMonomial f, mpmath (sg = 0: f(m))."""
    if sg == 0:
        return (f.cp if m > 0 else f.cm) * m ** f.n
    t = m / sg
    P, p = mp.ncdf(t), mp.npdf(t)
    plus = (P, m * P + sg * p, (m * m + sg * sg) * P + m * sg * p)[f.n]
    full = (1, m, m * m + sg * sg)[f.n]
    return f.cp * plus + f.cm * (full - plus)


def _mp_square(f, m, sg):
    """E[f(m + sg Z)^2], mpmath: truncated moments of Z up to degree 4."""
    with mp.workdps(30):
        m, sg = mp.mpf(m), mp.mpf(sg)
        c = -m / sg
        up = [mp.ncdf(-c), mp.npdf(c)]                  # E[Z^i 1{Z > c}]
        for i in range(2, 2 * f.n + 1):
            up.append(c ** (i - 1) * mp.npdf(c) + (i - 1) * up[i - 2])
        full = [1, 0, 1, 0, 3]
        tot = 0
        for i in range(2 * f.n + 1):
            b = mp.binomial(2 * f.n, i) * m ** (2 * f.n - i) * sg ** i
            tot += b * (f.cp ** 2 * up[i] + f.cm ** 2 * (full[i] - up[i]))
        return float(tot)


def _mp_inner(f2, f3, mu2, mu3, s2, c33, s3):
    """E[f_2(mu2 + s2 g_3) f_3(mu3 + c33 g_3 + s3 g_4)], mpmath: g_4 in closed form, g_3 by
    adaptive quadrature split at both kinks and +-1, 4, 30 widths around z_3's (at 17
    digits: within 3.5e-18 of 20 digits and +-1, 2, 6, 30, 200 widths on these rows)."""
    with mp.workdps(17):
        mu2, mu3, s2, c33, s3 = (mp.mpf(x) for x in (mu2, mu3, s2, c33, s3))

        def g(x):
            u = mu2 + s2 * x
            return mp.npdf(x) * (f2.cp if u > 0 else f2.cm) * u ** f2.n * _mp_pm_normal(
                f3, mu3 + c33 * x, s3)

        pts = [-mu2 / s2]
        if c33 != 0:        # (c33 = 0: E over g_4 does not depend on g_3)
            x3, w = -mu3 / c33, abs(s3 / c33)
            pts += [x3 + o * w for o in (-30, -4, -1, 0, 1, 4, 30)]
        pts = sorted({p for p in pts if abs(p) < 14})
        return float(mp.quad(g, [-14] + pts + [14]))


def _abs_pm(f):
    return PiecewiseMonomial(abs(f.cp), (-1) ** f.n * abs(f.cm), f.n)


def _check_row(f2, f3, mu2, mu3, s2, c33, s3, e):
    """The closed form of one row against mpmath, value and magnitude (``E|f_2 f_3|``),
    within ``INNER_TOL`` of the Cauchy-Schwarz scale, and the comparison rejecting the
    value x (1 + 10 tol). Returns (reference, tolerance, error over the scale)."""
    v, mag = (x[0] for x in _pm_pair_normal(f2, f3, np.array([mu2]), np.array([mu3]), s2,
                                            c33, s3, np.array([e])))
    ref = _mp_inner(f2, f3, mu2, mu3, s2, c33, s3)
    signed = any(g.cp < 0 or (-1) ** g.n * g.cm < 0 for g in (f2, f3))
    ref_mag = _mp_inner(_abs_pm(f2), _abs_pm(f3), mu2, mu3, s2, c33, s3) if signed else ref
    sv = np.hypot(c33, s3)
    scale = max(np.sqrt(_mp_square(f2, mu2, s2) * _mp_square(f3, mu3, sv)), 0.01)
    tol = INNER_TOL * scale
    assert abs(v - ref) <= tol and abs(mag - ref_mag) <= tol
    assert abs(v * (1 + 10 * INNER_TOL) - ref) > tol or abs(ref) < 0.1 * scale
    return ref, tol, max(abs(v - ref), abs(mag - ref_mag)) / scale


def _thin_cases():
    """(f_2, f_3, mu2, mu3, s2, c33, s3, e): s3 / |c33| = 0.45, 1.4e-2, 1.4e-4, 1.4e-6, 0
    (correlation 0.91 (``_bvn``), 1 - 1e-4 (the remainder integral kept), 1 - 1e-8, 1 -
    1e-12, 1), both signs of c33, kinks within 4 widths and up to 60 apart."""
    rng = np.random.default_rng(7)
    out = []
    for ratio in (0.45, 1.4e-2, 1.4e-4, 1.4e-6, 0.0):
        for j in range(3):
            f2, f3 = (PiecewiseMonomial(rng.uniform(-1, 2), (0.0, rng.uniform(-1, 1))[j % 2],
                                        int(rng.integers(0, 3))) for _ in range(2))
            s2 = rng.uniform(0.3, 1.5)
            c33 = (-1.0) ** j * rng.uniform(0.3, 1.5)
            s3 = abs(c33) * ratio
            mu2 = rng.uniform(-3, 3)
            t1 = rng.uniform(-4, 4) if j < 2 else rng.uniform(-60, 60)
            e = t1 * s2 * (s3 if s3 > 0 else 1e-3)
            out.append((f2, f3, mu2, (e + c33 * mu2) / s2, s2, c33, s3, e))
    return out


def test_thin_inner_against_mpmath():
    """The closed form within 2e-14 of the Cauchy-Schwarz scale (measured <= 6.7e-16 of it,
    4.4e-16 absolute) for value and magnitude (``E|f_2 f_3|``); the comparison rejects the
    value x (1 + 10 tol) and the fourth variable's spread dropped (s3 = 0: 2.6e-10 ..
    1.1e-2 off at s3 / |c33| >= 1.4e-2, kinks within 4 widths)."""
    for f2, f3, mu2, mu3, s2, c33, s3, e in _thin_cases():
        ref, tol, _ = _check_row(f2, f3, mu2, mu3, s2, c33, s3, e)
        if s3 >= 1.4e-2 * abs(c33) and abs(e) <= 4 * s2 * s3:     # kinks within 4 widths
            drop = _pm_pair_normal(f2, f3, np.array([mu2]), np.array([mu3]), s2, c33, 0.0,
                                   np.array([e]))[0][0]
            assert abs(drop - ref) > 10 * tol


def _wide_cases():
    """(f_2, f_3, mu2, mu3, s2, c33, s3, e) of rows that are not thin (h66): s3 / |c33| =
    0.5, 1, 3, 30, 1e3 (correlation 0.89 .. 1e-3: Sheppard's :func:`_bvn`) and c33 = 0
    (r = 0), both signs of c33, kinks within 1 width and up to 8 apart."""
    rng = np.random.default_rng(17)
    out = []
    for ratio in (0.5, 1.0, 3.0, 30.0, 1e3, np.inf):
        for j in range(3):
            f2, f3 = (PiecewiseMonomial(rng.uniform(-1, 2), (0.0, rng.uniform(-1, 1))[j % 2],
                                        int(rng.integers(0, 3))) for _ in range(2))
            s2 = rng.uniform(0.3, 1.5)
            if np.isinf(ratio):
                c33, s3 = 0.0, rng.uniform(0.3, 1.5)
            else:
                c33 = (-1.0) ** j * rng.uniform(0.3, 1.5) / np.sqrt(ratio)
                s3 = abs(c33) * ratio
            mu2 = rng.uniform(-2, 2)
            t1 = rng.uniform(-1, 1) if j < 2 else rng.uniform(-8, 8)
            e = t1 * s2 * s3
            out.append((f2, f3, mu2, (e + c33 * mu2) / s2, s2, c33, s3, e))
    return out


def _panel_inner(f2, f3, mu2, mu3, s2, c33, s3, q=12, panels=3, T=11.0):
    """The inner average as ``_quad_row`` summed it for rows that are not thin until h66:
    g_3 on [-T, T] split at z_2's kink, ``panels`` x ``q`` Gauss-Legendre nodes a side,
    g_4 in closed form."""
    x, w = np.polynomial.legendre.leggauss(q)
    br = [-T, min(max(-mu2 / s2, -T), T), T]
    tot = 0.0
    for lo, hi in zip(br[:-1], br[1:]):
        for i in range(panels):
            a, b = lo + (hi - lo) * i / panels, lo + (hi - lo) * (i + 1) / panels
            g3 = 0.5 * (a + b) + 0.5 * (b - a) * x
            wt = 0.5 * (b - a) * w * np.exp(-0.5 * g3 * g3) / np.sqrt(2 * np.pi)
            tot += np.sum(wt * f2(mu2 + s2 * g3) * _multi._pm_normal(f3, mu3 + c33 * g3, s3))
    return tot


def test_wide_inner_against_mpmath():
    """Rows that are not thin (``s3 >= |c33| / 2``, h66): the closed form within 2e-14 of
    the Cauchy-Schwarz scale (measured <= 3.9e-16 of it) for value and magnitude; the
    comparison rejects the value x (1 + 10 tol), and at s3 / |c33| = 0.5 with the kinks
    within a width the former 3 x 12-node ``g_3`` panels (up to ~1e-4 off there)."""
    worst, panel_off = 0.0, []
    for f2, f3, mu2, mu3, s2, c33, s3, e in _wide_cases():
        ref, tol, rel = _check_row(f2, f3, mu2, mu3, s2, c33, s3, e)
        worst = max(worst, rel)
        if c33 != 0.0 and s3 == 0.5 * abs(c33) and abs(e) <= s2 * s3:
            old = _panel_inner(f2, f3, mu2, mu3, s2, c33, s3)
            panel_off.append(abs(old - ref) > 10 * tol)
    print(f"worst {worst:.2e} of scale")
    assert panel_off and all(panel_off)


def test_former_thin_panels_fail_the_inner_comparison():
    """relu^2 x relu^2 at an outer node of the residual relu test's row (s3 / c33 = 8.8e-6,
    kinks 0.77 widths apart): the former 20 graded panels x 12 nodes in g_3 are 3.3e-12
    off (of 4.70; up to 4.7e-12 at the row's worst nodes), the closed form 8.9e-16."""
    row = (0.893532316147547, 0.8935336255891548, 8.433387074240631e-06, 0.4342316366047699,
           0.01080388353662039, 0.766372077956961, 0.434232364054677, 0.01080806993716882,
           0.7663733030653385, 6.741108115208677e-06)
    _, _, _, c21, c22, s2, c31, c32, c33, s3 = row
    f = PiecewiseMonomial(1.0, 0.0, 2)
    al, R = 0.3, 2.2
    ca, sa = np.cos(al), np.sin(al)
    mu2, mu3 = np.array([[(c21 * ca + c22 * sa) * R]]), np.array([[(c31 * ca + c32 * sa) * R]])
    # the offset that puts the kinks 0.77 widths apart at this node
    e = np.array([[0.77 * s2 * s3]])
    mu3 = (e + c33 * mu2) / s2
    ref = _mp_inner(f, f, mu2[0, 0], mu3[0, 0], s2, c33, s3)
    new = _pm_pair_normal(f, f, mu2, mu3, s2, c33, s3, e)[0][0, 0]
    # the former form: z_2's kink, 13 graded breaks around z_3's and 5 fixed ones in g_3
    h = s3 / abs(c33)
    br = _multi._quad_g3_breaks(mu2, mu3, row, h, True)[0, 0]
    x, w = np.polynomial.legendre.leggauss(12)
    old = 0.0
    for lo, hi in zip(br[:-1], br[1:]):
        g3 = 0.5 * (hi + lo) + 0.5 * (hi - lo) * x
        wt = 0.5 * (hi - lo) * w * np.exp(-0.5 * g3 * g3) / np.sqrt(2 * np.pi)
        old += np.sum(wt * f(mu2[0, 0] + s2 * g3)
                      * _multi._pm_normal(f, mu3[0, 0] + c33 * g3, s3))
    tol = INNER_TOL * abs(ref)
    assert abs(new - ref) <= tol
    assert abs(old - ref) > 10 * tol
