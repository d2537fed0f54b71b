r"""Exact N-input ddNTK statistics S and U of residual MLPs at order 1/n, any activation.

``S[l, a0, a1, a2, a3] = n_{l-1} E[ddIIH_{iijj}]`` and ``U[l, a0, a1, a2, a3] = n_{l-1}
E[ddIIH_{ijji}]`` (i != j; ``shared/NOTATION.md``, the convention of
:func:`pdlt.theory.ddntk.ddntk_S_step`, :func:`pdlt.theory.ddntk.ddntk_U_step`), with
``ddIIH_{i0i1i2i3} = g_{i2}^T Hs_{i0} Hs_{i1} g_{i3}`` (``g`` a neuron's gradient, ``Hs`` its
Hessian in the parameters, rescaled by the learning rates).

For the residual MLP ``z' = xi [b + W sigma(z)] + gamma z`` the one-input recursions of
:func:`pdlt.theory.residual_ntk.residual_ddntk_s` and
:func:`pdlt.theory.residual_ntk.residual_ddntk_u` carry over with input slots
(derivation: ``docs/derivations/residual_ntk_multi.md``, "S and U at N inputs"; ``p, q =
sigma', sigma''`` at layer l, ``chi_ef = xi^2 C_W <p_e p_f> + gamma^2``):

* **S.** Given the two trajectories, ``n E[ddIIH_{iijj} | .]`` depends on neuron j's
  alone, ``s(j) = s_0 + sum_p [sig_p p_{a0} p_{a1}(z_j^(p)) + tau_p q_{a0} q_{a1}(z_j^(p))]``:
  functions of the *other* neuron's inputs (a0, a1), as for B's attachments
  (``n E[H_{ik;a0a2} H_{ik;a1a3} | .] = beta_0 + sum_p beta^k_p p_{a0}p_{a1}(z_k^(p)) +
  beta^i_p p_{a2}p_{a3}(z_i^(p))``, :func:`pdlt.theory.residual_multi.residual_b_multi`),
  which feed it. ``S = E[s(j)]``.
* **U.** A constant, fed by the NTK-dNTK correlation ``n E[H_{ba;e1e2}
  dH_{baa;f0f1f2} | .]``, which depends on neuron a alone, ``sum_p x_p p_{e1} q_{f0}(z_a^(p))``
  (born from the half-skip term, ``xi^2 gamma^3 C_W Theta_{e1e2} Theta_{f0f1} Theta_{f0f2}``),

  .. math::
      U'_{a_0a_1a_2a_3} = \xi^4C_W^2\Theta_{a_0a_1}\Theta_{a_0a_2}\Theta_{a_1a_3}
          \langle q_{a_0}q_{a_1}p_{a_2}p_{a_3}\rangle
          + r\xi^2C_W\,[\chi_{a_1a_2}E_{a_0a_1a_2a_3} + \chi_{a_0a_3}E_{a_1a_0a_3a_2}]
          + r\,\chi_{a_0a_3}\chi_{a_1a_2}U_{a_0a_1a_2a_3},

  ``E_{a0a1a2a3} = sum_p x_p E[q_{a0} p_{a3}(z^(l)) p_{a2} q_{a1}(z^(p))]`` (two depths).

The one-neuron two-depth averages (up to four jointly Gaussian variables: two inputs at
depth l, two at depth p) are :func:`pdlt.gaussian.expect_nd` calls, batched per layer pair;
ReLU-family activations use exact piecewise monomials (their ``sigma'' = 0``: U = 0 and S
keeps its lambda_W terms only). At gamma = 0 every history term vanishes and the
recursions are the plain N-input steps; for one input (and for the diagonal of distinct
inputs) the one-input functions. Served by :func:`pdlt.statistics` for residual MLPs and
N inputs (``get=["S", "U"]``).

Cost: ``O(L^2 N^4)`` two-depth averages of up to four variables (N = 2, L = 4: well under
a second for tanh).
"""

from __future__ import annotations

import numpy as np

from ..gaussian._exppw import exp_product, exp_slots
from ..gaussian._multi import PiecewiseMonomial, entire_growth
from ..network import MLP
from .residual_multi import _expect, _gather, _neuron, _ntk_multi, _rule

__all__ = ["residual_su_multi"]


def residual_su_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default",
                      closure=False) -> dict:
    r"""Exact N-input ``S`` and ``U`` of a residual MLP at every layer, any activation.

    ``S[l, a0, a1, a2, a3] = n_{l-1} E[ddIIH_{iijj;a0a1a2a3}]`` and ``U[l, a0, a1, a2, a3] =
    n_{l-1} E[ddIIH_{ijji;a0a1a2a3}]`` (i != j; ``shared/NOTATION.md``). The one-input
    recursions of :func:`pdlt.theory.residual_ntk.residual_ddntk_s` and
    :func:`pdlt.theory.residual_ntk.residual_ddntk_u` with input slots: S from the B
    attachments (functions ``sigma'_{a0} sigma'_{a1}`` of neuron j's past) and its own
    ``sigma''_{a0} sigma''_{a1}`` attachments, U from the NTK-dNTK correlation
    ``n E[H_ba dH_baa]`` (functions ``sigma'_{e1} sigma''_{f0}`` of neuron a's past).
    Derivation: ``docs/derivations/residual_ntk_multi.md``, section "S and U at N inputs".

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
        Rule of the three- and four-variable averages (:func:`pdlt.gaussian.expect_nd`).
    closure : bool
        Replace every two-depth average by the product of one-depth ones (the
        book-style closure; for comparison only).

    Returns
    -------
    dict
        ``{"S": ndarray (L, N, N, N, N), "U": ndarray (L, N, N, N, N)}``, normalized by
        ``n_{l-1}``; layer 1 is 0.

    Raises
    ------
    ValueError
        Bad arguments, or an input of zero variance.
    FloatingPointError
        A statistic that overflowed (far from criticality at large depth).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi_ddii import residual_su_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh", C_W=0.75, gamma=0.5)
    >>> out = residual_su_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]]))
    >>> out["S"].shape, out["U"].shape
    ((3, 2, 2, 2, 2), (3, 2, 2, 2, 2))
    """
    if not isinstance(closure, bool):
        raise TypeError(f"closure must be True or False; got {closure!r}")
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy,
                      lambda *a: _su_multi(*a, closure=closure))


# ---------------------------------------------------------------------------
# two-depth averages of products of sigma', sigma'' (one neuron)
# ---------------------------------------------------------------------------


def _si(act):
    """ReLU-family slopes ``(a+, a-)`` or None (as :mod:`pdlt.theory.residual_multi`)."""
    return act.scale_invariant if act.name != "monomial" else None


def _integrand(act, names):
    """The product of the derivatives ``names`` (from "p" = sigma', "q" = sigma'') of one
    variable, as an :func:`expect_nd` integrand; None when it vanishes identically
    (``sigma'' = 0`` pointwise for the ReLU family)."""
    si = _si(act)
    if si is not None:
        if "q" in names:
            return None
        k = len(names)
        return PiecewiseMonomial(si[0] ** k, si[1] ** k, 0)
    fn = {"p": act.d1, "q": act.d2}
    ex = exp_slots(act, ("d1", "d2"))    # elu: exponential polynomials (exact inner axis)
    if ex is not None:
        fn = dict(zip("pq", ex))
    if len(names) == 1:
        return fn[names[0]]
    f1, f2 = fn[names[0]], fn[names[1]]
    return exp_product([f1, f2], lambda z: f1(z) * f2(z))


def _one_depth_pair(act, avg, k1, k2):
    """``<k1(z_e) k2(z_f)>_K`` (N, N) at one layer; k1, k2 from "p" (sigma'), "q" (sigma'')."""
    if k1 == k2 == "p":
        return avg.PP
    if k1 == k2 == "q":
        return avg.QQ
    N = avg.N
    out = np.zeros((N, N))
    kw = dict(kinks=act.kinks, growth=entire_growth(act))
    for e in range(N):
        for f in range(N):
            if e == f:
                fs, I = [_integrand(act, (k1, k2))], [e]
            else:
                fs, I = [_integrand(act, (k1,)), _integrand(act, (k2,))], [e, f]
            if any(h is None for h in fs):
                continue
            out[e, f] = float(_expect(act, fs, avg.K[np.ix_(I, I)], accuracy="high", **kw))
    return out


def _two_depth4(act, C, l, p, kinds, N, accuracy):
    """``T[e, f, g, h] = E[k1(z_e^(l)) k2(z_f^(l)) k3(z_g^(p)) k4(z_h^(p))]`` (p < l).

    ``kinds = (k1, k2, k3, k4)`` from "p" (sigma'), "q" (sigma''); ``C[l, p]`` (N, N) is
    ``Cov(z^(l), z^(p))`` of one neuron. Coinciding inputs at one depth are one variable
    (the product of its functions); the same input at two depths is two correlated
    variables. Up to four variables per average, batched by pattern.
    """
    T = np.zeros((N,) * 4)
    if _si(act) is not None and "q" in kinds:
        return T
    groups = {}
    for idx in np.ndindex(*(N,) * 4):
        var = []                                  # (depth, input, names)
        for dep, ins, ks in ((l, idx[:2], kinds[:2]), (p, idx[2:], kinds[2:])):
            if ins[0] == ins[1]:
                var.append((dep, ins[0], ks))
            else:
                var += [(dep, ins[0], ks[:1]), (dep, ins[1], ks[1:])]
        groups.setdefault(tuple(v[2] for v in var), []).append((idx, var))
    kw = dict(kinks=act.kinks, growth=entire_growth(act))
    for names, items in groups.items():
        fs = [_integrand(act, nm) for nm in names]
        cov = _gather(C, [[v[0] for v in var] for _, var in items],
                      [[v[1] for v in var] for _, var in items])
        # one rule up at every size: the default rule is ~2e-7 off at the rank-deficient
        # covariances of antipodal inputs (tanh), one up ~1e-9
        acc = _rule(accuracy, act, 3)
        vals = np.atleast_1d(np.asarray(_expect(act, fs, cov, accuracy=acc, **kw), dtype=float))
        for k, (idx, _) in enumerate(items):
            T[idx] = vals[k]
    return T


# ---------------------------------------------------------------------------
# the recursions
# ---------------------------------------------------------------------------


def _su_multi(mlp, Ks, Ths, accuracy, closure=False):
    act = mlp.activation
    L, N = Ks.shape[0], Ks.shape[1]
    out = {"S": np.zeros((L,) + (N,) * 4), "U": np.zeros((L,) + (N,) * 4)}
    if L == 1:
        return out
    nr = _neuron(mlp, Ks, accuracy)     # one neuron's trajectory: C = Cov(z^(l), z^(m))
    avg, C = nr.avg, nr.C
    CW = np.asarray(mlp.C_W, float)
    lW = np.asarray(mlp.lambda_W, float)
    ix = np.ix_(*(np.arange(N),) * 4)
    i0, i1, i2, i3 = ix
    PP = [av.PP for av in avg]
    QQ = [av.QQ for av in avg]
    pair1 = {}              # (k1, k2) -> depth -> <k1(z_e) k2(z_f)> (N, N), for products

    def table(l, p, kinds):
        """``[e, f, g, h] -> E[k1 k2 (z^(l)) k3 k4 (z^(p))]``; products when the depths are
        independent (a gamma = 0 in between) or under the closure."""
        if closure or not np.any(C[l, p] != 0.0):
            one = []
            for dep, ks in ((l, kinds[:2]), (p, kinds[2:])):
                cache = pair1.setdefault(ks, {})
                if dep not in cache:
                    cache[dep] = _one_depth_pair(act, avg[dep], *ks)
                one.append(cache[dep])
            return np.einsum("ef,gh->efgh", *one)
        return _two_depth4(act, C, l, p, kinds, N, accuracy)

    # S: s(j) = s0 + sum_p sig[p] p_{a0}p_{a1}(z_j^(p)) + tau[p] q_{a0}q_{a1}(z_j^(p));
    # B attachments: beta0 + bk[p] p_{a0}p_{a1}(z_k^(p)) + bi[p] p_{a2}p_{a3}(z_i^(p))
    shape = (N,) * 4
    s0, sig, tau = np.zeros(shape), np.zeros((L,) + shape), np.zeros((L,) + shape)
    beta0, bk, bi = np.zeros(shape), np.zeros((L,) + shape), np.zeros((L,) + shape)
    # U: x[p] the coefficient of p_{a2} q_{a1}(z^(p)) in n E[H_{ba;a2a0} dH_{baa;a1a0a3}]
    xc = np.zeros((L,) + shape)
    U = np.zeros(shape)
    for l in range(L - 1):                          # step layer l+1 -> l+2 (0-based l)
        r = mlp.widths[l + 1] / mlp.widths[l]
        cw, g, xi, lw = CW[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        Th = Ths[l]
        Th01, Th02, Th13 = Th[i0, i1], Th[i0, i2], Th[i1, i3]
        PP01, PP23, QQ01 = PP[l][i0, i1], PP[l][i2, i3], QQ[l][i0, i1]
        qqpp, pppp = avg[l].quad("qqpp"), avg[l].quad("pppp")
        # histories (p < l): two-depth averages weighted by the attachments
        h_i, h_k, hq_i, eps_hist, E2 = (np.zeros(shape) for _ in range(5))
        for p in range(l):
            if np.any(bi[p]) or np.any(bk[p]) or np.any(sig[p]):
                Tpp = table(l, p, ("p", "p", "p", "p"))      # E[p_e p_f (l) p_g p_h (p)]
                h_i += bi[p] * Tpp[i0, i1, i2, i3]
                h_k += bk[p] * Tpp[i2, i3, i0, i1]
                eps_hist += sig[p] * Tpp[i2, i3, i0, i1]
            if np.any(bi[p]):
                Tqp = table(l, p, ("q", "q", "p", "p"))      # E[q_e q_f (l) p_g p_h (p)]
                hq_i += bi[p] * Tqp[i0, i1, i2, i3]
            if np.any(tau[p]):
                Tpq = table(l, p, ("p", "p", "q", "q"))      # E[p_e p_f (l) q_g q_h (p)]
                eps_hist += tau[p] * Tpq[i2, i3, i0, i1]
            if np.any(xc[p]):
                Tx = table(l, p, ("q", "p", "p", "q"))       # E[q_e p_f (l) p_g q_h (p)]
                E2 += xc[p] * Tx[i0, i3, i2, i1]
        # --- S ---
        c = xi * xi * g * g * cw
        Bqp = beta0 * QQ01 * PP23 + QQ01 * h_k + PP23 * hq_i
        Bpp = beta0 * PP01 * PP23 + PP01 * h_k + PP23 * h_i
        eps = s0 * PP23 + eps_hist                  # E_d[p_{a2} p_{a3}(z_d^(l)) s(d)]
        const = (xi ** 4 * cw ** 2 * Th01 * Th02 * Th13 * qqpp
                 + r * xi ** 4 * cw ** 2 * Th01 * Bqp
                 + r * c * Th01 * (beta0 * QQ01 + hq_i)
                 + lw * xi * xi * (xi * xi * cw * (Th02 * Th13 * pppp + r * Bpp)
                                   + g * g * r * (beta0 * PP01 + h_i))
                 + r * (xi ** 4 * cw ** 2 * PP01 + c) * eps)
        keep = r * (g ** 4 + c * PP01)
        s0 = keep * s0 + const
        sig *= keep
        tau *= keep
        sig[:l] += r * (c * Th01 * QQ01 + lw * xi * xi * g * g * PP01) * bk[:l]
        tau[l] = c * Th01 * Th02 * Th13
        sig[l] = lw * xi * xi * g * g * Th02 * Th13
        # --- B (residual_b_multi's recursion, kept here for its attachments) ---
        chi01, chi23 = xi * xi * cw * PP01 + g * g, xi * xi * cw * PP23 + g * g
        beta0 = (xi ** 4 * cw ** 2 * pppp * Th02 * Th13
                 + r * (chi01 * chi23 * beta0 + xi * xi * cw * (chi23 * h_i + chi01 * h_k)))
        bk[:l] *= r * g * g * chi01
        bi[:l] *= r * g * g * chi23
        bk[l] = bi[l] = xi * xi * g * g * cw * Th02 * Th13
        out["S"][l + 1] = s0 + sum(sig[p] * PP[p][i0, i1] + tau[p] * QQ[p][i0, i1]
                                   for p in range(l + 1))
        # --- U ---
        chi = xi * xi * cw * PP[l] + g * g          # (N, N)
        chi03, chi12 = chi[i0, i3], chi[i1, i2]
        E3 = E2.transpose(1, 0, 3, 2)               # [a0, a1, a2, a3] <- E2[a1, a0, a3, a2]
        U = (xi ** 4 * cw ** 2 * Th01 * Th02 * Th13 * qqpp
             + r * xi * xi * cw * (chi12 * E2 + chi03 * E3) + r * chi03 * chi12 * U)
        xc[:l] *= r * g ** 3 * chi[i2, i1]
        xc[l] = xi * xi * g ** 3 * cw * Th[i2, i0] * Th[i1, i0] * Th[i1, i3]
        out["U"][l + 1] = U
    return out
