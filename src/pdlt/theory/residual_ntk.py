r"""NTK statistics of residual MLPs at order 1/n, single input: A, B, D, F, H1, P, Q, R, S, T, U
(and exact V).

For the residual MLP ``z' = xi [b + W sigma(z)] + gamma z``
(``shared/NOTATION.md``) the book's closure on a finite set of statistics
fails: a residual neuron carries its own past, so the order-1/n statistics
need one neuron's *two-depth* Gaussian averages ``E[f(z^(l)) g(z^(p))]``,
``Cov(z^(l), z^(p)) = gamma^(p+1) ... gamma^(l) K^(p)``. This module tracks
them exactly:

* :func:`residual_ntk_one_input`: A, B, D, F and the exact V of a residual MLP at
  every layer, one input (B and F by history recursions, A, D and V by the
  covariances of the shared fields with the neuron's own dressed influence);
* :func:`residual_vertex_metric`: the exact single-input V and G1, which
  :func:`pdlt.statistics` serves for residual MLPs (the
  three-point truncation it used before was ~1-4 % off: ReLU, gamma = 0.5,
  V^(3) = 8.6179 against 8.5574, G1^(3) = 0.3426 against 0.3581);
* :func:`residual_ntk_mean`: H1, the NTK mean at order 1/n (the shared fields,
  the neuron's own dressed past, and the diagonal of F's bilinear form), which
  :func:`pdlt.statistics` serves for residual MLPs;
* :func:`residual_dntk_p`: P, the dNTK-preactivation correlation (a bilinear form
  in the two neurons' trajectories, fed by B's attachments), which
  :func:`pdlt.statistics` serves for residual MLPs;
* :func:`residual_dntk_q`: Q, the dNTK's other contraction (a linear form in one
  neuron's features), which :func:`pdlt.statistics` serves for residual MLPs;
* :func:`residual_ddntk_r`, :func:`residual_ddntk_s`, :func:`residual_ddntk_t`,
  :func:`residual_ddntk_u`: the ddNTK statistics, served by :func:`pdlt.statistics`
  for residual MLPs. S and R are linear forms in neuron j's features (B's attachments;
  R also P's bilinear form), T a constant fed by F's and Q's forms, and U a constant fed
  by an NTK-dNTK correlation ``n E[H_ab dH_baa]`` that plain MLPs do not have (8-15 %
  of U at gamma = 0.7);
* :func:`residual_b_closure`: B from the closure recursion (history terms
  dropped), for comparison only;
* :func:`pdlt.theory.residual.residual_slopes`: the depth-to-width slopes of the normalized
  statistics at criticality.

At gamma = 0 every history term vanishes and the recursions are the plain ones
of :mod:`pdlt.theory.ntk` (equal to 1e-12). Checked against ensembles of real
residual networks (``tests/experiment/test_residual_ntk_ensemble.py``,
:func:`pdlt.report.residual.residual_ntk_rows`); G1^(3), G1^(4) by a Monte
Carlo of real networks (``docs/derivations/residual_g1_mc.py``); H1 at layer 3
by an independent delta-method derivation and at layers 3-5 by Rao-Blackwellized
ensembles (:func:`pdlt.report.residual.residual_ntk_mean_measure`); P at layers 2-5
and Q by Rao-Blackwellized ensembles (:func:`pdlt.report.residual.residual_dntk_p_measure`,
:func:`pdlt.report.residual.residual_dntk_q_measure`); R, S, T, U by
:class:`pdlt.experiment.Ensemble` (autodiff) at layers 2-4. For N inputs, V, G1, A, B, D
and F are exact in :mod:`pdlt.theory.residual_multi` (any activation), kappa3 and H1 in
:mod:`pdlt.theory.residual_multi_mean`, P and Q in :mod:`pdlt.theory.residual_multi_dntk`,
R and T in :mod:`pdlt.theory.residual_multi_ddi`, S and U in
:mod:`pdlt.theory.residual_multi_ddii`; :func:`pdlt.statistics` serves them all.

Cost: ``O(L^2)`` two-variable Gaussian averages (:func:`pdlt.gaussian.expect2`,
~1e6 function evaluations each) and ``O(L^3)`` algebra; fine to depth ~50.

Derivation: ``docs/derivations/residual_ntk.md`` (forward equation, why the
closure fails, the B attachments, the F bilinear features, the field
covariances for V, A, D, H1 (section 8), P (section 9), Q (section 10), the ddNTKs
(sections 11-14: U, S, T, R and their ensembles), and the checks).
"""

from __future__ import annotations

import math

import numpy as np

from .. import gaussian
from ..network import MLP
from ._averages import Integrands, OneVariableTable, third_derivative
from .kernel import first_layer_kernel, kernel_fold

__all__ = ["residual_ntk_one_input", "residual_ntk_mean", "residual_dntk_p", "residual_dntk_q",
           "residual_ddntk_r", "residual_ddntk_s", "residual_ddntk_t", "residual_ddntk_u",
           "residual_statistics", "residual_b_closure", "one_input_kernel",
           "RESIDUAL_NTK_STATISTICS"]

#: statistics derived (and ensemble-checked) for residual MLPs, single input
RESIDUAL_NTK_STATISTICS = ("A", "B", "D", "F")


def _finite(name, arr):
    """``arr``, or a FloatingPointError naming the statistic ``name`` that overflowed."""
    if not np.all(np.isfinite(arr)):
        raise FloatingPointError(f"{name} overflowed; reduce the depth or initialize at "
                                 "criticality")
    return arr


def _check_K1(K1):
    """The one-input entry points' check of the first-layer kernel ``K1``."""
    if not (isinstance(K1, (int, float)) and math.isfinite(K1) and K1 > 0):
        raise ValueError(f"K1 must be a finite number > 0; got {K1!r}")


def _one_input_setup(mlp, K1, names):
    """Validate K1; the kernel K, Theta (L,), the named one-variable averages of
    :class:`OneVariableTable` at K, and the residual trajectory ``(a, varw, C)``."""
    _check_K1(K1)
    K, Th = one_input_kernel(mlp, K1)
    t = OneVariableTable(mlp.activation, K)
    return K, Th, tuple(np.asarray(t[k], float) for k in names), _trajectory(mlp, K)


def one_input_kernel(mlp, K1):
    """K, Theta (L,) of one input (the kernel fold of :mod:`pdlt.theory.kernel`)."""
    Ks, Ths, _, _ = kernel_fold(mlp, *first_layer_kernel(mlp, K1=float(K1)),
                                susceptibilities=False)
    return Ks[:, 0, 0], Ths[:, 0, 0]


def _trajectory(mlp, K):
    """Single-neuron Gaussian trajectory at infinite width.

    Returns ``a`` (L, L) with ``z^(l) = sum_m a[l, m] w_m``, ``varw`` (L,) the
    variances of the independent ``w_m`` and ``C`` (L, L) ``Cov(z^(l), z^(p))``
    (0-based layer indices).
    """
    L = mlp.depth
    act = mlp.activation
    ss = np.asarray(OneVariableTable(act, np.asarray(K, float))["ss"])
    a = np.zeros((L, L))
    varw = np.empty(L)
    varw[0] = K[0]
    a[0, 0] = 1.0
    for l in range(1, L):
        varw[l] = mlp.C_b[l] + mlp.C_W[l] * ss[l - 1]          # G_{l-1}: variance of u^(l+1)
        a[l, :l] = mlp.gamma[l] * a[l - 1, :l]
        a[l, l] = mlp.xi[l]
    C = (a * varw) @ a.T
    return a, varw, C


def _one_means(act, fn, K):
    """``<fn>_K`` at each layer's kernel (L,)."""
    return np.array([float(gaussian.expect(fn, k, kinks=act.kinks, period=act.period))
                     for k in K])


def _two_depth(act, fn, K, C):
    """``E[fn(z^(l)) fn(z^(p))]`` for all p < l (matrix, lower triangle filled)."""
    L = len(K)
    out = np.zeros((L, L))
    li, pi = np.tril_indices(L, -1)
    if len(li) == 0:
        return out
    one = np.array([float(gaussian.expect(fn, k, kinks=act.kinks, period=act.period))
                    for k in K])
    out[li, pi] = one[li] * one[pi]
    keep = C[li, pi] != 0.0          # uncorrelated (a plain layer in between): a product
    if keep.any():
        e = _two_depth_pairs(act, C, {"f": fn}, [("f", "f")])[("f", "f")]
        out[li[keep], pi[keep]] = e[li[keep], pi[keep]]
    return out


def residual_ntk_one_input(mlp: MLP, K1: float, stats=RESIDUAL_NTK_STATISTICS) -> dict:
    """A, B, D, F (and the exact V) of a residual MLP at every layer, one input.

    B and F by the history recursions, A, D and V by the field covariances
    (``docs/derivations/residual_ntk.md``).

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi`` (plain layers allowed); unequal widths
        only where ``gamma = 0``.
    K1 : float > 0
        First-layer kernel.
    stats : sequence of {"A", "B", "D", "F", "V"}
        ``"V"`` is the exact residual vertex (:func:`residual_vertex_metric`,
        the same one :func:`pdlt.statistics` serves).

    Returns
    -------
    dict
        name -> ndarray (L,), normalized by ``n_{l-1}`` as in ``shared/NOTATION.md``.

    Raises
    ------
    NotImplementedError
        For a statistic other than A, B, D, F, V (P and Q: :func:`residual_dntk_p`,
        :func:`residual_dntk_q`; R, S, T, U: :func:`residual_ddntk_r` ..
        :func:`residual_ddntk_u`).

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.theory.residual_ntk import residual_ntk_one_input
    >>> m = pdlt.MLP(n0=1, width=8, depth=3, activation="linear", C_W=0.5, gamma=0.5)
    >>> [round(float(b), 12) for b in residual_ntk_one_input(m, 1.0, stats="B")["B"]]
    [0.0, 4.5, 5.640625]
    """
    stats = [stats] if isinstance(stats, str) else list(stats)
    bad = [k for k in stats if k not in RESIDUAL_NTK_STATISTICS + ("V",)]
    if bad:
        raise NotImplementedError(
            f"residual MLPs: the NTK statistics {bad} are not derived here (this function: "
            f"{', '.join(RESIDUAL_NTK_STATISTICS)}; P, Q: residual_dntk_p, residual_dntk_q, "
            "or pdlt.statistics(get=...)); see pdlt.theory.residual_ntk")
    act, L = mlp.activation, mlp.depth
    K, Th, (s, q, sspp, dss), (a, varw, C) = _one_input_setup(mlp, K1,
                                                             ("pp", "pppp", "sspp", "dss"))
    out = {k: np.zeros(L) for k in stats}
    if {"A", "D"} & set(stats):
        fs = _field_statistics(mlp, K1)
        for k in ("A", "D"):
            if k in stats:
                out[k] = fs[k]
    if "V" in stats:
        out["V"] = residual_vertex_metric(mlp, float(K1))["V"]
    if "B" in stats:
        two_depth = _two_depth(act, lambda z: act.d1(z) ** 2, K, C)
        beta0, beta = 0.0, np.zeros(L)            # beta[p]: attachment to sigma'^2(z^(p))
        for l in range(L - 1):                    # step layer l+1 -> l+2 (0-based l)
            r = mlp.widths[l + 1] / mlp.widths[l]
            CW, g, x = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
            chi = x * x * CW * s[l] + g * g
            hist = float(beta[:l] @ two_depth[l, :l])
            beta0 = (x ** 4 * CW ** 2 * q[l] * Th[l] ** 2
                     + r * (chi * chi * beta0 + 2 * x * x * CW * chi * hist))
            beta[:l] *= r * g * g * chi
            beta[l] = x * x * g * g * CW * Th[l] ** 2
            out["B"][l + 1] = beta0 + 2 * float(beta[:l + 1] @ s[:l + 1])
    if "F" in stats:
        Ms = _bilinear_forms(mlp, K, Th, a, varw, C)
        for l in range(L - 1):
            v = np.zeros(2 * L)
            v[:l + 2] = a[l + 1, :l + 2] * varw[:l + 2]
            v[L:L + l + 1] = C[l + 1, :l + 1] * dss[:l + 1]
            out["F"][l + 1] = float(v @ Ms[l + 1] @ v)
    for k, arr in out.items():
        _finite(k, arr)
    return out


def _bilinear_forms(mlp, K, Th, a, varw, C, closure=False):
    """The bilinear forms ``M^(l)`` of the conditional NTK mean (section 4 of the derivation).

    ``n_{l-1} E[H_ik^(l) | trajectories of i, k] = phi(i)^T M^(l) phi(k)`` (i != k) in the
    features ``phi``: index m in 0..L-1 is ``U_m = w_m`` (``w_0 = z^(1)``, ``w_m`` the
    increment of layer m+1), ``L + p`` is ``S_p = sigma(z^(p)) sigma'(z^(p))``. M pairs a
    ``U_m`` only with itself or with older features (``U_q``, q < m; ``S_p``, p < m).
    Returns a list of L matrices (2L, 2L); ``M^(1) = 0``.
    """
    act = mlp.activation
    L = mlp.depth
    t = OneVariableTable(act, K)
    sspp, dss = (np.asarray(t[k], float) for k in ("sspp", "dss"))
    if closure:   # two-depth averages replaced by products (for comparison only)
        m = _one_means(act, lambda z: act.sigma(z) * act.d1(z), K)
        SS = np.outer(m, m)
    else:
        SS = _two_depth(act, lambda z: act.sigma(z) * act.d1(z), K, C)
    M = np.zeros((2 * L, 2 * L))
    Ms = [M.copy()]
    for l in range(L - 1):
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
        g_var = varw[l + 1]
        e = np.zeros(2 * L)
        e[:l + 1] = a[l, :l + 1] * varw[:l + 1] * dss[l]
        e[L:L + l] = SS[l, :l]
        Me = M @ e
        eMe = float(e @ Me)
        M = r * g * g * M
        u, sl = l + 1, L + l
        M[u, u] += x * x * (CW ** 2 * sspp[l] * Th[l] + r * CW ** 2 * eMe) / g_var ** 2
        if g != 0.0:
            c = x * g * CW / g_var
            M[u, sl] += c * Th[l]
            M[sl, u] += c * Th[l]
            M[u, :] += c * r * Me
            M[:, u] += c * r * Me
        Ms.append(M.copy())
    return Ms


def residual_b_closure(mlp: MLP, K1: float) -> np.ndarray:
    """B from the *closure* recursion (history terms dropped), for comparison only.

    ``B' = xi^4 C_W^2 <sigma'^4> Theta^2 + 2 xi^2 gamma^2 C_W <sigma'^2> Theta^2
    + r chi_perp^2 B``: what a book-style recursion with the finite set of
    statistics gives. It is exact at gamma = 0, for linear networks and at
    layer 2, and wrong beyond for nonlinear residual MLPs (``residual_ntk.md``;
    the ensembles reject it for ReLU at gamma = 0.7, see
    :func:`pdlt.report.residual.residual_ntk_rows`). Returns ndarray (L,).
    """
    act = mlp.activation
    K, Th = one_input_kernel(mlp, K1)
    t = OneVariableTable(act, K)
    out = np.zeros(mlp.depth)
    for l in range(mlp.depth - 1):
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
        chi = x * x * CW * t["pp"][l] + g * g
        out[l + 1] = (x ** 4 * CW ** 2 * t["pppp"][l] * Th[l] ** 2
                      + 2 * x * x * g * g * CW * t["pp"][l] * Th[l] ** 2 + r * chi * chi * out[l])
    return out


# ---------------------------------------------------------------------------
# A, D (and the exact V): cross-neuron covariances through the shared fields
# ---------------------------------------------------------------------------

def _cov2(act, f, h, K, C, same):
    """Single-neuron ``Cov(f(z^(l)), h(z^(m)))`` for all l, m (matrix (L, L)).

    ``C[l, m] = Cov(z^(l), z^(m))``; ``same[l]`` the one-variable ``<f h>`` at
    ``K[l]`` (used on the diagonal).
    """
    L = len(K)
    kw = dict(kinks=act.kinks, period=act.period)
    mf = np.array([float(gaussian.expect(f, k, **kw)) for k in K])
    mh = np.array([float(gaussian.expect(h, k, **kw)) for k in K])
    out = np.zeros((L, L))
    out[np.arange(L), np.arange(L)] = np.asarray(same) - mf * mh
    li, mi = np.nonzero((C != 0.0) & ~np.eye(L, dtype=bool))
    if len(li):
        e = _two_depth_pairs(act, C, {"f": f, "h": h}, [("f", "h")])[("f", "h")]
        out[li, mi] = e[li, mi] - mf[li] * mh[mi]
    return out


def _field_statistics(mlp, K1, internals=False):
    r"""A, D of a residual MLP from the covariance of the shared fields (single input).

    Fields (one pair per layer m = 1..L-1): ``S_m = (1/n) sum_a sigma^2(z_a^(m))``
    (the variance of the next increment is ``C_b + C_W S_m``) and ``P_m = (1/n)
    sum_a sigma'^2(z_a^(m)) H_aa^(m)`` (the next NTK mean's ``C_W`` term). Given
    the fields a neuron's trajectory is Gaussian, ``z^(l) = sum_q a_{lq} w_q``
    with ``Var w_q = C_b + C_W S_{q-1}``, and its NTK diagonal is
    ``H^(l) = sum_q b_{lq} xi_q^2 [lambda_b + lambda_W S_{q-1} + C_W P_{q-1}]``
    (+ its own noise, which no other neuron sees), ``b_{lq} = prod gamma_p^2``.
    For two different neurons and per-neuron functionals Phi, Psi:

    .. math::
        n\,\mathrm{Cov}(\Phi_j, \Psi_k) = \rho(\Phi)^T\Sigma\rho(\Psi)
            + c(\Phi)^T\rho(\Psi) + \rho(\Phi)^T c(\Psi),

    ``rho_q(Phi) = d<Phi>/dF_q`` (response to field q), ``c_q(Phi) =
    Cov(Phi, f_q)`` in one neuron (``f_q`` the neuron's own term in field q:
    the neuron's own influence on the fields), and ``Sigma_{qq'} = n Cov(F_q,
    F_q') = Cov(f_q, f_q') + [the same formula for f_q, f_q']``, built layer by
    layer (a field responds only to earlier fields). Then (V, from the S fields
    alone: :func:`residual_vertex_metric`) ``D = rho(H)^T Sigma rho(z^2) + rho(H)^T
    c(z^2)``, ``A = rho(H)^T Sigma rho(H)`` (``c(H) = 0``: a neuron's NTK depends
    on its own trajectory only at O(1/n)).
    """
    act = mlp.activation
    L = mlp.depth
    K, Th = one_input_kernel(mlp, K1)
    t = OneVariableTable(act, K)
    ss, pp, dss, dpp = (np.asarray(t[k], float) for k in ("ss", "pp", "dss", "dpp"))
    a, varw, C = _trajectory(mlp, K)
    CW, lW, x, g = (np.asarray(v, float) for v in (mlp.C_W, mlp.lambda_W, mlp.xi, mlp.gamma))
    s2 = lambda z: act.sigma(z) ** 2            # noqa: E731
    p2 = lambda z: act.d1(z) ** 2               # noqa: E731
    kw = dict(kinks=act.kinks, period=act.period)
    one = lambda f: np.array([float(gaussian.expect(f, k, **kw)) for k in K])  # noqa: E731
    fns = {"g": s2, "F": s2, "xg": lambda z: z * s2(z), "yF": lambda z: z * s2(z),
           "x2g": lambda z: z * z * s2(z), "Fy2": lambda z: z * z * s2(z)}
    pairs = _two_depth_pairs(act, C, fns, (("g", "F"), ("g", "Fy2"), ("xg", "yF"), ("x2g", "F")))
    mean = one(s2)
    cSS = pairs[("g", "F")] - np.outer(mean, mean)  # Cov(sigma^2(z^(l)), sigma^2(z^(m)))
    cSP = _cov2(act, s2, p2, K, C, one(lambda z: s2(z) * p2(z)))      # Cov(s^2_l, p^2_m)
    cPP = _cov2(act, p2, p2, K, C, one(lambda z: p2(z) ** 2))
    # b[l, q]: weight of layer q's NTK increment in H^(l)
    b = np.zeros((L, L))
    for l in range(L):
        b[l, l] = 1.0
        for q in range(l):
            b[l, q] = b[l - 1, q] * g[l] ** 2
    nf = 2 * (L - 1)                              # fields: S_m at m, P_m at L-1+m

    def resp_z(fn_d, l):
        """rho(Phi(z^(l))) for <Phi>' = fn_d (derivative in K at K_l)."""
        r = np.zeros(nf)
        for m in range(l):                        # S_m sets Var w_{m+1}
            r[m] = a[l, m + 1] ** 2 * CW[m + 1] * fn_d
        return r

    def resp_H(l):
        r = np.zeros(nf)
        for m in range(l):
            w = b[l, m + 1] * x[m + 1] ** 2
            r[m] = w * lW[m + 1]
            r[L - 1 + m] = w * CW[m + 1]
        return r

    # single-neuron covariances of the fields' own terms: Cov(f_i, f_q) for all i, q
    own = np.zeros((nf, nf))
    S_, P_ = np.arange(L - 1), L - 1 + np.arange(L - 1)
    own[np.ix_(S_, S_)] = cSS[:L - 1, :L - 1]
    own[np.ix_(S_, P_)] = cSP[:L - 1, :L - 1] * Th[None, :L - 1]
    own[np.ix_(P_, S_)] = own[np.ix_(S_, P_)].T
    own[np.ix_(P_, P_)] = cPP[:L - 1, :L - 1] * np.outer(Th[:L - 1], Th[:L - 1])
    R = np.zeros((nf, nf))                        # R[q] = response vector of f_q (causal)
    for m in range(L - 1):
        R[m] = resp_z(dss[m], m)
        R[L - 1 + m] = Th[m] * resp_z(dpp[m], m) + pp[m] * resp_H(m)
    # dressed own influence: a neuron's term in an early field moves the later fields
    # through the other neurons' responses, c~ = c + R c~
    # (unnormalized covariances: a field of layer m averages n_m neurons, and a neuron's own
    # term in it carries 1/n_m; own[q, q'] != 0 only within a residual chain of equal widths)
    nw = np.array([mlp.widths[m + 1] for m in range(L - 1)] * 2, dtype=float)
    dress = np.linalg.inv(np.eye(nf) - R)
    ctil = (own / nw[None, :]) @ dress.T          # ctil[i] = dressed c(f_i)
    # Sig[i, q] = own[i, q] / nw[q] + R[i] Sig R[q] + ctil[i] R[q] + R[i] ctil[q], R strictly
    # causal in the layers: the fixed point of Sig = X + R Sig R^T, solved by doubling in
    # log2(nf) products (the entry-by-entry build was ~L^4: 20 s at depth 256)
    Xown = own / nw[None, :]
    X = 0.5 * (Xown + Xown.T) + ctil @ R.T + R @ ctil.T
    Sig = _stein_lyapunov(R, X)
    out = {k: np.zeros(L) for k in ("A", "D")}
    for l in range(1, L):
        rz = resp_z(1.0, l)
        rH = resp_H(l)
        cz = np.zeros(nf)
        for m in range(l):
            cz[m] = 2 * C[l, m] ** 2 * dss[m]
            cz[L - 1 + m] = 2 * C[l, m] ** 2 * dpp[m] * Th[m]
        cz = dress @ (cz / nw)
        n = mlp.widths[l]                         # n_{l-1} of NOTATION.md's normalization
        out["D"][l] = n * (rH @ Sig @ rz + rH @ cz)
        out["A"][l] = n * (rH @ Sig @ rH)
    if internals:
        return out, dict(Sig=Sig, dress=dress, nw=nw, resp_z=resp_z, resp_H=resp_H)
    return out


# ---------------------------------------------------------------------------
# V and G1 (exact): the S-fields alone
# ---------------------------------------------------------------------------

def _stein_lyapunov(R, X):
    """``Sig = X + R Sig R^T`` for a strictly causal (nilpotent) ``R``, by doubling.

    ``Sig = sum_k R^k X (R^T)^k``; after ``ceil(log2(n))`` doublings ``R^(2^j) = 0``
    and the sum is exact (no iteration error).
    """
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(X))):
        # (a NaN never leaves R^(2^j), so the doubling would not end)
        raise FloatingPointError(
            "the residual fields' response or covariance is not finite: a pair average's "
            "derivative is infinite at the inputs (exactly collinear inputs of a kinked "
            "activation, rho = +-1 with different norms, are the usual cause); give the "
            "network a bias (C_b > 0) or inputs that are not collinear")
    Sig, power = X.copy(), R.copy()
    for _ in range(int(np.ceil(np.log2(max(R.shape[0], 2)))) + 1):
        if not np.any(power):
            break
        Sig = Sig + power @ Sig @ power.T
        power = power @ power
    if np.any(power):
        raise ValueError("_stein_lyapunov: R is not strictly causal (nilpotent)")
    return 0.5 * (Sig + Sig.T)


def _two_depth_pairs(act, C, fns, terms):
    """Single-neuron two-depth averages ``<fa(z^(l)) fb(z^(m))>`` for all (l, m) at once.

    The covariance ``C`` of one neuron's preactivations over the depths is a kernel
    matrix, so :func:`pdlt.gaussian.pair_expectations` (Mehler series with nested
    quadrature fallback; absolute error ``<= 1e-13 sqrt(<fa^2><fb^2>)``) serves every
    pair in one call. ``fns``: name -> function; returns term -> (L, L) ndarray.
    """
    sh = Integrands(act, **fns)
    L = C.shape[0]
    K = np.diag(C).copy()
    li, mi = np.triu_indices(L)
    scale = 10.0 ** (12 - int(np.ceil(np.log10(max(float(np.max(np.abs(K))), 1e-300)))))
    key = np.round(np.stack([K[li], C[li, mi], K[mi]], axis=1) * scale)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    if len(uniq) * 10 > len(li):                 # few repeats: one call on the whole matrix
        return gaussian.pair_expectations(sh, C, terms, rtol=1e-13)
    # at criticality the covariances repeat with the lag: one 2 x 2 kernel per distinct one
    first = np.zeros(len(uniq), dtype=int)
    first[inv[::-1]] = np.arange(len(li))[::-1]
    out = {t: np.empty((L, L)) for t in terms}
    for u, j in enumerate(first):
        l, m = li[j], mi[j]
        k2 = np.array([[C[l, l], C[l, m]], [C[l, m], C[m, m]]])
        e = gaussian.pair_expectations(sh, k2, terms, rtol=1e-13)
        sel = np.flatnonzero(inv == u)
        for t in terms:
            out[t][li[sel], mi[sel]] = e[t][0, 1] if l != m else e[t][0, 0]
            out[t][mi[sel], li[sel]] = e[t][1, 0] if l != m else e[t][0, 0]
    return out


#: kernel above which :func:`_cov_second_derivative_direct` replaces the Stein form of
#: :func:`_cov_second_derivative` for smooth non-periodic activations: the Stein form divides
#: averages of ``F (y - beta x)^2`` by ``s^2`` and cancels ~sqrt(K) of them (tanh G1,
#: gamma 0.5, depth 3, against the direct form: 8e-11 at K = 1.5e3, 1.6e-4 at 1.5e7, 2 % at
#: 1.5e9, the wrong sign at 1.5e11); below it the two agree to ~1e-13 and the Stein form
#: stays (bit-identical). The same threshold as ``residual_multi._EXACT_K``. Above the
#: fixed rule's 2^16 H1's ``F'' = (sigma'^2)''`` (a localized bump) takes one integration
#: by parts instead (:func:`_cov_second_derivative_ibp`: the direct nested average cancels
#: ~sqrt(K), GELU 2e-8 relative at K1 = 1.5e5, 2e-5 at 1.5e11)
_DIRECT_K = 10.0


def _cov_second_derivative_direct(act, C, K, g, F2, cov, gmean, parts=None):
    """``cov`` (L, L) [l, m] of :func:`_cov_second_derivative`, with the entries where
    ``max(K_l, K_m)`` exceeds :data:`_DIRECT_K` replaced by ``E[g(z^(m)) F''(z^(l))] -
    <F''>_{K_l} <g>_{K_m}``, ``F2 = F''`` itself (smooth non-periodic activations: two-depth
    pair averages, resolved at any K); ``gmean`` (L,) is ``<g>_K``. Unchanged otherwise.

    ``parts = (g', F', zF')`` (closed forms): where ``max(K_l, K_m)`` also exceeds the
    fixed rule's ``2^16`` (the pair averages are nested quadrature there), the entry is
    :func:`_cov_second_derivative_ibp` instead, which does not cancel; None keeps the form
    above everywhere (bit-identical)."""
    if act.kinks or act.period is not None:
        return cov
    big = np.maximum(K[:, None], K[None, :]) > _DIRECT_K
    np.fill_diagonal(big, False)
    if not np.any(big):
        return cov
    pr = _two_depth_pairs(act, C, {"g": g, "F2": F2}, [("g", "F2")])[("g", "F2")]
    mF2 = np.array([float(gaussian.expect(F2, k)) for k in K])
    out = np.where(big, pr.T - mF2[:, None] * gmean[None, :], cov)
    if parts is not None:
        huge = big & (np.maximum(K[:, None], K[None, :]) > gaussian._K_FIXED_MAX)
        if np.any(huge):
            li, mi = np.nonzero(huge)
            out[li, mi] = _cov_second_derivative_ibp(g, *parts, K[li], C[li, mi], K[mi],
                                                     gmean[mi])
    return out


def _cov_second_derivative_ibp(g, gd, F1, zF1, Kl, Clm, Km, gmean):
    r"""``Cov(g(x), F''(y))`` by one integration by parts along y, for arrays of 2 x 2
    covariances (``Var y = Kl``, ``Cov(x, y) = Clm``, ``Var x = Km``; ``gmean = <g>_Km``).

    With ``G(y) = E[g(x) | y]``, ``G' = alpha E[g'(x) | y]`` (``alpha = Clm / Kl``) and
    ``phi'/phi = -y / Kl``, ``int F'' G phi = -int F' (G phi)'`` gives

    .. math::
        E[g(x) F''(y)] = -\alpha E[g'(x) F'(y)] + E[g(x)\, y F'(y)] / K_l,
        \qquad \langle F''\rangle_{K_l} = \langle y F'\rangle_{K_l} / K_l.

    ``F''`` of ``F = sigma'^2`` is a localized bump (``int F'' = 0``): at large K the
    direct average weighs it by ``E[g | y] phi(y) ~ sqrt(K)`` around an O(1) result and
    nested quadrature leaves ~1e-13 sqrt(K)-relative (GELU, gamma 0.5: 3e-8 relative at
    K = 1.5e5, 3e-5 at 1.5e11); ``F'`` integrates to 1 and nothing cancels here (6e-14 ..
    6e-12 relative over K = 1.5e5 .. 1.5e9 against an independent panel rule,
    ``benchmarks/residual_h1_gelu.py``). The localized factor is the outer variable of
    :func:`pdlt.gaussian.expect2` (its outer rule is graded at the unit scale around 0).
    ``g, gd, F1, zF1``: g, g', F', ``y F'(y)``.
    """
    mzF1 = np.array([float(gaussian.expect(zF1, k)) for k in np.atleast_1d(Kl)])
    return _second_derivative_by_parts(g, gd, F1, Kl, Clm, Km, zF1=zF1, shift=mzF1 * gmean)


def _second_derivative_by_parts(g, gd, F1, Ky, Cxy, Kx, *, zF1=None, shift=0.0):
    """``E[g(x) F''(y)] - shift / Ky`` by the integration by parts of
    :func:`_cov_second_derivative_ibp`, ``-alpha E[g'(x) F'(y)] + (E[g(x) y F'(y)] - shift) /
    Ky``, the localized ``F'`` the outer variable of :func:`pdlt.gaussian.expect2` (arrays of
    covariances ``Var y = Ky``, ``Cov = Cxy``, ``Var x = Kx``; ``zF1`` is ``y F'(y)``, built
    from F1 if not given). Shared by the one-input module and the N-input ones
    (``residual_multi._localized_dd``, ``residual_multi_mean._localized_outer``)."""
    if zF1 is None:
        zF1 = lambda z: z * F1(z)                  # noqa: E731
    e1 = gaussian.expect2(F1, gd, Ky, Cxy, Kx)
    e2 = gaussian.expect2(zF1, g, Ky, Cxy, Kx)
    return -(Cxy / Ky) * e1 + (e2 - shift) / Ky


def _cov_second_derivative(pairs, K, C):
    """``Cov(g(z^(m)), F''(z^(l)))`` (matrix [l, m]) from two-depth averages, no derivative of F.

    With ``x = z^(m)``, ``y = z^(l) = beta x + e``, ``e`` independent of x, ``beta =
    C_lm / K_m``, ``s = Var e``, Stein along e gives ``E[g(x) F''(y)] = E[g(x) F(y)
    ((y - beta x)^2 - s)] / s^2``. ``P`` holds the averages (keys ``("g", "Fy2")``,
    ``("xg", "yF")``, ``("x2g", "F")``, ``("g", "F")``, indexed [x-depth, y-depth]) and
    ``<F''>_{K_l}`` under ``"F2"``, ``<g>_{K_m}`` under ``"g"``. Relative accuracy
    ~ 1e-13 / (1 - rho^2)^2; the diagonal (rho = 1) is not used and set to 0.
    """
    Km, Kl = K[None, :], K[:, None]
    Cl = C                                     # [l, m]
    beta = Cl / Km
    s = Kl - Cl * Cl / Km
    np.fill_diagonal(s, 1.0)
    tr = lambda key: pairs[key].T                   # noqa: E731  (-> [l, m])
    ev = (tr(("g", "Fy2")) - 2 * beta * tr(("xg", "yF")) + beta * beta * tr(("x2g", "F"))
          - s * tr(("g", "F"))) / (s * s)
    out = ev - pairs["F2"][:, None] * pairs["g"][None, :]
    np.fill_diagonal(out, 0.0)
    return out


def residual_vertex_metric(mlp: MLP, K1: float) -> dict:
    r"""Exact single-input V and G1 of a residual MLP at order 1/n.

    The fields ``S_m = (1/n_m) sum_a sigma^2(z_a^(m))`` (m = 1..L-1) set the
    variances of the increments, ``Var u^(m+1) = C_b + C_W S_m``; given the
    fields, a neuron's preactivation ``z^(l) = sum_q a_{lq} w_q`` has the
    conditional variance ``Khat_l = sum_m rho_m S_m + const``, ``rho_m =
    a_{l,m+1}^2 C_W^(m+1)``. With ``Sigma = Cov(S, S)``, the one-neuron
    two-depth covariances ``c_m(Phi) = Cov(Phi, sigma^2(z^(m)))`` and their
    dressing ``c~ = (1 - R)^{-1} c / n`` (``R``: response of a field to earlier
    fields; the neuron's own term in an early field moves the later ones through
    the other neurons), see :func:`_field_statistics`:

    .. math::
        V^{(l)} &= n_{l-1}\,[\rho^T\Sigma\rho + 2\rho^T\tilde c(z^2)],\\
        G^{1(l+1)} &= \frac{n_l}{n_{l-1}}\gamma^2 G^{1(l)} + n_l\,\xi^2 C_W\,
          \Big[\tfrac12\langle(\sigma^2)''\rangle \tfrac{G^{1(l)}}{n_{l-1}}
          + \tfrac18\langle(\sigma^2)''''\rangle\,\rho^T\Sigma\rho
          + \tfrac12\rho^T\tilde c\big((\sigma^2)''(z^{(l)})\big)\Big].

    The G1 step is ``E[z'^2] = xi^2 (C_b + C_W E[sigma^2(z)]) + gamma^2 E[z^2]``
    with the one-neuron mean ``E[sigma^2(z^(l))]`` at order 1/n: the fluctuating
    conditional variance (second-order term) and the correlation of an
    increment's variance with the neuron's own past (Stein along the
    increment: ``E[h(past) f'(z) a eps / (2 sqrt v)] = (a^2/2) E[h f''(z)]``).
    Expanding ``c((sigma^2)'')`` in Hermite polynomials, its first two terms are
    the three-point (``kappa3 <(sigma^2)'''>/2``) and mixed-V
    (``<(sigma^2)''''> V/8``) terms of :mod:`pdlt.theory.vertex`'s truncation;
    the rest is what the truncation drops. At gamma = 0 both are the plain
    recursions; for sigma linear every two-depth term is exact in the truncation.

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0

    Returns
    -------
    dict
        ``{"V": ndarray (L,), "G1": ndarray (L,)}``, normalized by ``n_{l-1}``.
    """
    return _vertex_metric(mlp, K1)[0]


def _vertex_metric(mlp, K1):
    """:func:`residual_vertex_metric` and, per layer, what :func:`residual_ntk_mean` reuses:
    ``g1`` (``E[z^2] - K``), ``varK`` (``Var Khat``), ``shift`` (``E[sigma^2(z)] -
    <sigma^2>_K``), all unnormalized, and the S-field response ``rho``, dressing ``dress``
    and widths ``nw``."""
    _check_K1(K1)
    act = mlp.activation
    L = mlp.depth
    K, _ = one_input_kernel(mlp, K1)
    dss = np.asarray(OneVariableTable(act, K)["dss"], float)
    a, _, C = _trajectory(mlp, K)
    CW, x, g = (np.asarray(v, float) for v in (mlp.C_W, mlp.xi, mlp.gamma))
    s2 = lambda z: act.sigma(z) ** 2            # noqa: E731
    kw = dict(kinks=act.kinks, period=act.period)
    one = lambda f: np.array([float(gaussian.expect(f, k, **kw)) for k in K])  # noqa: E731
    d4 = np.array([float(gaussian.expect(
            lambda z, k=k: s2(z) * ((z * z / k) ** 2 - 6 * z * z / k + 3), k, **kw)) / (k * k)
            for k in K])                        # <(sigma^2)''''>_K by Stein
    out = {"V": np.zeros(L), "G1": np.zeros(L)}
    nf = L - 1
    inner = {k: np.zeros(L) for k in ("g1", "varK", "shift")}
    if nf == 0:
        return out, inner
    fns = {"g": s2, "F": s2, "xg": lambda z: z * s2(z), "yF": lambda z: z * s2(z),
           "x2g": lambda z: z * z * s2(z), "Fy2": lambda z: z * z * s2(z)}
    pairs = _two_depth_pairs(act, C, fns, (("g", "F"), ("g", "Fy2"), ("xg", "yF"), ("x2g", "F")))
    mean = one(s2)
    cSS = pairs[("g", "F")] - np.outer(mean, mean)  # Cov(sigma^2(z^(l)), sigma^2(z^(m)))
    rho = np.zeros((L, nf))                      # rho[l, m]: response of Khat_l to S_m
    for l in range(L):
        rho[l, :l] = a[l, 1:l + 1] ** 2 * CW[1:l + 1]
    R = rho[:nf] * dss[:nf, None]                # R[m, j] = d<sigma^2(z^(m))>/dS_j
    nw = np.array([mlp.widths[m + 1] for m in range(nf)], dtype=float)
    own_cov = cSS[:nf, :nf] / nw[None, :]
    dress = np.linalg.inv(np.eye(nf) - R)
    ctil = own_cov @ dress.T
    Sig = _stein_lyapunov(R, own_cov + ctil @ R.T + R @ ctil.T)
    pairs["g"] = mean
    pairs["F2"] = np.array([float(gaussian.expect(lambda z, k=k: s2(z) * (z * z / k - 1.0) / k,
                                              k, **kw)) for k in K])    # <(sigma^2)''>
    # large K (smooth activations): (sigma^2)'' = 2 (sigma'^2 + sigma sigma'') directly; above
    # 2^16 by parts where sigma' is a closed form (tanh's (sigma^2)'' is a localized bump:
    # the direct form was 2.5e-9 relative off at K1 = 1.5e9 against an independent panel
    # rule, the form by parts <= 1.5e-15 at 1.5e5 .. 1.5e11; swish, GELU unchanged to 1e-14)
    ssp = lambda z: 2.0 * act.sigma(z) * act.d1(z)       # noqa: E731  (sigma^2)'
    cF2 = _cov_second_derivative_direct(
        act, C, K, s2, lambda z: 2.0 * (act.d1(z) ** 2 + act.sigma(z) * act.d2(z)),
        _cov_second_derivative(pairs, K, C), mean,
        parts=(ssp, ssp, lambda z: z * ssp(z)) if third_derivative(act) is not None
        else None)[:, :nf]
    g1 = 0.0                                     # E[z^(l) z^(l)] - K^(l), unnormalized
    for l in range(L):
        r = rho[l]
        varK = float(r @ Sig @ r)
        inner["g1"][l], inner["varK"][l] = g1, varK
        if l >= 1:
            cz = dress @ (2.0 * C[l, :nf] ** 2 * dss[:nf] * (np.arange(nf) < l) / nw)
            out["V"][l] = mlp.widths[l] * (varK + 2.0 * float(r @ cz))
            out["G1"][l] = mlp.widths[l] * g1
        if l == L - 1:
            break
        self_ = 0.5 * float(r @ (dress @ (cF2[l] / nw)))
        shift = dss[l] * g1 + 0.125 * d4[l] * varK + self_
        inner["shift"][l] = shift
        g1 = x[l + 1] ** 2 * CW[l + 1] * shift + g[l + 1] ** 2 * g1
    for k, arr in out.items():
        _finite(k, arr)
    inner.update(rho=rho, dress=dress, nw=nw)
    return out, inner


# ---------------------------------------------------------------------------
# H1: the NTK mean at order 1/n
# ---------------------------------------------------------------------------

def residual_ntk_mean(mlp: MLP, K1: float) -> np.ndarray:
    r"""``H1``, the order-1/n NTK mean of a residual MLP at every layer, one input.

    ``E[H_ii^(l)] = Theta^(l) + H1^(l) / n_{l-1} + O(1/n^2)`` (``shared/NOTATION.md``).
    Averaging the forward equation over layer l+1's weights (independent of
    layer l; the half-skip term is linear in them) gives exactly

    .. math::
        E[H'] = \xi^2\big[\lambda_b + \lambda_W E[\sigma^2(z)]
                + C_W E[\sigma'^2(z) H]\big] + \gamma^2 E[H]

    for one neuron of layer l, so (unnormalized ``h = H1 / n_{l-1}``)

    .. math::
        h' = \xi^2\big[\lambda_W\,\delta_{\sigma^2}
             + C_W\big(\Theta\,\delta_{\sigma'^2} + \langle\sigma'^2\rangle h
             + \mathrm{Cov}(\sigma'^2(z), H)\big)\big] + \gamma^2 h,

    ``delta_f = E[f(z^(l))] - <f>_{K^(l)}`` (the G1 step of
    :func:`residual_vertex_metric`, with the neuron's own past) and the
    one-neuron covariance of its ``sigma'^2`` with its own NTK diagonal,

    .. math::
        n\,\mathrm{Cov}(f(z^{(l)}), H^{(l)}) = \rho(f)^T\Sigma\rho(H)
            + \tilde c(f)^T\rho(H) + \langle f''\rangle v_U^T M_{UU} v_U
            + 2\,v_U^T M_{US} w_S,

    the shared fields (:func:`_field_statistics`: the fields move both; the
    neuron's own dressed term in an early field moves its later NTK) plus
    the neuron's own conditional NTK mean ``phi^T M phi`` (the bilinear form
    of F, :func:`_bilinear_forms`, on the diagonal), with ``v_U[m] =
    Cov(z^(l), w_m)`` and ``w_S[p] = E[f'(z^(l)) sigma sigma'(z^(p))]``
    (two-depth averages, by Stein without differentiating f; Stein along z^(l) leaves
    ~1e-15 relative at any K, GELU K1 = 1.5e3 .. 1.5e11). The mean shift's own term
    ``Cov(sigma^2(z^(p)), (sigma'^2)''(z^(l)))`` is :func:`_cov_second_derivative_direct`
    (one integration by parts above K = 2^16: 2e-5 relative, 5.6e-6 of H1's scale,
    at K1 = 1.5e11 before; ``benchmarks/residual_h1_gelu.py``). At gamma = 0
    this is the plain recursion of :mod:`pdlt.theory.ntk_mean`
    (``Cov = dpp (D + 2F) / n``); for linear sigma every term vanishes and
    ``H1 = 0`` at every layer. Derivation: ``docs/derivations/residual_ntk.md``,
    section 8.

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
        First-layer kernel.

    Returns
    -------
    ndarray (L,)
        ``H1^(l)``, normalized by ``n_{l-1}``; ``H1^(1) = H1^(2) = 0``.

    Raises
    ------
    ValueError
        If ``K1`` is not a finite number > 0.
    FloatingPointError
        If H1 overflows (far from criticality at large depth).

    Notes
    -----
    Cost: that of :func:`residual_vertex_metric` plus :func:`_field_statistics` plus
    six two-depth averages per pair of layers (~0.1-0.4 s at depth 5).

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.theory.residual_ntk import residual_ntk_mean
    >>> m = pdlt.theory.residual.residual_mlp("relu", 0.5, width=16, depth=4, n_out=16)
    >>> [round(float(h), 4) for h in residual_ntk_mean(m, 1.0)]   # plain ReLU: 0
    [0.0, 0.0, 0.738, 2.4916]
    """
    _check_K1(K1)
    act = mlp.activation
    L = mlp.depth
    h1 = np.zeros(L)
    if L <= 2:
        return h1
    K, Th = one_input_kernel(mlp, K1)
    t = OneVariableTable(act, K)
    pp, dpp, d4pp = (np.asarray(t[k], float) for k in ("pp", "dpp", "d4pp"))
    a, varw, C = _trajectory(mlp, K)
    CW, lW, x, g = (np.asarray(v, float) for v in (mlp.C_W, mlp.lambda_W, mlp.xi, mlp.gamma))
    _, vm = _vertex_metric(mlp, float(K1))
    _, fs = _field_statistics(mlp, float(K1), internals=True)
    Ms = _bilinear_forms(mlp, K, Th, a, varw, C)
    s2 = lambda z: act.sigma(z) ** 2            # noqa: E731
    p2 = lambda z: act.d1(z) ** 2               # noqa: E731
    sp = lambda z: act.sigma(z) * act.d1(z)     # noqa: E731
    kw = dict(kinks=act.kinks, period=act.period)
    one = lambda f: np.array([float(gaussian.expect(f, k, **kw)) for k in K])  # noqa: E731
    # one-neuron two-depth averages, [x-depth, y-depth]: g = sigma^2, h = sigma sigma' at x,
    # F = sigma'^2 at y
    fns = {"g": s2, "F": p2, "xg": lambda z: z * s2(z), "yF": lambda z: z * p2(z),
           "x2g": lambda z: z * z * s2(z), "Fy2": lambda z: z * z * p2(z),
           "h": sp, "xh": lambda z: z * sp(z)}
    pairs = _two_depth_pairs(act, C, fns, (("g", "F"), ("g", "Fy2"), ("xg", "yF"),
                                           ("x2g", "F"), ("h", "yF"), ("xh", "F")))
    pairs["g"] = one(s2)
    pairs["F2"] = np.array([float(gaussian.expect(lambda z, k=k: p2(z) * (z * z / k - 1.0) / k,
                                                  k, **kw)) for k in K])   # <(sigma'^2)''>
    cF2 = _cov_second_derivative(pairs, K, C)   # [l, m]: Cov(sigma^2(z^(m)), (sigma'^2)''(z^(l)))
    d3 = third_derivative(act)
    if d3 is not None:      # large K: (sigma'^2)'' = 2 (sigma''^2 + sigma' sigma''') directly
        dpp1 = lambda z: 2.0 * act.d1(z) * act.d2(z)       # noqa: E731  (sigma'^2)'
        cF2 = _cov_second_derivative_direct(
            act, C, K, s2, lambda z: 2.0 * (act.d2(z) ** 2 + act.d1(z) * d3(z)), cF2,
            pairs["g"], parts=(lambda z: 2.0 * act.sigma(z) * act.d1(z), dpp1,
                               lambda z: z * dpp1(z)))
    # w_S[l, p] = E[(sigma'^2)'(z^(l)) sigma sigma'(z^(p))], p < l, by Stein along z^(l)
    Kp, Kl = K[None, :], K[:, None]
    beta = C / Kp
    sres = Kl - C * C / Kp
    np.fill_diagonal(sres, 1.0)
    wS = (pairs[("h", "yF")].T - beta * pairs[("xh", "F")].T) / sres
    wS = np.tril(wS, -1)
    # single-neuron covariances with sigma'^2(z^(l)) of the fields' own terms:
    # S_m: Cov(sigma^2(z^(m)), sigma'^2(z^(l))); P_m: Theta_m Cov(sigma'^2(z^(m)), sigma'^2(z^(l)))
    cSP = _cov2(act, s2, p2, K, C, one(lambda z: s2(z) * p2(z)))    # [m, l]
    cPP = _cov2(act, p2, p2, K, C, one(lambda z: p2(z) ** 2))
    rho, dressS, nwS = vm["rho"], vm["dress"], vm["nw"]
    Sig, dress, nw = fs["Sig"], fs["dress"], fs["nw"]
    nf = L - 1
    for l in range(L - 1):
        # E[sigma'^2(z^(l))] - <sigma'^2>: as the G1 step, with sigma'^2 for sigma^2
        self_ = 0.5 * float(rho[l] @ (dressS @ (cF2[l, :nf] / nwS)))
        dp = dpp[l] * vm["g1"][l] + 0.125 * d4pp[l] * vm["varK"][l] + self_
        # Cov(sigma'^2(z^(l)), H^(l)): shared fields ...
        rf, rH = fs["resp_z"](dpp[l], l), fs["resp_H"](l)
        cf = np.zeros(2 * nf)
        cf[:nf] = cSP[:nf, l]
        cf[nf:] = Th[:nf] * cPP[:nf, l]
        cf[np.r_[np.arange(nf), np.arange(nf)] >= l] = 0.0
        cov = float(rf @ Sig @ rH + rH @ (dress @ (cf / nw)))
        # ... and the neuron's own conditional NTK mean phi^T M phi
        M = Ms[l]
        vU = a[l] * varw
        cov += float(2.0 * dpp[l] * (vU @ M[:L, :L] @ vU)
                     + 2.0 * (vU @ M[:L, L:] @ wS[l])) / mlp.widths[l]
        h1[l + 1] = (x[l + 1] ** 2 * (lW[l + 1] * vm["shift"][l]
                                      + CW[l + 1] * (Th[l] * dp + pp[l] * h1[l] + cov))
                     + g[l + 1] ** 2 * h1[l])
    out = h1 * np.asarray(mlp.widths[:L], float)
    return _finite("H1", out)


# ---------------------------------------------------------------------------
# P: the dNTK-preactivation correlation
# ---------------------------------------------------------------------------

def residual_dntk_p(mlp: MLP, K1: float, *, closure=False) -> np.ndarray:
    r"""``P``, the dNTK-preactivation correlation of a residual MLP at every layer, one input.

    ``E[dH_{jkk} z_j] = P / n_{l-1}`` for ``j != k`` (``shared/NOTATION.md``). The
    conditional mean of the dNTK given the two neurons' trajectories is a
    bilinear form (``docs/derivations/residual_ntk.md``, section 9),

    .. math::
        n\,E[dH_{jkk} \mid \text{trajectories}] = \sum_{\alpha\beta}\Pi_{\alpha\beta}\,
            \phi_\alpha(j)\,\psi_\beta(k),

    ``phi``: the increments ``U_m`` of neuron j; ``psi``: 1, ``sigma'' sigma(z_k^(p))``
    and ``sigma'^2(z_k^(p))``. A layer step (``q = sigma''``, ``s = sigma``,
    ``p = sigma'``, all at layer l; ``G`` the variance of the new increment ``u``):

    .. math::
        \Pi' = r\gamma^3\Pi + r\gamma\xi^2 C_W (\Pi e_\psi) \otimes 1
          + \frac{\xi C_W}{G}\, u \otimes \Big[\xi^2 C_W\big(\langle q s p^2\rangle
          \Theta^2 + r B_{qs,p^2} + r\,e_\phi^T\Pi e_\psi\big)
          + \gamma^2\big(\Theta^2\, q s(z_k) + r\,b_{qs}(k) + r\,e_\phi^T\Pi\big)\Big],

    with ``B_{qs,p^2} = n E[q s(z_a) p^2(z_b) H_ab^2]`` and ``b_qs(k) = n E_a[q s(z_a)
    H_ak^2]`` from the attachments of B (section 3), ``e_phi = E[U s p(z)]`` and
    ``e_psi = E[p^2(z) psi]`` (two-depth averages). At gamma = 0 this is the book's
    recursion (:mod:`pdlt.theory.dntk`; 1e-12); at layer 2 it is the closed form
    ``xi^4 C_W^2 Theta^2 <q s p^2> + xi^2 gamma^2 C_W Theta^2 <q s>``. ReLU
    (``sigma'' = 0`` pointwise): P = 0 at every layer.

    Served by :func:`pdlt.statistics` (``get="P"``, one input). Checked against
    real residual networks with the last layer integrated exactly
    (:func:`pdlt.report.residual.residual_dntk_p_measure`; two widths
    extrapolated, every row rejecting x0, x0.5 and x2): tanh at gamma = 0.3, 0.7
    to 1-3 % (resolution 2-6 %), GELU at gamma = 0.3, 0.7 at widths 32/64
    (resolution 8-25 %: its 1/n terms are large, P^(5) at gamma = 0.7 reads 4.41,
    3.02, 2.39 at n = 16, 32, 64 against 1.90). The two-depth terms (4-10 % of P there:
    the closure passes those rows too) are tested where they are larger: GELU at
    gamma = 0.9, K1 = 0.5 (7-17 % at layers 3-5), where the theory passes and the
    closure is rejected at layer 5 (5.7-7 se in two runs). Derivation:
    ``docs/derivations/residual_ntk.md``, section 9.

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
    closure : bool
        Replace every two-depth average by the product of one-depth ones (the
        book-style closure; for comparison only: it is wrong for nonlinear
        residual MLPs).

    Returns
    -------
    ndarray (L,)
        ``P^(l)``, normalized by ``n_{l-1}``.
    """
    return _dntk_p_fold(mlp, K1, closure)


def _dntk_p_fold(mlp, K1, closure, visit=None):
    """P's fold over depth (:func:`residual_dntk_p`); returns P (L,).

    ``visit(l, Pi, epsi, beta0, beta)``, if given, sees each step's inputs at layer l
    (0-based): P's bilinear form ``Pi`` (L, 1 + 2L; rows the increments ``U_m``, columns
    ``1 | q s(z^(p)) | p^2(z^(p))``), ``epsi = E[p^2(z^(l)) psi]`` and B's attachments
    ``beta0``, ``beta`` (L,) of layer l, before the step (copies).
    """
    act, L = mlp.activation, mlp.depth
    K, Th, (pp, pppp, dss, qs, qspp), (a, varw, C) = _one_input_setup(
        mlp, K1, ("pp", "pppp", "dss", "qs", "qspp"))
    if closure:
        QSPP, PPQS, PPPP = np.outer(qs, pp), np.outer(pp, qs), np.outer(pp, pp)
    else:   # [l, p]: <f(z^(l)) g(z^(p))> for the named pair (f, g)
        fns = {"qs": lambda z: act.d2(z) * act.sigma(z), "pp": lambda z: act.d1(z) ** 2}
        pr = _two_depth_pairs(act, C, fns, (("qs", "pp"), ("pp", "qs"), ("pp", "pp")))
        QSPP, PPQS, PPPP = pr[("qs", "pp")], pr[("pp", "qs")], pr[("pp", "pp")]
    out = np.zeros(L)
    Pi = np.zeros((L, 1 + 2 * L))          # psi columns: 1 | q s(z^(p)) | p^2(z^(p))
    beta0, beta = 0.0, np.zeros(L)          # B attachments (residual_ntk_one_input)
    mpsi = np.concatenate([[1.0], qs, pp])
    for l in range(L - 1):
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
        bl = beta[:l]
        ephi = a[l] * varw * dss[l]
        epsi = np.zeros(1 + 2 * L)
        epsi[0] = pp[l]
        epsi[1:1 + l] = PPQS[l, :l]
        epsi[1 + L:1 + L + l] = PPPP[l, :l]
        Beval = beta0 * qs[l] * pp[l] + float(bl @ (QSPP[l, :l] * pp[l] + qs[l] * PPPP[l, :l]))
        if visit is not None:
            visit(l, Pi.copy(), epsi, beta0, beta.copy())
        new = r * g ** 3 * Pi
        new[:, 0] += r * g * x * x * CW * (Pi @ epsi)
        u, f = l + 1, x * CW / varw[l + 1]
        new[u, 0] += f * (x * x * CW * (qspp[l] * Th[l] ** 2 + r * Beval
                                        + r * float(ephi @ Pi @ epsi))
                          + g * g * r * (beta0 * qs[l] + float(bl @ QSPP[l, :l])))
        new[u, 1 + l] += f * g * g * Th[l] ** 2
        new[u, 1 + L:1 + L + l] += f * g * g * r * qs[l] * bl
        new[u, :] += f * g * g * r * (ephi @ Pi)
        Pi = new
        chi = x * x * CW * pp[l] + g * g
        beta0 = (x ** 4 * CW ** 2 * pppp[l] * Th[l] ** 2
                 + r * (chi * chi * beta0 + 2 * x * x * CW * chi * float(bl @ PPPP[l, :l])))
        beta[:l] *= r * g * g * chi
        beta[l] = x * x * g * g * CW * Th[l] ** 2
        out[l + 1] = float((a[l + 1] * varw) @ Pi @ mpsi)
    return _finite("P", out)


# ---------------------------------------------------------------------------
# Q: the dNTK's other contraction with a preactivation
# ---------------------------------------------------------------------------

def residual_dntk_q(mlp: MLP, K1: float, *, closure=False) -> np.ndarray:
    r"""``Q``, the dNTK-preactivation correlation ``n E[dH_{jjk} z_k]`` (j != k), one input.

    ``E[dH_{i0i1i2} z_{i3}]`` has the term ``d_{i0i1} d_{i2i3} Q / n``
    (``shared/NOTATION.md``). The conditional mean of ``dH_{jjk}`` given the two
    neurons' trajectories is, at order 1/n, a *linear* form in neuron k's features alone
    (``docs/derivations/residual_ntk.md``, section 10),

    .. math::
        n\,E[dH_{jjk} \mid \text{trajectories}] = w^T\phi(k),\qquad
        \phi: U_m,\ \sigma\sigma'(z^{(p)}),\ \sigma''\sigma'(z^{(p)}),

    (the rows of neuron j enter only through ``E[W_ja W_jb] = c d_ab``). A layer step
    (``s, p, q = sigma, sigma', sigma''`` at layer l, ``G`` the new increment's variance,
    ``M`` the bilinear form of F, ``_bilinear_forms``, ``e_f = E[f(z^(l)) phi]``):

    .. math::
        w' = r(\gamma^3 + \xi^2\gamma C_W\langle p^2\rangle)w
          + r\xi^2\gamma(C_W\Theta M e_{qp} + \lambda_W M e_{sp})
          + \xi^2\gamma C_W\Theta^2\,\mathrm{QP}_l + \lambda_W\xi^2\gamma\Theta\,\mathrm{S}_l
          + \frac{U_{l+1}}{G}\Big[\xi^3 C_W^2\big(\Theta^2\langle q s p^2\rangle
          + r\Theta e_{qp}^TMe_{sp} + r\langle p^2\rangle w^Te_{sp}\big)
          + r\xi\gamma^2 C_W\,w^Te_{sp}
          + \lambda_W\xi^3 C_W\big(\Theta\langle s^2p^2\rangle + r e_{sp}^TMe_{sp}\big)\Big],

    and ``Q^(l) = w^T E[phi z^(l)]`` (``xi`` is the layer's residual multiplier, ``w``
    the form). At gamma = 0 this is the book's recursion
    (:func:`pdlt.theory.dntk.dntk_Q_step`; 1e-12); at layer 2 the closed form
    ``xi^2 C_W Theta^2 (xi^2 C_W <q s p^2> + gamma^2 <q p z>) + lambda_W xi^2 Theta
    (xi^2 C_W <s^2 p^2> + gamma^2 <z s p>)`` (exact at any width). Checked against real
    residual networks with the last layer integrated exactly
    (:func:`pdlt.report.residual.residual_dntk_q_measure`): tanh at gamma = 0.3, 0.7, GELU
    at 0.3, 0.7, 0.9 and mixed per-layer hyperparameters, resolution 1-25 %; the two-depth terms
    (10-20 % of Q at gamma = 0.7) are resolved: the closure is rejected at 10-16 se
    (tanh, layers 4-5) and for GELU at layers 3-4.

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
    closure : bool
        Replace every two-depth average (here and in F's form ``M``) by the product
        of one-depth ones (for comparison only, as :func:`residual_dntk_p`).

    Returns
    -------
    ndarray (L,)
        ``Q^(l)``, normalized by ``n_{l-1}``.

    Raises
    ------
    ValueError
        If ``K1`` is not a finite number > 0.
    FloatingPointError
        If Q overflows (far from criticality at large depth).
    """
    return _dntk_q_fold(mlp, K1, closure)


def _dntk_q_fold(mlp, K1, closure, visit=None):
    """Q's fold over depth (:func:`residual_dntk_q`); returns Q (L,).

    ``visit(l, M, esp, eqp, w)``, if given, sees each step's inputs at layer l (0-based):
    F's bilinear form ``M`` (2L, 2L), the e-vectors ``esp = E[s p(z^(l)) phi]`` (3L),
    ``eqp = E[q p(z^(l)) phi]`` on the M features (2L), and Q's linear form ``w`` (3L)
    of layer l, before the step.
    """
    act, L = mlp.activation, mlp.depth
    K, Th, (pp, dss, dqp, qspp, sspp), (a, varw, C) = _one_input_setup(
        mlp, K1, ("pp", "dss", "dqp", "qspp", "sspp"))
    out = np.zeros(L)
    if L == 1:
        return out
    Ms = _bilinear_forms(mlp, K, Th, a, varw, C, closure=closure)
    fns = {"sp": lambda z: act.sigma(z) * act.d1(z), "qp": lambda z: act.d2(z) * act.d1(z)}
    if closure:
        msp, mqp = _one_means(act, fns["sp"], K), _one_means(act, fns["qp"], K)
        SS, SQ, QS = np.outer(msp, msp), np.outer(msp, mqp), np.outer(mqp, msp)
    else:
        pr = _two_depth_pairs(act, C, fns, (("sp", "sp"), ("sp", "qp"), ("qp", "sp")))
        SS, SQ, QS = pr[("sp", "sp")], pr[("sp", "qp")], pr[("qp", "sp")]
    CW, lW, x, g = (np.asarray(v, float) for v in (mlp.C_W, mlp.lambda_W, mlp.xi, mlp.gamma))
    L2 = 2 * L
    xv = np.zeros(3 * L)                     # features: U_m | S_p = s p(z^(p)) | QP_p = q p(z^(p))
    for l in range(L - 1):
        r = mlp.widths[l + 1] / mlp.widths[l]
        c, gg, xx, lw, G = CW[l + 1], g[l + 1], x[l + 1], lW[l + 1], varw[l + 1]
        M = Ms[l]
        esp = np.zeros(3 * L)
        esp[:l + 1] = a[l, :l + 1] * varw[:l + 1] * dss[l]
        esp[L:L + l] = SS[l, :l]
        esp[L2:L2 + l] = SQ[l, :l]
        eqp = np.zeros(L2)
        eqp[:l + 1] = a[l, :l + 1] * varw[:l + 1] * dqp[l]
        eqp[L:L + l] = QS[l, :l]
        if visit is not None:
            visit(l, M, esp, eqp, xv)
        Msp, Mqp = M @ esp[:L2], M @ eqp
        xe = float(xv @ esp)
        new = r * (gg ** 3 + xx * xx * gg * c * pp[l]) * xv
        new[:L2] += r * xx * xx * gg * (c * Th[l] * Mqp + lw * Msp)
        new[L2 + l] += xx * xx * gg * c * Th[l] ** 2
        new[L + l] += lw * xx * xx * gg * Th[l]
        new[l + 1] += (xx ** 3 * c * c * (Th[l] ** 2 * qspp[l] + r * Th[l] * float(eqp @ Msp)
                                          + r * pp[l] * xe)
                       + r * xx * gg * gg * c * xe
                       + lw * xx ** 3 * c * (Th[l] * sspp[l] + r * float(esp[:L2] @ Msp))) / G
        xv = new
        vz = np.zeros(3 * L)
        vz[:l + 2] = a[l + 1, :l + 2] * varw[:l + 2]
        vz[L:L + l + 1] = C[l + 1, :l + 1] * dss[:l + 1]
        vz[L2:L2 + l + 1] = C[l + 1, :l + 1] * dqp[:l + 1]
        out[l + 1] = float(xv @ vz)
    return _finite("Q", out)


def residual_statistics(mlp: MLP, K1: float, stats) -> dict:
    """The one-input residual statistics ``stats`` by name: A, B, D, F, V, H1, P, Q, R..U.

    One dispatch for :func:`pdlt.statistics` and the report's residual rows:
    A, B, D, F and V from :func:`residual_ntk_one_input` (one call for all of
    them), H1 from :func:`residual_ntk_mean`, P from :func:`residual_dntk_p`,
    Q from :func:`residual_dntk_q`, R, S, T, U from :func:`residual_ddntk_r`,
    :func:`residual_ddntk_s`, :func:`residual_ddntk_t`, :func:`residual_ddntk_u`.

    Returns
    -------
    dict
        name -> ndarray (L,), normalized by ``n_{l-1}`` (``shared/NOTATION.md``).
    """
    stats = list(stats)
    own = {"H1": residual_ntk_mean, "P": residual_dntk_p, "Q": residual_dntk_q,
           "R": residual_ddntk_r, "S": residual_ddntk_s, "T": residual_ddntk_t,
           "U": residual_ddntk_u}
    bad = [k for k in stats if k not in own and k not in RESIDUAL_NTK_STATISTICS + ("V",)]
    if bad:
        raise NotImplementedError(
            f"residual MLPs: the statistics {bad} are not derived for one input (derived: "
            f"{', '.join(RESIDUAL_NTK_STATISTICS + ('V',) + tuple(own))})")
    shared = [k for k in stats if k not in own]
    out = residual_ntk_one_input(mlp, K1, stats=shared) if shared else {}
    out.update({k: own[k](mlp, K1) for k in stats if k in own})
    return out


# ---------------------------------------------------------------------------
# U and S: the ddNTK statistics of the ddII kind (docs/derivations/residual_ntk.md, 11-12)
# ---------------------------------------------------------------------------

def _pair_table(act, K, C, fns, terms, closure):
    """``[l, p] -> <f(z^(l)) g(z^(p))>`` for each named pair ``(f, g)`` of ``terms``.

    Two-depth averages of one neuron (:func:`_two_depth_pairs`), or, with ``closure``,
    the products ``<f>_{K_l} <g>_{K_p}`` (the book-style closure, for comparison only).
    Only the strict lower triangle (p < l) is used by the callers.
    """
    if closure:
        m = {k: _one_means(act, f, K) for k, f in fns.items()}
        return {t: np.outer(m[t[0]], m[t[1]]) for t in terms}
    return _two_depth_pairs(act, C, fns, terms)


def residual_ddntk_u(mlp: MLP, K1: float, *, closure=False) -> np.ndarray:
    r"""``U``, the ddNTK statistic ``n E[ddIIH_{ijji}]`` (i != j) of a residual MLP, one input.

    Write ``Hs_i`` for neuron i's Hessian in the parameters (rescaled by the learning
    rates) and ``g_i`` for its gradient, so that ``ddIIH_{i0i1i2i3} = g_{i2}^T Hs_{i0}
    Hs_{i1} g_{i3}`` (``shared/NOTATION.md``). A residual step gives (derivation:
    ``docs/derivations/residual_ntk.md``, section 12; ``q = sigma''``, ``p = sigma'``
    at layer l, ``chi = xi^2 C_W <p^2> + gamma^2``)

    .. math::
        U' = \xi^4 C_W^2\Theta^3\langle q^2p^2\rangle
             + 2r\,\xi^2 C_W\,\chi\,E[qp(z^{(l)})\,x] + r\chi^2 U,

    where ``x(a) = n E[H_ab dH_baa | trajectories]`` (a != b) depends on neuron a's
    trajectory only, ``x = sum_p chi_p sigma''sigma'(z_a^(p))``, with the step
    ``x' = r gamma^3 chi x + xi^2 gamma^3 C_W Theta^3 sigma''sigma'(z_a^(l))``: the
    half-skip term of the NTK and the dNTK's ``gamma^2`` part carry neuron a's
    own ``sigma''sigma'`` (an NTK-dNTK correlation that a plain MLP does not have:
    it is odd in the last layer's weights there). ``E[qp(z^(l)) x]`` is a two-depth
    average; it vanishes at gamma = 0 (the book's ``U' = C_W^2 Theta^3 <q^2p^2> +
    r C_W^2 <p^2>^2 U``, :func:`pdlt.theory.ddntk.ddntk_U_step`) and under the closure
    for odd sigma (``<sigma''sigma'> = 0``). Layer 2 (exact at any width):
    ``xi^4 C_W^2 Theta^3 <q^2p^2>``. ReLU and linear networks (``q = 0``): U = 0.

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
        First-layer kernel.
    closure : bool
        Replace the two-depth average by the product of one-depth ones (for
        comparison only).

    Returns
    -------
    ndarray (L,)
        ``U^(l)``, normalized by ``n_{l-1}``.

    Raises
    ------
    ValueError
        If ``K1`` is not a finite number > 0.
    FloatingPointError
        If U overflows (far from criticality at large depth).
    """
    act, L = mlp.activation, mlp.depth
    K, Th, (pp, qqpp), (a, varw, C) = _one_input_setup(mlp, K1, ("pp", "qqpp"))
    qp = lambda z: act.d2(z) * act.d1(z)        # noqa: E731
    QPQP = _pair_table(act, K, C, {"qp": qp}, (("qp", "qp"),), closure)[("qp", "qp")]
    out = np.zeros(L)
    chi_x = np.zeros(L)                  # x(a) = sum_p chi_x[p] qp(z_a^(p))
    U = 0.0
    for l in range(L - 1):
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
        chi = x * x * CW * pp[l] + g * g
        eqpx = float(chi_x[:l] @ QPQP[l, :l])
        U = x ** 4 * CW ** 2 * Th[l] ** 3 * qqpp[l] + 2 * r * x * x * CW * chi * eqpx \
            + r * chi * chi * U
        chi_x[:l] *= r * g ** 3 * chi
        chi_x[l] = x * x * g ** 3 * CW * Th[l] ** 3
        out[l + 1] = U
    return _finite("U", out)


def residual_ddntk_s(mlp: MLP, K1: float, *, closure=False) -> np.ndarray:
    r"""``S``, the ddNTK statistic ``n E[ddIIH_{iijj}]`` (i != j) of a residual MLP, one input.

    ``ddIIH_{iijj} = g_j^T Hs_i Hs_i g_j`` (notation of :func:`residual_ddntk_u`).
    Its conditional mean given the two trajectories depends on neuron j's alone
    (``docs/derivations/residual_ntk.md``, section 13),

    .. math::
        s(j) = s_0 + \sum_p \big[\sigma_p\,p^2(z_j^{(p)}) + \tau_p\,q^2(z_j^{(p)})\big],

    and a layer step (``s, p, q = sigma, sigma', sigma''`` at layer l; ``n E[H_ab^2 |
    trajectories] = beta_0 + sum_p beta_p [p^2(z_a^(p)) + p^2(z_b^(p))]`` the B
    attachments of section 3; ``B_{f,g} = n E[f(z_a) g(z_b) H_ab^2]``, ``b_f(j) = n
    E_a[f(z_a) H_aj^2]``; ``c = xi^2 gamma^2 C_W``):

    .. math::
        s' = r(\gamma^4 + c\langle p^2\rangle)s
          + r(\xi^4 C_W^2\langle p^2\rangle + c)\,E[p^2(z_d)\,s(d)]
          + \xi^4 C_W^2\Theta^3\langle q^2p^2\rangle + r\xi^4C_W^2\Theta B_{q^2,p^2}
          + c\,\Theta\,(\Theta^2 q^2(z_j^{(l)}) + r\,b_{q^2}(j))
          + \lambda_W\xi^2\big[\xi^2 C_W(\Theta^2\langle p^4\rangle + rB_{p^2,p^2})
          + \gamma^2(\Theta^2p^2(z_j^{(l)}) + r\,b_{p^2}(j))\big],

    and ``S = E[s(j)]``. At gamma = 0 this is the book's recursion
    (:func:`pdlt.theory.ddntk.ddntk_S_step`); at layer 2 the closed form
    ``xi^4 C_W^2 Theta^3 <q^2p^2> + xi^2 gamma^2 C_W Theta^3 <q^2> + lambda_W xi^2
    Theta^2 (xi^2 C_W <p^4> + gamma^2 <p^2>)`` (exact at any width). Linear and ReLU
    networks keep the lambda_W terms (``q = 0``).

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
        First-layer kernel.
    closure : bool
        Replace every two-depth average (here and in B's attachments) by the
        product of one-depth ones (for comparison only).

    Returns
    -------
    ndarray (L,)
        ``S^(l)``, normalized by ``n_{l-1}``.

    Raises
    ------
    ValueError
        If ``K1`` is not a finite number > 0.
    FloatingPointError
        If S overflows (far from criticality at large depth).
    """
    act, L = mlp.activation, mlp.depth
    K, Th, (pp, qq, pppp, qqpp), (a, varw, C) = _one_input_setup(
        mlp, K1, ("pp", "qq", "pppp", "qqpp"))
    fns = {"pp": lambda z: act.d1(z) ** 2, "qq": lambda z: act.d2(z) ** 2}
    pr = _pair_table(act, K, C, fns, (("pp", "pp"), ("qq", "pp"), ("pp", "qq")), closure)
    PP, QP, PQ = pr[("pp", "pp")], pr[("qq", "pp")], pr[("pp", "qq")]
    lW = np.asarray(mlp.lambda_W, float)
    out = np.zeros(L)
    s0, sig, tau = 0.0, np.zeros(L), np.zeros(L)      # s(j) = s0 + sig.p^2(z_j) + tau.q^2(z_j)
    beta0, beta = 0.0, np.zeros(L)                    # B attachments (residual_ntk_one_input)
    for l in range(L - 1):
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x, lw = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        bl = beta[:l]
        hpp = float(bl @ PP[l, :l])                   # sum_p beta_p E[p^2_l p^2_p]
        hqp = float(bl @ QP[l, :l])                   # sum_p beta_p E[q^2_l p^2_p]
        Bqp = beta0 * qq[l] * pp[l] + hqp * pp[l] + qq[l] * hpp
        Bpp = beta0 * pp[l] ** 2 + 2 * pp[l] * hpp
        eps = s0 * pp[l] + float(sig[:l] @ PP[l, :l] + tau[:l] @ PQ[l, :l])
        c = x * x * g * g * CW
        const = (x ** 4 * CW ** 2 * Th[l] ** 3 * qqpp[l] + r * x ** 4 * CW ** 2 * Th[l] * Bqp
                 + r * c * Th[l] * (beta0 * qq[l] + hqp)
                 + lw * x * x * (x * x * CW * (Th[l] ** 2 * pppp[l] + r * Bpp)
                                 + g * g * r * (beta0 * pp[l] + hpp))
                 + r * (x ** 4 * CW ** 2 * pp[l] + c) * eps)
        keep = r * (g ** 4 + c * pp[l])
        s0 = keep * s0 + const
        sig *= keep
        tau *= keep
        sig[:l] += r * (c * Th[l] * qq[l] + lw * x * x * g * g * pp[l]) * bl
        tau[l] += c * Th[l] ** 3
        sig[l] += lw * x * x * g * g * Th[l] ** 2
        chi = x * x * CW * pp[l] + g * g
        beta0 = x ** 4 * CW ** 2 * pppp[l] * Th[l] ** 2 + r * (chi * chi * beta0
                                                             + 2 * x * x * CW * chi * hpp)
        beta[:l] *= r * g * g * chi
        beta[l] = x * x * g * g * CW * Th[l] ** 2
        out[l + 1] = s0 + float(sig[:l + 1] @ pp[:l + 1] + tau[:l + 1] @ qq[:l + 1])
    return _finite("S", out)


def residual_ddntk_t(mlp: MLP, K1: float, *, closure=False) -> np.ndarray:
    r"""``T``, the ddNTK statistic ``n E[ddIIH_{ijij}]`` (i != j) of a residual MLP, one input.

    ``ddIIH_{ijij} = g_i^T Hs_i Hs_j g_j`` (notation of :func:`residual_ddntk_u`). Its
    conditional mean given the two trajectories is a constant at O(1/n) (every source
    is a free sum over old neurons; ``docs/derivations/residual_ntk.md``, section 13b),
    and a step reads F's bilinear form ``M`` (``n E[H_ab | trajectories] = phi(a)^T M
    phi(b)``) and Q's linear form ``w`` (``n E[dH_{bba} | trajectories] = w^T phi(a)``) of layer l
    (``s, p, q = sigma, sigma', sigma''``; ``e_f = E[f(z^(l)) phi]``; ``chi = xi^2 C_W <p^2>
    + gamma^2``; ``lambda_W``, ``xi``, ``C_W`` of the new layer):

    .. math::
        T' = \xi^4\Theta\big(C_W^2\Theta^2\langle q^2p^2\rangle
             + 2\lambda_W C_W\Theta\langle q s p^2\rangle + \lambda_W^2\langle s^2p^2\rangle\big)
           + r\xi^4\, v^T M v
           + 2r\xi^2\chi\,\big(C_W\Theta\, w^Te_{qp} + \lambda_W\, w^Te_{sp}\big)
           + r\chi^2 T,\qquad v = C_W\Theta\, e_{qp} + \lambda_W e_{sp}.

    At gamma = 0 this is the book's recursion (:func:`pdlt.theory.ddntk.ddntk_T_step`:
    ``M`` and ``w`` then live on the increments, ``e_{qp}^T M e_{qp} = <(qp)'>^2 F``); at
    layer 2 the closed form ``xi^4 Theta (C_W^2 Theta^2 <q^2p^2> + 2 lambda_W C_W Theta
    <q s p^2> + lambda_W^2 <s^2 p^2>)`` (exact at any width).

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
        First-layer kernel.
    closure : bool
        Replace every two-depth average (here and in ``M``, ``w``) by the product of
        one-depth ones (for comparison only).

    Returns
    -------
    ndarray (L,)
        ``T^(l)``, normalized by ``n_{l-1}``.

    Raises
    ------
    ValueError
        If ``K1`` is not a finite number > 0.
    FloatingPointError
        If T overflows (far from criticality at large depth).
    """
    act, L = mlp.activation, mlp.depth
    K, Th, (pp, qqpp, qspp, sspp), (a, varw, C) = _one_input_setup(
        mlp, K1, ("pp", "qqpp", "qspp", "sspp"))
    qp = lambda z: act.d2(z) * act.d1(z)        # noqa: E731
    QQ = _pair_table(act, K, C, {"qp": qp}, (("qp", "qp"),), closure)[("qp", "qp")]
    seen = []
    _dntk_q_fold(mlp, K1, closure, visit=lambda *args: seen.append(args))
    lW = np.asarray(mlp.lambda_W, float)
    out = np.zeros(L)
    T, L2 = 0.0, 2 * L
    for l, M, esp, eqp, w in seen:
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x, lw = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        chi = x * x * CW * pp[l] + g * g
        v = CW * Th[l] * eqp + lw * esp[:L2]
        eqp3 = np.zeros(3 * L)
        eqp3[:L2] = eqp
        eqp3[L2:L2 + l] = QQ[l, :l]
        T = (x ** 4 * Th[l] * (CW ** 2 * Th[l] ** 2 * qqpp[l] + 2 * lw * CW * Th[l] * qspp[l]
                               + lw * lw * sspp[l])
             + r * x ** 4 * float(v @ M @ v)
             + 2 * r * x * x * chi * (CW * Th[l] * float(w @ eqp3) + lw * float(w @ esp))
             + r * chi * chi * T)
        out[l + 1] = T
    return _finite("T", out)


def _stein_two_depth(act, K, C, closure):
    """Two-depth tables ``[l, p]`` (p < l) that R needs, ``t = sigma''' sigma'``:

    ``TP = E[t(z^(l)) p^2(z^(p))]``, ``PT = E[p^2(z^(l)) t(z^(p))]``, ``QSP = E[q s(z^(l))
    p^2(z^(p))]``, ``PQS = E[p^2(z^(l)) q s(z^(p))]``, ``PP = E[p^2(z^(l)) p^2(z^(p))]``.
    ``sigma'''`` is never evaluated: ``t = (q p)' - q^2`` and Stein along the variable that
    carries the derivative (``y = beta x + e``: ``E[F'(y) G(x)] = E[F(y) G(x) (y - beta x)] /
    Var e``), so a kink of ``sigma''`` (not a jump) is integrated, not differentiated.
    """
    L = len(K)
    t = OneVariableTable(act, K)
    q3p, pp, qs = (np.asarray(t[k], float) for k in ("q3p", "pp", "qs"))
    if closure:
        return dict(TP=np.outer(q3p, pp), PT=np.outer(pp, q3p), QSP=np.outer(qs, pp),
                    PQS=np.outer(pp, qs), PP=np.outer(pp, pp))
    fns = {"qp": lambda z: act.d2(z) * act.d1(z), "zqp": lambda z: z * act.d2(z) * act.d1(z),
           "qq": lambda z: act.d2(z) ** 2, "pp": lambda z: act.d1(z) ** 2,
           "zpp": lambda z: z * act.d1(z) ** 2, "qs": lambda z: act.d2(z) * act.sigma(z)}
    pr = _two_depth_pairs(act, C, fns, (("pp", "zqp"), ("zpp", "qp"), ("pp", "qq"),
                                        ("zqp", "pp"), ("qp", "zpp"), ("qq", "pp"),
                                        ("qs", "pp"), ("pp", "qs"), ("pp", "pp")))
    Kl, Kp = K[:, None], K[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        b1, s1 = C / Kp, Kl - C * C / Kp          # z^(l) = b1 z^(p) + e, Var e = s1
        b2, s2 = C / Kl, Kp - C * C / Kl          # z^(p) = b2 z^(l) + e', Var e' = s2
        TP = (pr[("pp", "zqp")].T - b1 * pr[("zpp", "qp")].T) / s1 - pr[("pp", "qq")].T
        PT = (pr[("zqp", "pp")].T - b2 * pr[("qp", "zpp")].T) / s2 - pr[("qq", "pp")].T
    low = np.tril(np.ones((L, L), bool), -1)
    return {k: np.where(low, v, 0.0) for k, v in dict(
        TP=TP, PT=PT, QSP=pr[("qs", "pp")], PQS=pr[("pp", "qs")], PP=pr[("pp", "pp")]).items()}


def residual_ddntk_r(mlp: MLP, K1: float, *, closure=False) -> np.ndarray:
    r"""``R``, the ddNTK statistic ``n E[ddIH_{iijj}]`` (i != j) of a residual MLP, one input.

    ``ddIH_{i0i1i2i3} = T3_{i0}[g_{i1}, g_{i2}, g_{i3}]`` with ``T3_i`` neuron i's third
    derivative tensor (learning-rate rescaled). Its conditional mean given the two
    trajectories depends on neuron j's alone (``docs/derivations/residual_ntk.md``,
    section 13c),

    .. math::
        r(j) = r_0 + \sum_p \big[\rho^{(1)}_p\,\sigma'''\sigma'(z_j^{(p)})
               + \rho^{(2)}_p\,\sigma''\sigma(z_j^{(p)}) + \rho^{(3)}_p\,\sigma'^2(z_j^{(p)})\big],

    and a step (``s, p, q = sigma, sigma', sigma''`` at layer l; ``g = C_W Theta sigma'''
    p + lambda_W q s``; ``B_{g,p^2}``, ``b_g(j)`` from B's attachments as in
    :func:`residual_ddntk_s`; ``Pi`` P's bilinear form of :func:`residual_dntk_p` with
    ``psi(j) = (1, q s(z_j^(p)), p^2(z_j^(p)))``; ``e = E[(C_W Theta q p + lambda_W s p)(z^(l))
    U]`` on the increments):

    .. math::
        r' = r(\gamma^4 + \xi^2\gamma^2 C_W\langle p^2\rangle)r
           + r(\xi^4 C_W^2\langle p^2\rangle + \xi^2\gamma^2 C_W)E[p^2(z_c)r(c)]
           + \xi^4 C_W\Theta^2\langle g p^2\rangle + r\xi^4 C_W B_{g,p^2}
           + \xi^2\gamma^2\big(\Theta^2 g(z_j^{(l)}) + r\,b_g(j)\big)
           + r\xi^2 e^T\Pi\big(\xi^2 C_W E[p^2\psi] + \gamma^2\psi(j)\big),

    ``R = E[r(j)]``. At gamma = 0 this is the book's recursion
    (:func:`pdlt.theory.ddntk.ddntk_R_step`); layer 2 (exact at any width):
    ``xi^4 C_W Theta^2 <g p^2> + xi^2 gamma^2 Theta^2 <g>``. ReLU and linear: R = 0.

    Parameters
    ----------
    mlp : MLP
        Any per-layer ``gamma``, ``xi``; unequal widths only where ``gamma = 0``.
    K1 : float > 0
        First-layer kernel.
    closure : bool
        Replace every two-depth average (here, in P's form and B's attachments) by the
        product of one-depth ones (for comparison only).

    Returns
    -------
    ndarray (L,)
        ``R^(l)``, normalized by ``n_{l-1}``.

    Raises
    ------
    ValueError
        If ``K1`` is not a finite number > 0, or if ``sigma''`` jumps at a kink (R
        needs ``sigma'''``; as for plain MLPs).
    FloatingPointError
        If R overflows (far from criticality at large depth).
    """
    act, L = mlp.activation, mlp.depth
    K, Th, (pp, dqp, dss, qs, qspp, q3p, q3ppp), (a, varw, C) = _one_input_setup(
        mlp, K1, ("pp", "dqp", "dss", "qs", "qspp", "q3p", "q3ppp"))
    seen = []
    _dntk_p_fold(mlp, K1, closure, visit=lambda *args: seen.append(args))
    tb = _stein_two_depth(act, K, C, closure)
    TP, PT, QSP, PQS, PP = (tb[k] for k in ("TP", "PT", "QSP", "PQS", "PP"))
    lW = np.asarray(mlp.lambda_W, float)
    out = np.zeros(L)
    r0, rho = 0.0, np.zeros((3, L))           # features: t = s''' s' | q s | p^2, at depth p
    for l, Pi, epsi, beta0, beta in seen:
        r = mlp.widths[l + 1] / mlp.widths[l]
        CW, g, x, lw = mlp.C_W[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        bl = beta[:l]
        gm = CW * Th[l] * q3p[l] + lw * qs[l]                 # <g>
        gp2 = CW * Th[l] * q3ppp[l] + lw * qspp[l]            # <g p^2>
        gP = CW * Th[l] * TP[l, :l] + lw * QSP[l, :l]         # E[g(z^(l)) p^2(z^(p))]
        hpp, hg = float(bl @ PP[l, :l]), float(bl @ gP)
        Bg = beta0 * gm * pp[l] + hg * pp[l] + gm * hpp
        e = (CW * Th[l] * dqp[l] + lw * dss[l]) * a[l] * varw
        piv = e @ Pi                                          # (1 + 2L) on psi
        Er = (r0 * pp[l] + float(rho[0, :l] @ PT[l, :l] + rho[1, :l] @ PQS[l, :l]
                                 + rho[2, :l] @ PP[l, :l]))
        c = x * x * g * g
        const = (x ** 4 * CW * Th[l] ** 2 * gp2 + r * x ** 4 * CW * Bg
                 + r * c * (beta0 * gm + hg)
                 + r * x * x * (x * x * CW * float(piv @ epsi) + g * g * piv[0])
                 + r * (x ** 4 * CW ** 2 * pp[l] + c * CW) * Er)
        keep = r * (g ** 4 + c * CW * pp[l])
        r0 = keep * r0 + const
        rho *= keep
        rho[0, l] += c * Th[l] ** 2 * CW * Th[l]
        rho[1, l] += c * Th[l] ** 2 * lw
        rho[2, :l] += r * c * gm * bl
        rho[1] += r * c * piv[1:1 + L]
        rho[2] += r * c * piv[1 + L:]
        out[l + 1] = r0 + float(rho[0] @ q3p + rho[1] @ qs + rho[2] @ pp)
    return _finite("R", out)
