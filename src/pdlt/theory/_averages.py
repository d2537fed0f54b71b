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
keeps the one-input flow as fast as a scalar recursion. Two inputs (the
reference problem of ``pdlt diagnose``) get the averages that depend on K
only for a block of layers at once (:class:`LayerBlock`: one vectorized
call instead of one per layer), and inputs uncorrelated to round-off get
their pair averages as products of one-variable ones.
"""

from __future__ import annotations

import contextlib
import functools
import itertools

import numpy as np

from .. import gaussian
from ..gaussian import _trig
from ..gaussian._closed import closed_family, pair_terms
from ..gaussian._exppw import ExpPiecewise, exp_product
from ..gaussian._graded import GradedPlans, expect_graded, graded_axes
from ..gaussian._multi import (_GH_STEP_UP_SIGMA, PiecewiseMonomial, _power, _quadruple_groups,
                               det2, entire_growth, expect_nd, normal_family, quad_expectations,
                               rule_up)
from ._capped import (_GRADED_AXES, _GRADED_NAMES, _Budget, _covariance_rounding, _cs_scale,
                      _unresolved_estimate)

__all__ = ["KERNEL_RANGE", "LayerAverages", "LayerBlock", "OneVariableTable", "representatives", "apply_M", "apply_M2",
           "derivative_operator", "is_odd", "jumps_in_d2"]

_PAIR_RTOL = 1e-13

#: kernel values at which the order-1/n statistics are computed in float64: they
#: scale like K^2 (the NTK ones up to K^3), so K must stay well inside the range
KERNEL_RANGE = (1e-100, 1e100)
_COINCIDE = 1e-4   # 1 - rho^2 below which a pair counts as coinciding in <d^4 F>
#: 1 - rho^2 at or below which two inputs are collinear to round-off (no Hermite form)
_COLLINEAR = 64 * np.finfo(float).eps
#: |rho| below which inputs count as uncorrelated (pair averages factorize exactly
#: in float64: the neglected terms are O(rho) relative)
_INDEPENDENT = 1e-17


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


def _jumps(fn, kinks) -> bool:
    """True if ``fn`` jumps at one of ``kinks`` (one-sided values 2e-7 apart differ)."""
    for c in kinks:
        h = 1e-7 * max(1.0, abs(c))
        if abs(float(fn(c + h)) - float(fn(c - h))) > 1e-6:
            return True
    return False


def jumps_in_d2(act) -> bool:
    """True if ``sigma''`` jumps at a kink (elu with alpha != 1 ...): R is then refused."""
    return _jumps(act.d2, act.kinks)


def jumps_in_d1(act) -> bool:
    """True if ``sigma'`` jumps at a kink (the ReLU family, elu with alpha != 1 ...)."""
    return _jumps(act.d1, act.kinks)


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
    ``d3ss = <(s^2)'''>``; ``m<i><slots>`` is ``<z^i prod(slots)>`` (``m0s =
    <sigma>``, ``m3pp = <z^3 sigma'^2>``), the factors of pair averages of
    uncorrelated inputs.
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
        return (z, *act.values(z), w, u)       # one pass (bitwise the three calls)

    def _E(self, g):
        """``<g(z, s, p, q)>_K`` with ``s, p, q = sigma(z), sigma'(z), sigma''(z)``."""
        nodes = self._nodes
        if nodes is not None:
            z, s_, p_, q_, w, _ = nodes
            return g(z, s_, p_, q_) @ w
        act = self.act
        f = lambda z: g(z, act.sigma(z), act.d1(z), act.d2(z))  # noqa: E731
        # sin: closed form at any K inside gaussian.expect (pdlt.gaussian._trig)
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
            t = _trig.as_trig([lambda z: fn(z) ** 2], None if act.kinks else act.period)[0]
            if isinstance(t, _trig.TrigPoly):
                # sin: <(f^2)^(n)>_K itself in closed form (no K^(n/2) division)
                return _trig.trig_expect1(t.derivative(n), K)
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
        if name[0] == "m" and name[1:2].isdigit() and set(name[2:]) <= set("spq"):
            # "m<i><slots>": <z^i prod(slots)>, e.g. m0s = <sigma>, m2pp = <z^2 sigma'^2>
            i, slots = int(name[1]), name[2:]

            def g(z, s, p, q):
                v = {"s": s, "p": p, "q": q}[slots[0]]
                for c in slots[1:]:
                    v = v * {"s": s, "p": p, "q": q}[c]
                for _ in range(i):
                    v = v * z
                return v
            return E(g)
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


def shift_error(avg, of, dg, G=None, source=0.0):
    """Estimated absolute error (N, N) of a mean shift ``delta_ff = M_ff g + source``.

    ``of`` "s" (G1's ``delta_{sigma sigma}``) or "p" (H1's ``delta_{sigma' sigma'}``) at
    the layer of ``avg`` (:class:`LayerAverages`): ``|M_ff| dg`` (``dg`` (N, N): the
    error of the g it steps from, carried through the operator's absolute values) plus
    ``source`` (the fourth-derivative source's estimate, ``avg.d4_error[of]``, where it
    was evaluated) plus, for "p" where the operator has an estimate of its own
    (``avg.Mpp_error``: kinked activations, Stein terms with delta functions),
    ``|dM_pp| |G|`` (``G``: the values of g). Written once for the plain steps
    (``statistics._d4_propagate``) and the residual ones (``residual_multi``).
    """
    op = avg.Mss if of == "s" else avg.Mpp
    d = apply_M(tuple(np.abs(o) for o in op), dg) + source
    if of == "p" and G is not None and getattr(avg, "Mpp_error", None) is not None:
        d = d + apply_M(avg.Mpp_error, np.abs(G))
    return d


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
    block : LayerBlock, optional
        The kernels of this and neighbouring layers: the averages that do not
        depend on the layer's statistics (four-variable tensors, the kinked
        ``d<p p>/dK``) are then evaluated for every layer of the block in one
        vectorized call (same rules, same numbers) and this layer's row is
        read; ``K`` must be ``block.Ks[pos]``.
    pos : int, optional
        This layer's index in ``block``.

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

    def __init__(self, act, K, diag, *, accuracy="default", where="", block=None, pos=None):
        self.act, self.K, self.t = act, np.asarray(K, dtype=float), diag
        self._block, self._pos = block, pos
        self.N = self.K.shape[0]
        self.accuracy, self.where = accuracy, where
        self.diag = np.diag(self.K).copy()
        self._quads = {}
        self._quad_cache = {}
        self._moments = {}
        self._d4 = {}
        self._stein = {}
        #: of -> (dT without the step difference, T at half the step), kinked user activations
        self._stein_alt = {}
        self.quad_error = None
        #: the estimated absolute error of :attr:`Mpp` (an operator), where it is known
        self.Mpp_error = None
        #: of -> (N, N) estimated absolute error of :meth:`d4_source` (and the method per pair)
        self.d4_error, self.d4_method = {}, {}

    def _nd(self, name, fs, I, *, kinks=(), period=None, accuracy="default", return_error=False,
            growth=None, gh_up=None):
        """``<prod_k fs[k](z_{I[:, k]})>`` at this layer's K for every row of ``I`` (M, k).

        :func:`pdlt.gaussian.expect_nd` (one variable: :func:`pdlt.gaussian.expect`)
        at the covariances ``K[I[:, :, None], I[:, None, :]]``; in a block, one
        call for the block's layers (:class:`LayerBlock`): ``name`` must name
        ``fs`` (the block evaluates the first layer's ``fs`` for all of them).
        """
        kw = dict(kinks=kinks, period=period, accuracy=accuracy, return_error=return_error,
                  growth=growth, gh_up=gh_up)
        if self._block is None:
            if (_GRADED is not None and I.shape[1] >= 2 and name[0] in ("ssss", "quad")
                    and _graded_act(self.act)):
                return _GRADED.eval(self.act, name, fs, self.K, I, kw)
            return _eval_nd(fs, self.K, I, kw)
        key = (name, I.tobytes(), I.shape, tuple(sorted(kw.items())))
        return self._block.row(key, self._pos, lambda Ks: _eval_nd(fs, Ks, I, kw))

    # -- pairs -------------------------------------------------------------
    @functools.cached_property
    def _independent(self):
        """True when every pair of inputs is uncorrelated to round-off.

        ``|rho_ab| <= _INDEPENDENT`` (below float64 resolution): a pair
        average ``<f(z_a) g(z_b)>`` is then ``<f>_a <g>_b`` (the Mehler series'
        first term; the rest is ``O(rho)``), from the one-variable table. An
        odd activation with ``C_b = 0`` keeps orthogonal inputs exactly
        uncorrelated at every layer (``pdlt diagnose``'s reference problem).
        """
        if self.N == 1:
            return False
        d = np.sqrt(self.diag)
        rho = np.abs(self.K) / np.multiply.outer(d, d)
        np.fill_diagonal(rho, 0.0)
        return bool(np.max(rho) <= _INDEPENDENT)

    def _factorized(self, fa, fb, ia=0, ib=0):
        """``<z_a^ia fa(z_a) z_b^ib fb(z_b)>`` (N, N) of uncorrelated inputs (:attr:`_independent`)."""
        t, N = self.t, self.N
        out = np.multiply.outer(np.asarray(t[f"m{ia}{fa}"]).reshape(N),
                                np.asarray(t[f"m{ib}{fb}"]).reshape(N))
        ar = np.arange(N)
        out[ar, ar] = np.asarray(t[f"m{ia + ib}{''.join(sorted(fa + fb))}"]).reshape(N)
        return out

    @functools.cached_property
    def _pairs(self):
        act, K, t = self.act, self.K, self.t
        if self.N == 1:
            one = lambda v: np.asarray(v, dtype=float).reshape(1, 1)  # noqa: E731
            return {"S": one(t["ss"]), "PP": one(t["pp"]), "QS": one(t["qs"]),
                    "QQ": one(t["qq"]), "dps": one(t["dss"] - t["pp"]),
                    "dqp": one(t["dqp"] - t["qq"])}
        d = self.diag[:, None]
        if self._independent:
            f = self._factorized
            S, PP = f("s", "s"), f("p", "p")
            if _scale_invariant(act) is not None:
                zero = np.zeros_like(S)
                return {"S": S, "PP": PP, "QS": zero, "QQ": zero, "dps": (S - K * PP) / d,
                        "dqp": zero}
            QQ = f("q", "q")
            return {"S": S, "PP": PP, "QS": f("q", "s"), "QQ": QQ,
                    "dps": (f("p", "s", ia=1) - K * PP) / d,
                    "dqp": (f("q", "p", ia=1) - K * QQ) / d}
        family = closed_family(act)
        if self._block is not None and family is not None:
            # closed forms (ReLU family, erf, sin, gelu) for the whole block at once
            e = self._block.row(("pairs", "closed"), self._pos,
                                lambda Ks: _closed_pairs(family, Ks))
        else:
            e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")),
                                           rtol=_PAIR_RTOL)
        S, PP = e[("sigma", "sigma")], e[("d1", "d1")]
        if _scale_invariant(act) is not None:
            # ReLU family: z sigma'(z) = sigma(z) and sigma'' = 0 pointwise, so every
            # derived pair is a closed form: <z_a p_a s_b> = <s_a s_b>
            zero = np.zeros_like(S)
            return {"S": S, "PP": PP, "QS": zero, "QQ": zero, "dps": (S - K * PP) / d,
                    "dqp": zero}
        s, p, q = act.sigma, act.d1, act.d2
        fns = Integrands(act, s=s, p=p, zp=lambda z: z * p(z), q=q, zq=lambda z: z * q(z))
        terms = (("zp", "s"), ("q", "q"), ("zq", "p"), ("q", "s"))
        e2 = ((_trig.active(act.period) and _trig.trig_pairs(fns, K, terms))
              or gaussian.pair_expectations(fns, K, terms, rtol=_PAIR_RTOL))
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
        kinked = self.N > 1 and bool(self.act.kinks)
        if kinked and self._stein_applies("s") and not self._independent:
            # kinked: d<p_a p_b>/dK_aa = (1/2)<sigma'''_a sigma'_b> and /dK_ab =
            # <sigma''_a sigma''_b>, distributionally: the Stein terms T3, T2 of f = sigma
            # (closed forms for the ReLU family), uniform in rho. The Hermite form lost
            # ~eps / (1 - rho^2)^2: 1e-3 of H1 at 1 - rho = 2.5e-7 for elu, unreported
            T, dT = self._stein_terms("s")
            Dd, Do = 0.5 * T[3], T[2].copy()
            eDd, eDo = 0.5 * dT[3], dT[2].copy()
            off = ~np.eye(self.N, dtype=bool)
            bad = off & ~(np.isfinite(Dd) & np.isfinite(Do) & np.isfinite(eDd) & np.isfinite(eDo))
            if bad.any():       # collinear to round-off: the Hermite form, error not known
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    Hd, Ho = self._hermite_pp()
                Dd[bad], Do[bad], eDd[bad], eDo[bad] = Hd[bad], Ho[bad], np.inf, np.inf
            np.fill_diagonal(eDd, 0.0)
            np.fill_diagonal(eDo, 0.0)
            self.Mpp_error = derivative_operator(eDd, eDo, 1e-14 * np.abs(self.t["dpp"]))
            return derivative_operator(Dd, Do, self.t["dpp"])
        if not kinked or (_scale_invariant(self.act) is None and not jumps_in_d1(self.act)):
            # d<p_a p_b>/dK_aa = (1/2)<p''_a p_b> = (1/2)<q'_a p_b>, /dK_ab = <q_a q_b>, with
            # Stein's lemma for <q'_a p_b> (dqp): well conditioned at any rho, and right
            # wherever sigma' is continuous (q = sigma'' may jump, it has no delta); a kinked
            # sigma' of unknown jumps takes the Hermite form below (~(1 - rho^2)^-1 lost,
            # which A and D then square)
            return derivative_operator(0.5 * self.dqp, self.QQ, self.t["dpp"])
        return derivative_operator(*self._hermite_pp(), self.t["dpp"])

    def _hermite_pp(self):
        """``d<p_a p_b>/dK_aa`` and ``d<p_a p_b>/dK_ab`` by the 2x2 Hermite form (kinked p)."""
        act, K, N = self.act, self.K, self.N
        Dd, Do = np.zeros((N, N)), np.zeros((N, N))
        a, b = np.triu_indices(N, 1)
        p = act.d1
        f = {i: (lambda i: lambda z: z ** i * p(z))(i) for i in range(3)}
        si = _scale_invariant(act)
        if si is not None:
            f = {i: PiecewiseMonomial(si[0], si[1], i) for i in range(3)}
        I = np.stack([a, b], axis=1)
        m = {(i, j): self._nd(("hermite_pp", i, j), [f[i], f[j]], I, kinks=act.kinks)
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
            if (self._block is None and _GRADED is not None and _graded_act(act)
                    and np.max(self.diag) > _GRADED_K):
                # the same groups and rules, the three- and four-variable ones above
                # _GRADED_K through the graded rule (:class:`_GradedPlain`)
                T, E = _quad_ssss(act, N, self.accuracy, self._nd)
            elif self._block is None:
                T, E = quad_expectations(act, self.K, accuracy=self.accuracy,
                                         return_error=True, where=self.where)
            else:   # the same expectations, for every layer of the block at once
                T, E = self._block.row(
                    ("ssss", self.accuracy), self._pos,
                    lambda Ks: _quad_ssss(act, N, self.accuracy, _evaluator(Ks)))
            self.quad_error = E
            return T
        if self._block is not None:
            return self._block.row(
                ("quad", slots, self.accuracy), self._pos,
                lambda Ks: _quad_tensor(act, Ks, slots, self.accuracy, None, _evaluator(Ks)))
        return _quad_tensor(act, self.K, slots, self.accuracy, self._quad_cache, self._nd)

    # -- fourth derivatives ---------------------------------------------------
    def d4_source(self, V, of="s"):
        r"""``(1/8) sum_b V_{(b1b2)(b3b4)} <d_b1 d_b2 d_b3 d_b4 (f_a f_b)>_K``, f = s or p.

        (N, N). One input: ``(1/8) V <(f^2)''''>``. A pair of distinct inputs
        has up to three formulations (``docs/derivations/metric.rst``), each
        with an error estimate; the one with the smallest estimate is taken
        per pair:

        * ``"stein"`` (smooth activations; the ReLU family in closed form; elu and
          other kinked activations with a continuous sigma, a user's too, with their
          delta functions at the kinks, :func:`_kink_terms`; the error of a user's
          finite differences and one-sided limits: the source's change at half the
          step): ``<f^(k)_a f^(4-k)_b>`` by Stein's
          lemma along the rows of K (no ``K^{-1}``), from pair averages with at
          most two derivatives of f per input; uniformly accurate in rho.
        * ``"hermite"``: the 2x2 Hermite tensor (pair moments contracted with
          ``K^{-1}`` four times): loses ~(1 - rho^2)^-2 in relative accuracy.
        * ``"midpoint"``: the coinciding limit at the midpoint kernel, error
          O(1 - rho) (kinked activations, ``1 - rho^2 < 1e-4`` only).

        The estimated absolute error of the source, (N, N), is kept in
        ``self.d4_error[of]``; the formulation taken per pair in
        ``self.d4_method[of]``.
        """
        N, K = self.N, self.K
        key = "d4ss" if of == "s" else "d4pp"
        Q, E = np.zeros((N, N)), np.zeros((N, N))
        ar = np.arange(N)
        Q[ar, ar] = 0.125 * V[ar, ar, ar, ar] * np.asarray(self.t[key]).reshape(N)
        E[ar, ar] = 1e-14 * np.abs(Q[ar, ar])      # one-variable averages: < 1e-14
        methods = np.full((N, N), "", dtype=object)
        si = _scale_invariant(self.act)
        if N == 1 or (si is not None and si[0] == si[1]):
            # (a linear activation: every term has >= 2 derivatives of f on one input: 0)
            self.d4_error[of], self.d4_method[of] = E, methods
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
        cands = []
        stein = self._stein_applies(of) and not self._independent
        if stein:
            T, dT = self._stein_terms(of)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                val, err = d4_pair_source(W, T[:, a, b], dT[:, a, b])
                if of in self._stein_alt:
                    # kinked user activation: the step difference of the source itself,
                    # twice (_stein_terms) (the T_k, up to (1 - rho)^-3/2, cancel in it:
                    # |T - T2| of each would count their error before the cancellation)
                    dT1, T2 = self._stein_alt[of]
                    err = (d4_pair_source(W, T[:, a, b], dT1[:, a, b])[1]
                           + 2.0 * np.abs(d4_pair_source(W, T2[:, a, b], 0 * dT1[:, a, b])[0]
                                          - val))
                if si is not None:
                    # ReLU family: the closed forms' only error is det's rounding, the same
                    # for every T_k (a shift of K): measured as the change of the source
                    # when K_ab moves by +-4 ulp, not as |T_k| eps / (1 - rho^2) each
                    eps = np.finfo(float).eps
                    spread = np.zeros(len(a))
                    for sgn in (1.0, -1.0):
                        Kp = K * (1.0 + sgn * 4 * eps)
                        Kp[ar, ar] = diag
                        Tp, _ = _piecewise_stein_terms(si, Kp, of)
                        spread = np.maximum(spread, np.abs(
                            d4_pair_source(W, Tp[:, a, b], np.zeros((5, len(a))))[0] - val))
                    err = 4.0 * spread + d4_pair_source(W, T[:, a, b], np.zeros((5, len(a))))[1]
            bad = ~(np.isfinite(val) & np.isfinite(err))     # ReLU family, collinear inputs
            val[bad], err[bad] = 0.0, np.inf
            cands.append(("stein", val, err))
        else:
            # kinked activations (and uncorrelated inputs, where K^{-1} is diagonal and the
            # form well conditioned): the Hermite form
            mm = {k: v[a, b] for k, v in self._pair_moments(of).items()}
            rerr = np.full(len(a), self._moment_rtol)
            ok = rel > _COLLINEAR
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                val, bound = _hermite_source(W, Kaa, Kbb, Kab, np.where(ok, det, 1.0), mm, rerr)
            val, bound = np.where(ok, val, 0.0), np.where(ok & np.isfinite(bound), bound, np.inf)
            loose = ok & (bound > 1e-12 * np.abs(val))
            if loose.any() and not self._independent:
                # the running-error bound counts every product at its worst; measure the
                # round-off instead: the same form at K with its off-diagonal moved by
                # +-4 ulp (moments and K^{-1} recomputed; the exact value moves by
                # ~4 eps / (1 - rho) relative), scaled by the moments' error in ulps
                eps = np.finfo(float).eps
                spread = np.zeros(len(a))
                for sgn in (1.0, -1.0):
                    Kp = K * (1.0 + sgn * 4 * eps)
                    Kp[ar, ar] = diag
                    Kab2 = Kp[a, b]
                    mp_ = {k: v[a, b] for k, v in self._moments_at(Kp, of).items()}
                    v2, _ = _hermite_source(W, Kaa, Kbb, Kab2, Kaa * Kbb - Kab2 * Kab2, mp_, rerr)
                    spread = np.maximum(spread, np.abs(v2 - val))
                measured = 4.0 * spread * max(1.0, self._moment_rtol / eps) + \
                    8 * eps * np.abs(val)
                bound = np.where(loose, np.minimum(bound, measured), bound)
            cands.append(("hermite", val, bound))
        near = rel < _COINCIDE
        if near.any() and (not stein or self.act.kinks):
            P = np.flatnonzero(near)
            out, err = np.zeros(len(a)), np.full(len(a), np.inf)
            Wk = _pattern_weights(W[P])                          # (p, 5)
            Wbar = W[P].reshape(len(P), -1).mean(axis=1)
            mid = 0.125 * Wbar * self._d4_mid(key)[P]
            out[P] = mid
            # the O(1 - rho) terms of the coinciding limit: the kernel around its
            # midpoint (times the value), and the spread of V over the pair's index
            # patterns times each pattern's own average (by the Hermite form, with
            # its error: where that is unresolved, so is this estimate -- and large)
            sep = (1.0 - Kab[P] / np.sqrt(Kaa[P] * Kbb[P])
                   + np.abs(Kaa[P] - Kbb[P]) / (Kaa[P] + Kbb[P]))
            okP = rel[P] > _COLLINEAR
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                if stein:
                    Tk, dTk = T[:, a[P], b[P]], dT[:, a[P], b[P]]
                else:
                    Tk, dTk = _hermite_patterns(Kaa[P], Kbb[P], Kab[P],
                                                np.where(okP, det[P], 1.0),
                                                {k: v[P] for k, v in mm.items()}, rerr[P])
                spread_err = 0.125 * np.einsum("k,pk,kp->p", _BINOM4,
                                               np.abs(Wk - Wbar[:, None]), np.abs(Tk) + dTk)
            spread_err = np.where(np.isfinite(spread_err), spread_err, np.inf)
            # exactly collinear inputs (1 - rho^2 at round-off): z_b = c z_a, the pair
            # averages are one-variable ones and the limit has no spread term
            err[P] = 4.0 * np.abs(mid) * sep + np.where(okP, spread_err, 0.0)
            cands.append(("midpoint", out, err))
        for c in cands:
            c[2][~np.isfinite(c[2])] = np.inf
        best_val, best_err = cands[0][1].copy(), cands[0][2].copy()
        best = np.full(len(a), cands[0][0], dtype=object)
        for name, val, err in cands[1:]:
            take = err < best_err
            best_val[take], best_err[take], best[take] = val[take], err[take], name
        Q[a, b] = Q[b, a] = best_val
        E[a, b] = E[b, a] = best_err
        methods[a, b] = methods[b, a] = best
        self.d4_error[of], self.d4_method[of] = E, methods
        return Q

    def _stein_applies(self, of):
        """The Stein formulation of ``<d^4 (f_a f_b)>`` (``of`` "s": f = sigma; "p": f =
        sigma'): the ReLU family (closed forms); smooth activations with ``f''``
        (``sigma''`` for "s", every activation has it; ``sigma^(3)``,
        :func:`third_derivative`, for "p"); kinked activations with a continuous sigma,
        with the delta functions of f's derivatives at the kinks (:func:`_kink_terms`):
        elu's jumps exact, other activations' (a user's, exact or numerical derivatives)
        from one-sided limits and their pointwise derivatives one-sided near the kinks
        (:func:`_kink_jumps`, :func:`_kinked_derivative`; not for kinks closer than
        :data:`_KINK_GAP`, nor periodic ones: the Hermite form)."""
        if _scale_invariant(self.act) is not None:
            return True
        if self.act.kinks:
            return _kink_jumps(self.act, "s") is not None and (
                of == "s" or _kink_jumps(self.act, "p") is not None)
        return of == "s" or third_derivative(self.act) is not None

    @functools.cached_property
    def _moment_rtol(self):
        """Relative error of the pair moments of the Hermite form."""
        if self._independent:
            return 2e-14                     # products of one-variable averages
        if _scale_invariant(self.act) is not None:
            return 1e-15                     # exact angular integrals (round-off)
        return _PAIR_RTOL

    def _stein_terms(self, of):
        """``T[k][a, b] = <f^(k)(z_a) f^(4-k)(z_b)>`` (5, N, N) and their estimated errors.

        With ``F = (f, f', f'')`` (``sigma, sigma', sigma''`` for ``of = "s"``,
        ``sigma', sigma'', sigma'''`` for ``"p"``) and Stein's lemma along row a
        of K, ``<z_a H> = K_aa <d_a H> + K_ab <d_b H>``:

        * ``T2 = <F2_a F2_b>``
        * ``T3 = (<z_a F2_a F1_b> - K_ab T2) / K_aa``
        * ``X = <z_a F3_a F0_b> = (<z_a^2 F2_a F0_b> - K_ab <z_a F2_a F1_b>) / K_aa - <F2_a F0_b>``
        * ``T4 = (X - K_ab T3) / K_aa``; ``T1, T0`` the transposes of ``T3, T4``.

        Only ``K_aa`` divides (no ``K^{-1}``): the relative accuracy of the pair
        averages (:func:`pdlt.gaussian.pair_expectations`, absolute error
        ``<= rtol sqrt(<g_a^2> <h_b^2>)``) carries over with O(1) factors.
        """
        if of in self._stein:
            return self._stein[of]
        si = _scale_invariant(self.act)
        if si is not None:      # closed forms; K only: per block of layers when in one
            self._stein[of] = (_piecewise_stein_terms(si, self.K, of) if self._block is None
                               else self._block.row(("stein", of), self._pos,
                                                    lambda Ks: _piecewise_stein_terms(si, Ks, of)))
            return self._stein[of]
        act = self.act
        jumps = _kink_jumps(act, of) if act.kinks else None
        if act.kinks and not _is_elu(act):
            # a user's kinked activation: its pointwise derivatives one-sided near the kinks
            fs = _kinked_pointwise(act, of, 1.0)
        elif of == "s":
            fs = [act.sigma, act.d1, act.d2]
        else:
            fs = [act.d1, act.d2, jumps[1] if jumps else third_derivative(act)]
        T, dT = self._stein_from(fs, jumps[0] if jumps else None)
        # finite-difference derivatives (a user's activation without exact d1, d2; sigma^(3)
        # without a closed form) carry their own error: the same terms with each of them
        # at half the step (fd_alternatives) estimate it
        alt = fd_alternatives(act, of)
        if act.kinks and not _is_elu(act):
            # kinked (not elu): the jumps from one-sided limits and the pointwise derivatives
            # near the kinks (Chebyshev series of each side) carry an error too: redone at
            # half the step and width, with the functions of fd_alternatives; twice the
            # difference (the one-sided limits of exact d1, d2 are O(h^2): the half step
            # leaves 1/4 of their error, the difference is 3/4 of it)
            alt_jumps = _kink_jumps(act, of, 0.5)[0]
            T2, dT2 = self._stein_from([alt.get(i, f) for i, f in enumerate(fs)], alt_jumps)
            self._stein_alt[of] = (dT, T2)
            dT = dT + dT2 + 2.0 * np.abs(T - T2)
        elif alt:
            T2, dT2 = self._stein_from([alt.get(i, f) for i, f in enumerate(fs)])
            dT = dT + dT2 + np.abs(T - T2)
        self._stein[of] = (T, dT)
        return T, dT

    def _stein_from(self, fs, kink_jumps=None):
        """:meth:`_stein_terms` for the functions ``fs = (f, f', f'')`` (pointwise parts),
        plus the delta functions of f', f'' at the kinks (``kink_jumps``,
        :func:`_kink_jumps`): ``(T, dT)``."""
        act, K = self.act, self.K
        f0, f1, f2 = fs
        g = {"f0": f0, "f1": f1, "f2": f2, "zf2": lambda z: z * f2(z),
             "zzf2": lambda z: z * z * f2(z)}
        terms = (("f2", "f2"), ("zf2", "f1"), ("zzf2", "f0"), ("f2", "f0"))
        if self._independent:
            one = {k: np.asarray(gaussian.expect(v, self.diag, kinks=act.kinks,
                                               period=act.period), dtype=float)
                   for k, v in g.items()}
            e = {(x, y): np.multiply.outer(one[x], one[y]) for x, y in terms}
            rt = 2e-14
        else:
            fns = Integrands(act, **g)
            e = ((_trig.active(act.period) and _trig.trig_pairs(fns, K, terms))
                 or gaussian.pair_expectations(fns, K, terms, rtol=_PAIR_RTOL))
            rt = _PAIR_RTOL
        sq = {k: np.sqrt(np.abs(np.asarray(gaussian.expect(lambda z, v=v: v(z) ** 2, self.diag,
                                                         kinks=act.kinks, period=act.period),
                                           dtype=float)))
              for k, v in g.items()}
        bound = {(x, y): rt * (np.multiply.outer(sq[x], sq[y]) + np.abs(e[(x, y)]))
                 for x, y in terms}
        E22, E21, E20z, E20 = (np.asarray(e[t], dtype=float) for t in terms)
        e22, e21, e20z, e20 = (bound[t] for t in terms)
        if kink_jumps is not None and not self._independent:
            # the averages above are of the pointwise parts of f1, f2; add their delta
            # functions at the kinks (Stein's lemma holds for the weak derivatives)
            (c22, c21, c20z, c20), (b22, b21, b20z, b20) = _kink_terms(K, kink_jumps, g)
            E22, E21, E20z, E20 = E22 + c22, E21 + c21, E20z + c20z, E20 + c20
            e22, e21, e20z, e20 = e22 + b22, e21 + b21, e20z + b20z, e20 + b20
        Kd, aK = self.diag[:, None], np.abs(K)
        T2 = E22
        T3 = (E21 - K * T2) / Kd
        X = (E20z - K * E21) / Kd - E20
        T4 = (X - K * T3) / Kd
        d2 = e22
        d3 = (e21 + aK * d2) / Kd
        dX = (e20z + aK * e21) / Kd + e20
        d4 = (dX + aK * d3) / Kd
        # round-off of the combinations: a few ulps of their largest term
        ulp = 8 * np.finfo(float).eps
        d3 = d3 + ulp * (np.abs(E21) + aK * np.abs(T2)) / Kd
        d4 = d4 + ulp * ((np.abs(E20z) + aK * np.abs(E21)) / Kd + np.abs(E20)
                         + aK * np.abs(T3)) / Kd
        T = np.stack([T4.T, T3.T, T2, T3, T4])
        dT = np.stack([d4.T, d3.T, d2, d3, d4])
        return T, dT

    def _d4_mid(self, key):
        """``<(f^2)^(4)>`` at the midpoint kernel ``(K_aa + K_bb)/2`` of every pair a < b.

        The coinciding limit of :meth:`d4_source` (K only: cached, and in a
        two-input :class:`LayerBlock` evaluated for all its layers at once).
        """
        if key not in self._d4:
            if self._block is not None and self.N == 2:
                Kb = self._block.Ks
                self._d4[key] = np.atleast_1d(self._block.row(
                    ("d4mid", key), self._pos,
                    lambda Ks: OneVariableTable(self.act, 0.5 * (Kb[:, 0, 0] + Kb[:, 1, 1]))[key]))
            else:
                a, b = np.triu_indices(self.N, 1)
                self._d4[key] = OneVariableTable(self.act, 0.5 * (self.diag[a] + self.diag[b]))[key]
        return self._d4[key]

    def _pair_moments(self, of):
        """``m[i, j][a, b] = <z_a^i f_a z_b^j f_b>`` for i + j in {0, 2, 4}, f = s or p."""
        if of not in self._moments:
            self._moments[of] = self._pair_moments_uncached(of)
        return self._moments[of]

    def _moments_at(self, K, of):
        """The pair moments of :meth:`_pair_moments` at another kernel K (not cached)."""
        si = _scale_invariant(self.act)
        if si is not None:
            return _piecewise_pair_moments(si, 1 if of == "s" else 0, K)
        return self._pair_moments_generic(of, K)

    def _pair_moments_uncached(self, of):
        if self._independent:
            m = {(i, j): self._factorized(of, of, i, j) for i, j in _MOMENTS}
            for (i, j) in list(m):
                m[(j, i)] = m[(i, j)].T
            return m
        si = _scale_invariant(self.act)
        if si is not None:
            deg = 1 if of == "s" else 0
            if self._block is not None:
                return self._block.row(("moments", of), self._pos,
                                       lambda Ks: _piecewise_pair_moments(si, deg, Ks))
            return _piecewise_pair_moments(si, deg, self.K)
        return self._pair_moments_generic(of, self.K)

    def _pair_moments_generic(self, of, K):
        f = self.act.sigma if of == "s" else self.act.d1
        fns = {f"f{i}": (lambda i: lambda z: z ** i * f(z))(i) for i in range(5)}
        terms = (("f0", "f0"), ("f1", "f1"), ("f2", "f2"), ("f2", "f0"), ("f4", "f0"),
                 ("f3", "f1"))
        fns = Integrands(self.act, **fns)
        e = ((_trig.active(self.act.period) and _trig.trig_pairs(fns, K, terms))
             or gaussian.pair_expectations(fns, K, terms, rtol=_PAIR_RTOL))
        m = {(int(a[1]), int(b[1])): v for (a, b), v in e.items()}
        for (i, j) in list(m):
            m[(j, i)] = m[(i, j)].T
        return m


# ---------------------------------------------------------------------------
# the fourth-derivative source of a pair of distinct inputs
# ---------------------------------------------------------------------------

#: binomial weights of ``<d^4 (f_a f_b)>`` by the number k of derivatives on input a
_BINOM4 = np.array([1.0, 4.0, 6.0, 4.0, 1.0])


def _pattern_weights(W):
    """``W_k`` (P, 5): the symmetrized V of each pair with k indices on a (0), 4 - k on b (1)."""
    return np.stack([W[:, 1, 1, 1, 1], W[:, 0, 1, 1, 1], W[:, 0, 0, 1, 1], W[:, 0, 0, 0, 1],
                     W[:, 0, 0, 0, 0]], axis=1)


def d4_pair_source(W, T, dT):
    r"""``(1/8) sum_k C(4, k) W_k <f^(k)(z_a) f^(4-k)(z_b)>`` for P pairs, and its error.

    ``<d_b1..d_b4 (f_a f_b)>`` with k of the derivatives on input a is
    ``<f^(k)_a f^(4-k)_b>``; the fully symmetrized V (``W``, (P, 2, 2, 2, 2),
    index 0 = a, 1 = b) weighs it by ``W_k`` times the number C(4, k) of its
    index patterns.

    Parameters
    ----------
    W : ndarray (P, 2, 2, 2, 2)
    T, dT : ndarray (5, P)
        ``T[k] = <f^(k)_a f^(4-k)_b>`` and its estimated absolute error.

    Returns
    -------
    value, error : ndarray (P,)
    """
    Wk = _pattern_weights(W)
    val = 0.125 * np.einsum("k,pk,kp->p", _BINOM4, Wk, T)
    err = 0.125 * np.einsum("k,pk,kp->p", _BINOM4, np.abs(Wk), dT)
    err = err + 8 * np.finfo(float).eps * 0.125 * np.einsum("k,pk,kp->p", _BINOM4, np.abs(Wk),
                                                             np.abs(T))
    return val, err


def _piecewise_stein_terms(si, K, of):
    r"""``<f^(k)(z_a) f^(4-k)(z_b)>`` (5, N, N) of the ReLU family in closed form, and errors.

    ``sigma = c_+ z theta(z) + c_- z theta(-z)``: ``sigma'' = C delta(z)``,
    ``sigma^(3) = C delta'(z)``, ``C = c_+ - c_-``. The Stein form of
    :meth:`LayerAverages._stein_terms` with these distributions (``z delta = 0``,
    ``z delta' = -delta``, ``z^2 delta' = 0``) needs only

    * ``<delta_a delta_b> = 1 / (2 pi sqrt(det))``,
      ``<delta'_a delta'_b> = K_ab / (2 pi det^(3/2))``,
    * ``<delta_a sigma_b> = C sqrt(det) / (2 pi K_aa)`` (``z_b | z_a = 0`` has
      variance ``det / K_aa``), ``<delta'_a sigma'_b> = -C K_ab / (2 pi K_aa sqrt(det))``,

    so ``f = sigma``: ``T2 = C^2 / (2 pi sqrt det)``, ``T3 = -K_ab T2 / K_aa``,
    ``T4 = (K_ab^2 T2 / K_aa - C^2 sqrt(det) / (2 pi K_aa)) / K_aa``; ``f = sigma'``:
    ``T2 = C^2 K_ab / (2 pi det^(3/2))``, ``T3 = -C^2 K_bb / (2 pi det^(3/2))``,
    ``T4 = (C^2 K_ab / (pi K_aa sqrt det) + C^2 K_ab K_bb / (2 pi det^(3/2))) / K_aa``.
    No cancellation but ``det = K_aa K_bb - K_ab^2`` itself (relative error
    ~eps / (1 - rho^2)); against the Hermite form in 40 digits: 1e-15 at
    1 - rho = 0.3 .. 1e-3, 2e-12 at 1e-5 (``tests/theory/test_d4_source.py``).
    Entries of collinear inputs (``det = 0``) and the diagonal are not finite.
    K may carry leading axes (..., N, N): the result is then (..., 5, N, N).
    """
    C2 = (float(si[0]) - float(si[1])) ** 2
    d = np.einsum("...ii->...i", K)
    Ka, Kb = d[..., :, None], d[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        det = Ka * Kb - K * K
        sd = np.sqrt(det)
        d32 = det * sd
        if of == "s":
            T2 = C2 / (2 * np.pi * sd)
            T3 = -K * T2 / Ka
            T4 = (K * K * T2 / Ka - C2 * sd / (2 * np.pi * Ka)) / Ka
        else:
            T2 = C2 * K / (2 * np.pi * d32)
            T3 = -C2 * Kb / (2 * np.pi * d32)
            T4 = (C2 * K / (np.pi * Ka * sd) + C2 * K * Kb / (2 * np.pi * d32)) / Ka
        tr = lambda X: np.swapaxes(X, -1, -2)  # noqa: E731
        T = np.stack([tr(T4), tr(T3), T2, T3, T4], axis=-3)
        eps = np.finfo(float).eps
        dT = np.abs(T) * (16 * eps + 6 * eps * (Ka * Kb / det)[..., None, :, :])
    return T, dT


def _one_sided(fn, c, scale=1.0):
    """``(f(c+), f(c-))``: linear extrapolation from ``c +- h, c +- 2h`` (error O(h^2)),
    ``h = 1e-6 scale max(1, |c|)``."""
    h = 1e-6 * max(1.0, abs(c))
    if scale != 1.0:
        h = h * scale
    up = 2.0 * float(fn(np.float64(c + h))) - float(fn(np.float64(c + 2 * h)))
    lo = 2.0 * float(fn(np.float64(c - h))) - float(fn(np.float64(c - 2 * h)))
    return up, lo


#: one side of a kink c is interpolated on ``[c, c +- w]``, ``w = _SIDE_WIDTH max(1, |c|)``
#: (times the step scale), by a Chebyshev series of degree ``_SIDE_DEG`` (first-kind
#: points: never at c itself) cut at its rounding plateau; kinks closer than
#: ``_KINK_GAP max(1, |c|)`` are not split this way (their Stein terms: None)
_SIDE_WIDTH, _SIDE_DEG, _KINK_GAP = 0.25, 32, 0.5


def _side_series(fn, c, side, width):
    """Chebyshev coefficients of ``fn`` on ``[c, c + side width]`` (x = -1 at c).

    Interpolated at the degree-``_SIDE_DEG`` first-kind points and cut after the last
    coefficient above 8 times the largest of the last eight (the rounding plateau):
    the derivatives at the end point amplify the coefficients' rounding by ~n^(2k),
    so the noise tail is dropped (an analytic piece of width 0.25 converges to it by
    degree ~10..14: elu, tanh).
    """
    def g(x):
        return np.asarray(fn(c + side * width * 0.5 * (x + 1.0)), dtype=float)
    coef = np.polynomial.chebyshev.chebinterpolate(g, _SIDE_DEG)
    plateau = np.max(np.abs(coef[-8:]))
    big = np.flatnonzero(np.abs(coef) > 8.0 * plateau)
    return coef[:big[-1] + 1] if big.size else coef[:1]


@functools.lru_cache(maxsize=32)
def _kink_sides(act, base, scale):
    """``((c, w, {+1: coef, -1: coef}), ...)`` per kink: :func:`_side_series` of
    ``act.sigma`` (``base = "s"``) or ``act.d2`` (``"q"``) on both sides, width ``w``
    (:data:`_SIDE_WIDTH`, times ``scale``). None if two kinks are closer than
    :data:`_KINK_GAP`."""
    fn = act.sigma if base == "s" else act.d2
    ks = sorted(float(c) for c in act.kinks)
    out = []
    for c in ks:
        gap = min([abs(c - k) for k in ks if k != c] or [np.inf])
        if gap < _KINK_GAP * max(1.0, abs(c)):
            return None
        w = scale * _SIDE_WIDTH * max(1.0, abs(c))
        out.append((c, w, {s: _side_series(fn, c, s, w) for s in (1, -1)}))
    return tuple(out)


def _side_derivative(coef, side, width, k, x=-1.0):
    """The k-th z-derivative of a :func:`_side_series` at its point x (-1: the kink)."""
    d = np.polynomial.chebyshev.chebder(coef, k) if k else coef
    return np.polynomial.chebyshev.chebval(x, d) * (2.0 / (side * width)) ** k


def _kinked_derivative(act, order, scale=1.0):
    r"""The pointwise ``sigma^(order)`` (1..3) of a kinked activation (no elu, no ReLU
    family) for the Stein terms, or None (kinks closer than :data:`_KINK_GAP`).

    Exact derivatives: ``act.d1``, ``act.d2``; sigma''' by the rule of the smooth
    activations (:func:`_d3_rule`, central differences of ``d2`` at 1e-2 times
    ``scale``) at ``|z - c| >= w / 2`` from every kink (:data:`_SIDE_WIDTH`), where its
    stencils stay on one side, and within ``w / 2`` the derivative of the Chebyshev
    series of ``act.d2`` on that side (:func:`_side_series`). Numerical derivatives:
    away from the kinks the finite differences of :meth:`pdlt.Activation.from_callable`
    (at ``scale = 1`` ``act.d1``, ``act.d2`` themselves; :func:`_d3_rule` for the third),
    within ``w / 2`` the ``order``-th derivative of the series of sigma itself: the
    user's ``d1, d2`` shrink their step there down to 1e-7 and cross the kink below it
    (O(1) and O(1e7) wrong in that band), which nearly coinciding pairs see (elu(0.5)
    G1's T_k 160 % off at 1 - rho = 1e-6). Measured against the exact derivatives over
    ``|z - c| in [1e-9, 0.1]``: sigma', sigma'', sigma''' to 2e-14, 4e-12, 4.8e-10
    (elu(0.5)); 6e-13, 2e-10, 3.7e-8 (tanh with its negative side halved; the worst at
    the kink itself). ``scale = 0.5`` (:func:`fd_alternatives`) halves steps and widths.
    """
    from ..activations import _fd_derivative
    exact = act.derivatives == "exact"
    if exact and order < 3:
        return act.d1 if order == 1 else act.d2
    sides = _kink_sides(act, "q" if exact else "s", scale)
    if sides is None:
        return None
    k = 1 if exact else order
    if order == 3:
        far = _d3_rule(act, scale)
    elif scale == 1.0:
        far = act.d1 if order == 1 else act.d2
    else:
        far = _fd_derivative(act.sigma, order, 1e-2 * scale, act.kinks)

    def fn(z):
        z = np.asarray(z, dtype=float)
        out = np.empty(z.shape)
        near = np.zeros(z.shape, dtype=bool)
        for c, w, ser in sides:
            for s in (1, -1):
                m = ((z - c > 0) if s == 1 else (z - c <= 0)) & (np.abs(z - c) < 0.5 * w)
                if np.any(m):
                    x = 2.0 * np.abs(z[m] - c) / w - 1.0
                    out[m] = _side_derivative(ser[s], s, w, k, x)
                    near |= m
        if not np.all(near):
            out[~near] = far(z[~near])
        return out
    return fn


def _kinked_third(act, scale=1.0):
    """``sigma'''`` of :func:`_kinked_derivative`."""
    return _kinked_derivative(act, 3, scale)


def _kinked_pointwise(act, of, scale=1.0):
    """``[f, f', f'']`` pointwise for the Stein terms of a kinked activation (f = sigma:
    ``of = "s"``, sigma': ``"p"``), by :func:`_kinked_derivative`; None where it is."""
    orders = (0, 1, 2) if of == "s" else (1, 2, 3)
    fs = [act.sigma if k == 0 else _kinked_derivative(act, k, scale) for k in orders]
    return None if any(f is None for f in fs) else fs


def _kink_jumps(act, of, scale=1.0):
    r"""The jumps at the kinks for the Stein terms of a kinked activation, or None.

    With ``f0, f1 = sigma, sigma'`` (``of = "s"``) or ``sigma', sigma''`` (``"p"``),
    and ``J0, J1`` the jumps ``f(c+) - f(c-)`` of f0 and f1 at a kink c, the weak
    derivatives are ``f1 = {f1} + J0 delta_c`` and ``f2 = {f2} + J1 delta_c + J0
    delta'_c`` (braces: the pointwise derivative, what ``act.d1``, ``act.d2`` return).

    Returns
    -------
    None, or (jumps, f2)
        ``jumps``: tuple of ``(c, J0, J1)`` per kink; ``f2``: the pointwise third
        derivative for ``"p"`` (None for ``"s"``). elu: exact (``sigma' `` jumps by
        ``1 - alpha``, ``sigma''`` by ``-alpha``; ``sigma''' = alpha e^z`` below 0, 0
        above, i.e. ``act.d2``). Other kinked activations with a continuous sigma:
        with exact derivatives, the jumps of ``act.d1`` (and ``act.d2``) from one-sided
        limits (:func:`_one_sided`, error ~1e-12 |sigma'''|); with numerical ones, the
        one-sided derivatives of sigma itself at the kink from the Chebyshev series of
        each side (:func:`_side_series`; measured: the jumps of sigma' to 2e-14 .. 9e-13,
        of sigma'' to 4e-12 .. 3e-10, elu(0.5) and a kinked tanh); f2
        :func:`_kinked_third`. ``scale`` (0.5: the
        second estimate of :meth:`LayerAverages._stein_terms`) scales every step and
        width. None for the ReLU family (closed forms: :func:`_piecewise_stein_terms`),
        periodic ones, a sigma that jumps, kinks closer than :data:`_KINK_GAP`.
    """
    if not act.kinks or _scale_invariant(act) is not None or act.period is not None:
        return None
    if act.spec is not None and act.spec[0] == "elu":
        al = float(act.parameters["alpha"])
        kinks = tuple((float(c), 0.0, 1.0 - al) if of == "s" else (float(c), 1.0 - al, -al)
                      for c in act.kinks)
        return kinks, (None if of == "s" else act.d2)
    f2 = None
    if of == "p":
        f2 = _kinked_third(act, scale)
        if f2 is None:
            return None
    out = []
    if act.derivatives == "exact":
        for c in act.kinks:
            s_up, s_lo = _one_sided(act.sigma, float(c), scale)
            if abs(s_up - s_lo) > 1e-9 * max(1.0, abs(s_up)):
                return None                                   # sigma itself jumps
            p_up, p_lo = _one_sided(act.d1, float(c), scale)
            if of == "s":
                out.append((float(c), 0.0, p_up - p_lo))
            else:
                q_up, q_lo = _one_sided(act.d2, float(c), scale)
                out.append((float(c), p_up - p_lo, q_up - q_lo))
        return tuple(out), f2
    sides = _kink_sides(act, "s", scale)
    if sides is None:
        return None
    for c, w, ser in sides:
        lim = {s: [_side_derivative(ser[s], s, w, k) for k in range(3)] for s in (1, -1)}
        up, lo = lim[1], lim[-1]
        if abs(up[0] - lo[0]) > 1e-9 * max(1.0, abs(up[0])):
            return None                                       # sigma itself jumps
        out.append((c, 0.0, up[1] - lo[1]) if of == "s" else (c, up[1] - lo[1], up[2] - lo[2]))
    return tuple(out), f2


#: relative error of the one-variable conditional averages of :func:`_kink_pair`
_COND_RTOL = 1e-13


def _kink_terms(K, jumps, g):
    r"""The delta-function parts of the four pair averages of the Stein form, (N, N) each.

    ``<f2_a f2_b>``, ``<z_a f2_a f1_b>``, ``<z_a^2 f2_a f0_b>``, ``<f2_a f0_b>`` of
    :meth:`LayerAverages._stein_terms` with ``f1, f2`` the weak derivatives of
    :func:`_kink_jumps`, less the same averages of their pointwise parts (``g``: the
    pointwise ``f0, f1, f2, z f2, z^2 f2`` by name). Returns ``(values, errors)``,
    two lists of four (N, N) arrays (zero diagonal; not finite for collinear pairs).
    """
    N = K.shape[0]
    d = np.diag(K)
    vals = [np.zeros((N, N)) for _ in range(4)]
    errs = [np.zeros((N, N)) for _ in range(4)]
    for a, b in itertools.permutations(range(N), 2):
        v, e = _kink_pair(float(d[a]), float(d[b]), float(K[a, b]), jumps, g)
        for i in range(4):
            vals[i][a, b], errs[i][a, b] = v[i], e[i]
    return vals, errs


def _kink_pair(Kaa, Kbb, Kab, jumps, g):
    r"""The delta parts of :func:`_kink_terms` for one ordered pair (a, b).

    With ``p(x, y)`` the pair's density, ``det = K_aa K_bb - K_ab^2`` and
    ``u_a = (K_bb c - K_ab d) / det``, ``u_b = (K_aa d - K_ab c) / det``:

    * ``<delta(z_a - c) h(z_b)> = phi_aa(c) E[h(m + s u)]``, ``m = K_ab c / K_aa``,
      ``s^2 = det / K_aa`` (``z_b`` given ``z_a = c``), u standard normal;
    * ``<delta'(z_a - c) h(z_b)> = phi_aa(c) [(c / K_aa) E[h] - K_ab / (K_aa s) E[u h]]``
      (``-d/dx`` of ``int p(x, y) h(y) dy``; ``E[u h] / s`` is ``E[h']`` by Stein:
      no derivative of h needed, and only ``s ~ sqrt(det)`` divides);
    * ``<delta(z_a - c) delta(z_b - d)> = p(c, d)``, with ``delta'`` on a: times
      ``u_a``, on b: ``u_b``, on both: ``u_a u_b + K_ab / det``;

    the same with a and b exchanged for the deltas of the second factor. A factor
    ``z^i f2`` carries ``z^i delta'_c = c^i delta'_c - i c^(i-1) delta_c``.
    ``det`` is computed without cancellation (:func:`pdlt.gaussian._multi.det2`), so the closed forms are
    good to a few ulps (with the plain ``K_aa K_bb - K_ab^2``, ~eps / (1 - rho^2)
    relative: 1e-7 of H1 at 1 - rho = 1e-5, the source's cancellation amplifying it).
    Errors: the one-variable averages to ``_COND_RTOL`` of their rms, the closed forms
    to ``16 eps`` relative.
    """
    nan = [np.nan] * 4
    det = det2(Kaa, Kbb, Kab)
    if not det > 0:
        return nan, nan
    kinks = tuple(j[0] for j in jumps)
    eps = np.finfo(float).eps
    rel_dd = 16 * eps
    cache = {}

    def cond(name, side, c):
        """(D0, D1, err0, err1): ``<delta^(j)(z_side - c) h(z_other)>``, h = g[name]."""
        key = (name, side, c)
        if key not in cache:
            Kc, Ko = (Kaa, Kbb) if side == "a" else (Kbb, Kaa)
            mu, s = Kab * c / Kc, np.sqrt(det / Kc)
            h = g[name]
            E0 = float(gaussian.expect(h, s * s, mu, kinks=kinks))
            E1 = float(gaussian.expect(lambda z: (z - mu) / s * h(z), s * s, mu, kinks=kinks))
            rms = np.sqrt(float(gaussian.expect(lambda z: h(z) ** 2, s * s, mu, kinks=kinks)))
            ph = np.exp(-0.5 * c * c / Kc) / np.sqrt(2 * np.pi * Kc)
            w1 = abs(Kab) / (Kc * s)
            D0, D1 = ph * E0, ph * (c / Kc * E0 - Kab / (Kc * s) * E1)
            cache[key] = (D0, D1, _COND_RTOL * ph * rms + 4 * eps * abs(D0),
                          _COND_RTOL * ph * rms * (abs(c) / Kc + w1)
                          + 4 * eps * ph * (abs(c / Kc * E0) + w1 * abs(E1)))
        return cache[key]

    def dd(c, d_, i, j):
        ua = (Kbb * c - Kab * d_) / det
        ub = (Kaa * d_ - Kab * c) / det
        q = (Kbb * c * c - 2 * Kab * c * d_ + Kaa * d_ * d_) / det
        p = np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(det))
        return p * {(0, 0): 1.0, (1, 0): ua, (0, 1): ub, (1, 1): ua * ub + Kab / det}[(i, j)]

    # (A-side pointwise name, power i of z), (B-side pointwise name, B's deltas per kink)
    spec = ((("f2", 0), ("f2", lambda J0, J1: (J1, J0))),
            (("zf2", 1), ("f1", lambda J0, J1: (J0, 0.0))),
            (("zzf2", 2), ("f0", lambda J0, J1: (0.0, 0.0))),
            (("f2", 0), ("f0", lambda J0, J1: (0.0, 0.0))))
    vals, errs = [], []
    for (an, i), (bn, bdel) in spec:
        v = e = 0.0
        for c, J0, J1 in jumps:                    # deltas of the a factor, h on b
            al = J1 * c ** i - (J0 * i * c ** (i - 1) if i else 0.0)
            be = J0 * c ** i
            D0, D1, e0, e1 = cond(bn, "a", c) if (al or be) else (0, 0, 0, 0)
            v += al * D0 + be * D1
            e += abs(al) * e0 + abs(be) * e1
        for d_, J0, J1 in jumps:                   # deltas of the b factor, h on a
            ga, et = bdel(J0, J1)
            if not (ga or et):
                continue
            D0, D1, e0, e1 = cond(an, "b", d_)
            v += ga * D0 + et * D1
            e += abs(ga) * e0 + abs(et) * e1
            for c, J0a, J1a in jumps:              # both factors' deltas
                al = J1a * c ** i - (J0a * i * c ** (i - 1) if i else 0.0)
                be = J0a * c ** i
                for coef, ij in ((al * ga, (0, 0)), (al * et, (0, 1)), (be * ga, (1, 0)),
                                 (be * et, (1, 1))):
                    if coef:
                        x = coef * dd(c, d_, *ij)
                        v += x
                        e += rel_dd * abs(x)
        vals.append(v)
        errs.append(e)
    return vals, errs


def _hermite_patterns(Kaa, Kbb, Kab, det, mm, rerr):
    """``<f^(k)_a f^(4-k)_b>`` (5, P) by the Hermite form, one index pattern at a time; errors."""
    n = len(Kaa)
    T, dT = np.empty((5, n)), np.empty((5, n))
    for k in range(5):
        W = np.zeros((n,) + (2,) * 4)
        for idx in itertools.product((0, 1), repeat=4):
            if idx.count(0) == k:
                W[(slice(None),) + idx] = 1.0
        v, e = _hermite_source(W, Kaa, Kbb, Kab, det, mm, rerr)
        T[k], dT[k] = v / (0.125 * _BINOM4[k]), e / (0.125 * _BINOM4[k])
    return T, dT


def _hermite_source(W, Kaa, Kbb, Kab, det, mm, rerr):
    """The Hermite form of :meth:`LayerAverages.d4_source` for P pairs, and its error.

    ``<d^4 F> = <F H_4(z; K)>`` with the Hermite tensor of ``Lambda = K^{-1}``:
    pair moments ``mm[(i, j)] = <z_a^i f_a z_b^j f_b>`` (P,) contracted with
    Lambda four times. Error (a running-error bound): the same contraction of
    ``|W|, |Lambda|, |mm|`` (every product, before the cancellations) times the
    moments' relative error ``rerr`` plus the relative error of Lambda, ~4 ulp
    / (1 - rho^2) (``det`` cancels). For nearly coinciding inputs the value is
    ~(1 - rho^2)^2 smaller than that sum: this is the loss the estimate reports.
    """
    def contract(W, Lam, mm):
        Wp = np.einsum("pijkl,pia,pjb,pkc,pld->pabcd", W, Lam, Lam, Lam, Lam)
        U = np.einsum("pijkl,pij->pkl", W, Lam)
        R = np.einsum("pak,pkl,plb->pab", Lam, U, Lam)
        c0 = 3.0 * np.einsum("pkl,pkl->p", U, Lam)
        return [Wp[:, 0, 0, 0, 0] * mm[(4, 0)], 4 * Wp[:, 0, 0, 0, 1] * mm[(3, 1)],
                6 * Wp[:, 0, 0, 1, 1] * mm[(2, 2)], 4 * Wp[:, 0, 1, 1, 1] * mm[(1, 3)],
                Wp[:, 1, 1, 1, 1] * mm[(0, 4)],
                -6 * R[:, 0, 0] * mm[(2, 0)], -12 * R[:, 0, 1] * mm[(1, 1)],
                -6 * R[:, 1, 1] * mm[(0, 2)], c0 * mm[(0, 0)]]
    n = len(Kaa)
    Lam = np.empty((n, 2, 2))
    Lam[:, 0, 0] = Kbb / det
    Lam[:, 1, 1] = Kaa / det
    Lam[:, 0, 1] = Lam[:, 1, 0] = -Kab / det
    val = 0.125 * sum(contract(W, Lam, mm))
    bound = 0.125 * sum(contract(np.abs(W), np.abs(Lam), {k: np.abs(v) for k, v in mm.items()}))
    eps = np.finfo(float).eps
    lam_rel = 4 * eps * Kaa * Kbb / det
    err = (rerr + 16 * eps + 4 * lam_rel) * bound
    return val, err


def _third_named(name):
    """``sigma'''`` of the named smooth activations, in closed form (None if not listed)."""
    from scipy import special

    def tanh3(z):
        t = np.tanh(z)
        p = 1.0 - t * t
        return p * (6.0 * t * t - 2.0)

    def logistic3(z):           # (d/dz)^2 of e(1 - e), e = expit
        e = special.expit(z)
        d = e * (1.0 - e)
        return d * (1.0 - 2.0 * e) ** 2 - 2.0 * d * d

    def logistic2(z):
        e = special.expit(z)
        return e * (1.0 - e) * (1.0 - 2.0 * e)

    c = 2.0 / np.sqrt(np.pi)
    table = {
        "tanh": tanh3,
        "sigmoid": logistic3,
        "softplus": logistic2,
        # z e(z): sigma''' = 3 e'' + z e'''
        "swish": lambda z: 3.0 * logistic2(z) + z * _third_of_logistic(z),
        "silu": lambda z: 3.0 * logistic2(z) + z * _third_of_logistic(z),
        # z Phi(z): sigma'' = (2 - z^2) phi, sigma''' = (z^3 - 4 z) phi
        "gelu": lambda z: (z ** 3 - 4.0 * z) * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi),
        "erf": lambda z: c * (4.0 * z * z - 2.0) * np.exp(-z * z),
        "sin": lambda z: -np.cos(z),
    }
    return table.get(name)


def _third_of_logistic(z):
    """``expit'''(z)``: e (1 - e) (1 - 6 e + 6 e^2)."""
    from scipy import special
    e = special.expit(z)
    return e * (1.0 - e) * (1.0 - 6.0 * e + 6.0 * e * e)


def third_derivative(act):
    r"""``sigma'''`` of a smooth activation, or None where it is not available.

    Named activations: closed forms. ``monomial(p)``: ``p (p-1) (p-2) z^(p-3)``.
    Other smooth activations: Richardson-extrapolated central differences
    (:func:`_d3_rule`: ~1e-13 of tanh's scale with an exact ``d2``, ~1e-9
    when d1 and d2 are themselves differences; :func:`fd_alternatives`
    estimates the error at run time). Kinked activations get None (elu's
    pointwise third derivative and the jumps come from :func:`_kink_jumps`, other
    kinked activations' from :func:`_kinked_derivative`, one-sided near the kinks).
    """
    if act.kinks or _scale_invariant(act) is not None:
        return None
    name = act.spec[0] if act.spec is not None else None
    if name == "monomial":
        p = int(act.parameters["p"])
        return lambda z: (p * (p - 1) * (p - 2) * np.asarray(z, float) ** max(p - 3, 0)
                          if p >= 3 else np.zeros_like(np.asarray(z, float)))
    if name is not None and _third_named(name) is not None:
        return _third_named(name)
    return _d3_rule(act, 1.0)


def _d3_rule(act, scale):
    """sigma^(3) by Richardson-extrapolated differences (O(h^6)), step ``scale`` times the
    default. Exact d2: first differences of d2 at h = 1e-2. Otherwise (d1, d2 themselves
    differences of sigma) second differences of d1 at h = 4e-2. Measured on tanh, max
    |error| over |z| <= 6: exact d2 at h = 5e-3, 1e-2, 2e-2, 4e-2: 2.4e-13, 9.9e-14,
    1.6e-12, 1.0e-10; a user's tanh, differences of d2 at 1e-2, 4e-2: 1.4e-8, 4.8e-9 (d2's
    round-off over h), second differences of d1 at 1e-2, 2e-2, 4e-2, 6e-2: 2.4e-8, 4.1e-9,
    1.2e-9, 6.3e-10."""
    from ..activations import _fd_derivative
    if act.derivatives == "exact":
        return _fd_derivative(act.d2, 1, 1e-2 * scale)
    return _fd_derivative(act.d1, 2, 4e-2 * scale)


def fd_alternatives(act, of):
    """Second estimates of the finite-difference derivatives among ``(f, f', f'')``.

    ``of = "s"``: ``f = sigma``; ``"p"``: ``f = sigma'`` (``f''`` is then
    :func:`third_derivative`). Returns ``{k: g}`` for each position k (0, 1, 2)
    whose function is a finite difference: ``g`` is the same derivative by the
    same rule at half the step. Their difference estimates the error: the rules
    are O(h^6), so the half step leaves ~1/64 of the truncation error, and it
    doubles (first derivatives) or quadruples (second) the round-off, so the
    difference is ~1 to 4 times the larger part of the error (a doubled step
    would give the coarse rule's 64-fold truncation instead). Empty when all
    three are exact. Kinked activations (not elu, not the ReLU family): the
    functions of :func:`_kinked_pointwise` at half the step and width.
    """
    from ..activations import _fd_derivative
    out = {}
    if act.kinks:
        # the named elu, the ReLU family: exact; other kinked activations:
        # _kinked_pointwise at half the step and width, where not exact
        if _is_elu(act) or _scale_invariant(act) is not None:
            return out
        fs = _kinked_pointwise(act, of, 0.5)
        if fs is None:
            return out
        off = 0 if of == "s" else 1            # position k holds sigma^(k + off)
        return {k: f for k, f in enumerate(fs)
                if k + off >= 1 and (act.derivatives != "exact" or k + off == 3)}
    if act.derivatives != "exact":      # a user's d1, d2 (step 1e-2 unless declared)
        d1 = _fd_derivative(act.sigma, 1, 5e-3, act.kinks)
        d2 = _fd_derivative(act.sigma, 2, 5e-3, act.kinks)
        out.update({0: d1, 1: d2} if of == "p" else {1: d1, 2: d2})
    if of == "p":
        name = act.spec[0] if act.spec is not None else None
        if not (name == "monomial" or (name is not None and _third_named(name) is not None)):
            out[2] = _d3_rule(act, 0.5)
    return out


def _is_elu(act):
    """True for the named elu (its jumps and sigma''' exact: :func:`_kink_jumps`)."""
    return act.spec is not None and act.spec[0] == "elu"


#: Gauss-Legendre nodes per smooth piece of the angular integral (trigonometric
#: polynomials of degree <= 8 on pieces of length <= pi: exact to round-off)
_ANGULAR_NODES = 32
#: the pair moments of :meth:`LayerAverages._pair_moments`, as (i, j)
_MOMENTS = ((0, 0), (1, 1), (2, 2), (2, 0), (4, 0), (3, 1))


@functools.lru_cache(maxsize=4)
def _legendre(n):
    return np.polynomial.legendre.leggauss(n)


def _piecewise_pair_moments(si, deg, K):
    r"""``m[i, j][a, b] = <z_a^i f(z_a) z_b^j f(z_b)>_K`` for ``f = c_\pm z^deg`` (ReLU family).

    ``f`` is ``sigma`` (``deg = 1``) or ``sigma'`` (``deg = 0``) of a
    scale-invariant activation with slopes ``si = (c_+, c_-)``; the moments
    are :data:`_MOMENTS` and their transposes. With ``z_a = sqrt(K_aa) R
    cos(alpha)``, ``z_b = sqrt(K_bb) R cos(alpha - phi)``, ``cos(phi) =
    rho_ab``, ``R^2 ~ chi^2_2`` and ``alpha`` uniform and independent, a
    product of homogeneous functions of total degree ``k`` averages to
    ``K_aa^(m/2) K_bb^(n/2) E[R^k] (1/2 pi) int_0^{2 pi} f_m(cos alpha)
    g_n(cos(alpha - phi)) d alpha`` with ``E[R^k] = 2^(k/2) Gamma(1 + k/2)``.
    The angular integrand is a trigonometric polynomial between its four
    sign changes, integrated piece by piece by Gauss-Legendre: exact to
    round-off (the Mehler/nested-quadrature path of
    :func:`pdlt.gaussian.pair_expectations` agrees to ~1e-14; tests), and
    vectorized over every pair (any number of leading axes of ``K``).

    Parameters
    ----------
    si : (float, float)
    deg : {0, 1}
    K : ndarray (..., N, N)

    Returns
    -------
    dict (i, j) -> ndarray (..., N, N)
    """
    from math import gamma
    cp, cm = float(si[0]), float(si[1])
    K = np.asarray(K, dtype=float)
    N = K.shape[-1]
    ia, ib = np.triu_indices(N)                                     # pairs a <= b
    d = np.sqrt(np.einsum("...ii->...i", K))
    sa, sb = d[..., ia], d[..., ib]
    rho = np.clip(K[..., ia, ib] / (sa * sb), -1.0, 1.0)
    phi = np.arccos(rho)[..., None]
    two_pi = 2.0 * np.pi
    cuts = np.concatenate([np.broadcast_to(np.array([0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi]),
                                           phi.shape[:-1] + (4,)),
                           np.mod(phi + 0.5 * np.pi, two_pi), np.mod(phi + 1.5 * np.pi, two_pi)],
                          axis=-1)
    cuts.sort(axis=-1)                                               # (..., P, 6)
    x, w = _legendre(_ANGULAR_NODES)
    lo, hi = cuts[..., :-1, None], cuts[..., 1:, None]              # (..., P, 5, 1)
    alpha = 0.5 * (hi + lo) + 0.5 * (hi - lo) * x
    wt = (0.5 * (hi - lo) * w) / two_pi
    u, v = np.cos(alpha), np.cos(alpha - phi[..., None])
    base = wt * np.where(u > 0, cp, cm) * np.where(v > 0, cp, cm)
    top = max(i for ij in _MOMENTS for i in ij) + deg
    pu, pv = [np.ones_like(u)], [np.ones_like(v)]
    for _ in range(top):
        pu.append(pu[-1] * u)
        pv.append(pv[-1] * v)
    out = {}
    for i, j in _MOMENTS:
        m, n = i + deg, j + deg
        k = m + n
        ang = np.sum(base * pu[m] * pv[n], axis=(-2, -1))
        vals = (2.0 ** (0.5 * k) * gamma(1.0 + 0.5 * k)) * sa ** m * sb ** n * ang
        full = np.empty(K.shape)
        full[..., ia, ib] = vals
        if i == j:
            full[..., ib, ia] = vals
        else:   # the lower triangle: the same moment with the roles of a and b swapped
            full[..., ib, ia] = ((2.0 ** (0.5 * k) * gamma(1.0 + 0.5 * k)) * sb ** m * sa ** n
                                 * np.sum(base * pu[n] * pv[m], axis=(-2, -1)))
        out[(i, j)] = full
    for (i, j) in list(out):
        out[(j, i)] = np.swapaxes(out[(i, j)], -1, -2)
    return out


@functools.lru_cache(maxsize=64)
def _quad_plan(N, slots):
    """How :func:`_quad_tensor` fills its (N, N, N, N) tensor from merged expectations.

    Each index tuple ``(a1..a4)`` merges its coinciding inputs: a signature
    (the slot names on each distinct input, sorted) and the distinct inputs
    ``ix``. Returns ``[(sig, I, pos, rows)]``, one entry per signature:
    ``I`` (M, k) the distinct input tuples, and the flat positions ``pos``
    of the tensor that take row ``rows`` of that signature's values.
    """
    groups = {}
    for flat, idx in enumerate(itertools.product(range(N), repeat=4)):
        per = {}
        for a, nm in zip(idx, slots):
            per.setdefault(a, []).append(nm)
        var = sorted((tuple(sorted(v)), a) for a, v in per.items())
        sig, ix = tuple(v[0] for v in var), tuple(v[1] for v in var)
        groups.setdefault(sig, {}).setdefault(ix, []).append(flat)
    plan = []
    for sig in sorted(groups):
        ixs = sorted(groups[sig])
        pos = np.concatenate([groups[sig][ix] for ix in ixs])
        rows = np.repeat(np.arange(len(ixs)), [len(groups[sig][ix]) for ix in ixs])
        plan.append((sig, np.array(ixs), tuple(ixs), pos, rows))
    return plan


def _closed_pairs(family, Ks):
    """``<sigma_a sigma_b>``, ``<sigma'_a sigma'_b>`` (..., N, N) by the closed forms of
    :func:`pdlt.gaussian.pair_expectations` (:func:`pdlt.gaussian._closed.pair_terms`)."""
    d = np.einsum("...ii->...i", Ks)
    r = pair_terms(family, d[..., :, None], Ks, d[..., None, :], ("sigma", "d1"))
    return {("sigma", "sigma"): np.array(r["sigma"]), ("d1", "d1"): np.array(r["d1"])}


def _eval_nd(fs, K, I, kw):
    """``<prod_k fs[k](z_{I[:, k]})>_K`` for K (..., N, N): values (..., M) (and errors)."""
    kw = dict(kw)
    ret = kw.pop("return_error")
    nd_only = {k: kw.pop(k, None) for k in ("growth", "gh_up")}
    lead = K.shape[:-2]
    M, k = I.shape
    if k == 1:
        kw.pop("accuracy")                      # one variable: error < 1e-14 always
        v = np.asarray(gaussian.expect(fs[0], K[..., I[:, 0], I[:, 0]].reshape(-1), **kw),
                       dtype=float).reshape(lead + (M,))
        return (v, 1e-14 * np.abs(v)) if ret else v
    Ks = K[..., I[:, :, None], I[:, None, :]].reshape((-1, k, k))
    if not kw["kinks"]:
        fs = _trig.as_trig(fs, kw["period"])     # sin: closed form (pdlt.gaussian._trig)
    res = expect_nd(fs, Ks, kinks=kw["kinks"], accuracy=kw["accuracy"], return_error=ret,
                    **nd_only)
    if ret:
        return (np.asarray(res[0], dtype=float).reshape(lead + (M,)),
                np.asarray(res[1], dtype=float).reshape(lead + (M,)))
    return np.asarray(res, dtype=float).reshape(lead + (M,))


def _quad_ssss(act, N, accuracy, nd):
    """:func:`pdlt.gaussian.quad_expectations` with ``return_error``, through ``nd``.

    The same groups of sorted quadruples, functions and rules (so the same
    numbers); ``nd`` (:meth:`LayerAverages._nd`) evaluates each group, for
    a whole :class:`LayerBlock` at once. Returns ``(T, E)``, (N, N, N, N) each.
    """
    sigma = normal_family(act, "sigma")     # GELU, erf: innermost axis in closed form
    growth = entire_growth(act)             # GELU: the trapezoid rule of entire functions
    si = _scale_invariant(act)
    if si is not None:
        sigma = PiecewiseMonomial(si[0], si[1], 1)
    Tq = Eq = None
    for pattern, items in _quadruple_groups(N).items():
        idx = np.array([it[1] for it in items])
        if len(pattern) == 1:
            fs = [lambda z: sigma(z) ** 4]
        else:
            fs = [_power(sigma, p) for p in pattern]
        vals, err = nd(("ssss", pattern), fs, idx, kinks=act.kinks, period=act.period,
                       accuracy=accuracy, return_error=True,
                       **({} if len(pattern) == 1 else dict(growth=growth, gh_up=_GH_STEP_UP_SIGMA)))
        if Tq is None:
            lead = np.shape(vals)[:-1]
            Tq, Eq = np.zeros(lead + (N ** 4,)), np.zeros(lead + (N ** 4,))
        flat = np.ravel_multi_index(np.array([it[0] for it in items]).T, (N,) * 4)
        Tq[..., flat], Eq[..., flat] = vals, err
    every = np.sort(np.indices((N,) * 4).reshape(4, -1), axis=0)
    where = np.ravel_multi_index(every, (N,) * 4)
    shape = Tq.shape[:-1] + (N,) * 4
    return Tq[..., where].reshape(shape), Eq[..., where].reshape(shape)


def _evaluator(Ks):
    """An ``nd`` for :func:`_quad_tensor` / :func:`_quad_ssss` at kernels Ks (..., N, N)."""
    def nd(name, fs, I, *, kinks=(), period=None, accuracy="default", return_error=False,
           growth=None, gh_up=None):
        return _eval_nd(fs, Ks, I, dict(kinks=kinks, period=period, accuracy=accuracy,
                                        return_error=return_error, growth=growth, gh_up=gh_up))
    return nd


class LayerBlock:
    """The kernels ``Ks`` (B, N, N) of consecutive layers, and the averages read from them.

    :meth:`LayerAverages._nd` of the block's layers asks for one average
    at a time; the first asking layer's call is evaluated at all B kernels
    at once (one vectorized :func:`pdlt.gaussian.expect_nd` call instead of
    B) and every layer reads its row. The fold over depth is sequential in
    the statistics but not in these averages, which depend on K only.
    """

    def __init__(self, Ks):
        self.Ks = np.asarray(Ks, dtype=float)
        self._rows = {}

    def row(self, key, pos, compute):
        """Row ``pos`` of ``compute(Ks)`` (computed once per key)."""
        if key not in self._rows:
            self._rows[key] = compute(self.Ks)
        v = self._rows[key]
        if isinstance(v, dict):
            return {k: x[pos] for k, x in v.items()}
        return tuple(x[pos] for x in v) if isinstance(v, tuple) else v[pos]


def _quad_tensor(act, K, slots, accuracy, cache, nd):
    """``<f1(z_a1) f2(z_a2) f3(z_a3) f4(z_a4)>`` for N inputs (coinciding slots merged).

    ``nd`` evaluates the merged expectations (:meth:`LayerAverages._nd`, or
    :func:`_evaluator` of a stack of kernels K (..., N, N): the tensors then
    carry the leading axes); ``cache`` (a dict, or None) shares merged
    expectations between the slot orders of one layer.
    """
    N = K.shape[-1]
    # GELU/erf slots as NormalFamily: their innermost axis is then a closed form
    base = {"s": normal_family(act, "sigma"), "p": normal_family(act, "d1"),
            "q": normal_family(act, "d2"), "x": lambda z: z * act.d2(z)}
    if isinstance(base["q"], ExpPiecewise):
        base["x"] = base["q"].times_z()       # elu: z sigma'' stays an exponential polynomial
    si = _scale_invariant(act)
    if si is not None:
        pm = {"s": PiecewiseMonomial(si[0], si[1], 1), "p": PiecewiseMonomial(si[0], si[1], 0)}
    kw = dict(kinks=act.kinks, period=act.period, growth=entire_growth(act))
    T = np.empty(K.shape[:-2] + (N ** 4,))
    for sig, I, ixs, pos, rows in _quad_plan(N, slots):
        if si is not None:
            fs = [functools.reduce(lambda a, b: a * b, [pm[n] for n in nm]) for nm in sig]
        else:
            fs = [base[nm[0]] if len(nm) == 1 else
                  exp_product([base[n] for n in nm],
                               (lambda names: lambda z: np.prod([base[n](z) for n in names],
                                                                axis=0))(nm))
                  for nm in sig]
        # four distinct inputs with derivative slots (A, P..U): one rule up. At the
        # default these were 2e-8..4e-8 of tanh's A, P, Q, R, T, U at N = 4 (the
        # difference to the next rule), the rest of the fold 1e-9 or better;
        # sigma-only tensors (V, G1) go through quad_expectations, unchanged.
        # (smooth path only: kinked activations take the exact-inner split path,
        # whose rules are its own and already within 4e-10)
        acc = rule_up(accuracy) if len(sig) == 4 and not act.kinks else accuracy
        if cache is None:
            vals = nd(("quad", sig), fs, I, accuracy=acc, **kw)
        else:
            miss = [k for k, ix in enumerate(ixs) if (sig, ix) not in cache]
            if miss:
                got = np.atleast_1d(nd(("quad", sig), fs, I[miss], accuracy=acc, **kw))
                for k, v in zip(miss, got):
                    cache[(sig, ixs[k])] = float(v)
            vals = np.array([cache[(sig, ix)] for ix in ixs])
        T[..., pos] = np.asarray(vals)[..., rows]
    return T.reshape(K.shape[:-2] + (N,) * 4)


# ---------------------------------------------------------------------------
# plain MLPs, N >= 2 inputs: two-, three- and four-variable averages at large variance
# (N = 2 since session 15: its layer blocks called expect_nd's capped pair rules, tanh
# A 3e-6 .. D 1e-1 of scale at first-layer K ~ 70 .. 650; two inputs (1 +- 1e-5) x at
# K ~ 600 were 3e-5 (V) .. 7e-3 (H1) off the one-input statistics, now 2e-11 .. 6e-10)
# ---------------------------------------------------------------------------

#: the variance above which a named smooth activation's three- and four-variable averages
#: of a plain MLP take the nested rule graded in z (:func:`pdlt.gaussian._graded.expect_graded`)
#: within :func:`graded_plain`: :func:`expect_nd`'s capped product rules miss 1e-8 above
#: ~10 (tanh, four distinct inputs, depth 2: V 4e-8 at K = 30, 2e-6 at K ~ 100); at or
#: below it every average keeps :func:`expect_nd`, bit-identical
_GRADED_K = 10.0
#: modelled cost (seconds, one core, tanh, with the estimate) of one graded covariance by
#: its number of variables, ~1.5x the measured (this 2-core machine under load, a plain fold
#: of four random inputs at K = 100 .. 1e4: two 0.004 s, three 0.026-0.028 s;
#: ``benchmarks/README.md``); four: :data:`pdlt.theory._capped._FOUR_TUPLE_COST` and
#: ``_FOUR_PLAN_COST`` (a function tuple, a covariance's plan), as in the residual folds.
#: Deterministic: the same averages are graded on any machine
_GRADED_COST = {2: 0.005, 3: 0.04}
#: modelled seconds of graded covariances one :func:`graded_plain` may spend (10x with
#: ``accuracy="high"``); the rest keep :func:`expect_nd`'s capped rule, its estimate and
#: :func:`pdlt.statistics`' warning. Since the plans (session 17) the graded rule costs
#: about what the capped one does in the folds (16 random tanh inputs in 3 dimensions at
#: K1 = 30, depth 2, V: everything graded 323-380 s and 0.4 GB, silent; with 60 s of it, 634 s,
#: 2.9 GB and warned: the capped rule of rank-3 covariances takes 1-5 s each), so the
#: budget bounds only the extremes (N in the tens at K > 10, tables of large ``rho``)
_GRADED_BUDGET = 600.0
#: the state of :func:`graded_plain` (None outside it: every average is :func:`expect_nd`)
_GRADED = None


def _graded_act(act):
    """True for a named smooth activation the graded rule resolves (tanh, erf, sigmoid,
    softplus, swish, gelu: one transition of width ~1 at 0; users' callables and kinked
    activations keep :func:`expect_nd`)."""
    return (not act.kinks and getattr(act, "period", None) is None
            and act.spec is not None and act.spec[0] in _GRADED_NAMES)


class _GradedPlain:
    """Within :func:`graded_plain`: a plain MLP's two-, three- and four-variable averages of
    the four-slot tensors (:meth:`LayerAverages.quad`: V and G1's sigma-only one, A, D,
    H1's ``ppss``, ...) of a named smooth activation whose covariance has a variance above
    :data:`_GRADED_K`, by the graded rule, under a budget (requests served in the fold's
    order: the sigma-only tensor first). The two-variable ones are in because
    :func:`expect_nd`'s pair rule left V's estimate at 1e-8 at K = 30 (tanh, ``<s^2 s^2>``).

    ``eval`` splits the rows of one :meth:`LayerAverages._nd` call: covariances at most
    :data:`_GRADED_K` keep :func:`expect_nd` as called (bit-identical); those past the
    budget, or of more than :data:`_GRADED_AXES` graded axes (none of at most four
    variables since the sheared 2-D table) keep its capped rule with the residual
    modules' estimate
    (:func:`pdlt.theory._capped._unresolved_estimate`: its lower-rule difference, at
    least the trapezoid's ``exp(-pi^2 / h)`` where its spacing passes the transition;
    recorded in ``capped_rel`` for the warning, kept like the graded values and added to
    the value with ``perturb``);
    the rest take :func:`pdlt.gaussian._graded.expect_graded`, estimate: its lower-rule
    difference plus the covariance's own rounding, ``d eps sqrt(K)`` of the Cauchy-Schwarz
    scale (as :func:`pdlt.theory.residual_multi._expect_many`); three- and four-variable
    ones share their covariance's plan (``plans``, :class:`pdlt.gaussian._graded.GradedPlans`;
    the functions named by activation and slot: :func:`_quad_tensor` rebuilds them per
    call). Values are kept by (activation, average, covariance) (the graded rule does not
    depend on ``accuracy``: the second fold of ``statistics(..., error=True)`` reads them);
    with ``perturb`` they are returned moved by their estimate (that fold: its difference
    carries the estimate into every statistic).
    """

    def __init__(self, budget):
        self.budget = _Budget(budget)
        self.cache = {}
        self.plans = GradedPlans()
        #: the averages above _GRADED_K that kept the capped rule: (value, estimate), at
        #: the first fold's accuracy (the error fold reads them moved by the estimate)
        self.capped = {}
        self._axes = set()
        self.graded = 0         # covariances the graded rule took
        #: largest estimated error (over the average's Cauchy-Schwarz scale) of the
        #: averages above _GRADED_K that kept the capped rule
        self.capped_rel = 0.0
        self.perturb = False

    @property
    def skipped(self):
        """Averages above :data:`_GRADED_K` past the budget."""
        return len(self.budget.past)

    @property
    def three_axes(self):
        """Averages above :data:`_GRADED_K` of more than :data:`_GRADED_AXES` graded axes."""
        return len(self._axes)

    def eval(self, act, name, fs, K, I, kw):
        Kb = K[I[:, :, None], I[:, None, :]]
        d = I.shape[1]
        var = np.max(np.einsum("bii->bi", Kb), axis=1)
        big = var > _GRADED_K
        if not np.any(big):
            return _eval_nd(fs, K, I, kw)
        keys = [(act.spec[0], repr(name), Kb[b].tobytes()) for b in range(len(Kb))]
        m = np.zeros(len(Kb), dtype=int)
        m[big] = graded_axes(Kb[big])
        self._axes.update(keys[b] for b in np.flatnonzero(big & (m > _GRADED_AXES)))
        ok = np.flatnonzero(big & (m <= _GRADED_AXES))
        take = np.zeros(len(Kb), dtype=bool)
        if d == 4:              # a covariance's plan once; costs grow with the pair's rho
            take[ok] = self.budget.take_four([keys[b] for b in ok], Kb[ok])
        else:
            take[ok] = [self.budget.take(keys[b], _GRADED_COST[d]) for b in ok]
        ret = kw["return_error"]
        val, err = np.empty(len(Kb)), np.zeros(len(Kb))
        small = np.flatnonzero(~big)
        if len(small):                  # at most _GRADED_K: expect_nd as called
            out = _eval_nd(fs, K, I[small], kw)
            val[small] = out[0] if ret else out
            if ret:
                err[small] = out[1]
        cap = [b for b in np.flatnonzero(big & ~take) if keys[b] not in self.capped]
        if cap:                         # past the budget: the capped rule and its estimate
            v, e = _eval_nd(fs, K, I[cap], dict(kw, return_error=True))
            est, scale = _unresolved_estimate(fs, Kb[cap], e, kw["accuracy"], kw.get("growth"))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(scale > 0, est / scale, np.where(est > 0, np.inf, 0.0))
            self.capped_rel = max(self.capped_rel, float(np.max(rel)))
            for b, vb, eb in zip(cap, np.atleast_1d(v), np.atleast_1d(est)):
                self.capped[keys[b]] = (float(vb), float(eb))
        for b in np.flatnonzero(big & ~take):
            v, e = self.capped[keys[b]]
            val[b], err[b] = (v + e if self.perturb else v), e
        new = [b for b in np.flatnonzero(take) if keys[b] not in self.cache]
        if new:
            v, e = expect_graded(fs, Kb[new], return_error=True, plans=self.plans,
                                 names=[(act.spec[0], name[0], name[1][k]) for k in range(d)])
            scale = _cs_scale(fs, Kb[new])
            e = e + _covariance_rounding(d, var[new], scale)
            for b, vb, eb in zip(new, np.atleast_1d(v), np.atleast_1d(e)):
                self.cache[keys[b]] = (float(vb), float(eb))
                self.graded += 1
        for b in np.flatnonzero(take):
            v, e = self.cache[keys[b]]
            val[b], err[b] = (v + e if self.perturb else v), e
        return (val, err) if ret else val


@contextlib.contextmanager
def graded_plain(budget=None):
    """Within: a plain MLP's two-, three- and four-variable four-slot averages of a named
    smooth activation above :data:`_GRADED_K` take the graded rule (:class:`_GradedPlain`),
    at most ``budget`` modelled seconds of them (default :data:`_GRADED_BUDGET`). Yields
    the state (its ``skipped``, ``three_axes``, ``graded`` counts and ``capped_rel``; set
    ``perturb`` for the error fold)."""
    global _GRADED
    prev = _GRADED
    _GRADED = _GradedPlain(_GRADED_BUDGET if budget is None else budget)
    try:
        yield _GRADED
    finally:
        _GRADED = prev
