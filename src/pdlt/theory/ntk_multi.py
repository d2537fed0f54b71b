r"""N-input NTK statistics: A, B (fluctuations), D, F (NTK-preactivation), P, Q (dNTK), R, S, T, U.

Definitions (``shared/NOTATION.md``, binding; ``n = n_{l-1}``, ``i != j``
different neurons). Array index order is the order in which NOTATION.md
writes each statistic's subscripts, the order the ensemble estimators of
:mod:`pdlt.experiment.estimators` use:

* ``A[a1,a2,a3,a4] = A_{(a1a2)(a3a4)} = n Cov(H_{ii;a1a2}, H_{jj;a3a4})``;
* ``B[a1,a2,a3,a4] = B_{(a1a2)(a3a4)} = n E[H_{ij;a1a3} H_{ij;a2a4}]`` (the
  definition writes ``B_{(a1a3)(a2a4)}`` as the coefficient of
  ``d_{i1i3} d_{i2i4}`` in ``E[DeltaH_{i1i2;a1a2} DeltaH_{i3i4;a3a4}]``: the
  first pair of B's subscripts belongs to the *first neuron* of the
  off-diagonal NTK, the second pair to the second neuron);
* ``D[a1,a2,a3,a4] = D_{a1a2a3a4} = n Cov(H_{ii;a1a2}, z_{j;a3} z_{j;a4})``;
* ``F[a1,a2,a3,a4] = F_{a1a2a3a4} = n E[H_{ij;a1a3} z_{i;a2} z_{j;a4}]``.

Symmetries implied by the definitions: A is symmetric under ``a1<->a2``,
``a3<->a4`` and ``(a1a2)<->(a3a4)``; B under ``(a1a2)<->(a3a4)`` and under
the simultaneous swap ``a1<->a2, a3<->a4`` (not under ``a1<->a2`` alone);
D under ``a1<->a2`` and ``a3<->a4``; F under ``(a1a2)<->(a3a4)``. All four
vanish at layer 1.

Derivation (book ch. 8, N-input forms near eqs. 8.79-8.86; eq. numbers to be checked)
--------------------------------------------------------------------------------------
Condition on layer l and integrate out layer l+1 (``c = C_W / n_l``):
``H'_{i1i2} = d_{i1i2}[lambda_b + (lambda_W/n_l) sum_j sigma_j sigma_j]
+ sum_{jk} W_{i1j} W_{i2k} Omega_{jk}``, ``Omega_{jk;a1a2} = p_{j;a1}
p_{k;a2} H_{jk;a1a2}`` with ``p = sigma'``. Wick's theorem in W gives the
conditional mean ``d_{i1i2} Hhat``, ``Hhat_{a1a2} = lambda_b + (1/n_l)
sum_j Y_{j;a1a2}``, ``Y_{j;ab} = lambda_W s_{j;a} s_{j;b} + C_W p_{j;a}
p_{j;b} H_{jj;ab}``, and the conditional covariance ``c^2 [d13 d24 sum_{jk}
Omega^{12}_{jk} Omega^{34}_{jk} + d14 d23 (...)]``. Hence, exactly at this
stage,

* ``A'/n_l = Cov(Hhat_{a1a2}, Hhat_{a3a4})``;
* ``B'_{(a1a2)(a3a4)}/n_l = c^2 E sum_{jk} (p_{j;a1} p_{j;a2})(p_{k;a3}
  p_{k;a4}) H_{jk;a1a3} H_{jk;a2a4}``;
* ``D'/n_l = Cov(Hhat_{a1a2}, Ghat_{a3a4})``, ``Ghat = C_b + (C_W/n_l)
  sum_j s_j s_j`` (H'_ii and z'_j are conditionally independent for i != j);
* ``F'_{a1a2a3a4}/n_l = c^2 E sum_{jk} p_{j;a1} s_{j;a2} p_{k;a3} s_{k;a4}
  H_{jk;a1a3}`` (the pairing ``W_{ij}W_{ij'} W_{kk'} W_{kk''}`` of
  ``H'_{ik} z'_i z'_k``).

Each neuron sum splits into ``j = k`` (n_l terms, layer l at infinite width:
``H_jj -> Theta``; weight ``1/n_l``) and ``j != k`` (n_l^2 terms, each
``O(1/n_{l-1})``; weight ``r = n_l/n_{l-1}``). The cross-neuron correlations
of layer l at order 1/n are (Edgeworth / Gaussian integration by parts):

* ``Cov(f(z_j), g(z_k)) = (1/n) sum_b V_{(b1b2)(b3b4)} d<f>/dK_{b1b2} d<g>/dK_{b3b4}``;
* ``E[DeltaH_{jj;a1a2} g(z_k)] = (1/n) sum_b D_{a1a2b1b2} d<g>/dK_{b1b2}``;
* ``Cov(DeltaH_jj, DeltaH_kk) = A/n``; ``E[H_{jk;a1a3} H_{jk;a2a4} f g] =
  (B_{(a1a2)(a3a4)}/n) <f><g>``;
* ``E[H_{jk;a1a3} f(z_j) g(z_k)] = (1/n) sum_{b1b2} F_{a1b1a3b2} <d_b1 f><d_b2 g>``;

where ``d<F>/dK_{b1b2}`` (summed over *ordered* pairs ``b1 b2``) is the
operator ``M^F_{(a1a2)(b1b2)} = (1/2)<d_{b1} d_{b2} F_{a1a2}>``. With
``y_{ab} = lambda_W s_a s_b + C_W Theta_{ab} p_a p_b`` (the infinite-width
Y), ``U = d<y>/dK = lambda_W M^{ss} + C_W Theta o M^{pp}`` (Theta multiplies
the output pair), ``PP = <p_a p_b>``, and the hyperparameters those of layer
l+1:

.. math::
    A'_{(12)(34)} &= \mathrm{Cov}_K(y_{12}, y_{34}) + r\big[(U V U^T)_{(12)(34)}
        + C_W PP_{34} (U D_{34\cdot}^T)_{12} + C_W PP_{12} (U D_{12\cdot}^T)_{34}
        + C_W^2 PP_{12} PP_{34} A_{(12)(34)}\big],\\
    B'_{(12)(34)} &= C_W^2 \Theta_{13}\Theta_{24}\langle p_1p_2p_3p_4\rangle
        + r\,C_W^2 PP_{12} PP_{34} B_{(12)(34)},\\
    D'_{1234} &= C_W \mathrm{Cov}_K(y_{12}, s_3 s_4) + r\big[C_W (U V M^{ss\,T})_{(12)(34)}
        + C_W^2 PP_{12} (D M^{ss\,T})_{12,34}\big],\\
    F'_{1234} &= C_W^2 \Theta_{13}\langle p_1 s_2 p_3 s_4\rangle
        + r\,C_W^2 \sum_{b_1b_2} G_{(12)b_1} F_{1 b_1 3 b_2} G_{(34)b_2},

with ``G_{(a1a2)b} = <d_b (p_{a1} s_{a2})>``. For coinciding inputs every
operator collapses to the one-variable derivative (``M -> d<.>/dK``,
``G -> <(s p)'> = chi_par/C_W``) and the four lines become those of
:func:`pdlt.theory.ntk.ntk_step_single` (tested to 1e-10).

The dNTK: P and Q (book ch. 11, near eqs. 11.46-11.53; eq. numbers to be checked)
---------------------------------------------------------------------------------
``P[a0,a1,a2,a3] = P_{a0a1a2a3} = n E[dH_{ijj;a0a1a2} z_{i;a3}]``,
``Q[a0,a1,a2,a3] = Q_{a0a1a2a3} = n E[dH_{iij;a0a1a2} z_{j;a3}]``; P is
symmetric under ``a1<->a2`` (so is dH under ``(i1,a1)<->(i2,a2)``), Q has no
index symmetry in general. Multiply the forward equation of
:mod:`pdlt.theory.dntk` (``j`` carries a0, ``k`` a1, ``m`` a2) by
``z'_{i3;a3}`` and integrate out layer l+1. The pairing ``d_{i0i3}
d_{i1i2}`` gives ``P'/n_l = c^2 E sum_{jk} p_{k;a1} p_{k;a2} s_{j;a3}
[q_{j;a0} H_{jk;a0a1} H_{jk;a0a2} + p_{j;a0} dH_{jkk;a0a1a2}]``; the pairing
``d_{i0i1} d_{i2i3}`` of the cubic term and the ``lambda_W`` term give Q.
With ``q = sigma''`` pointwise (0 for the ReLU family, as autodiff sees it),
``G2_{(a0a1)b} = <d_b (q_{a0} p_{a1})>`` and
``E[dH_{jkk;a0a1a2} f(z_j) g(z_k)] = (1/n) sum_b P_{a0a1a2b} <d_b f><g>``,
``E[dH_{jjm;a0a1a2} f(z_j) g(z_m)] = (1/n) sum_b Q_{a0a1a2b} <f><d_b g>``:

.. math::
    P'_{0123} &= C_W^2\Theta_{01}\Theta_{02}\langle q_0 p_1 p_2 s_3\rangle
        + r\,C_W^2 PP_{12}\big[\langle q_0 s_3\rangle B_{(00)(12)}
        + \textstyle\sum_b P_{012b} G_{(03)b}\big],\\
    Q'_{0123} &= C_W^2\Theta_{01}\Theta_{02}\langle q_0 p_1 p_2 s_3\rangle
        + \lambda_W C_W \Theta_{02}\langle p_0 s_1 p_2 s_3\rangle
        + r\,C_W\big[\textstyle\sum_{b_1b_2}\Phi_{(01)b_1} F_{0b_1 2b_2} G_{(23)b_2}
        + C_W PP_{01} \sum_b Q_{012b} G_{(23)b}\big],

``Phi = C_W Theta_{01} G2 + lambda_W G``. One input: the lines of
:func:`pdlt.theory.dntk.dntk_step_single`. Deep linear (``q = 0``): ``P = 0``
and, with ``C_W = 1`` and equal widths, ``Q_l = lambda_W sum_{m<l} m (m+1)/2
Theta1_{02} K1_{13}``.

The ddNTKs: R, S, T, U (book "The End of Training", §∞.2-∞.3; eq. numbers to be checked)
----------------------------------------------------------------------------------------
``R[a0,a1,a2,a3] = R_{a0a1a2a3} = n E[ddIH_{iijj;a0a1a2a3}]``,
``S = n E[ddIIH_{iijj}]``, ``T = n E[ddIIH_{ijij}]``, ``U = n E[ddIIH_{ijji}]``
(``i != j``; index order as NOTATION.md writes the subscripts). Symmetries
implied by the definitions: R under ``a2<->a3`` (``mu2<->mu3`` in ddIH); S, T
and U under the simultaneous swap ``a0<->a1, a2<->a3`` (``mu2<->mu3`` in
ddIIH with ``i0<->i1, i2<->i3``); nothing else in general. All vanish at
layer 1.

Generalizing :mod:`pdlt.theory.ddntk` (neuron ``j`` carries a0, ``k`` a1,
``m`` a2, ``n`` a3): the all-earlier part of ``ddIIH'`` is ``sum W_{i0j}
W_{i1k} W_{i2m} W_{i3n} p_m p_n [q_j q_k H_jk H_jm H_kn + q_j p_k H_jm
dH_kjn + p_j q_k dH_jkm H_kn + p_j p_k ddIIH_jkmn]`` (``q = sigma''``
pointwise); a new weight as ``mu1`` gives ``(lambda_W/n_l) d_{i0i1} sum_q
p_{q;a0} p_{q;a1} sum W_{i2m} W_{i3n} p_m p_n H_{qm;a0a2} H_{qn;a1a3}``, as
``mu2`` gives ``(lambda_W/n_l) d_{i0i2} sum_q p_{q;a0} s_{q;a2} sum W_{i1k}
W_{i3n} p_n [q_k H_{qk;a0a1} H_{kn;a1a3} + p_k dH_{kqn;a1a0a3}]`` (``mu3``
likewise with ``d_{i1i3}``), both ``mu2`` and ``mu3`` give ``(lambda_W/n_l)^2
d_{i0i2} d_{i1i3} sum_{qq'} p_{q;a0} s_{q;a2} p_{q';a1} s_{q';a3}
H_{qq';a0a1}``; biases never enter. ``ddIH'`` has the all-earlier part
``sum W W W W p_k p_m p_n [sigma'''_j H_jk H_jm H_jn + q_j (dH_jkm H_jn + 2
perms) + p_j ddIH_jkmn]`` and, for the ``d_{i0i1}`` pattern, the new weight
as ``mu1``: ``(lambda_W/n_l) d_{i0i1} sum_q s_{q;a1} sum W_{i2m} W_{i3n}
p_m p_n [q_{q;a0} H_{qm;a0a2} H_{qn;a0a3} + p_{q;a0} dH_{qmn;a0a2a3}]``.
Wick in W, then equal neurons (source) and different neurons (``r``) as
above, with in addition ``E[dH_{kjk;c0c1c2} f(z_j) g(z_k)] = (1/n) sum_b
Q_{c0c2c1b} <d_b f><g>`` and ``E[ddIIH_{jjmm}] = S/n`` etc. (products of an
off-diagonal H with a dH, or of three off-diagonal H, drop out as for one
input). With ``Phi_{(ac)b} = C_W Theta_{ac} G2_{(ac)b} + lambda_W
G_{(ac)b}`` (the P, Q section), ``phi_{ac} = C_W Theta_{ac} q_a p_c +
lambda_W p_a s_c``, ``psi_{01} = C_W Theta_{01} <sigma'''_0 p_1> + lambda_W
<q_0 s_1>`` and ``Bd_{023} = B_{(00)(23)}``:

.. math::
    R'_{0123} &= C_W^2\Theta_{01}\Theta_{02}\Theta_{03}\langle\sigma'''_0 p_1p_2p_3\rangle
        + \lambda_W C_W\Theta_{02}\Theta_{03}\langle q_0 s_1 p_2 p_3\rangle
        + r\,C_W PP_{23}\big[\psi_{01} B_{(00)(23)}
        + \textstyle\sum_b P_{023b}\Phi_{(01)b} + C_W PP_{01} R_{0123}\big],\\
    S'_{0123} &= C_W^2\Theta_{01}\Theta_{02}\Theta_{13}\langle q_0q_1p_2p_3\rangle
        + \lambda_W C_W\Theta_{02}\Theta_{13}\langle p_0p_1p_2p_3\rangle
        + r\,C_W PP_{23}\big[(C_W\Theta_{01}\langle q_0q_1\rangle + \lambda_W PP_{01})
          B_{(01)(23)} + C_W PP_{01} S_{0123}\big],\\
    T'_{0123} &= \Theta_{01}\langle\phi_{02}\phi_{13}\rangle
        + r\big[\textstyle\sum_{b_1b_2} F_{0b_11b_2}\Phi_{(02)b_1}\Phi_{(13)b_2}
        + C_W PP_{13}\sum_b Q_{130b}\Phi_{(02)b}
        + C_W PP_{02}\sum_b Q_{021b}\Phi_{(13)b} + C_W^2 PP_{02}PP_{13} T_{0123}\big],\\
    U'_{0123} &= C_W^2\Theta_{01}\Theta_{02}\Theta_{13}\langle q_0q_1p_2p_3\rangle
        + r\,C_W^2 PP_{03}PP_{12} U_{0123}.

``<sigma'''_a p_b> = <q'_a p_b>`` is the ``dqp`` pair term, and
``<sigma'''_0 p_1p_2p_3> = (<z_0 q_0 p_1p_2p_3> - K_01 <q_0q_1p_2p_3> -
K_02 <q_0p_1q_2p_3> - K_03 <q_0p_1p_2q_3>) / K_00`` (Stein along z_0; exact
for smooth sigma and the ReLU family, refused like the one-input R for a
sigma'' that jumps). One input: the four lines of
:func:`pdlt.theory.ddntk.ddntk_step_single` (tested to 1e-12). Its S line
once had ``chi_perp C_W^2 Theta <q^2> B`` (``C_W^3``) where the four
layer-(l+1) weights give ``C_W^2 Theta <q^2> <p^2> B``; equal at
``C_W = 1``, the two were told apart by a one-input tanh ensemble (``C_W =
3``, ``C_b = 0.1``, widths 4/8, depth 3, 10^4 networks): ``S_3 = 33.8 +-
2.0`` after extrapolation against 37.0 (``C_W^2``) and 51.4 (``C_W^3``). Deep linear (``q = 0``, ``C_W = 1``,
equal widths, ``Theta_m = m Theta1``): ``R = U = 0``, ``S_l = lambda_W
Theta1_02 Theta1_13 sum_{m<l} (m^2 + sum_{k<m} k^2)``, ``T_l = lambda_W^2
Theta1_01 K1_23 sum_{m<l} (m + m(m-1)/2 + 2 sum_{k<m} k(k+1)/2)``. Cost:
four more four-point tensors (``<q q p p>``, ``<z q p p p>``, ``<q s p p>``,
``<q p p s>``), contractions ``O(N^6)`` (the F line of T).

Gaussian averages (no pointwise delta functions)
------------------------------------------------
Two-variable terms use :func:`pdlt.gaussian.pair_expectations` (rtol 1e-13):
``<s s>``, ``<p p>``, ``<z p_a s_b>`` and, for smooth activations,
``<q q>``, ``<z q_a p_b>``, ``<q_a s_b>`` (``q = sigma''`` pointwise). The derivatives use
Stein's identity along ``z_a`` with ``z_b - (K_ab/K_aa) z_a`` held fixed:
``<f'_a g_b> = (<z_a f_a g_b> - K_ab <f_a g'_b>)/K_aa``, so
``(1/2)<s''_a s_b>``, ``<p'_a s_b>`` and, for smooth sigma,
``(1/2)<p''_a p_b>`` need no third derivative. For kinked activations (ReLU
family, elu) ``p`` jumps and ``d<p_a p_b>/dK`` is taken by the Hermite form
``d<F>/dK_{ab} = <F [(K^-1 z)_a (K^-1 z)_b - (K^-1)_{ab}]>`` (times 1/2 on the
diagonal) on the 2 x 2 block, from the moments ``<z_a^i p_a z_b^j p_b>``
(:func:`pdlt.gaussian._multi.expect_nd`, split Gauss-Legendre, relative
error ~1e-7). For ReLU it equals the closed form
``d/dK_ab (pi - psi)/(2 pi) = 1/(2 pi sqrt(K_aa K_bb) sin psi)``, which
diverges as two inputs approach each other (``psi -> 0``) while its
contraction with V, D stays finite; exactly coinciding inputs are therefore
merged before the step (identical rows of K: the tensors are equal under
relabelling), and nearly coinciding distinct inputs of a kinked activation
lose accuracy like ``1/(1 - rho^2)``. One-variable (diagonal) terms use
:func:`pdlt.theory._ntk_avg.single_input_terms` (error < 1e-14).

Four-point terms ``<s s s s>``, ``<s s p p>``, ``<p p p p>``: coinciding
indices are merged (``<s_a^2 p_b p_c>`` is three-variable) and each distinct
multiset is integrated once with :func:`pdlt.gaussian._multi.expect_nd`
(accuracy stated there: smooth "default" < 1e-5 relative, kinked ~1e-7).

Cost and memory per layer: ``O(N^4)`` expectations of at most four
variables (N <= 3 needs no four-variable one; a four-variable kinked
expectation costs 54^4 function evaluations), ``O(N^2)`` pair terms,
contractions ``O(N^6)`` (the F line; the others ``O(N^4)``); four
``(N, N, N, N)`` tensors. N = 3, depth 4: about a second (tanh).

Deep linear network (``sigma(z) = z``, ``C_b = 0``): ``p = 1`` so every
``M^{pp}`` vanishes and ``<s s s s> - <s s><s s> = K13 K24 + K14 K23``; with
``C_W = 1``, equal widths, ``Theta_m = m Theta_1``, ``P4 = K13 K24 + K14
K23``: ``A_l = lambda_W^2 sum_{m<l} m^2 P4``, ``B_l = sum_{m<l} m^2
Theta1_{13} Theta1_{24}``, ``D_l = lambda_W (l(l-1)/2) P4``, ``F_l =
sum_{m<l} m Theta1_{13} K_{24}`` (``tests/theory/test_ntk_multi.py``).
"""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace

import numpy as np

from .. import gaussian
from ..gaussian._multi import PiecewiseMonomial, expect_nd
from .._progress import layers
from ._ntk_avg import single_input_terms

__all__ = ["ntk_step", "dntk_step", "ddntk_step", "ntk_multi_flow", "NTK_MULTI_STATISTICS"]

#: statistics the N-input path implements
NTK_MULTI_STATISTICS = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
_DDNTK = ("R", "S", "T", "U")

_PAIR_RTOL = 1e-13


def _shim(act, **fns):
    return SimpleNamespace(name="_ntk_multi_shim", scale_invariant=None, kinks=act.kinks,
                           period=act.period, **fns)


def _smooth(act):
    return len(act.kinks) == 0


def _pairs(act, K):
    """Two-variable matrices and the one-variable diagonal terms the step needs."""
    N = K.shape[0]
    e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")), rtol=_PAIR_RTOL)
    S, PP = e[("sigma", "sigma")], e[("d1", "d1")]
    s, p, q = act.sigma, act.d1, act.d2
    fns = dict(s=s, p=p, zp=lambda z: z * p(z), q=q, zq=lambda z: z * q(z))
    terms = (("zp", "s"), ("q", "q"), ("zq", "p"), ("q", "s"))
    e2 = gaussian.pair_expectations(_shim(act, **fns), K, terms, rtol=_PAIR_RTOL)
    diag = np.diag(K).copy()
    t = single_input_terms(act, diag, need_d3=False)
    out = {"S": S, "PP": PP, "diag": diag, "t": t}
    # <s''_a s_b> and <p'_a s_b> by Stein along z_a (module docstring)
    out["dps"] = (e2[("zp", "s")] - K * PP) / diag[:, None]          # <p'_a s_b>
    QQ = e2[("q", "q")]
    out["QS"] = e2[("q", "s")]                                         # <q_a s_b>
    out["QQ"] = QQ
    out["dqp"] = (e2[("zq", "p")] - K * QQ) / diag[:, None]            # <q'_a p_b>
    if _smooth(act):
        out["Mpp_d"] = 0.5 * (e2[("zq", "p")] - K * QQ) / diag[:, None]  # (1/2)<p''_a p_b>
        out["Mpp_o"] = QQ                                                  # <p'_a p'_b>
    else:
        out["Mpp_d"], out["Mpp_o"] = _hermite_pp(act, K)
    return out


def _hermite_pp(act, K):
    """``d<p_a p_b>/dK_aa`` and ``d<p_a p_b>/dK_ab`` (total) by the Hermite form (kinked)."""
    N = K.shape[0]
    Dd, Do = np.zeros((N, N)), np.zeros((N, N))
    if N == 1:
        return Dd, Do
    a, b = np.triu_indices(N, 1)
    blk = np.stack([np.stack([K[a, a], K[a, b]], -1), np.stack([K[b, a], K[b, b]], -1)], -2)
    p = act.d1
    f = {i: (lambda i: lambda z: z ** i * p(z))(i) for i in range(3)}
    si = act.scale_invariant
    if si is not None and act.name != "monomial":
        f = {i: PiecewiseMonomial(si[0], si[1], i) for i in range(3)}
    m = {(i, j): expect_nd([f[i], f[j]], blk, kinks=act.kinks) for i, j in
         ((0, 0), (2, 0), (1, 1), (0, 2))}
    det = K[a, a] * K[b, b] - K[a, b] ** 2
    if np.any(det <= 0):
        # coinciding inputs (merged by the steps): d<p_a p_b>/dK is infinite for a kinked p
        det = np.where(det > 0, det, np.nan)
    La, Lb, Lo = K[b, b] / det, K[a, a] / det, -K[a, b] / det
    # (K^-1 z)_a = La z_a + Lo z_b, (K^-1 z)_b = Lo z_a + Lb z_b
    waa = La * La * m[2, 0] + 2 * La * Lo * m[1, 1] + Lo * Lo * m[0, 2]
    wbb = Lo * Lo * m[2, 0] + 2 * Lo * Lb * m[1, 1] + Lb * Lb * m[0, 2]
    wab = La * Lo * m[2, 0] + (La * Lb + Lo * Lo) * m[1, 1] + Lo * Lb * m[0, 2]
    Dd[a, b] = 0.5 * (waa - La * m[0, 0])
    Dd[b, a] = 0.5 * (wbb - Lb * m[0, 0])
    Do[a, b] = Do[b, a] = wab - Lo * m[0, 0]
    return Dd, Do


def _operator(Dd, Do, d_diag):
    """``(Dd1, Dd2, Do)`` of ``F_{a1a2}``: derivatives by K_{a1a1}, K_{a2a2}, K_{a1a2} (total).

    ``Dd[a, b]`` is the derivative of ``<f_a g_b>`` by ``K_aa``; the a1 = a2
    entries carry the one-variable derivative ``d_diag`` in ``Dd1`` only.
    """
    N = Dd.shape[0]
    ar = np.arange(N)
    D1, D2, O = Dd.copy(), Dd.T.copy(), Do.copy()
    D1[ar, ar], D2[ar, ar], O[ar, ar] = d_diag, 0.0, 0.0
    return D1, D2, O


def _apply(op, X):
    """``sum_{b1b2} M_{(a1a2)(b1b2)} X_{b1b2...}`` on the first two axes of X (X symmetric there)."""
    D1, D2, O = op
    N = D1.shape[0]
    ar = np.arange(N)
    Xd = X[ar, ar]
    ex = (None,) * (X.ndim - 2)
    return D1[(...,) + ex] * Xd[:, None] + D2[(...,) + ex] * Xd[None, :] + O[(...,) + ex] * X


def _apply2(op, X):
    """The same on the last two axes of a 4-tensor."""
    return np.moveaxis(_apply(op, np.moveaxis(X, (2, 3), (0, 1))), (0, 1), (2, 3))


def _quad(act, K, slots, accuracy, cache):
    """``T[a1,a2,a3,a4] = <f1(z_a1) f2(z_a2) f3(z_a3) f4(z_a4)>``, slots from {"s", "p", "q", "x"}.

    ``x`` is ``z sigma''(z)`` (the Stein form of the sigma''' average of R).

    Coinciding indices are merged into products; each distinct
    (variables, functions) multiset is integrated once (``cache``).
    """
    N = K.shape[0]
    base = {"s": act.sigma, "p": act.d1, "q": act.d2, "x": lambda z: z * act.d2(z)}
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
    si = act.scale_invariant if (act.scale_invariant is not None
                                 and act.name != "monomial") else None
    if si is not None:
        # ReLU family: products of s = a_+- z and p = a_+- are piecewise monomials
        # (exact inner axes in expect_nd); q = x = 0 pointwise
        pm = {"s": PiecewiseMonomial(si[0], si[1], 1), "p": PiecewiseMonomial(si[0], si[1], 0)}
    kw = dict(kinks=act.kinks, period=act.period)
    for sig, idxs in todo.items():
        I = np.array(idxs)
        if si is not None and any(n in ("q", "x") for nm in sig for n in nm):
            vals = np.zeros(len(idxs))
        elif si is not None:
            fs = [functools.reduce(lambda a, b: a * b, [pm[n] for n in nm]) for nm in sig]
        else:
            fs = [(lambda names: lambda z: np.prod([base[n](z) for n in names], axis=0))(nm)
                  for nm in sig]
        if si is not None and any(n in ("q", "x") for nm in sig for n in nm):
            pass
        elif len(sig) == 1:
            vals = np.atleast_1d(gaussian.expect(fs[0], K[I[:, 0], I[:, 0]], **kw))
        else:
            Ks = K[I[:, :, None], I[:, None, :]]
            vals = expect_nd(fs, Ks, kinks=act.kinks, accuracy=accuracy)
        for ix, v in zip(idxs, np.atleast_1d(vals)):
            cache[(sig, ix)] = float(v)
    T = np.empty((N,) * 4)
    for idx, key in keys.items():
        T[idx] = cache[key]
    return T


def _first_derivative(d_first, d_second, d_diag):
    """``G[a1, a2, b] = <d_b (f_a1 g_a2)>`` from ``<f'_a g_b>``, ``<f_a g'_b>`` and the 1-D ``<(f g)'>``."""
    N = d_first.shape[0]
    ar = np.arange(N)
    G = np.zeros((N, N, N))
    G[ar[:, None], ar[None, :], ar[:, None]] += d_first
    G[ar[:, None], ar[None, :], ar[None, :]] += d_second
    G[ar, ar, ar] = d_diag
    return G


def _representatives(K, tol=1e-13):
    """Indices of distinct inputs and the map back (identical rows of K = same input)."""
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


def _on_distinct_inputs(step, act, K, Theta, tensors, *args, **kw):
    """Run ``step`` on the distinct inputs only and expand the result back.

    Coinciding inputs are merged (their Gaussian averages are singular for
    kinked activations); returns None when all inputs are distinct.
    """
    reps, inv = _representatives(K)
    if len(reps) == K.shape[0]:
        return None
    ix2, ix4 = np.ix_(reps, reps), np.ix_(reps, reps, reps, reps)
    sub = step(act, K[ix2], np.asarray(Theta)[ix2], *(X[ix4] for X in tensors), *args,
               merge=False, **kw)
    back = np.ix_(inv, inv, inv, inv)
    return {k: v[back] for k, v in sub.items()}


def ntk_step(act, K, Theta, V, A, B, D, F, C_W, lambda_W, ratio=1.0, *, accuracy="default",
             merge=True):
    """N-input A, B, D, F at layer l+1 from layer l (module docstring).

    Parameters
    ----------
    act : Activation
    K, Theta : ndarray (N, N)
        Kernel and NTK mean at layer l.
    V, A, B, D, F : ndarray (N, N, N, N)
        Statistics at layer l (normalized by n_{l-1}; index order in the
        module docstring).
    C_W, lambda_W : float
        Hyperparameters of layer l+1.
    ratio : float
        ``n_l / n_{l-1}``.
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable expectations
        (:mod:`pdlt.gaussian._multi`).
    merge : bool
        Merge exactly coinciding inputs first (needed for kinked activations;
        the result is the same tensor, expanded back).

    Returns
    -------
    dict
        ``{"A", "B", "D", "F"}`` -> ndarray (N, N, N, N) at layer l+1
        (normalized by n_l).
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    if merge and N > 1:
        out = _on_distinct_inputs(ntk_step, act, K, Theta, (V, A, B, D, F),
                                  C_W, lambda_W, ratio, accuracy=accuracy)
        if out is not None:
            return out
    Th = np.asarray(Theta, dtype=float)
    pr = _pairs(act, K)
    S, PP, t = pr["S"], pr["PP"], pr["t"]
    cache = {}
    SSSS = _quad(act, K, "ssss", accuracy, cache)
    SSPP = _quad(act, K, "sspp", accuracy, cache)
    PPPP = _quad(act, K, "pppp", accuracy, cache)
    PPSS = np.moveaxis(SSPP, (0, 1), (2, 3))                   # <p_a p_b s_c s_d>
    o = np.multiply.outer
    # Cov_K(y12, y34) and Cov_K(y12, s3 s4), y_ab = lambda_W s_a s_b + C_W Theta_ab p_a p_b
    cSS = SSSS - o(S, S)
    cSP = SSPP - o(S, PP)                                      # Cov(s1 s2, p3 p4)
    cPS = PPSS - o(PP, S)
    cPP = PPPP - o(PP, PP)
    T12, T34 = Th[:, :, None, None], Th[None, None, :, :]
    cov_yy = (lambda_W ** 2 * cSS + lambda_W * C_W * (T34 * cSP + T12 * cPS)
              + C_W ** 2 * T12 * T34 * cPP)
    cov_ys = lambda_W * cSS + C_W * T12 * cPS
    # derivative operators: M^ss, M^pp, U = d<y>/dK
    Mss = _operator(0.5 * pr["dps"], PP, t["dss"])
    Mpp = _operator(pr["Mpp_d"], pr["Mpp_o"], t["dpp"])
    U = tuple(lambda_W * a + C_W * Th * b for a, b in zip(Mss, Mpp))
    G = _first_derivative(pr["dps"], PP, t["dss"])      # G_{(a1a2)b} = <d_b (p_a1 s_a2)>
    # sources (equal neurons)
    A_new = cov_yy
    B_new = C_W ** 2 * Th[:, None, :, None] * Th[None, :, None, :] * PPPP
    D_new = C_W * cov_ys
    F_new = C_W ** 2 * Th[:, None, :, None] * np.transpose(SSPP, (2, 0, 3, 1))
    # propagation (different neurons): order 1/n_{l-1}
    if ratio != 0:
        PP12 = PP[:, :, None, None]
        PP34 = PP[None, None, :, :]
        UV = _apply(U, V)
        UVU = _apply2(U, UV)
        UD = _apply(U, np.moveaxis(D, (2, 3), (0, 1)))        # [a1,a2,a3,a4] = (U D_{34.})_{12}
        A_new = A_new + ratio * (UVU + C_W * PP34 * UD + C_W * PP12 * np.moveaxis(UD, (0, 1), (2, 3))
                                 + C_W ** 2 * PP12 * PP34 * A)
        B_new = B_new + ratio * C_W ** 2 * PP12 * PP34 * B
        D_new = D_new + ratio * (C_W * _apply2(Mss, UV) + C_W ** 2 * PP12 * _apply2(Mss, D))
        F_new = F_new + ratio * C_W ** 2 * np.einsum("ibx,ixky,kdy->ibkd", G, F, G)
    return {"A": A_new, "B": B_new, "D": D_new, "F": F_new}


def dntk_step(act, K, Theta, B, F, P, Q, C_W, lambda_W, ratio=1.0, *, accuracy="default",
              merge=True):
    """N-input P, Q at layer l+1 from layer l (module docstring, "The dNTK").

    Parameters
    ----------
    act : Activation
    K, Theta : ndarray (N, N)
    B, F, P, Q : ndarray (N, N, N, N)
        Statistics at layer l (``P[a0,a1,a2,a3] = P_{a0a1a2a3}``, likewise Q).
    C_W, lambda_W, ratio : float
        Hyperparameters of layer l+1 and ``n_l / n_{l-1}``.
    accuracy : {"fast", "default", "high"}
    merge : bool
        Merge exactly coinciding inputs first.

    Returns
    -------
    dict
        ``{"P", "Q"}`` -> ndarray (N, N, N, N) at layer l+1.
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    if merge and N > 1:
        out = _on_distinct_inputs(dntk_step, act, K, Theta, (B, F, P, Q),
                                  C_W, lambda_W, ratio, accuracy=accuracy)
        if out is not None:
            return out
    Th = np.asarray(Theta, dtype=float)
    pr = _pairs(act, K)
    PP, t = pr["PP"], pr["t"]
    cache = {}
    QPPS = _quad(act, K, "qpps", accuracy, cache)             # <q_a0 p_a1 p_a2 s_a3>
    SSPP = _quad(act, K, "sspp", accuracy, cache)
    PSPS = np.transpose(SSPP, (2, 0, 3, 1))                   # <p_a0 s_a1 p_a2 s_a3>
    G = _first_derivative(pr["dps"], PP, t["dss"])            # <d_b (p_a s_c)>
    G2 = _first_derivative(pr["dqp"], pr["QQ"], t["dqp"])     # <d_b (q_a p_c)>
    T01 = Th[:, :, None, None]                                # Theta_{a0a1}
    T02 = Th[:, None, :, None]                                # Theta_{a0a2}
    src = C_W ** 2 * T01 * T02 * QPPS
    P_new = src.copy()
    Q_new = src + lambda_W * C_W * T02 * PSPS
    if ratio != 0:
        ar = np.arange(N)
        Bdiag = B[ar, ar]                                     # B[a0, a0, a1, a2]
        PP12 = PP[None, :, :, None]
        P_new = P_new + ratio * C_W ** 2 * PP12 * (
            pr["QS"][:, None, None, :] * Bdiag[:, :, :, None]
            + np.einsum("ijkb,ilb->ijkl", P, G))
        Phi = C_W * Th[:, :, None] * G2 + lambda_W * G          # Phi[a0, a1, b]
        Q_new = Q_new + ratio * C_W * (
            np.einsum("ijx,ixky,kly->ijkl", Phi, F, G)
            + C_W * PP[:, :, None, None] * np.einsum("ijkb,klb->ijkl", Q, G))
    return {"P": P_new, "Q": Q_new}


def ddntk_step(act, K, Theta, B, F, P, Q, R, S, T, U, C_W, lambda_W, ratio=1.0, *,
               accuracy="default", merge=True, want=("R", "S", "T", "U")):
    """N-input R, S, T, U at layer l+1 from layer l (module docstring, "The ddNTKs").

    Parameters
    ----------
    act : Activation
    K, Theta : ndarray (N, N)
        Kernel and NTK mean at layer l.
    B, F, P, Q, R, S, T, U : ndarray (N, N, N, N)
        Statistics at layer l (NOTATION.md's index order, e.g.
        ``R[a0,a1,a2,a3] = R_{a0a1a2a3}``).
    C_W, lambda_W, ratio : float
        Hyperparameters of layer l+1 and ``n_l / n_{l-1}``.
    accuracy : {"fast", "default", "high"}
    merge : bool
        Merge exactly coinciding inputs first.
    want : sequence of str
        Which of R, S, T, U to compute (R needs the third derivative of sigma
        and is refused for an activation whose sigma'' jumps at a kink, e.g. elu).

    Returns
    -------
    dict
        name -> ndarray (N, N, N, N) at layer l+1, for the names in ``want``.
    """
    want = tuple(want)
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    if merge and N > 1:
        out = _on_distinct_inputs(ddntk_step, act, K, Theta, (B, F, P, Q, R, S, T, U),
                                  C_W, lambda_W, ratio, accuracy=accuracy, want=want)
        if out is not None:
            return out
    Th = np.asarray(Theta, dtype=float)
    pr = _pairs(act, K)
    PP, t, QQ = pr["PP"], pr["t"], pr["QQ"]
    if "R" in want:
        single_input_terms(act, pr["diag"], need_d3=True)     # refuses a jumping sigma''
    cache = {}
    # piecewise-linear activations (scale_invariant) have sigma'' = 0 pointwise:
    # every tensor with a q or x slot vanishes exactly and is not integrated
    linear_pieces = act.scale_invariant is not None

    def quad(slots):
        if linear_pieces and ("q" in slots or "x" in slots):
            return np.zeros((N,) * 4)
        return _quad(act, K, slots, accuracy, cache)
    QQPP = quad("qqpp")                                       # <q0 q1 p2 p3>
    G = _first_derivative(pr["dps"], PP, t["dss"])            # <d_b (p_a s_c)>
    G2 = _first_derivative(pr["dqp"], QQ, t["dqp"])           # <d_b (q_a p_c)>
    Phi = C_W * Th[:, :, None] * G2 + lambda_W * G            # Phi[a, c, b]
    e = np.einsum
    T01, T02 = Th[:, :, None, None], Th[:, None, :, None]
    T03, T13 = Th[:, None, None, :], Th[None, :, None, :]
    P01, P23 = PP[:, :, None, None], PP[None, None, :, :]
    P02, P13 = PP[:, None, :, None], PP[None, :, None, :]
    P03, P12 = PP[:, None, None, :], PP[None, :, :, None]
    r = ratio
    out = {}
    if "R" in want:
        # <sigma'''_a0 p1 p2 p3> by Stein along z_a0 (x = z sigma'')
        XPPP = quad("xppp")
        Q3PPP = (XPPP - K[:, :, None, None] * QQPP - K[:, None, :, None] * e("acbd->abcd", QQPP)
                 - K[:, None, None, :] * e("adbc->abcd", QQPP)) / pr["diag"][:, None, None, None]
        QSPP = quad("qspp")                               # <q0 s1 p2 p3>
        psi = C_W * Th * pr["dqp"] + lambda_W * pr["QS"]      # C_W Th01 <q'_0 p_1> + lW <q_0 s_1>
        ar = np.arange(N)
        Bd = B[ar, ar]                                        # Bd[a0, a2, a3] = B[a0,a0,a2,a3]
        R_new = C_W ** 2 * T01 * T02 * T03 * Q3PPP + lambda_W * C_W * T02 * T03 * QSPP
        if r != 0:
            R_new = R_new + r * C_W * P23 * (psi[:, :, None, None] * Bd[:, None, :, :]
                                             + e("ikly,ijy->ijkl", P, Phi) + C_W * P01 * R)
        out["R"] = R_new
    if "S" in want:
        PPPP = quad("pppp")
        S_new = C_W ** 2 * T01 * T02 * T13 * QQPP + lambda_W * C_W * T02 * T13 * PPPP
        if r != 0:
            S_new = S_new + r * C_W * P23 * (C_W * T01 * QQ[:, :, None, None] * B
                                             + C_W * P01 * S + lambda_W * P01 * B)
        out["S"] = S_new
    if "T" in want:
        QPPS = quad("qpps")                               # <q0 p1 p2 s3>
        SSPP = quad("sspp")
        PPSS = np.moveaxis(SSPP, (0, 1), (2, 3))              # <p0 p1 s2 s3>
        phi2 = (C_W ** 2 * T02 * T13 * QQPP + lambda_W * C_W * T13 * e("badc->abcd", QPPS)
                + lambda_W * C_W * T02 * QPPS + lambda_W ** 2 * PPSS)   # <phi_02 phi_13>
        T_new = T01 * phi2
        if r != 0:
            T_new = T_new + r * (e("ixjy,ikx,jly->ijkl", F, Phi, Phi)
                                 + C_W * P13 * e("jlib,ikb->ijkl", Q, Phi)
                                 + C_W * P02 * e("ikjb,jlb->ijkl", Q, Phi)
                                 + C_W ** 2 * P02 * P13 * T)
        out["T"] = T_new
    if "U" in want:
        U_new = C_W ** 2 * T01 * T02 * T13 * QQPP
        if r != 0:
            U_new = U_new + r * C_W ** 2 * P03 * P12 * U
        out["U"] = U_new
    return out


def positive_variances(K, layer):
    """``K`` as a float array, after checking every input's variance at ``layer`` is > 0."""
    K = np.asarray(K, dtype=float)
    if np.any(np.diag(K) <= 0):
        raise ValueError(
            f"an input has zero variance at layer {layer}; the finite-width recursions need "
            "K_aa > 0 (use C_b > 0 or nonzero inputs)")
    return K


def ntk_multi_flow(mlp, base, *, accuracy="default", stats=None):
    """A, B, D, F, P, Q, R, S, T, U at every layer for N inputs.

    Parameters
    ----------
    mlp : MLP
        Plain MLP (``gamma = 0, xi = 1``).
    base : Flow
        :func:`pdlt.theory.vertex.finite_width_flow` on the same inputs
        (supplies K, Theta and V per layer).
    accuracy : {"fast", "default", "high"}
    stats : sequence of str, optional
        Subset of :data:`NTK_MULTI_STATISTICS` (None: all). P, Q are
        computed only when asked for or needed by R, S, T, U; R, S, T, U only
        when asked for. Only the names asked for are returned.

    Returns
    -------
    dict
        name -> list over layers of ndarray (N, N, N, N).
    """
    if mlp.is_residual:
        raise NotImplementedError(
            "the N-input NTK statistics are derived for plain MLPs only (gamma = 0, xi = 1)")
    act = mlp.activation
    N = np.asarray(base[0].K).shape[0]
    want = list(NTK_MULTI_STATISTICS if stats is None else stats)
    ddw = tuple(k for k in _DDNTK if k in want)
    dntk = bool(ddw) or any(k in want for k in ("P", "Q"))
    zero = np.zeros((N,) * 4)
    st = {k: zero for k in NTK_MULTI_STATISTICS}
    out = {k: [zero] for k in NTK_MULTI_STATISTICS}
    for l in layers(range(1, mlp.depth), f"NTK statistics, {N} inputs"):
        s = base[l - 1]
        K = positive_variances(s.K, l)
        ratio = mlp.widths[l] / mlp.widths[l - 1]
        args = (mlp.C_W[l], mlp.lambda_W[l], ratio)
        new = ntk_step(act, K, s.Theta, s.extra["V"], st["A"], st["B"], st["D"], st["F"],
                       *args, accuracy=accuracy)
        if dntk:
            new.update(dntk_step(act, K, s.Theta, st["B"], st["F"], st["P"], st["Q"], *args,
                                 accuracy=accuracy))
        else:
            new.update(P=zero, Q=zero)
        if ddw:
            new.update(ddntk_step(act, K, s.Theta, st["B"], st["F"], st["P"], st["Q"],
                                  *(st[k] for k in _DDNTK), *args, accuracy=accuracy,
                                  want=ddw))
        new.update({k: zero for k in _DDNTK if k not in new})
        st = new
        if not all(np.all(np.isfinite(v)) for v in st.values()):
            raise FloatingPointError(
                f"an NTK statistic overflowed at layer {l + 1}; reduce the depth or "
                "initialize at criticality")
        for k in NTK_MULTI_STATISTICS:
            out[k].append(st[k])
    return {k: out[k] for k in want}
