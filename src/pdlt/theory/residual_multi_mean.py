r"""Exact N-input H1, kappa3 and mixed vertex C^(l,L) of residual MLPs at order 1/n.

* :func:`residual_ntk_mean_multi`: ``H1`` (below);
* :func:`residual_kappa3_multi`: ``kappa3_{abc} = n E[z_{i;a} z_{i;b} z_{k;c}]`` (i != k),
  the O(1/n) three-point function of a non-odd activation, from the neuron's own dressed
  terms in the fields;
* :func:`residual_mixed_vertex`: ``C^(l,L) = Cov(Ghat^(l), z^(L) z^(L))``, what
  :func:`pdlt.learning.finite_bayes.hebbian_kernel_shift` needs for residual MLPs.

All three are served through the field picture of :mod:`pdlt.theory.residual_multi`
(``pdlt.statistics(..., get=["H1", "kappa3"])`` for residual MLPs and N inputs).

``E[H_{ii;ab}^(l)] = Theta^(l)_{ab} + H1^(l)_{ab} / n_{l-1} + O(1/n^2)`` (``shared/NOTATION.md``)
for the residual MLP ``z' = xi [b + W sigma(z)] + gamma z``. Averaging the forward
equation of the NTK over layer l+1's weights (independent of layer l; the half-skip
term is linear in them) gives exactly, for one neuron j of layer l,

.. math::
    E[H'_{ii;ab}] = \xi^2\big[\lambda_b + \lambda_W E[\sigma_a\sigma_b(z_j)]
        + C_W E[\sigma'_a\sigma'_b(z_j) H_{jj;ab}]\big] + \gamma^2 E[H_{ii;ab}],

so with ``h = H1 / n`` (unnormalized), ``s = sigma``, ``p = sigma'``,

.. math::
    h'_{ab} = \xi^2\big[\lambda_W\,\delta_{s_as_b}
        + C_W\big(\Theta_{ab}\,\delta_{p_ap_b} + \langle p_ap_b\rangle h_{ab}
        + \mathrm{Cov}(p_ap_b(z_j), H_{jj;ab})\big)\big] + \gamma^2 h_{ab}.

* ``delta_f = E[f(z^(l))] - <f>_{K^(l)}``: the mean shift of the G1 step of
  :mod:`pdlt.theory.residual_multi` (section 4 of the derivation) for a general
  ``f = f_a f_b``: ``M^f[g] + (1/8) <d^4 f> Var(Khat) + (dressed own term)``;
* the covariance of the neuron's ``p_a p_b`` with its own NTK diagonal: the shared
  fields ``S``, ``P`` of A and D (``rho(f)^T Sigma rho(H) + rho(H)^T c~(f)``) plus the
  neuron's own conditional NTK mean, the bilinear form ``M^{ab}`` of F evaluated on the
  diagonal (``phi(j)^T M^{ab} phi(j)``), whose covariance with ``f(z^(l))`` is Stein's
  lemma along the increments.

Derivation: ``docs/derivations/residual_ntk_multi.md``, section "H1 and kappa3 at N
inputs (h39)". At gamma = 0 this is the plain recursion of :mod:`pdlt.theory.ntk_mean`;
for one input :func:`pdlt.theory.residual_ntk.residual_ntk_mean`. Served by
:func:`pdlt.statistics` (``get="H1"``) for residual MLPs and N inputs.
"""

from __future__ import annotations

import numpy as np

from .. import gaussian
from ..gaussian._exppw import exp_monomial
from ..gaussian._multi import PiecewiseMonomial, entire_growth
from ..network import MLP
from ._averages import apply_M, is_odd, shift_error, third_derivative
from .residual_multi import (_c_zz, _d2_sigma, _dressed, _expand, _expect, _f_forms,
                             _field_widths, _gather, _hess, _kind_two_depth, _neuron,
                             _ntk_multi, _own_shift, _pair_sd, _prepare, _rule, _s_own,
                             _s_response, _sp_fields, _two_depth)
from .residual_ntk import _second_derivative_by_parts

__all__ = ["residual_ntk_mean_multi", "residual_kappa3_multi", "residual_mixed_vertex",
           "residual_mixed_three_point"]


def residual_ntk_mean_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None,
                            accuracy="default", return_error=False):
    r"""Exact N-input NTK mean ``H1`` of a residual MLP at every layer, any activation.

    ``E[H_{ii;ab}^(l)] = Theta^(l)_{ab} + H1^(l)_{ab} / n_{l-1}`` (module docstring).

    Parameters
    ----------
    mlp : MLP
        Any activation, per-layer ``gamma``, ``xi`` (unequal widths only where
        ``gamma = 0``).
    x : array_like (N, n0), optional
        Inputs.
    Ks, Thetas : ndarray (L, N, N), optional
        The infinite-width kernel and NTK at every layer instead of ``x`` (both or
        neither).
    accuracy : {"fast", "default", "high"}
        Rule of the two-depth Gaussian averages (:func:`pdlt.gaussian.expect_nd`).
    return_error : bool, default False
        Also return H1's estimated absolute error from its fourth-derivative
        sources (ill-conditioned for nearly coinciding inputs of an activation
        without the Stein form), propagated layer by layer; the other averages'
        errors are not in it (``pdlt.statistics(..., error=True)`` measures them).

    Returns
    -------
    ndarray (L, N, N)
        ``H1`` normalized by ``n_{l-1}``; layers 1 and 2 are 0. With
        ``return_error``, the pair ``(H1, error)``, both (L, N, N).

    Raises
    ------
    TypeError
        ``mlp`` is not a :class:`pdlt.MLP`.
    ValueError
        Bad arguments, or an input of zero variance.
    FloatingPointError
        H1 overflowed (far from criticality at large depth).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi_mean import residual_ntk_mean_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=4, activation="relu", C_W=1.5, gamma=0.5)
    >>> residual_ntk_mean_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]])).shape
    (4, 2, 2)
    """
    Ks, Thetas, reps, inv = _prepare(mlp, x, Ks, Thetas, accuracy)
    r2 = (slice(None), reps[:, None], reps[None, :])
    out = _expand(_h1_multi(mlp, Ks[r2], Thetas[r2], accuracy), reps, inv)
    return (out["H1"], out["H1_error"]) if return_error else out["H1"]


# ---------------------------------------------------------------------------
# two-depth averages of products of s = sigma and p = sigma', with Stein derivatives
# ---------------------------------------------------------------------------


class _Fns:
    """Integrands ``s^i p^j`` of one variable, cached so that equal ones group."""

    def __init__(self, act):
        self.act = act
        self.si = act.scale_invariant if act.name != "monomial" else None
        self.cache = {}

    def __call__(self, ns, np_, k=0):
        key = (ns, np_, k)
        if key not in self.cache:
            if self.si is not None:     # ReLU family: exact piecewise monomials
                cp, cm = self.si
                f = PiecewiseMonomial(cp ** (ns + np_), cm ** (ns + np_), ns + k)
            else:
                s, d1 = self.act.sigma, self.act.d1
                f = (lambda z, ns=ns, np_=np_, k=k: z ** k * s(z) ** ns * d1(z) ** np_)
                f = exp_monomial(self.act, f, ns, np_, k)     # elu: exact inner axis
            self.cache[key] = f
        return self.cache[key]

    def deriv(self, ns, np_, order):
        """``d^order/dz^order [s^ns p^np]`` (order 1, 2) of a smooth activation, from
        ``sigma''`` and :func:`~pdlt.theory._averages.third_derivative`."""
        key = ("d", ns, np_, order)
        if key not in self.cache:
            act = self.act
            s, p, q = act.sigma, act.d1, act.d2
            r = third_derivative(act) if order == 2 and np_ > 0 else None
            if order == 1:      # (a, b, c, d): coefficient * s^a p^b q^c r^d
                terms = [(ns, ns - 1, np_ + 1, 0, 0), (np_, ns, np_ - 1, 1, 0)]
            else:
                terms = [(ns * (ns - 1), ns - 2, np_ + 2, 0, 0),
                         (2 * ns * np_ + ns, ns - 1, np_, 1, 0),
                         (np_ * (np_ - 1), ns, np_ - 2, 2, 0), (np_, ns, np_ - 1, 0, 1)]
            terms = [t for t in terms if t[0] != 0]

            def f(z, terms=terms):
                z = np.asarray(z, dtype=float)
                sv, pv, qv = s(z), p(z), q(z)
                rv = r(z) if r is not None else None
                out = np.zeros_like(z)
                for c, a, b, cq, cr in terms:
                    t = c * sv ** a * pv ** b * qv ** cq
                    out = out + (t * rv if cr else t)
                return out
            self.cache[key] = f
        return self.cache[key]


#: True: every activation takes the Stein form in :func:`_stein_moments` (an independent
#: check of the direct derivatives of smooth activations, for tests)
_STEIN_ONLY = False


def _stein_moments(act, C, items, accuracy, order):
    r"""One-neuron ``E[g(x) F(y)]`` and its Stein derivatives along y, for many items.

    Each item is ``(xvars, yvars)``: lists of ``(depth, input, kind)`` with kind "s"
    (sigma) or "p" (sigma'); ``g`` is the product over ``xvars``, ``F`` over ``yvars``
    (factors at the same depth and input are merged). ``C[l, m]`` (N, N) is
    ``Cov(z^(l), z^(m))``. Writing ``y = B x + e`` (e independent of x, ``Lam =
    Cov(e)^-1``, ``u = Lam e``), Stein's lemma along e gives ``E[g d_e F] = E[g F u_e]``
    and ``E[g d_e d_h F] = E[g F (u_e u_h - Lam_eh)]``: no derivative of sigma is taken,
    so kinks (a step sigma' for ReLU) are exact. ``B`` uses the pseudo-inverse of
    ``Cov(x)``. Smooth activations instead differentiate F's factors (``sigma''``,
    ``sigma^(3)``): Lam loses ~(1 - rho^2)^-1 per derivative when two y inputs nearly
    coincide, the derivatives lose nothing. Above the fixed rule's K = 2^16, two-variable
    items (one x, one y factor) put the localized derivative factor outside and take
    ``E[g F'']`` by one integration by parts (:func:`_localized_outer`; GELU, depth 3,
    inputs scaled by 1e6: the H1 diagonal 1e-5 of scale off the one-input module before,
    2e-15 after).

    Returns, per item, ``(m0, d1, d2, ys)``: ``E[gF]``, ``E[g grad F]`` (ny,) and
    ``E[g Hess F]`` (ny, ny) over the distinct y inputs ``ys`` (None above ``order``).
    """
    fns = _Fns(act)
    kw = dict(kinks=act.kinks, growth=entire_growth(act))
    direct = fns.si is None and not act.kinks and not _STEIN_ONLY

    def merge(vs):
        out = {}
        for dep, i, kind in vs:
            c = out.setdefault((dep, i), [0, 0])
            c[0 if kind == "s" else 1] += 1
        return [(dep, i, tuple(c)) for (dep, i), c in sorted(out.items())]

    groups = {}
    for it in items:
        xs, ys = merge(it[0]), merge(it[1])
        sig = (tuple(v[2] for v in xs), tuple(v[2] for v in ys))
        groups.setdefault(sig, []).append((it, xs, ys))
    res = {}
    for (sx, sy), group in groups.items():
        nx, ny = len(sx), len(sy)
        d = nx + ny
        counts = list(sx) + list(sy)
        cov = _gather(C, [[v[0] for v in list(xs) + list(ys)] for _, xs, ys in group],
                      [[v[1] for v in list(xs) + list(ys)] for _, xs, ys in group])
        acc = _rule(accuracy, act, d)

        def nd(pw):
            fs = [fns(counts[i][0], counts[i][1], pw[i]) for i in range(d)]
            return np.atleast_1d(np.asarray(_expect(act, fs, cov, accuracy=acc, **kw),
                                            dtype=float))

        m0 = nd([0] * d)
        m1 = m2 = None
        if direct:
            # smooth activations: the derivatives of F's factors themselves (no Lam, whose
            # conditioning goes like (1 - rho^2)^-1 per derivative for nearly coinciding
            # y inputs)
            base = [fns(counts[i][0], counts[i][1]) for i in range(d)]

            def with_d(repl):
                fs = list(base)
                for i, o in repl:
                    fs[nx + i] = fns.deriv(counts[nx + i][0], counts[nx + i][1], o)
                return np.atleast_1d(np.asarray(_expect(act, fs, cov, accuracy=acc, **kw),
                                                dtype=float))
            g1 = (np.stack([with_d([(e, 1)]) for e in range(ny)], axis=1)
                  if order >= 1 else None)
            g2 = None
            if order >= 2:
                g2 = np.empty((len(group), ny, ny))
                for e in range(ny):
                    g2[:, e, e] = with_d([(e, 2)])
                    for h in range(e + 1, ny):
                        g2[:, e, h] = g2[:, h, e] = with_d([(e, 1), (h, 1)])
            if d == 2:
                _localized_outer(fns, counts, cov, g1, g2)
            for k, (it, xs, ys) in enumerate(group):
                res[it] = (m0[k], None if g1 is None else g1[k],
                           None if g2 is None else g2[k], [v[1] for v in ys])
            continue
        if order >= 1:
            m1 = np.stack([nd([int(i == j) for j in range(d)]) for i in range(d)], axis=1)
        if order >= 2:
            m2 = np.empty((len(group), d, d))
            for i in range(d):
                for j in range(i, d):
                    pw = [0] * d
                    pw[i] += 1
                    pw[j] += 1
                    m2[:, i, j] = m2[:, j, i] = nd(pw)
        for k, (it, xs, ys) in enumerate(group):
            c = cov[k]
            Kxx, Cyx, Kyy = c[:nx, :nx], c[nx:, :nx], c[nx:, nx:]
            Bm = Cyx @ np.linalg.pinv(Kxx, hermitian=True)
            Lam = np.linalg.inv(Kyy - Bm @ Cyx.T)
            A = np.hstack([-Lam @ Bm, Lam])              # u = A (x, y)
            g1 = A @ m1[k] if m1 is not None else None
            g2 = A @ m2[k] @ A.T - Lam * m0[k] if m2 is not None else None
            res[it] = (m0[k], g1, g2, [v[1] for v in ys])
    return res


def _localized_outer(fns, counts, cov, g1, g2):
    r"""Overwrite, in place, the two-variable (one x, one y factor) Stein moments ``g1``
    (B, 1), ``g2`` (B, 1, 1) of :func:`_stein_moments`' direct path where a variance exceeds
    the fixed rule's ``2^16`` (the pair averages are nested quadrature there).

    ``F'`` and ``F''`` of ``F = s^i p^j`` are localized (``F''`` integrates to 0): as the
    inner factor of :func:`pdlt.gaussian.expect2` they lose ~5e-11 (``E[g F']``) and ~1e-13
    sqrt(K) (``E[g F'']``: GELU 3e-5 at K = 1.5e11) relative; as the outer one (its rule
    graded at the unit scale around 0) ~1e-15. ``E[g F'']`` by one integration by parts
    along y (``alpha = C_xy / K_yy``), which does not cancel:
    ``E[g(x) F''(y)] = -alpha E[g'(x) F'(y)] + E[g(x) y F'(y)] / K_yy``
    (:func:`pdlt.theory.residual_ntk._cov_second_derivative_ibp`; measured in
    ``benchmarks/residual_h1_gelu.py``).
    """
    huge = np.max(np.einsum("bii->bi", cov), axis=1) > gaussian._K_FIXED_MAX
    if not np.any(huge) or (g1 is None and g2 is None):
        return
    c = cov[huge]
    Kx, Cxy, Ky = c[:, 0, 0], c[:, 0, 1], c[:, 1, 1]
    g, F1 = fns(*counts[0]), fns.deriv(*counts[1], 1)
    if g1 is not None:
        g1[huge, 0] = gaussian.expect2(F1, g, Ky, Cxy, Kx)
    if g2 is not None:
        gd = fns.deriv(*counts[0], 1)
        g2[huge, 0, 0] = _second_derivative_by_parts(g, gd, F1, Ky, Cxy, Kx)


# ---------------------------------------------------------------------------
# H1
# ---------------------------------------------------------------------------


def _h1_multi(mlp, Ks, Ths, accuracy):
    act = mlp.activation
    L, N = Ks.shape[0], Ks.shape[1]
    H1, H1_error = np.zeros((L, N, N)), np.zeros((L, N, N))
    if L <= 2:
        return {"H1": H1, "H1_error": H1_error}
    nr = _neuron(mlp, Ks, accuracy)
    avg, P, pidx, M, nf, C, rho = nr.avg, nr.P, nr.pidx, nr.M, nr.nf, nr.C, nr.rho
    CW = np.asarray(mlp.C_W, float)
    lW, xi, g = (np.asarray(v, float) for v in (mlp.lambda_W, mlp.xi, mlp.gamma))
    # --- the shared fields S_{m;p}, P_{m;p} and their covariance (derivation section 11) ---
    fx = _sp_fields(mlp, nr, Ths, accuracy)
    SS = slice(0, nf * M)                         # the S block (V and G1 use it alone)
    SigS, dressS = fx.Sig[SS, SS], fx.dress[SS, SS]
    # --- two-depth averages for the own terms of the mean shifts ---
    todo = [(m, l, p, f) for l in range(nf) for m in range(l) if np.any(C[l, m] != 0.0)
            for p in P for f in P]
    td = _two_depth(act, C, todo, accuracy) if todo else {}   # F = sigma sigma (as G1)
    items_pp = [((tuple((m, i, "s") for i in p)), tuple((l, i, "p") for i in f))
                for (m, l, p, f) in todo]
    tp = _stein_moments(act, C, items_pp, accuracy, 2) if items_pp else {}
    Ms = [None] + list(_f_forms(mlp, nr, Ths, accuracy))   # (layer 1's form is not used)
    gm = np.zeros((N, N))                         # E[z z] - K, unnormalized
    h = np.zeros((N, N))                          # H1 / n, unnormalized
    dgm, dh = np.zeros((N, N)), np.zeros((N, N))  # their estimated errors (d4 sources)
    for l in range(L - 1):
        r = np.kron(rho[l], np.eye(M))            # (M, nf M): Khat_l's response to S
        Vk = r @ SigS @ r.T
        V4 = Vk[pidx[:, :, None, None], pidx[None, None, :, :]]
        anyV = bool(np.any(V4))
        d_ss = apply_M(avg[l].Mss, gm) + (avg[l].d4_source(V4, "s") if anyV else 0.0)
        d_pp = apply_M(avg[l].Mpp, gm) + (avg[l].d4_source(V4, "p") if anyV else 0.0)
        # their estimated errors: the d4 sources' and dM_pp's (kinked) through the steps
        e_ss, e_pp = (shift_error(avg[l], of, dgm, gm,
                                  avg[l].d4_error.get(of, 0.0) if anyV else 0.0)
                      for of in ("s", "p"))
        cov = np.zeros((N, N))
        if l >= 1:
            d_ss = d_ss + _own_shift(nr, l, dressS, fx.nw, avg[l].Mss, _d2_sigma(td))
            d_pp = d_pp + _own_shift(nr, l, dressS, fx.nw, avg[l].Mpp, _d2_pp(tp))
            cov = _cov_pH(l, mlp, nr, fx, Ms[l], accuracy)
        h = (xi[l + 1] ** 2 * (lW[l + 1] * d_ss
                               + CW[l + 1] * (Ths[l] * d_pp + avg[l].PP * h + cov))
             + g[l + 1] ** 2 * h)
        gm = xi[l + 1] ** 2 * CW[l + 1] * d_ss + g[l + 1] ** 2 * gm
        H1[l + 1] = mlp.widths[l + 1] * h
        dh = (xi[l + 1] ** 2 * (abs(lW[l + 1]) * e_ss + abs(CW[l + 1]) * (
            np.abs(Ths[l]) * e_pp + np.abs(avg[l].PP) * dh)) + g[l + 1] ** 2 * dh)
        dgm = xi[l + 1] ** 2 * abs(CW[l + 1]) * e_ss + g[l + 1] ** 2 * dgm
        H1_error[l + 1] = mlp.widths[l + 1] * dh
    return {"H1": H1, "H1_error": H1_error}


def _d2_pp(tp):
    """:func:`~pdlt.theory.residual_multi._own_shift`'s ``d2`` for ``f = sigma'`` from the
    Stein moments ``tp`` (:func:`_stein_moments`, keys as in :func:`_h1_multi`)."""
    def d2(m, l, p, f):
        key = (tuple((m, i, "s") for i in p), tuple((l, i, "p") for i in f))
        if key not in tp:
            return None
        _, _, g2, ys = tp[key]
        return (((ys[i], ys[j]), g2[i, j]) for i in range(len(ys)) for j in range(len(ys)))
    return d2


def _cov_pH(l, mlp, nr, fx, Mf, accuracy):
    """``Cov(sigma'_a sigma'_b(z_j^(l)), H_{jj;ab}^(l))`` (N, N), unnormalized: the shared
    fields ``fx`` plus the neuron's own conditional NTK mean (F's form ``Mf`` on the
    diagonal)."""
    act, P, M, nf, C, rho, avg, a, proj = (mlp.activation, nr.P, nr.M, nr.nf, nr.C, nr.rho,
                                           nr.avg, nr.a, nr.proj)
    Mpp, Sig, dress, nw, kt, Th, Sv, PPv = (fx.Mpp, fx.Sig, fx.dress, fx.nw, fx.kt, fx.Th,
                                            fx.Sv, fx.PPv)
    L, N = len(rho), len(nr.pidx)
    nU = L * N
    Fd = nU + L * N * N
    F = Sig.shape[0]
    out = np.zeros((N, N))
    # E[s_c sigma'_e(z^(p)) d_x (p_a p_b)(z^(l))] for p < l (Stein along z^(l))
    items = [(tuple([(p, c, "s"), (p, e, "p")]), tuple((l, i, "p") for i in f))
             for p in range(l) for c in range(N) for e in range(N) for f in P]
    ws = _stein_moments(act, C, items, accuracy, 1) if items else {}
    vU = np.zeros((Fd, N))                        # Cov(U_{m;c}, z^(l)): rows of the features
    for m in range(l + 1):                        # (U features G^+ w: residual_multi._Neuron)
        vU[m * N:(m + 1) * N] = a[l, m] * proj[m]
    for k, f in enumerate(P):
        # shared fields: response of <p_a p_b>_{Khat_l}, and the dressed own covariances
        rf = np.zeros(F)
        for m in range(l):
            rf[m * M:(m + 1) * M] = rho[l, m] * Mpp[l][k]
        rH = fx.H[l][k]
        cf = np.zeros(F)
        for m in range(l):
            if ("p", "s", l, m) not in kt:
                continue
            cf[m * M:(m + 1) * M] = kt[("p", "s", l, m)][k] - PPv[l][k] * Sv[m]
            cf[(nf + m) * M:(nf + m + 1) * M] = (kt[("p", "p", l, m)][k]
                                                 - PPv[l][k] * PPv[m]) * Th[m]
        val = float(rf @ Sig @ rH + rH @ (dress @ (cf / nw)))
        # own part: sum_{alpha beta} M^{ab}_{alpha beta} Cov(f(z^(l)), phi_alpha phi_beta)
        Hs = _hess(avg[l].Mpp, f)
        W = np.zeros((Fd, N))                     # E[S_{p;(c,e)} grad f(z^(l))]
        for p in range(l):           # (independent depths: the product, same formula)
            for c in range(N):
                for e in range(N):
                    _, g1, _, ys = ws[(((p, c, "s"), (p, e, "p")), tuple((l, i, "p") for i in f))]
                    for i, y in enumerate(ys):
                        W[nU + p * N * N + c * N + e, y] = g1[i]
        Mab = Mf[f[0], f[1]]
        own = (np.einsum("xe,xy,yh,eh->", vU, Mab, vU, Hs)
               + np.einsum("xe,xy,ye->", vU, Mab, W) + np.einsum("xe,xy,ye->", W, Mab, vU))
        val += own / mlp.widths[l]
        out[f] = out[f[::-1]] = val
    return out


# ---------------------------------------------------------------------------
# kappa3: the N-input three-point function (non-odd sigma)
# ---------------------------------------------------------------------------


def residual_kappa3_multi(mlp: MLP, x=None, *, Ks=None, accuracy="default") -> np.ndarray:
    r"""The N-input three-point function ``kappa3`` of a residual MLP at every layer.

    ``E[z_{i;a} z_{j;b} z_{k;c}] = (1/n_{l-1}) [d_ij kappa3_{abc} + d_ik kappa3_{acb}
    + d_jk kappa3_{bca}]`` with ``kappa3_{abc} = n_{l-1} E[z_{i;a} z_{i;b} z_{k;c}]``
    (i != k; symmetric in a, b); one input: the ``kappa3`` of
    :func:`pdlt.theory.vertex.three_point_step`. In the field picture of
    :mod:`pdlt.theory.residual_multi` neuron i's ``z_a z_b`` answers the fields through
    ``Khat^{ab}`` and neuron k's ``z_c`` has no response (its conditional mean is 0), so
    only k's own dressed terms remain:

    .. math::
        \kappa_{3;abc} = n\,\rho(z_az_b)^T (1 - R)^{-1} c(z_c),\qquad
        c(z_c)_{(m,p)} = \mathrm{Cov}(\sigma_{p_1}\sigma_{p_2}(z^{(m)}), z_c^{(l)}) / n_m
        = \textstyle\sum_e C_{lm}^{ce}\langle\partial_e(\sigma_{p_1}\sigma_{p_2})\rangle / n_m.

    Zero for odd sigma (``<sigma' sigma>`` vanishes) and at gamma = 0 (``C_lm = 0``).
    Derivation: ``docs/derivations/residual_ntk_multi.md``, section "H1 and kappa3 at N
    inputs (h39)".

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0), optional
    Ks : ndarray (L, N, N), optional
        The infinite-width kernels instead of ``x`` (give exactly one).
    accuracy : {"fast", "default", "high"}

    Returns
    -------
    ndarray (L, N, N, N)
        ``kappa3[l, a, b, c]``, normalized by ``n_{l-1}``; layer 1 is 0.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi_mean import residual_kappa3_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.5, gamma=0.5)
    >>> residual_kappa3_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]])).shape
    (3, 2, 2, 2)
    """
    return _ntk_multi(mlp, x, Ks, None, accuracy,
                      lambda m, K, _, acc: {"kappa3": _kappa3_multi(m, K, acc)},
                      thetas=False)["kappa3"]


def _kappa3_multi(mlp, Ks, accuracy, single=None):
    """kappa3 of every layer; ``single`` (a 0-based layer): the pair at each layer l and
    the single preactivation at layer ``single`` instead of l (unnormalized, no ``n_l``)."""
    L, N = Ks.shape[0], Ks.shape[1]
    out = np.zeros((L, N, N, N))
    if L == 1 or is_odd(mlp.activation):      # odd sigma: every odd cumulant vanishes
        return out
    nr = _neuron(mlp, Ks, accuracy)
    avg, P, pidx, M, nf, C, rho = nr.avg, nr.P, nr.pidx, nr.M, nr.nf, nr.C, nr.rho
    dress = np.linalg.inv(np.eye(nf * M) - _s_response(nr))
    # dS[m][p, e] = <d_e (sigma_p1 sigma_p2)>_{K^(m)}, from <sigma_c sigma'_e> (_pair_sd)
    dS = []
    for m in range(nf):
        sd = _pair_sd(avg[m])                     # [c, e] = <sigma_c sigma'_e>
        d = np.zeros((M, N))
        for k, (p1, p2) in enumerate(P):
            if p1 == p2:
                d[k, p1] = 2.0 * sd[p1, p1]
            else:
                d[k, p1], d[k, p2] = sd[p2, p1], sd[p1, p2]
        dS.append(d)
    nw = np.array([mlp.widths[m + 1] for m in range(nf)], float)
    for l in range(1, L):
        t = l if single is None else single       # layer of the single z_c
        cv = np.zeros((nf * M, N))                # c(z_c) on every field, (fields, c)
        for m in range(min(l, t)):                # rho(z_a z_b) of layer l sees fields < l
            cv[m * M:(m + 1) * M] = dS[m] @ C[t, m].T / nw[m]      # sum_e dS[p, e] C[c, e]
        ct = dress @ cv
        r = np.kron(rho[l], np.eye(M))            # (M, nf M)
        k3 = (mlp.widths[l] if single is None else 1.0) * (r @ ct)   # (pairs, c)
        out[l] = k3[pidx]
    return out


def residual_mixed_three_point(mlp: MLP, x=None, *, Ks=None, accuracy="default") -> np.ndarray:
    r"""``Cov(Ghat^(l)_ab, z^(L)_{i;c})`` of a residual MLP, every hidden layer l, at O(1/n).

    ``Ghat^(l)_ab = (1/n_l) sum_j z^(l)_{j;a} z^(l)_{j;b}``; i any output neuron. Given
    the layers up to l, ``z^(m+1)_i = xi [b_i + W_i sigma(z^(m))] + gamma^(m+1) z^(m)_i`` has
    conditional mean ``gamma^(m+1) z^(m)_i`` (b, W of later layers have mean 0), so by the
    tower property

    .. math::
        \mathrm{Cov}(\hat G^{(l)}_{ab}, z^{(L)}_{i;c})
            = \Big(\prod_{m=l+1}^{L}\gamma^{(m)}\Big) E[\hat G^{(l)}_{ab} z^{(l)}_{i;c}]
            = \Big(\prod_{m=l+1}^{L}\gamma^{(m)}\Big)\frac{\kappa^{(l)}_{3;abc}}{n_{l-1}}
              + O(1/n^2)

    (:func:`residual_kappa3_multi`; the j = i term of ``Ghat`` is O(1/n^2)). The field
    picture of :func:`residual_kappa3_multi` with the single preactivation moved to the
    output gives the same to rounding (``tests/theory/test_residual_multi_mean.py``). Zero
    for odd sigma, at gamma^(L) = 0 (a plain output layer) and for l = 1. It is the term of
    :func:`pdlt.learning.finite_bayes.hebbian_kernel_shift` for a residual output layer
    with a non-odd activation (``docs/derivations/finite_bayes.rst``).

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0), optional
    Ks : ndarray (L, N, N), optional
        The infinite-width kernels instead of ``x`` (give exactly one).
    accuracy : {"fast", "default", "high"}

    Returns
    -------
    ndarray (L-1, N, N, N)
        ``[l-1, a, b, c] = Cov(Ghat^(l)_ab, z^(L)_{i;c})`` for l = 1..L-1 (unnormalized: it
        carries its 1/n); symmetric in a, b.
    """
    L = mlp.depth
    k3 = residual_kappa3_multi(mlp, x, Ks=Ks, accuracy=accuracy)
    N = k3.shape[1]
    out = np.zeros((L - 1, N, N, N))
    for l in range(1, L):                       # 1-based hidden layer l
        out[l - 1] = np.prod(mlp.gamma[l:L]) * k3[l - 1] / mlp.widths[l - 1]
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the mixed three-point function overflowed; reduce the depth "
                                 "or initialize at criticality (pdlt.criticality)")
    return out


# ---------------------------------------------------------------------------
# the mixed vertex C^(l,L) between a hidden layer's metric and the output (hebbian shift)
# ---------------------------------------------------------------------------


def residual_mixed_vertex(mlp: MLP, x=None, *, Ks=None, accuracy="default") -> np.ndarray:
    r"""``C^(l,L)_{(ab)(cd)} = Cov(Ghat^(l)_ab, z^(L)_{i;c} z^(L)_{i;d})`` of a residual MLP.

    ``Ghat^(l)_ab = (1/n_l) sum_j z^(l)_{j;a} z^(l)_{j;b}`` is hidden layer l's metric, i an
    output neuron; the mixed vertex of
    :func:`pdlt.learning.finite_bayes.hebbian_kernel_shift` (``docs/derivations/finite_bayes.rst``),
    at order 1/n. In the field picture of :mod:`pdlt.theory.residual_multi` (``Phi = z_a z_b``
    at layer l, ``Psi = z_c z_d`` at the output):

    .. math::
        C^{(l,L)} = \frac{1}{n_l}\,(C_{ac}C_{bd} + C_{ad}C_{bc})
            + \rho(\Phi)^T\Sigma\rho(\Psi) + \tilde c(\Phi)^T\rho(\Psi)
            + \rho(\Phi)^T\tilde c(\Psi),

    the first term the output neuron's own past in ``Ghat^(l)`` (``C = Cov(z^(l), z^(L))`` of
    one neuron: zero unless the output layer continues layer l's neurons), the rest the
    cross-neuron covariance of section 3 of the derivation, with ``c(Phi)`` on every field
    (also the fields after layer l, which move the output through ``rho(Psi)``). At gamma = 0
    it is the plain recursion ``C^(l,l'+1) = C_W M^(l') C^(l,l')`` of ``hebbian_kernel_shift``.
    Derivation: ``docs/derivations/residual_ntk_multi.md``, section "H1 and kappa3 at N inputs
    (h39)".

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0), optional
    Ks : ndarray (L, N, N), optional
        The infinite-width kernels instead of ``x`` (give exactly one).
    accuracy : {"fast", "default", "high"}

    Returns
    -------
    ndarray (L-1, N, N, N, N)
        ``C^(l,L)`` for the hidden layers l = 1..L-1 (unnormalized: it carries its 1/n).
    """
    return _ntk_multi(mlp, x, Ks, None, accuracy,
                      lambda m, K, _, acc: {"the mixed vertex": _mixed_vertex(m, K, acc)},
                      thetas=False)["the mixed vertex"]


def _mixed_vertex(mlp, Ks, accuracy):
    act = mlp.activation
    L, N = Ks.shape[0], Ks.shape[1]
    out = np.zeros((max(L - 1, 0),) + (N,) * 4)
    if L == 1:
        return out
    nr = _neuron(mlp, Ks, accuracy)
    avg, P, pidx, M, nf, C, rho, pa, pb = (nr.avg, nr.P, nr.pidx, nr.M, nr.nf, nr.C, nr.rho,
                                           nr.pa, nr.pb)
    R, own = _s_response(nr), _s_own(nr)
    for m in range(nf):
        for j in range(m):
            if np.any(C[m, j] != 0.0):
                v = _kind_two_depth(act, C, m, j, P, "s", "s", accuracy) - np.outer(
                    avg[m].S[pa, pb], avg[j].S[pa, pb])
                own[m * M:(m + 1) * M, j * M:(j + 1) * M] = v
                own[j * M:(j + 1) * M, m * M:(m + 1) * M] = v.T
    nw = _field_widths(mlp, nr)
    dress, Sig = _dressed(R, own / nw[None, :])
    Lo = L - 1
    rP = np.kron(rho[Lo], np.eye(M))              # (M, F): response of Khat at the output
    ctP = _c_zz(nr, Lo, nw) @ dress.T             # c~(z_c z_d at the output)
    sel = (pidx[:, :, None, None], pidx[None, None, :, :])
    for l in range(L - 1):
        rl = np.kron(rho[l], np.eye(M))
        ctl = _c_zz(nr, l, nw) @ dress.T          # every field: the later ones move the output
        cross = rl @ Sig @ rP.T + ctl @ rP.T + rl @ ctP.T
        Cl = C[l, Lo]                             # one neuron's Cov(z^(l), z^(L))
        same = (np.einsum("ac,bd->abcd", Cl, Cl) + np.einsum("ad,bc->abcd", Cl, Cl)) \
            / mlp.widths[l + 1]
        out[l] = cross[sel] + same
    return out
