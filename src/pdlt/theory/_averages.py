r"""The Gaussian averages of one layer, computed once and shared by every step.

Every layer-to-layer step of :mod:`pdlt.theory.statistics` reads the
averages of the activation over the layer's kernel ``K^(l)`` from one
:class:`LayerAverages`: pair matrices such as ``<sigma_a sigma_b>_K``, the
derivative operator ``M`` (``d<f_a g_b>/dK_{cd}``), four-variable tensors
such as ``<sigma_a sigma_b sigma'_c sigma'_d>_K``, and the one-variable
averages on the diagonal. Each is computed on first use and kept, so the
steps of V, A, D, ... at one layer share them.

Conventions: ``s = sigma``, ``p = sigma'``, ``q = sigma''`` *pointwise* (what
autodiff sees: 0 for the ReLU family). Derivatives of Gaussian averages are
distributional and taken by Stein's lemma, ``<f'>_K = <z f>_K / K`` and
``d<f>_K/dK = <f (z^2 - K)>_K / (2 K^2)``, so kinks are exact
(``docs/derivations/`` has the derivations).

One input (``N = 1``) is the same object with (1, 1) arrays; its
one-variable averages are evaluated for all layers at once by
:class:`OneVariableTable` (one vectorized call per function), which is what
keeps the one-input flow as fast as a scalar recursion.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from .. import gaussian
from ..gaussian._multi import (PiecewiseMonomial, entire_growth, expect_nd, normal_family,
                               quad_expectations, rule_up)

__all__ = ["KERNEL_RANGE", "LayerAverages", "OneVariableTable", "representatives", "apply_M", "apply_M2",
           "derivative_operator", "is_odd", "jumps_in_d2"]

_PAIR_RTOL = 1e-13

#: kernel values at which the order-1/n statistics are computed in float64: they
#: scale like K^2 (the NTK ones up to K^3), so K must stay well inside the range
KERNEL_RANGE = (1e-100, 1e100)
_COINCIDE = 1e-4   # 1 - rho^2 below which a pair counts as coinciding in <d^4 F>


class Integrands:
    """Named one-variable functions for :func:`pdlt.gaussian.pair_expectations`.

    The engine reads ``kinks``, ``period``, ``scale_invariant`` and the
    functions by name; ``scale_invariant`` is None so no closed form of the
    activation is applied to functions that are not the activation.
    """

    scale_invariant = None

    def __init__(self, act, **fns):
        self.name = f"{act.name}:derived"
        self.kinks, self.period = act.kinks, act.period
        self.__dict__.update(fns)


def jumps_in_d2(act) -> bool:
    """True if ``sigma''`` jumps at a kink (elu with alpha != 1 ...): R is then refused."""
    for c in act.kinks:
        h = 1e-7 * max(1.0, abs(c))
        if abs(float(act.d2(c + h)) - float(act.d2(c - h))) > 1e-6:
            return True
    return False


def is_odd(act) -> bool:
    """True if ``sigma(-z) = -sigma(z)`` (checked on a grid)."""
    z = np.linspace(0.05, 6.0, 37)
    return bool(np.allclose(act.sigma(-z), -act.sigma(z), rtol=1e-12, atol=1e-14))


def _scale_invariant(act):
    si = act.scale_invariant
    return si if (si is not None and act.name != "monomial") else None


# ---------------------------------------------------------------------------
# one variable, all layers at once
# ---------------------------------------------------------------------------

class OneVariableTable:
    """One-variable averages at an array of kernels (all layers, all inputs at once).

    ``table["ss"]`` is ``<sigma^2>_K`` shaped like ``K``; every name is
    computed on first use by one call of :func:`pdlt.gaussian.expect`
    (error < 1e-14 for the named activations). Names:

    ``ss, ssss, pp, pppp, sspp`` (products), ``dss = <(s p)'>`` (so that
    ``d<s^2>/dK = dss / 2``... in the operator convention ``M = dss``),
    ``dpp = d<p^2>/dK``, ``qs, qspp, qq, qqpp``, ``dqp = <(q p)'>``,
    ``q3p = <sigma''' p>``, ``q3ppp = <sigma''' p^3>``, ``zqppp = <z q p^3>``,
    ``d4ss = <(s^2)''''>``, ``d4pp = <(p^2)''''>``, ``d1ss = <(s^2)'>``,
    ``d3ss = <(s^2)'''>``.
    """

    def __init__(self, act, K):
        K = np.asarray(K, dtype=float)
        if not (np.all(K > 0) and np.all(np.isfinite(K))):
            raise ValueError(
                f"the kernel must be finite and > 0 for the finite-width statistics; got "
                f"K={K.min() if K.size else K} (use C_b > 0 or a nonzero input)")
        self.act, self.K = act, K
        self._v = {}

    @functools.cached_property
    def _nodes(self):
        """``z, s(z), p(z), q(z), w`` on the engine's fixed rule, or None where it does not apply.

        The fixed rule is the one :func:`pdlt.gaussian.expect` itself uses for a
        smooth, non-periodic f at ``K <= 2^16``; evaluating sigma, sigma',
        sigma'' once on its nodes serves every average of the table.
        """
        act, K = self.act, self.K
        if act.kinks or act.period is not None or not np.all(K <= gaussian._K_FIXED_MAX):
            return None
        u, w = gaussian._fixed_rule()
        z = np.sqrt(K)[..., None] * u
        return z, act.sigma(z), act.d1(z), act.d2(z), w, u

    def _E(self, g):
        """``<g(z, s, p, q)>_K`` with ``s, p, q = sigma(z), sigma'(z), sigma''(z)``."""
        nodes = self._nodes
        if nodes is not None:
            z, s_, p_, q_, w, _ = nodes
            return g(z, s_, p_, q_) @ w
        act = self.act
        f = lambda z: g(z, act.sigma(z), act.d1(z), act.d2(z))  # noqa: E731
        return np.asarray(gaussian.expect(f, self.K, kinks=act.kinks, period=act.period),
                          dtype=float)

    def __getitem__(self, name):
        if name not in self._v:
            self._v[name] = self._compute(name)
        return self._v[name]

    _SIMPLE = {
        "ss": lambda z, s, p, q: s * s, "ssss": lambda z, s, p, q: s ** 4,
        "pp": lambda z, s, p, q: p * p, "pppp": lambda z, s, p, q: p ** 4,
        "sspp": lambda z, s, p, q: (s * p) ** 2, "qs": lambda z, s, p, q: q * s,
        "qspp": lambda z, s, p, q: q * s * p * p, "qq": lambda z, s, p, q: q * q,
        "qqpp": lambda z, s, p, q: (q * p) ** 2, "zqppp": lambda z, s, p, q: z * q * p ** 3,
        "zsp": lambda z, s, p, q: z * s * p, "zpzp": lambda z, s, p, q: (z * p) ** 2,
        "zqp": lambda z, s, p, q: z * q * p, "zss": lambda z, s, p, q: z * s * s,
    }

    def _stein(self, name):
        """``<(f^2)^(n)>_K = <f^2 He_n(z / sqrt K)> / K^(n/2)`` (Stein), f = sigma or sigma'.

        ``d4ss, d4pp`` (n = 4) and ``d3ss`` (n = 3). On the fixed rule
        ``z / sqrt K`` is the K-free node u, so He_n is evaluated pointwise;
        otherwise per kernel value, as :func:`pdlt.gaussian.expect` needs.
        The fourth derivatives vanish exactly for the ReLU family.
        """
        act, K = self.act, self.K
        n, f = int(name[1]), (1 if name[2] == "s" else 2)
        if n == 4 and _scale_invariant(act) is not None:
            return np.zeros(K.shape)
        he = {3: lambda u: u ** 3 - 3 * u, 4: lambda u: u ** 4 - 6 * u ** 2 + 3}[n]
        nodes = self._nodes
        if nodes is not None:
            v = (nodes[f] ** 2 * he(nodes[5])) @ nodes[4]
        else:
            fn = act.sigma if f == 1 else act.d1
            v = np.empty(K.shape)
            for idx in np.ndindex(K.shape):
                r = float(np.sqrt(K[idx]))
                v[idx] = gaussian.expect(lambda z: fn(z) ** 2 * he(z / r), float(K[idx]),
                                         kinks=act.kinks, period=act.period)
        return v / K ** (n / 2)

    def _compute(self, name):
        K, E = self.K, self._E
        if name in self._SIMPLE:
            return E(self._SIMPLE[name])
        if name == "dss":
            return self["zsp"] / K
        if name == "dpp":
            if _scale_invariant(self.act) is not None:     # <p^2> is constant in K
                return np.zeros(K.shape)
            return 0.5 * (self["zpzp"] / K - self["pp"]) / K
        if name == "dqp":
            return self["zqp"] / K
        if name == "q3p":
            self._refuse_d3()
            return self["dqp"] - self["qq"]
        if name == "q3ppp":
            self._refuse_d3()
            return self["zqppp"] / K - 3.0 * self["qqpp"]
        if name in ("d4ss", "d4pp", "d3ss"):
            return self._stein(name)
        if name == "d1ss":
            return self["zss"] / K
        raise KeyError(name)

    def _refuse_d3(self):
        if jumps_in_d2(self.act):
            raise ValueError(
                f"activation {self.act.name!r} has a sigma'' that jumps at a kink; the ddNTK "
                "statistic R needs <sigma''' ...> and is not defined for it (ask for S, T, U "
                "only)")

    def at(self, index):
        """A view of this table at ``K[index]`` (one layer)."""
        return _TableRow(self, index)


class _TableRow:
    """The entries of a :class:`OneVariableTable` at one index, as (N,) arrays."""

    def __init__(self, table, index):
        self._t, self._i = table, index

    def __getitem__(self, name):
        return self._t[name][self._i]

    def subset(self, inputs):
        """The same row restricted to ``inputs`` (an index array over the last axis)."""
        return _TableRow(self._t, (self._i, inputs))


# ---------------------------------------------------------------------------
# the derivative operator M and coinciding inputs
# ---------------------------------------------------------------------------

def derivative_operator(Dd, Do, d_diag):
    """``(D1, D2, O)`` of ``M_{(a1a2)(b1b2)} = d<f_a1 g_a2>_K / dK_{b1b2}``.

    ``Dd[a, b]`` is the derivative of ``<f_a g_b>`` by ``K_aa``, ``Do[a, b]``
    the total derivative by ``K_ab``; the ``a1 = a2`` entries carry the
    one-variable derivative ``d_diag`` in ``D1`` only.
    """
    N = Dd.shape[0]
    ar = np.arange(N)
    D1, D2, O = Dd.copy(), Dd.T.copy(), Do.copy()
    D1[ar, ar], D2[ar, ar], O[ar, ar] = d_diag, 0.0, 0.0
    return D1, D2, O


def apply_M(op, X):
    """``sum_{b1b2} M_{(a1a2)(b1b2)} X_{b1b2...}`` on the first two axes of X (symmetric there)."""
    D1, D2, O = op
    N = D1.shape[0]
    ar = np.arange(N)
    Xd = X[ar, ar]
    ex = (None,) * (X.ndim - 2)
    return D1[(...,) + ex] * Xd[:, None] + D2[(...,) + ex] * Xd[None, :] + O[(...,) + ex] * X


def apply_M2(op, X):
    """:func:`apply_M` on the last two axes of a 4-tensor."""
    return np.moveaxis(apply_M(op, np.moveaxis(X, (2, 3), (0, 1))), (0, 1), (2, 3))


def first_derivative(d_first, d_second, d_diag):
    """``G[a1, a2, b] = <d_b (f_a1 g_a2)>`` from ``<f'_a g_b>``, ``<f_a g'_b>``, ``<(f g)'>``."""
    N = d_first.shape[0]
    ar = np.arange(N)
    G = np.zeros((N, N, N))
    G[ar[:, None], ar[None, :], ar[:, None]] += d_first
    G[ar[:, None], ar[None, :], ar[None, :]] += d_second
    G[ar, ar, ar] = d_diag
    return G


def representatives(K, tol=1e-13):
    """Indices of the distinct inputs and the map back (identical rows of K = one input).

    Coinciding inputs are merged before a layer's averages are taken: their
    pair averages are singular for kinked activations, and every statistic
    of a repeated input is a copy.

    Returns
    -------
    reps : ndarray of int (M,)
    inverse : ndarray of int (N,)
        ``K == K[reps][:, reps][inverse][:, inverse]``.
    """
    N = K.shape[0]
    scale = max(float(np.max(np.abs(K))), 1e-300)
    reps, inv = [], np.empty(N, dtype=int)
    for a in range(N):
        for r, b in enumerate(reps):
            if np.max(np.abs(K[a] - K[b])) <= tol * scale:
                inv[a] = r
                break
        else:
            inv[a] = len(reps)
            reps.append(a)
    return np.array(reps), inv


# ---------------------------------------------------------------------------
# one layer
# ---------------------------------------------------------------------------

class LayerAverages:
    """The Gaussian averages at one layer's kernel ``K`` (N, N), computed on first use.

    Parameters
    ----------
    act : Activation
    K : ndarray (N, N)
        Kernel at layer l; every input distinct (see :func:`representatives`),
        every variance > 0.
    diag : mapping
        One-variable averages at ``diag(K)`` (a row of :class:`OneVariableTable`).
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable expectations
        (:mod:`pdlt.gaussian._multi`).
    where : str
        Context for error messages.

    Attributes (lazy)
    -----------------
    S, PP, QS, QQ : ndarray (N, N)
        ``<s_a s_b>``, ``<p_a p_b>``, ``<q_a s_b>``, ``<q_a q_b>``.
    dps, dqp : ndarray (N, N)
        ``<p'_a s_b>`` and ``<q'_a p_b>`` (Stein along z_a).
    Mss, Mpp : operators
        ``d<s_a s_b>/dK`` and ``d<p_a p_b>/dK`` (:func:`derivative_operator`).
    G, G2 : ndarray (N, N, N)
        ``<d_b (p_a1 s_a2)>`` and ``<d_b (q_a1 p_a2)>``.
    t : mapping
        The one-variable averages at the diagonal.
    """

    def __init__(self, act, K, diag, *, accuracy="default", where=""):
        self.act, self.K, self.t = act, np.asarray(K, dtype=float), diag
        self.N = self.K.shape[0]
        self.accuracy, self.where = accuracy, where
        self.diag = np.diag(self.K).copy()
        self._quads = {}
        self._quad_cache = {}
        self.quad_error = None

    # -- pairs -------------------------------------------------------------
    @functools.cached_property
    def _pairs(self):
        act, K, t = self.act, self.K, self.t
        if self.N == 1:
            one = lambda v: np.asarray(v, dtype=float).reshape(1, 1)  # noqa: E731
            return {"S": one(t["ss"]), "PP": one(t["pp"]), "QS": one(t["qs"]),
                    "QQ": one(t["qq"]), "dps": one(t["dss"] - t["pp"]),
                    "dqp": one(t["dqp"] - t["qq"])}
        e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")),
                                       rtol=_PAIR_RTOL)
        S, PP, d = e[("sigma", "sigma")], e[("d1", "d1")], self.diag[:, None]
        if _scale_invariant(act) is not None:
            # ReLU family: z sigma'(z) = sigma(z) and sigma'' = 0 pointwise, so every
            # derived pair is a closed form: <z_a p_a s_b> = <s_a s_b>
            zero = np.zeros_like(S)
            return {"S": S, "PP": PP, "QS": zero, "QQ": zero, "dps": (S - K * PP) / d,
                    "dqp": zero}
        s, p, q = act.sigma, act.d1, act.d2
        fns = Integrands(act, s=s, p=p, zp=lambda z: z * p(z), q=q, zq=lambda z: z * q(z))
        e2 = gaussian.pair_expectations(fns, K, (("zp", "s"), ("q", "q"), ("zq", "p"),
                                                 ("q", "s")), rtol=_PAIR_RTOL)
        QQ = e2[("q", "q")]
        return {"S": S, "PP": PP, "QS": e2[("q", "s")], "QQ": QQ,
                "dps": (e2[("zp", "s")] - K * PP) / d, "dqp": (e2[("zq", "p")] - K * QQ) / d}

    S = property(lambda self: self._pairs["S"])
    PP = property(lambda self: self._pairs["PP"])
    QS = property(lambda self: self._pairs["QS"])
    QQ = property(lambda self: self._pairs["QQ"])
    dps = property(lambda self: self._pairs["dps"])
    dqp = property(lambda self: self._pairs["dqp"])

    @functools.cached_property
    def Mss(self):
        return derivative_operator(0.5 * self.dps, self.PP, self.t["dss"])

    @functools.cached_property
    def Mpp(self):
        if self.N == 1 or not self.act.kinks:
            # smooth: d<p_a p_b>/dK_aa = (1/2)<p''_a p_b> = (1/2)<q'_a p_b>, /dK_ab = <q_a q_b>
            return derivative_operator(0.5 * self.dqp, self.QQ, self.t["dpp"])
        return derivative_operator(*self._hermite_pp(), self.t["dpp"])

    def _hermite_pp(self):
        """``d<p_a p_b>/dK_aa`` and ``d<p_a p_b>/dK_ab`` by the 2x2 Hermite form (kinked p)."""
        act, K, N = self.act, self.K, self.N
        Dd, Do = np.zeros((N, N)), np.zeros((N, N))
        a, b = np.triu_indices(N, 1)
        blk = np.stack([np.stack([K[a, a], K[a, b]], -1), np.stack([K[b, a], K[b, b]], -1)],
                       -2)
        p = act.d1
        f = {i: (lambda i: lambda z: z ** i * p(z))(i) for i in range(3)}
        si = _scale_invariant(act)
        if si is not None:
            f = {i: PiecewiseMonomial(si[0], si[1], i) for i in range(3)}
        m = {(i, j): expect_nd([f[i], f[j]], blk, kinks=act.kinks)
             for i, j in ((0, 0), (2, 0), (1, 1), (0, 2))}
        det = K[a, a] * K[b, b] - K[a, b] ** 2
        La, Lb, Lo = K[b, b] / det, K[a, a] / det, -K[a, b] / det
        waa = La * La * m[2, 0] + 2 * La * Lo * m[1, 1] + Lo * Lo * m[0, 2]
        wbb = Lo * Lo * m[2, 0] + 2 * Lo * Lb * m[1, 1] + Lb * Lb * m[0, 2]
        wab = La * Lo * m[2, 0] + (La * Lb + Lo * Lo) * m[1, 1] + Lo * Lb * m[0, 2]
        Dd[a, b] = 0.5 * (waa - La * m[0, 0])
        Dd[b, a] = 0.5 * (wbb - Lb * m[0, 0])
        Do[a, b] = Do[b, a] = wab - Lo * m[0, 0]
        return Dd, Do

    @functools.cached_property
    def G(self):
        return first_derivative(self.dps, self.PP, self.t["dss"])

    @functools.cached_property
    def G2(self):
        return first_derivative(self.dqp, self.QQ, self.t["dqp"])

    # -- four variables ------------------------------------------------------
    def quad(self, slots):
        """``<f1(z_a1) f2(z_a2) f3(z_a3) f4(z_a4)>_K`` for all (a1..a4), slots from "spqx".

        ``x`` is ``z sigma''(z)``. For one input every tensor is a
        one-variable average from the table; for the ReLU family tensors
        with a ``q`` or ``x`` slot vanish exactly.
        """
        if slots not in self._quads:
            self._quads[slots] = self._quad(slots)
        return self._quads[slots]

    def _quad(self, slots):
        N, act = self.N, self.act
        si = _scale_invariant(act)
        if si is not None and ("q" in slots or "x" in slots):
            return np.zeros((N,) * 4)
        if N == 1:
            key = "".join(sorted(slots))
            table = {"ppss": "sspp", "ssss": "ssss", "pppp": "pppp", "ppqs": "qspp",
                     "ppqq": "qqpp"}
            if key == "pppx":
                v = self.t["zqppp"]
            else:
                v = self.t[table[key]]
            return np.full((1, 1, 1, 1), float(np.asarray(v).reshape(-1)[0]))
        if slots == "ssss":
            T, E = quad_expectations(act, self.K, accuracy=self.accuracy, return_error=True,
                                     where=self.where)
            self.quad_error = E
            return T
        return _quad_tensor(act, self.K, slots, self.accuracy, self._quad_cache)

    # -- fourth derivatives ---------------------------------------------------
    def d4_source(self, V, of="s"):
        r"""``(1/8) sum_b V_{(b1b2)(b3b4)} <d_b1 d_b2 d_b3 d_b4 (f_a f_b)>_K``, f = s or p.

        (N, N). One input: ``(1/8) V <(f^2)''''>``. A pair of distinct inputs
        uses the 2x2 Hermite tensor (Mehler moments, loses ~(1-rho^2)^-2 in
        relative accuracy); pairs with ``1 - rho^2 < 1e-4`` use the
        coinciding limit at the midpoint kernel (error O(1 - rho)).
        """
        N, K, act = self.N, self.K, self.act
        key = "d4ss" if of == "s" else "d4pp"
        Q = np.zeros((N, N))
        ar = np.arange(N)
        Q[ar, ar] = 0.125 * V[ar, ar, ar, ar] * np.asarray(self.t[key]).reshape(N)
        if N == 1:
            return Q
        diag = self.diag
        a, b = np.triu_indices(N, 1)
        Kaa, Kbb, Kab = diag[a], diag[b], K[a, b]
        det = Kaa * Kbb - Kab * Kab
        rel = det / (Kaa * Kbb)
        idx = np.stack([a, b], axis=1)
        W = V[idx[:, :, None, None, None], idx[:, None, :, None, None],
              idx[:, None, None, :, None], idx[:, None, None, None, :]]
        W = (W + np.swapaxes(W, 2, 3) + np.swapaxes(W, 2, 4)) / 3.0
        far = rel >= _COINCIDE
        out = np.empty(len(a))
        if far.any():
            m = self._pair_moments(of)
            P = np.flatnonzero(far)
            Lam = np.empty((len(P), 2, 2))
            Lam[:, 0, 0] = Kbb[P] / det[P]
            Lam[:, 1, 1] = Kaa[P] / det[P]
            Lam[:, 0, 1] = Lam[:, 1, 0] = -Kab[P] / det[P]
            Wf = W[P]
            Wp = np.einsum("pijkl,pia,pjb,pkc,pld->pabcd", Wf, Lam, Lam, Lam, Lam)
            U = np.einsum("pijkl,pij->pkl", Wf, Lam)
            R = np.einsum("pak,pkl,plb->pab", Lam, U, Lam)
            c0 = 3.0 * np.einsum("pkl,pkl->p", U, Lam)
            aa, bb = a[P], b[P]
            mm = {k: v[aa, bb] for k, v in m.items()}
            quartic = (Wp[:, 0, 0, 0, 0] * mm[(4, 0)] + 4 * Wp[:, 0, 0, 0, 1] * mm[(3, 1)]
                       + 6 * Wp[:, 0, 0, 1, 1] * mm[(2, 2)] + 4 * Wp[:, 0, 1, 1, 1] * mm[(1, 3)]
                       + Wp[:, 1, 1, 1, 1] * mm[(0, 4)])
            quad = R[:, 0, 0] * mm[(2, 0)] + 2 * R[:, 0, 1] * mm[(1, 1)] + R[:, 1, 1] * mm[(0, 2)]
            out[P] = 0.125 * (quartic - 6.0 * quad + c0 * mm[(0, 0)])
        if (~far).any():
            P = np.flatnonzero(~far)
            Wbar = W[P].reshape(len(P), -1).mean(axis=1)
            mid = OneVariableTable(act, 0.5 * (Kaa[P] + Kbb[P]))[key]
            out[P] = 0.125 * Wbar * mid
        Q[a, b] = out
        Q[b, a] = out
        return Q

    def _pair_moments(self, of):
        """``m[i, j][a, b] = <z_a^i f_a z_b^j f_b>`` for i + j in {0, 2, 4}, f = s or p."""
        f = self.act.sigma if of == "s" else self.act.d1
        fns = {f"f{i}": (lambda i: lambda z: z ** i * f(z))(i) for i in range(5)}
        terms = (("f0", "f0"), ("f1", "f1"), ("f2", "f2"), ("f2", "f0"), ("f4", "f0"),
                 ("f3", "f1"))
        e = gaussian.pair_expectations(Integrands(self.act, **fns), self.K, terms,
                                       rtol=_PAIR_RTOL)
        m = {(int(a[1]), int(b[1])): v for (a, b), v in e.items()}
        for (i, j) in list(m):
            m[(j, i)] = m[(i, j)].T
        return m


def _quad_tensor(act, K, slots, accuracy, cache):
    """``<f1(z_a1) f2(z_a2) f3(z_a3) f4(z_a4)>`` for N inputs (coinciding slots merged)."""
    N = K.shape[0]
    # GELU/erf slots as NormalFamily: their innermost axis is then a closed form
    base = {"s": normal_family(act, "sigma"), "p": normal_family(act, "d1"),
            "q": normal_family(act, "d2"), "x": lambda z: z * act.d2(z)}
    keys = {}
    for idx in itertools.product(range(N), repeat=4):
        per = {}
        for a, nm in zip(idx, slots):
            per.setdefault(a, []).append(nm)
        var = sorted((tuple(sorted(v)), a) for a, v in per.items())
        keys[idx] = (tuple(v[0] for v in var), tuple(v[1] for v in var))
    todo = {}
    for key in set(keys.values()):
        if key not in cache:
            todo.setdefault(key[0], []).append(key[1])
    si = _scale_invariant(act)
    if si is not None:
        pm = {"s": PiecewiseMonomial(si[0], si[1], 1), "p": PiecewiseMonomial(si[0], si[1], 0)}
    kw = dict(kinks=act.kinks, period=act.period)
    for sig, idxs in todo.items():
        I = np.array(idxs)
        if si is not None:
            fs = [functools.reduce(lambda a, b: a * b, [pm[n] for n in nm]) for nm in sig]
        else:
            fs = [base[nm[0]] if len(nm) == 1 else
                  (lambda names: lambda z: np.prod([base[n](z) for n in names], axis=0))(nm)
                  for nm in sig]
        if len(sig) == 1:
            vals = np.atleast_1d(gaussian.expect(fs[0], K[I[:, 0], I[:, 0]], **kw))
        else:
            Ks = K[I[:, :, None], I[:, None, :]]
            # four distinct inputs with derivative slots (A, P..U): one rule up. At the
            # default these were 2e-8..4e-8 of tanh's A, P, Q, R, T, U at N = 4 (the
            # difference to the next rule), the rest of the fold 1e-9 or better;
            # sigma-only tensors (V, G1) go through quad_expectations, unchanged.
            # (smooth path only: kinked activations take the exact-inner split path,
            # whose rules are its own and already within 4e-10)
            acc = rule_up(accuracy) if len(sig) == 4 and not act.kinks else accuracy
            vals = expect_nd(fs, Ks, kinks=act.kinks, accuracy=acc, growth=entire_growth(act))
        for ix, v in zip(idxs, np.atleast_1d(vals)):
            cache[(sig, ix)] = float(v)
    T = np.empty((N,) * 4)
    for idx, key in keys.items():
        T[idx] = cache[key]
    return T
