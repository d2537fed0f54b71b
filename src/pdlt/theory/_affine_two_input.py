r"""Two uncorrelated inputs of a plain MLP: the order-1/n fold as affine maps over all layers.

The fast path of :func:`pdlt.statistics` behind ``pdlt diagnose``'s
reference problem for odd activations (one training and one orthogonal test
input of equal norm, ``C_b = 0``: the two inputs stay uncorrelated at every
layer). Every order-1/n step of :mod:`pdlt.theory.statistics` is affine in the
statistics of layer l,

.. math::
    x^{(l+1)} = c_l + M_l\,x^{(l)},

with ``x`` one statistic's 2^4 (or 2^2) entries, the source ``c_l`` built from
the Gaussian averages at ``K^(l)``, ``Theta^(l)`` and the statistics it reads
(:data:`~pdlt.theory.statistics.DEPENDS`, all earlier in
:data:`~pdlt.theory.statistics._AFFINE_NAMES`), and the gain ``M_l`` (16 x 16)
from the averages alone. Here the averages of every layer are arrays with a
leading layer axis: pairs and the derivative operators factorize into the
one-variable table (``|rho| <= 1e-17``, as :class:`~pdlt.theory._averages.LayerAverages`
factorizes them), the four-variable tensors are the same vectorized calls as
:class:`~pdlt.theory._averages.LayerBlock` makes for its 128 layers, and the
steps below are the N-input steps of :mod:`~pdlt.theory.vertex`,
:mod:`~pdlt.theory.ntk`, :mod:`~pdlt.theory.dntk`, :mod:`~pdlt.theory.ddntk`
and :mod:`~pdlt.theory.ntk_mean` written over leading axes. ``c_l`` is one
call per statistic for all layers (the statistic itself set to 0); ``M_l`` is
one call on the 16 basis tensors with the sources left out; the recursion is
then a loop of 16 x 16 mat-vecs. The per-layer fold stays the definition:
``tests/theory/test_diagnosis_fast.py`` holds the two equal.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _averages
from ._averages import _MOMENTS, _scale_invariant

__all__ = ["affine_two_input"]

_AR = np.arange(2)
#: ``m<i><slots>`` table entries that the table also holds under another name (computed once)
_ALIAS = {"m0ss": "ss", "m0pp": "pp", "m0ssss": "ssss", "m0ppss": "sspp", "m0pppp": "pppp",
          "m0qq": "qq", "m0qs": "qs", "m0ppqs": "qspp", "m0ppqq": "qqpp", "m1pppq": "zqppp",
          "m1ps": "zsp", "m2pp": "zpzp", "m1pq": "zqp", "m1ss": "zss"}
_e = functools.partial(np.einsum, optimize=True)


def _x(v, k):
    """``v`` with ``k`` trailing singleton axes (per-layer scalars against tensors)."""
    return v.reshape(v.shape + (1,) * k)


def _apply_M(op, X, r):
    """:func:`pdlt.theory._averages.apply_M` over leading axes; X (..., N, N, *rest), r = len(rest)."""
    D1, D2, O = (o[(Ellipsis, slice(None), slice(None)) + (None,) * r] for o in op)
    Xd = X[(Ellipsis, _AR, _AR) + (slice(None),) * r]           # (..., N, *rest)
    return D1 * Xd[(Ellipsis, slice(None), None) + (slice(None),) * r] + \
        D2 * Xd[(Ellipsis, None, slice(None)) + (slice(None),) * r] + O * X


def _apply_M2(op, X):
    """:func:`pdlt.theory._averages.apply_M2` over leading axes (the last two axes of X)."""
    return np.moveaxis(_apply_M(op, np.moveaxis(X, (-2, -1), (-4, -3)), 2), (-4, -3), (-2, -1))


def _operator(Dd, Do, d_diag):
    """:func:`pdlt.theory._averages.derivative_operator` over leading axes."""
    D1, D2, O = Dd.copy(), np.swapaxes(Dd, -1, -2).copy(), Do.copy()
    D1[..., _AR, _AR], D2[..., _AR, _AR], O[..., _AR, _AR] = d_diag, 0.0, 0.0
    return D1, D2, O


def _first_derivative(d_first, d_second, d_diag):
    """:func:`pdlt.theory._averages.first_derivative` over leading axes: (..., N, N, N)."""
    G = np.zeros(d_first.shape + (2,))
    a, c = _AR[:, None], _AR[None, :]
    G[..., a, c, a] += d_first
    G[..., a, c, c] += d_second
    G[..., _AR, _AR, _AR] = d_diag
    return G


class _Averages:
    """The averages of :class:`~pdlt.theory._averages.LayerAverages` for every layer at once.

    Two uncorrelated inputs; arrays with a leading layer axis (n = L - 1 layers
    stepped from). ``lead(1)`` views every array with one more leading axis
    (the basis of the gains).
    """

    def __init__(self, act, Ks, table, accuracy, n):
        self.act, self.Ks, self.t, self.accuracy, self.n = act, Ks, table, accuracy, n
        self.diag = np.einsum("lii->li", Ks)
        self._v = {}

    def tab(self, name):
        name = _ALIAS.get(name, name)
        return np.asarray(self.t[name], dtype=float).reshape(self.n, 2)

    def _factorized(self, fa, fb, ia=0, ib=0):
        t = self.tab
        out = t(f"m{ia}{fa}")[:, :, None] * t(f"m{ib}{fb}")[:, None, :]
        out[:, _AR, _AR] = t(f"m{ia + ib}{''.join(sorted(fa + fb))}")
        return out

    def pairs(self):
        if "S" not in self._v:
            f, K, d = self._factorized, self.Ks, self.diag[:, :, None]
            S, PP = f("s", "s"), f("p", "p")
            if _scale_invariant(self.act) is not None:
                zero = np.zeros_like(S)
                QS = QQ = dqp = zero
            else:
                QS, QQ = f("q", "s"), f("q", "q")
                dqp = (f("q", "p", ia=1) - K * QQ) / d
            dps = (f("p", "s", ia=1) - K * PP) / d
            self._v.update(S=S, PP=PP, QS=QS, QQ=QQ, dps=dps, dqp=dqp)
            self._v["Mss"] = _operator(0.5 * dps, PP, self.tab("dss"))
            self._v["G"] = _first_derivative(dps, PP, self.tab("dss"))
        return self._v

    def __getitem__(self, name):
        if name in ("Mpp", "G2"):
            if name not in self._v:
                v = self.pairs()
                self._v["Mpp"] = _operator(0.5 * v["dqp"], v["QQ"], self.tab("dpp"))
                self._v["G2"] = _first_derivative(v["dqp"], v["QQ"], self.tab("dqp"))
            return self._v[name]
        return self.pairs()[name]

    def quad(self, slots):
        """``<f1(z_a1) f2(z_a2) f3(z_a3) f4(z_a4)>`` (n, 2, 2, 2, 2), slots from "spqx".

        Uncorrelated inputs: the product over the two inputs of one-variable
        averages of the slots on each (``x = z sigma''``), from the table (each
        to < 1e-14 relative, as :class:`~pdlt.theory._averages.OneVariableTable`
        states), as the general fold's pair averages factorize at ``|rho| <= 1e-17``.
        """
        key = ("quad", slots)
        if key not in self._v:
            n = self.n
            if _scale_invariant(self.act) is not None and ("q" in slots or "x" in slots):
                self._v[key] = np.zeros((n,) + (2,) * 4)
                return self._v[key]
            T = np.ones((n, 16))
            for flat, idx in enumerate(np.ndindex(2, 2, 2, 2)):
                for c in (0, 1):
                    group = [f for f, a in zip(slots, idx) if a == c]
                    if group:
                        i = group.count("x")
                        chars = "".join(sorted("q" if f == "x" else f for f in group))
                        T[:, flat] *= self.tab(f"m{i}{chars}")[:, c]
            self._v[key] = T.reshape((n,) + (2,) * 4)
        return self._v[key]

    def ssss_error(self):
        """Error estimate of ``quad("ssss")`` per entry: 1e-14 relative per one-variable factor."""
        return 2e-14 * np.abs(self.quad("ssss"))

    def d4_moments(self, of):
        """``<z_a^i f_a z_b^j f_b>`` of the pair (0, 1), factorized: (i, j) -> (n,)."""
        key = ("moments", of)
        if key not in self._v:
            t = self.tab
            m = {}
            for i, j in _MOMENTS:
                m[(i, j)] = t(f"m{i}{of}")[:, 0] * t(f"m{j}{of}")[:, 1]
                m[(j, i)] = t(f"m{j}{of}")[:, 0] * t(f"m{i}{of}")[:, 1]
            self._v[key] = m
        return self._v[key]

    def d4_tables(self, of):
        """What :meth:`d4_source` needs besides V: the diagonal's ``<(f^2)''''>``, the inverse
        kernel and the pair moments (each (n, ...))."""
        key = ("d4", of)
        if key not in self._v:
            K = self.Ks
            Kaa, Kbb, Kab = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
            det = Kaa * Kbb - Kab * Kab
            Lam = np.empty((self.n, 2, 2))
            Lam[:, 0, 0] = Kbb / det
            Lam[:, 1, 1] = Kaa / det
            Lam[:, 0, 1] = Lam[:, 1, 0] = -Kab / det
            self._v[key] = (self.tab("d4ss" if of == "s" else "d4pp"), Lam, self.d4_moments(of))
        return self._v[key]


class _Lead:
    """A view of :class:`_Averages` with one more leading axis on every array (size 1)."""

    def __init__(self, avg):
        self._a = avg

    @staticmethod
    def _up(v):
        if isinstance(v, tuple):
            return tuple(_Lead._up(x) for x in v)
        if isinstance(v, dict):
            return {k: _Lead._up(x) for k, x in v.items()}
        return v[:, None]

    def __getitem__(self, name):
        return self._up(self._a[name])

    def quad(self, slots):
        return self._a.quad(slots)[:, None]

    def d4_tables(self, of):
        return self._up(self._a.d4_tables(of))


def _d4_source(a, V, of):
    """:meth:`pdlt.theory._averages.LayerAverages.d4_source` over leading axes (two inputs far
    from coinciding: ``1 - rho^2 >= 1e-4``, checked by the caller)."""
    d4, Lam, m = a.d4_tables(of)
    diag = 0.125 * V[..., _AR, _AR, _AR, _AR] * d4
    W = (V + np.swapaxes(V, -3, -2) + np.swapaxes(V, -3, -1)) / 3.0
    Wp = _e("...ijkd,...kc->...ijcd", _e("...ijkl,...ld->...ijkd", W, Lam), Lam)
    Wp = _e("...ia,...ibcd->...abcd", Lam, _e("...ijcd,...jb->...ibcd", Wp, Lam))
    U = _e("...ijkl,...ij->...kl", W, Lam)
    R = _e("...ak,...kl,...lb->...ab", Lam, U, Lam)
    c0 = 3.0 * _e("...kl,...kl->...", U, Lam)
    quartic = (Wp[..., 0, 0, 0, 0] * m[(4, 0)] + 4 * Wp[..., 0, 0, 0, 1] * m[(3, 1)]
               + 6 * Wp[..., 0, 0, 1, 1] * m[(2, 2)] + 4 * Wp[..., 0, 1, 1, 1] * m[(1, 3)]
               + Wp[..., 1, 1, 1, 1] * m[(0, 4)])
    quad = R[..., 0, 0] * m[(2, 0)] + 2 * R[..., 0, 1] * m[(1, 1)] + R[..., 1, 1] * m[(0, 2)]
    out = 0.125 * (quartic - 6.0 * quad + c0 * m[(0, 0)])
    Q = np.zeros(np.broadcast_shapes(diag.shape[:-1], out.shape) + (2, 2))
    Q[..., _AR, _AR] = diag
    Q[..., 0, 1] = Q[..., 1, 0] = out
    return Q


# ---------------------------------------------------------------------------
# the steps over leading axes, in two parts: ``gain=False`` gives the terms
# that do not read the statistic itself (its source c_l: the averages and the
# statistics it reads), ``gain=True`` the one term that does (M_l x)
# ---------------------------------------------------------------------------

def _covariances(a):
    S, PP = a["S"], a["PP"]
    SSPP = a.quad("sspp")
    o = (lambda X, Y: X[..., :, :, None, None] * Y[..., None, None, :, :])  # noqa: E731
    return (a.quad("ssss") - o(S, S), SSPP - o(S, PP),
            np.moveaxis(SSPP, (-4, -3), (-2, -1)) - o(PP, S), a.quad("pppp") - o(PP, PP))


def _U(a, Th, c, lw):
    return tuple(_x(lw, 2) * m + _x(c, 2) * Th * p for m, p in zip(a["Mss"], a["Mpp"]))


def _V(a, st, h, gain):
    c, r = h["C_W"], h["r"]
    if gain:
        T = _apply_M(a["Mss"], st["V"], 2)
        T = _apply_M(a["Mss"], np.moveaxis(T, (-2, -1), (-4, -3)), 2)
        return _x(c * c * r, 4) * np.moveaxis(T, (-4, -3), (-2, -1))
    S = a["S"]
    return _x(c * c, 4) * (a.quad("ssss") - S[..., :, :, None, None] * S[..., None, None, :, :])


def _G1(a, st, h, gain):
    inner = _apply_M(a["Mss"], st["G1"], 0) if gain else _d4_source(a, st["V"], "s")
    return _x(h["r"] * h["C_W"], 2) * inner


def _B(a, st, h, gain):
    c, r, PP, Th = h["C_W"], h["r"], a["PP"], st["Theta"]
    if gain:
        return _x(r * c * c, 4) * PP[..., :, :, None, None] * PP[..., None, None, :, :] * st["B"]
    return _x(c * c, 4) * Th[..., :, None, :, None] * Th[..., None, :, None, :] * a.quad("pppp")


def _F(a, st, h, gain):
    c, r, G, Th = h["C_W"], h["r"], a["G"], st["Theta"]
    if gain:
        return _x(r * c * c, 4) * _e("...ibx,...ixky,...kdy->...ibkd", G, st["F"], G)
    return _x(c * c, 4) * Th[..., :, None, :, None] * _e("...jlik->...ijkl", a.quad("sspp"))


def _Ustat(a, st, h, gain):
    c, r, PP, Th = h["C_W"], h["r"], a["PP"], st["Theta"]
    if gain:
        return _x(r * c * c, 4) * PP[..., :, None, None, :] * PP[..., None, :, :, None] * st["U"]
    return (_x(c * c, 4) * Th[..., :, :, None, None] * Th[..., :, None, :, None]
            * Th[..., None, :, None, :] * a.quad("qqpp"))


def _D(a, st, h, gain):
    c, lw, r, Th = h["C_W"], h["lambda_W"], h["r"], st["Theta"]
    if gain:
        return _x(r * c * c, 4) * a["PP"][..., :, :, None, None] * _apply_M2(a["Mss"], st["D"])
    cSS, _, cPS, _ = _covariances(a)
    UV = _apply_M(_U(a, Th, c, lw), st["V"], 2)
    return (_x(c, 4) * (_x(lw, 4) * cSS + _x(c, 4) * Th[..., :, :, None, None] * cPS)
            + _x(r * c, 4) * _apply_M2(a["Mss"], UV))


def _A(a, st, h, gain):
    c, lw, r, Th, PP = h["C_W"], h["lambda_W"], h["r"], st["Theta"], a["PP"]
    PP12, PP34 = PP[..., :, :, None, None], PP[..., None, None, :, :]
    if gain:
        return _x(r * c * c, 4) * PP12 * PP34 * st["A"]
    U = _U(a, Th, c, lw)
    UD = _apply_M(U, np.moveaxis(st["D"], (-2, -1), (-4, -3)), 2)
    cSS, cSP, cPS, cPP = _covariances(a)
    T12, T34 = Th[..., :, :, None, None], Th[..., None, None, :, :]
    return (_x(lw * lw, 4) * cSS + _x(lw * c, 4) * (T34 * cSP + T12 * cPS)
            + _x(c * c, 4) * T12 * T34 * cPP
            + _x(r, 4) * (_apply_M2(U, _apply_M(U, st["V"], 2)) + _x(c, 4) * PP34 * UD
                          + _x(c, 4) * PP12 * np.moveaxis(UD, (-4, -3), (-2, -1))))


def _dntk_source(a, Th, c):
    return _x(c * c, 4) * Th[..., :, :, None, None] * Th[..., :, None, :, None] * a.quad("qpps")


def _P(a, st, h, gain):
    c, r = h["C_W"], h["r"]
    pp = _x(r * c * c, 4) * a["PP"][..., None, :, :, None]
    if gain:
        return pp * _e("...ijkb,...ilb->...ijkl", st["P"], a["G"])
    return (_dntk_source(a, st["Theta"], c)
            + pp * a["QS"][..., :, None, None, :] * st["B"][..., _AR, _AR, :, :][..., None])


def _Phi(a, Th, c, lw):
    return _x(c, 3) * Th[..., :, :, None] * a["G2"] + _x(lw, 3) * a["G"]


def _Q(a, st, h, gain):
    c, lw, r, Th, G = h["C_W"], h["lambda_W"], h["r"], st["Theta"], a["G"]
    if gain:
        return (_x(r * c * c, 4) * a["PP"][..., :, :, None, None]
                * _e("...ijkb,...klb->...ijkl", st["Q"], G))
    psps = _e("...jlik->...ijkl", a.quad("sspp"))
    return (_dntk_source(a, Th, c) + _x(lw * c, 4) * Th[..., :, None, :, None] * psps
            + _x(r * c, 4) * _e("...ijx,...ixky,...kly->...ijkl", _Phi(a, Th, c, lw), st["F"], G))


def _R(a, st, h, gain):
    c, lw, r, Th, PP = h["C_W"], h["lambda_W"], h["r"], st["Theta"], a["PP"]
    out = _x(r * c, 4) * PP[..., None, None, :, :]
    if gain:
        return out * _x(c, 4) * PP[..., :, :, None, None] * st["R"]
    psi = _x(c, 2) * Th * a["dqp"] + _x(lw, 2) * a["QS"]
    B = st["B"]
    out = out * (psi[..., :, :, None, None] * B[..., _AR, _AR, :, :][..., :, None, :, :]
                 + _e("...ikly,...ijy->...ijkl", st["P"], _Phi(a, Th, c, lw)))
    K, QQPP = a.Ks, a.quad("qqpp")
    Q3PPP = (a.quad("xppp") - K[..., :, :, None, None] * QQPP
             - K[..., :, None, :, None] * _e("...acbd->...abcd", QQPP)
             - K[..., :, None, None, :] * _e("...adbc->...abcd", QQPP)) \
        / a.diag[..., :, None, None, None]
    T01, T02 = Th[..., :, :, None, None], Th[..., :, None, :, None]
    T03 = Th[..., :, None, None, :]
    return out + (_x(c * c, 4) * T01 * T02 * T03 * Q3PPP
                  + _x(lw * c, 4) * T02 * T03 * a.quad("qspp"))


def _S(a, st, h, gain):
    c, lw, r, Th, PP = h["C_W"], h["lambda_W"], h["r"], st["Theta"], a["PP"]
    T01 = Th[..., :, :, None, None]
    P01 = PP[..., :, :, None, None]
    out = _x(r * c, 4) * PP[..., None, None, :, :]
    if gain:
        return out * _x(c, 4) * P01 * st["S"]
    B = st["B"]
    T02, T13 = Th[..., :, None, :, None], Th[..., None, :, None, :]
    return (out * (_x(c, 4) * T01 * a["QQ"][..., :, :, None, None] * B + _x(lw, 4) * P01 * B)
            + _x(c * c, 4) * T01 * T02 * T13 * a.quad("qqpp")
            + _x(lw * c, 4) * T02 * T13 * a.quad("pppp"))


def _T(a, st, h, gain):
    c, lw, r, Th, PP = h["C_W"], h["lambda_W"], h["r"], st["Theta"], a["PP"]
    P02, P13 = PP[..., :, None, :, None], PP[..., None, :, None, :]
    if gain:
        return _x(r * c * c, 4) * P02 * P13 * st["T"]
    Phi = _Phi(a, Th, c, lw)
    prop = (_e("...ixjy,...ikx,...jly->...ijkl", st["F"], Phi, Phi)
            + _x(c, 4) * P13 * _e("...jlib,...ikb->...ijkl", st["Q"], Phi)
            + _x(c, 4) * P02 * _e("...ikjb,...jlb->...ijkl", st["Q"], Phi))
    T01, T02, T13 = (Th[..., :, :, None, None], Th[..., :, None, :, None],
                     Th[..., None, :, None, :])
    QPPS = a.quad("qpps")
    phi2 = (_x(c * c, 4) * T02 * T13 * a.quad("qqpp")
            + _x(lw * c, 4) * T13 * _e("...badc->...abcd", QPPS)
            + _x(lw * c, 4) * T02 * QPPS
            + _x(lw * lw, 4) * np.moveaxis(a.quad("sspp"), (-4, -3), (-2, -1)))
    return T01 * phi2 + _x(r, 4) * prop


def _H1(a, st, h, gain):
    c, lw, r, Th = h["C_W"], h["lambda_W"], h["r"], st["Theta"]
    if gain:
        return _x(r * c, 2) * a["PP"] * st["H1"]
    V, G1, D, F = st["V"], st["G1"], st["D"], st["F"]
    d_ss = _apply_M(a["Mss"], G1, 0) + _d4_source(a, V, "s")
    d_pp = _apply_M(a["Mpp"], G1, 0) + _d4_source(a, V, "p")
    X = D + _e("...acbd->...abcd", F) + _e("...adbc->...abcd", F)
    i, j = _AR[:, None], _AR[None, :]
    D1, D2, O = a["Mpp"]
    cov = D1 * X[..., i, j, i, i] + D2 * X[..., i, j, j, j] + O * X[..., i, j, i, j]
    return _x(r, 2) * (_x(lw, 2) * d_ss + _x(c, 2) * (Th * d_pp + cov))


_STEPS = {"V": _V, "G1": _G1, "B": _B, "F": _F, "U": _Ustat, "D": _D, "A": _A, "P": _P,
          "Q": _Q, "R": _R, "S": _S, "T": _T, "H1": _H1}
_READS = {"V": (), "G1": ("V",), "B": (), "F": (), "U": (), "D": ("V",), "A": ("V", "D"),
          "P": ("B",), "Q": ("F",), "R": ("B", "P"), "S": ("B",), "T": ("F", "Q"),
          "H1": ("G1", "V", "D", "F")}
_RANK = {"G1": 2, "H1": 2}


def _scan(gain, src):
    """``x^(1) = 0``, ``x^(i+2) = src[i] + gain[i] x^(i+1)``: (L, m) from (L - 1, m[, m])."""
    x = np.zeros((len(src) + 1, src.shape[1]))
    v = np.zeros(src.shape[1])
    for i in range(len(src)):
        v = src[i] + gain[i] @ v
        x[i + 1] = v
    return x


def applies(mlp, Ks, run, names):
    """Whether :func:`affine_two_input` serves this fold: two inputs of a plain MLP with a
    smooth activation, uncorrelated (``|rho| <= 1e-17``) and distinct at every layer stepped
    from, and only the statistics it folds."""
    if mlp.is_residual or mlp.activation.kinks or Ks.shape[1:] != (2, 2):
        return False
    if not set(run) <= set(names) or not set(run) <= set(_STEPS):
        return False
    K = Ks[:-1]
    d = np.sqrt(K[:, 0, 0] * K[:, 1, 1])
    eps = _averages._INDEPENDENT            # as LayerAverages factorizes (read at call time)
    return bool(np.all(np.abs(K[:, 0, 1]) <= eps * d) and np.all(np.abs(K[:, 1, 0]) <= eps * d))


def affine_two_input(mlp, table, Ks, Ths, run, out, errors, accuracy):
    """Fill ``out`` (name -> zeros (L, 2, 2[, 2, 2])) with the statistics ``run`` of two
    uncorrelated inputs (:func:`applies`), all layers at once; ``errors`` (L,) gets the V
    step's integration error per layer as the general fold states it.

    Raises
    ------
    FloatingPointError
        A statistic that overflows (the first layer and name, as the general fold).
    ValueError
        R for an activation whose sigma'' jumps at a kink (the table refuses).
    """
    L = mlp.depth
    n = L - 1
    a = _Averages(mlp.activation, Ks[:n], table, accuracy, n)
    lead = _Lead(a)
    h = {"C_W": np.asarray(mlp.C_W, dtype=float)[1:L],
         "lambda_W": np.asarray(mlp.lambda_W, dtype=float)[1:L],
         "r": np.asarray(mlp.widths, dtype=float)[1:L] / np.asarray(mlp.widths, dtype=float)[:n]}
    hg = {k: v[:, None] for k, v in h.items()}
    Th = Ths[:n]
    if "R" in run:
        a.tab("q3p")                                    # refuses a jumping sigma''
    done = {}
    for name in [k for k in _STEPS if k in run]:
        rank = _RANK.get(name, 4)
        shape, m = (2,) * rank, 2 ** rank
        st = {k: out[k][:n] for k in _READS[name]}
        st["Theta"] = Th
        src = np.broadcast_to(_STEPS[name](a, st, h, False), (n,) + shape).reshape(n, m)
        basis = np.eye(m).reshape((1, m) + shape)
        gain = _STEPS[name](lead, {name: basis, "Theta": Th[:, None]}, hg, True)
        gain = np.swapaxes(np.broadcast_to(gain, (n, m) + shape).reshape(n, m, m), 1, 2)
        x = _scan(gain, src)
        if not np.all(np.isfinite(x)):
            done[name] = int(np.flatnonzero(~np.all(np.isfinite(x), axis=1))[0])
        out[name][:] = x.reshape((L,) + shape)
    if done:        # run is in the order of statistics.ORDER_ONE_OVER_N
        name = min(done, key=lambda k: (done[k], list(run).index(k)))
        raise FloatingPointError(
            f"{name} overflowed at layer {done[name] + 1}; reduce the depth or initialize at "
            "criticality (pdlt.criticality)")
    if errors is not None:
        errors[1:] = np.max(a.ssss_error().reshape(n, -1), axis=1) * h["C_W"] ** 2
    return out
