r"""The end of training at finite width: trained predictions at order 1/n.

At infinite width gradient descent on the MSE loss is a linear model with the
frozen NTK (:mod:`pdlt.learning.kernel_learning`). At finite width the NTK
mean shift H1, the NTK fluctuations and correlations A, B, D, F, the dNTK
(P, Q) and the ddNTKs (R, S, T, U) change the trained network's predictions
at order 1/n (book chapter ∞, "The End of Training", §∞.2-∞.3).

* :func:`training_statistics` computes the statistics an MLP (plain or
  residual, see below) needs on the training and test inputs (it warns for
  kinked activations, see below);
* :func:`algorithm_schedule` builds the step schedules of the book's three
  algorithms: one giant leap (Newton step), a giant leap followed by small
  gradient steps, and many gradient-descent steps;
* :func:`end_of_training` gives the trained mean, covariance and NTK change
  for any schedule (:class:`FiniteWidthTraining`, with the contribution of
  each statistic in ``parts``); :func:`finite_width_training` does both steps
  from an MLP and data; :func:`finite_width_learning_size` measures the size
  of representation learning for one input.

The result is the same function for every algorithm: only the schedule
changes. At infinite width every converging schedule gives the same
prediction; at order 1/n they differ (one giant leap is linear in the NTK, so
the A, B term vanishes exactly; many small steps are not).

**Several outputs** (``n_out > 1``; plain MLPs and residual ones alike). The MSE loss sums over
outputs, ``L = (1/2) sum_i eps_i^T M_t eps_i``, so a step moves ``theta_mu``
by ``-lambda_mu sum_{i,c} (d_mu z_{i;c}) u_{i;c}`` with ``u_i = M_t eps_i``.
Write ``s = (a, i)`` for an (input, output) pair. The one-output dynamics
(``docs/derivations/finite_training.rst``) follow from ``H = J J^T``, ``dH =
D^2 z[J, J]``, ``ddIH = D^3 z[J, J, J]``, ``ddIIH = (Hess z J).(Hess z J)``
and never use the output index, so in ``s`` they hold verbatim, with the
schedule ``M_t (x) 1_{n_out}`` (the Newton leap too: the infinite-width NTK is
``Theta (x) 1``, its inverse ``Theta_AA^{-1} (x) 1``), and the order counting
is unchanged. Hence the trained outputs of ``n_out`` outputs are the
one-output solution on ``n_out N`` "inputs", with NOTATION.md's statistics
lifted (:meth:`TrainingStatistics.lifted`):

* two-index: ``K, G1, Theta, H1 -> delta_ij X_ab``;
* four-index: ``X_{s0s1s2s3} = d_{i0i1} d_{i2i3} X_{01|23} + d_{i0i2} d_{i1i3}
  X_{02|13} + d_{i0i3} d_{i1i2} X_{03|12}`` with, in that order, ``(A,
  B_(a0a2)(a1a3), B_(a0a3)(a1a2))`` for ``n E[DeltaH DeltaH]``, ``(D, F_a0a2a1a3,
  F_a0a3a1a2)`` for ``n E[DeltaH z z]``, ``(Q_a0a1a2a3, Q_a0a2a1a3, P)`` for
  ``n E[dH_{i0i1i2} z_{i3}]``, ``(R_a0a1a2a3, R_a0a2a1a3, R_a0a3a1a2)`` and ``(S,
  T, U)`` for the ddNTK means.

For ``n_out = 1`` every delta is one and the lift is the one-output sum (same
code path, same numbers). What the deltas imply: every order-1/n term holds
exactly one statistic (two deltas over four output indices), contracted with
output-diagonal objects (``Theta``, ``K``, the schedule) and targets ``y_k``;
the external output index (``i`` of the mean, ``i, j`` of a covariance or NTK
change) sits on the statistic, and its other pairing either meets targets or
closes one free output loop, a factor ``n_out``. So

* infinite width: ``F(Theta (x) 1) = F(Theta) (x) 1``; every output is trained
  alone, ``mean_i = F(Theta) y_i``, covariance ``delta_ij C0 K C0^T``;
* ``H1`` (``delta_ij``): ``DF(H1) y_i``, output by output, independent of n_out;
* A, B in the mean: ``sum_j E[DeltaH_ij X DeltaH_jk] = delta_ik [A + B_(13)(24) +
  n_out B_(14)(23)]`` (contracted); in the covariance the variance of the mean
  predictor ``E[(DF(DeltaH) y)_i (DF(DeltaH) y)_j]`` has an A and a B term in
  ``y_i (x) y_j`` (cross-output, ``i != j``) and a ``delta_ij`` B term in
  ``Y = sum_k y_k (x) y_k``;
* D, F, G1 (covariance only): output-diagonal, D and F with one loop;
* P, Q, R, S, T, U (dynamics): terms linear in ``y_i`` are output-diagonal,
  with loops (the deep linear Newton step shows it in closed form: ``Q``
  contracts to ``(x_a.x_c) K_bb' + n_out (x_a.x_b) K_cb'``); the terms cubic in
  the targets are ``y_i`` times ``Y``; the NTK change and the covariance get
  ``delta_ij`` terms (affine in n_out and in ``Y``) and cross-output terms
  bilinear in ``y_i, y_j``.

Consequences, tested in ``tests/learning/test_finite_training.py``: mean,
covariance and NTK change are equivariant under output rotations ``y -> y O``
and affine in n_out at fixed targets; an output with all-zero targets has
zero mean correction and zero cross-output covariance and NTK change
(``z_j -> -z_j`` is then a symmetry); for ``i != j`` the trained outputs are
correlated and the NTK block ``H_ij`` moves at order 1/n. The outputs
interact: at order 1/n they cannot be trained one at a time. Cost: that of
the one-output engine on ``n_out (N_A + N_B)`` inputs (memory ~ ``(n_out
N)^4``; a clear MemoryError beyond 4 GiB).

**Residual MLPs** (``z' = xi [b + W sigma(z)] + gamma z``, NOTATION.md). The
dynamics above are exact Taylor expansions of the network function in its
parameters and hold for any architecture; the solution at order 1/n then
needs, at the output layer only, (i) the statistics K, G1, Theta, H1, A, B,
D, F, P, Q, R, S, T, U of NOTATION.md with the same output-index (Kronecker
delta) structure, and (ii) the vanishing of every odd moment of the output,
``E[z z z]``, ``E[DeltaH z]``, ``E[dH]``, ``E[dH z z]`` at order 1/n (used for
``E[F(H0) z] = 0`` and to keep dH only through ``E[dH z]``), plus the
factorization of ``E[DeltaH DeltaH z z]``, ``E[dH z z z]`` into the two-point
parts at leading order. The residual hidden layers change (i) only: they enter
through the recursions of :func:`pdlt.statistics` (residual three-point
functions included), which deliver the output-layer tensors. For (ii):

* a *plain output layer* (``gamma^(L) = 0``: the default whenever ``n_out !=
  width``; any ``xi^(L)``) is odd under ``W^(L), b^(L) -> -W^(L), -b^(L)``,
  which maps ``z -> -z``, ``H -> H``, ``dH -> -dH``, ``ddH -> ddH`` and leaves the
  ensemble unchanged, for any activation and any hidden residual layers: (ii)
  holds exactly, the factorization follows as for plain MLPs by conditioning
  on layer L-1 (its empirical averages fluctuate at O(n^{-1/2}) with or
  without skip connections), and the engine applies unchanged;
* a *residual output layer* (``gamma^(L) != 0``, i.e. ``n_out = width``) with an
  odd activation: negating ``W^(1)`` and every bias maps ``z^(l) -> -z^(l)`` in
  every layer, so (ii) holds again;
* a residual output layer with a non-odd activation (ReLU, GELU): ``gamma
  z^(L-1)`` does not flip, the output has an O(1/n) three-point function
  (:func:`pdlt.statistics` ``kappa3``) and ``E[dH z z]``, ``E[DeltaH z]`` at
  order 1/n; those terms are not derived here, so :func:`training_statistics`
  refuses it (NotImplementedError).

The width n of the expansion is ``n_{L-1}`` as for plain MLPs.
:func:`pdlt.statistics` serves every order-1/n residual statistic at N inputs
(``pdlt.theory.residual_multi*``), so residual training takes any training and
test inputs (cost: the N-input residual statistics, ~2.5 s at N = 3 and ~18 s
at N = 5 for a depth-3 tanh MLP, ~150 s at N = 5 for gelu). Exact checks:
``tests/learning/test_finite_training_residual.py`` (gamma = 0, xi != 1 equals
the rescaled plain MLP, at one input and at two training plus two test
inputs); checked against trained residual tanh networks
(``tests/experiment/test_training_residual_ensemble.py``, the ``--full``
report rows of :func:`pdlt.report.residual.residual_training_rows`: one input,
and two training plus three test inputs by a Newton leap and by gradient
descent; measured numbers in
:data:`pdlt.report.residual.RESIDUAL_TRAINING_N_INPUT_CASES`).
ReLU residual networks disagree with the expansion exactly as plain ReLU
networks do (the kink, below).

Kinked activations (ReLU): the expansion assumes a smooth network function.
Trained ReLU networks disagree with it: ``n (E[z(T)] - m_inf)`` grows like
``n^0.6`` at widths 16-256, and the NTK change (``n E[H(T) - H(0)]`` = -8.1
.. -11.2 at n = 16 .. 256 on the 'pair' task) is about twice the predicted
-4.7, consistent with preactivations crossing the kink during training.

Checked against trained real networks in
``tests/experiment/test_finite_training_ensemble.py`` and in the report
(:mod:`pdlt.report.finite_training`).
Derivation: ``docs/derivations/finite_training.rst``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._common import check_data, check_mlp

__all__ = ["TrainingStatistics", "FiniteWidthTraining", "algorithm_schedule",
           "training_statistics", "end_of_training", "finite_width_training",
           "finite_width_learning_size"]


# ---------------------------------------------------------------------------
# inputs: the statistics at the output layer, combined for one output neuron
# ---------------------------------------------------------------------------

#: the three Kronecker-delta pairings of four output indices (i0 i1 i2 i3), in the
#: order the ``pairs`` of :class:`TrainingStatistics` store them
PAIRINGS = ("01|23", "02|13", "03|12")


@dataclass(frozen=True)
class TrainingStatistics:
    """Output-layer statistics of the network outputs on N = N_A + N_B inputs.

    All tensors are over the combined inputs (training inputs first) and are
    the coefficients of 1/n (``n = n_{L-1}``). For a single output neuron
    (``n_out = 1``) the Kronecker deltas of NOTATION.md all equal one, so

    * ``cov_H[a,b,c,d] = n E[DeltaH_ab DeltaH_cd] = A_(ab)(cd) + B_(ac)(bd) + B_(ad)(bc)``;
    * ``Hzz[a,b,c,d] = n E[DeltaH_ab z_c z_d] = D_abcd + F_acbd + F_adbc``;
    * ``dHz[a,b,c,d] = n E[dH_abc z_d] = P_abcd + Q_abcd + Q_acbd``;
    * ``ddI[a,b,c,d] = n E[ddIH_abcd] = R_abcd + R_acbd + R_adbc``;
    * ``ddII[a,b,c,d] = n E[ddIIH_abcd] = S_abcd + T_abcd + U_abcd``.

    For ``n_out > 1`` each of these five is needed term by term: ``pairs[name]``
    (3, N, N, N, N) holds the three terms in the order of ``PAIRINGS``,
    term p multiplying the Kronecker deltas of the output indices of the
    four tensor positions paired as ``PAIRINGS[p]`` ("01|23" is
    ``delta_{i0 i1} delta_{i2 i3}``); the one-output tensor is their sum.
    :meth:`lifted` builds the statistics of all ``n_out`` outputs from them.

    Attributes
    ----------
    K, G1, Theta, H1 : ndarray (N, N)
    cov_H, Hzz, dHz, ddI, ddII : ndarray (N, N, N, N)
    n_train : int
    pairs : dict str -> ndarray (3, N, N, N, N) or None
        The pairing terms of ``cov_H, Hzz, dHz, ddI, ddII``
        (:meth:`from_tensors` fills them; statistics built directly from the
        one-output sums have None and serve one output only).
    """

    K: np.ndarray
    G1: np.ndarray
    Theta: np.ndarray
    H1: np.ndarray
    cov_H: np.ndarray
    Hzz: np.ndarray
    dHz: np.ndarray
    ddI: np.ndarray
    ddII: np.ndarray
    n_train: int
    pairs: dict | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_tensors(cls, *, K, G1, Theta, H1, A, B, D, F, P, Q, R, S, T, U, n_train):
        """Combine NOTATION.md's tensors (index order as written there)."""
        sw = np.swapaxes
        A, B, D, F, P, Q, R, S, T, U = (np.asarray(t, float) for t in (A, B, D, F, P, Q, R,
                                                                      S, T, U))
        # B[a1,a3,a2,a4] -> index (a1 a2 a3 a4) = B_(a1a3)(a2a4); one entry per pairing
        # of PAIRINGS, i.e. the coefficient of d_{i0i1} d_{i2i3}, d_{i0i2} d_{i1i3},
        # d_{i0i3} d_{i1i2} in NOTATION.md's definitions
        e13, e14 = (lambda X: np.einsum("acbd->abcd", X)), (lambda X: np.einsum("adbc->abcd", X))
        pairs = {"cov_H": (A, e13(B), e14(B)),
                 "Hzz": (D, e13(F), e14(F)),
                 "dHz": (Q, sw(Q, 1, 2), P),          # E[dH_{i0i1i2} z_{i3}]: P has d03 d12
                 "ddI": (R, e13(R), e14(R)),
                 "ddII": (S, T, U)}
        sums = {k: v[0] + v[1] + v[2] for k, v in pairs.items()}
        sums["dHz"] = P + Q + sw(Q, 1, 2)          # the one-output sum, in its usual order
        return cls(np.asarray(K, float), np.asarray(G1, float), np.asarray(Theta, float),
                   np.asarray(H1, float), n_train=int(n_train),
                   pairs={k: np.stack(v) for k, v in pairs.items()}, **sums)

    @property
    def N(self) -> int:
        return self.K.shape[0]

    def output_positions(self, n_out: int) -> np.ndarray:
        """Position of (input a, output i) in the lifted statistics: ndarray (N, n_out) of int.

        Training entries first, output-major: ``(a, i) -> i N_A + a`` for a
        training input, ``n_out N_A + i N_B + (a - N_A)`` for a test input.
        """
        Na, N = self.n_train, self.N
        Nb = N - Na
        i = np.arange(n_out)[None, :]
        a = np.arange(N)[:, None]
        return np.where(a < Na, i * Na + a, n_out * Na + i * Nb + (a - Na))

    def lifted(self, n_out: int) -> "TrainingStatistics":
        """The statistics of ``n_out`` outputs over the combined index ``s = (a, i)``.

        Every two-index statistic becomes ``delta_{ij} X_ab`` and every
        four-index one the sum over the three pairings of
        ``delta delta X_p`` (NOTATION.md); the result is a one-output
        :class:`TrainingStatistics` over ``N n_out`` "inputs" (training
        first, :meth:`output_positions`) with ``n_train = N_A n_out``, on which
        the one-output dynamics are exact (module docstring).

        Parameters
        ----------
        n_out : int >= 1

        Returns
        -------
        TrainingStatistics
            ``N' = n_out N``; tensors (N', N') and (N', N', N', N').
        """
        if isinstance(n_out, bool) or int(n_out) != n_out or n_out < 1:
            raise ValueError(f"n_out must be a positive integer (the number of outputs); "
                             f"got {n_out!r}")
        n_out = int(n_out)
        if n_out == 1:
            return self
        if self.pairs is None:
            raise ValueError("these statistics hold only the one-output sums of the pairing "
                             "terms; build them with TrainingStatistics.from_tensors (or "
                             "training_statistics) to get n_out > 1")
        N, n = self.N, n_out
        Np = N * n
        est = 8.0 * Np ** 4 * 12
        if est > _LIFT_MEMORY:
            raise MemoryError(
                f"the statistics of n_out = {n} outputs on N = {N} inputs are tensors of "
                f"(N n_out)^4 = {Np ** 4:.3g} entries (~{est / 2 ** 30:.1f} GiB in all, over the "
                f"{_LIFT_MEMORY / 2 ** 30:.0f} GiB limit); use fewer inputs or outputs "
                "(the outputs interact: they cannot be trained one at a time at order 1/n)")
        pos = self.output_positions(n)                                  # (N, n)
        order = np.empty(Np, dtype=int)
        order[pos.ravel()] = np.arange(Np)          # lifted position -> flat (a, i) index
        d = np.eye(n)

        def two(X):
            return np.einsum("ij,ab->aibj", d, X).reshape(Np, Np)[np.ix_(order, order)]

        specs = ("ij,kl,abcd->aibjckdl", "ik,jl,abcd->aibjckdl", "il,jk,abcd->aibjckdl")

        def four(P3):
            X = sum(np.einsum(sp, d, d, P3[p]) for p, sp in enumerate(specs))
            return X.reshape((Np,) * 4)[np.ix_(order, order, order, order)]

        return TrainingStatistics(K=two(self.K), G1=two(self.G1), Theta=two(self.Theta),
                                  H1=two(self.H1), n_train=self.n_train * n,
                                  **{k: four(self.pairs[k]) for k in
                                     ("cov_H", "Hzz", "dHz", "ddI", "ddII")})


#: memory bound (bytes) for the lifted statistics of several outputs
_LIFT_MEMORY = 4 * 2 ** 30


def _check_outputs(mlp, n_out=None):
    """The MLP (checked); ``n_out`` targets, when given, must match its outputs."""
    mlp = check_mlp(mlp)
    if n_out is not None and mlp.n_out != n_out:
        raise ValueError(f"y_train has {n_out} target column(s) but the MLP has n_out = "
                         f"{mlp.n_out} outputs; give y_train of shape (N_A, {mlp.n_out}) (or "
                         f"(N_A,) for one output), or an MLP with n_out={n_out}")
    return mlp


def _check_residual_output(mlp):
    """Refuse a residual output layer with a non-odd activation (module docstring)."""
    if mlp.gamma[-1] == 0.0:
        return
    from ..theory._averages import is_odd
    if not is_odd(mlp.activation):
        L = mlp.depth
        raise NotImplementedError(
            f"the output layer is residual (gamma[{L - 1}] = {mlp.gamma[-1]:g}, n_out = width = "
            f"{mlp.n_out}) and the activation {mlp.activation.name!r} is not odd: the outputs "
            "then have an O(1/n) three-point function (E[z z z], E[DeltaH z], E[dH z z] != 0), "
            "which the end-of-training expansion assumes zero. Use a plain output layer "
            f"(gamma[{L - 1}] = 0, e.g. a scalar gamma with n_out != width) or an odd "
            "activation (tanh, linear)")


def training_statistics(mlp, X_train, X_test=None, *, accuracy="default") -> TrainingStatistics:
    """The output-layer statistics of ``mlp`` on the training and test inputs.

    Parameters
    ----------
    mlp : pdlt.MLP
        Plain or residual MLP (a residual output layer needs an odd
        activation; module docstring, "Residual MLPs"). The statistics are
        those of the output layer, per Kronecker-delta pairing of the output
        indices (``TrainingStatistics.pairs``), so they serve any number of
        outputs (:meth:`TrainingStatistics.lifted`).
    X_train : array_like (N_A, n0)
    X_test : array_like (N_B, n0), optional
        None: no test inputs (``N_B = 0``; the predictions on the training
        inputs and the NTK change there).

    Returns
    -------
    TrainingStatistics

    Raises
    ------
    NotImplementedError
        A residual output layer with a non-odd activation; a statistic
        :func:`pdlt.statistics` does not serve for this MLP (passed on with
        what it says).

    Notes
    -----
    Cost: the N-input NTK tensors of :func:`pdlt.statistics` with
    ``N = N_A + N_B``, which grows like N^4 to N^5 (0.2 s at N = 4, 4 s at
    N = 8, 25 s at N = 12 for a depth-3 tanh MLP; residual MLPs: ~2.5 s at
    N = 3, ~18 s at N = 5, depth-3 tanh); keep N small.
    """
    from ..theory.statistics import statistics

    mlp = _check_outputs(mlp)
    _check_residual_output(mlp)
    if mlp.activation.kinks:
        warnings.warn(
            f"activation {mlp.activation.name!r} has kinks at {tuple(mlp.activation.kinks)}: "
            "the end-of-training expansion assumes a smooth network function, but finite "
            "steps move preactivations across the kinks. For trained critical ReLU networks "
            "(the depth-3 'circle' task of pdlt.report.finite_training, Newton leap + 5 "
            "steps, widths 32-256) the measured "
            "n (E[z(T)] - m_inf) grows like n^0.6 instead of approaching the prediction "
            "(the trained mean's finite-width shift decays like n^-0.4, not 1/n), with gradient "
            "descent to convergence as with a Newton leap, and the NTK change, though of order "
            "1/n, is about twice the predicted one: consistent with preactivations crossing "
            "the kink during training, which the pointwise derivatives behind P..U (sigma'' = 0 "
            "away from the kink) do not see. Use a smooth activation (gelu, swish, tanh) for "
            "quantitative predictions",
            UserWarning, stacklevel=2)
    Xa = check_data(X_train, None, mlp.n0, name_X="X_train")
    if X_test is None:
        x = Xa
    else:
        Xb = check_data(X_test, None, mlp.n0, name_X="X_test")
        x = np.concatenate([Xa, Xb], axis=0)
    names = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
    try:
        st = statistics(mlp, x, get=names + ("G1", "H1"), accuracy=accuracy)
    except NotImplementedError as exc:
        if not mlp.is_residual:
            raise
        raise NotImplementedError(
            f"finite-width training of a residual MLP on N = {x.shape[0]} inputs (training and "
            f"test together) needs its output-layer statistics, and pdlt.statistics "
            f"says: {exc}") from exc
    return TrainingStatistics.from_tensors(K=st.K[-1], G1=st.G1[-1], Theta=st.Theta[-1],
                                           H1=st.H1[-1], n_train=Xa.shape[0],
                                           **{k: st[k][-1] for k in names})


# ---------------------------------------------------------------------------
# algorithms as schedules of step matrices M_t
# ---------------------------------------------------------------------------

def algorithm_schedule(Theta_train, algorithm="gd", *, learning_rate=None, steps=None):
    """The step matrices ``M_t`` (N_A, N_A) of a training algorithm.

    Parameters
    ----------
    Theta_train : ndarray (N_A, N_A)
        The infinite-width NTK on the training set (the Newton step uses its
        inverse).
    algorithm : {"gd", "newton", "newton+gd"}
        ``"gd"``: ``steps`` gradient-descent steps, ``M_t = eta 1``;
        ``"newton"``: one giant leap ``M_0 = Theta_AA^{-1}`` (book: the
        one-step "giant leap"); ``"newton+gd"``: the giant leap followed by
        ``steps`` small gradient steps.
    learning_rate : float
        ``eta`` for the gradient steps (``0 < eta < 2 / lambda_max``).
    steps : int

    Returns
    -------
    list of ndarray (N_A, N_A)
    """
    Th = np.asarray(Theta_train, float)
    Na = Th.shape[0]
    sched = []
    if algorithm in ("newton", "newton+gd"):
        w = np.linalg.eigvalsh(Th)
        if w[0] <= 1e-12 * max(w[-1], 1e-300):
            raise ValueError("the Newton step needs an invertible Theta_AA; remove duplicate "
                             "training inputs or use algorithm='gd'")
        sched.append(np.linalg.inv(Th))
    elif algorithm != "gd":
        raise ValueError(f"algorithm must be 'gd', 'newton' or 'newton+gd'; got {algorithm!r}")
    if algorithm in ("gd", "newton+gd"):
        if learning_rate is None or steps is None:
            raise ValueError(f"algorithm={algorithm!r} needs learning_rate and steps")
        eta = float(learning_rate)
        lmax = float(np.linalg.eigvalsh(Th)[-1])
        if not (0 < eta < 2.0 / lmax):
            raise ValueError(f"learning_rate must lie in (0, 2/lambda_max(Theta_AA)) = "
                             f"(0, {2.0 / lmax:.4g}) for gradient descent to converge; got {eta}")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
        sched.extend([eta * np.eye(Na)] * int(steps))
    return sched


# ---------------------------------------------------------------------------
# the kernel part F(H) and its derivatives along directions (exact jets)
# ---------------------------------------------------------------------------

def _kernel_map_jets(Theta, V, sched, Na):
    """F(Theta + s V) = H_{.A} sum_t M_t P_t with P_t = prod (1 - H_AA M_s): value, d/ds, d2/ds2.

    Theta (N, N); V (k, N, N) directions. Returns F0 (N, Na), F1, F2 (k, N, Na).
    """
    k = V.shape[0]
    ThA, VA = Theta[:Na, :Na], V[:, :Na, :Na]
    I = np.eye(Na)
    P0, P1, P2 = I.copy(), np.zeros((k, Na, Na)), np.zeros((k, Na, Na))
    S0, S1, S2 = np.zeros((Na, Na)), np.zeros((k, Na, Na)), np.zeros((k, Na, Na))
    for M in sched:
        S0 = S0 + M @ P0
        S1 = S1 + M @ P1
        S2 = S2 + M @ P2
        # P' = (1 - H M) P with H = Th + s V
        TM, VM = ThA @ M, VA @ M
        P2 = P2 - TM @ P2 - 2.0 * VM @ P1
        P1 = P1 - TM @ P1 - VM @ P0
        P0 = P0 - TM @ P0
    Th_c, V_c = Theta[:, :Na], V[:, :, :Na]
    F0 = Th_c @ S0
    F1 = V_c @ S0 + Th_c @ S1
    F2 = 2.0 * V_c @ S1 + Th_c @ S2
    return F0, F1, F2


def _cov_directions(cov_H, Na, tol=1e-12):
    """Eigen-decomposition ``cov_H = sum_k c_k V_k (x) V_k`` over the entries ``H[:, :Na]``.

    The kernel map F(H) reads only the columns of H on the training inputs,
    so only their covariance is decomposed; ``V_k`` (k, N, N) is zero in the
    other columns (and symmetric on the training block, since the entries
    (a, b) and (b, a) there have identical covariance rows).
    """
    N = cov_H.shape[0]
    C = cov_H[:, :Na, :, :Na].reshape(N * Na, N * Na)
    C = 0.5 * (C + C.T)
    w, Q = np.linalg.eigh(C)
    keep = np.abs(w) > tol * max(np.abs(w).max(), 1e-300)
    V = np.zeros((int(keep.sum()), N, N))
    V[:, :, :Na] = Q[:, keep].T.reshape(-1, N, Na)
    return w[keep], V


# ---------------------------------------------------------------------------
# the dynamical part Z1 (linear in dH and the ddNTK means), batched over points
# ---------------------------------------------------------------------------

def _dynamics(st: TrainingStatistics, z, y, sched):
    """Run the order-1/n dynamics for a batch of initial outputs.

    z : (B, N) initial outputs (all inputs); dH is its conditional mean
    ``X K^{-1} z`` (coefficient of 1/n). Returns (e (B, N), h (B, N, N)): the
    order-1/n output shift and NTK change after the schedule, times n.
    """
    Na = st.n_train
    Th = st.Theta
    n_batch, N = z.shape
    Kinv_z = np.linalg.solve(st.K, z.T).T                              # (B, N)
    # dH_abc is used only with c in A (the step contracts its last index with u)
    dH = Kinv_z @ st.dHz[:, :, :Na, :].reshape(N * N * Na, N).T         # (B, N N Na)
    # W[a,b,c,d] for dH's change, Y[a,b,c,d] for H's second-order change (d, c in A used)
    W = st.ddI + st.ddII + np.swapaxes(st.ddII, 1, 2)
    Y = 0.5 * st.ddI + 0.5 * np.swapaxes(st.ddI, 0, 1) + st.ddII
    # contractions as matrix products over the batch (BLAS), not einsum loops
    W_A = W[:, :, :Na, :Na].reshape(N * N * Na, Na).T                   # (Na, N N Na)
    Y_AA = Y[:, :, :Na, :Na].reshape(N * N, Na * Na).T                  # (Na^2, N^2)
    ddI_AAA = st.ddI[:, :Na, :Na, :Na].reshape(N, Na ** 3).T            # (Na^3, N)
    eps = z[:, :Na] - y[None, :]                                        # eps0(t)
    e = np.zeros((n_batch, N))
    h = np.zeros((n_batch, N, N))
    g = np.zeros((n_batch, N * N * Na))
    ThA_T = Th[:, :Na].T                                                # (Na, N)
    ThAA_T = Th[:Na, :Na].T
    for M in sched:
        u = eps @ M.T                                                   # (B, Na)
        uu = (u[:, :, None] * u[:, None, :]).reshape(n_batch, Na * Na)
        dHt = (dH + g).reshape(n_batch, N, N, Na)
        dHt_A = dHt[:, :, :Na, :]
        r = (-np.matmul(h[:, :, :Na], u[:, :, None])[..., 0]
             + 0.5 * np.matmul(dHt_A.reshape(n_batch, N, Na * Na), uu[:, :, None])[..., 0]
             - ((uu[:, :, None] * u[:, None, :]).reshape(n_batch, Na ** 3) @ ddI_AAA) / 6.0)
        e_new = e - (e[:, :Na] @ M.T) @ ThA_T + r
        dh = -np.matmul(dHt.reshape(n_batch, N * N, Na),
                        u[:, :, None]).reshape(n_batch, N, N)
        dh = dh + np.swapaxes(dh, 1, 2) + (uu @ Y_AA).reshape(n_batch, N, N)
        g = g - u @ W_A
        h = h + dh
        e = e_new
        eps = eps - u @ ThAA_T
    return e, h


def _cubature_points(K):
    """2N points ``+-sqrt(N) L e_i`` with equal weights: exact for degree <= 3 under N(0, K)."""
    N = K.shape[0]
    w, Q = np.linalg.eigh(0.5 * (K + K.T))
    L = Q * np.sqrt(np.clip(w, 0.0, None))
    pts = math.sqrt(N) * L.T                                            # rows: sqrt(N) L e_i
    return np.concatenate([pts, -pts], axis=0)


def _dynamics_batched(st, z, y, sched, budget=2 ** 24):
    """:func:`_dynamics` in chunks of the batch, at most ``budget`` floats per array."""
    N = st.N
    chunk = max(1, budget // max(1, N * N * st.n_train))
    if z.shape[0] <= chunk:
        return _dynamics(st, z, y, sched)
    parts = [_dynamics(st, z[i:i + chunk], y, sched) for i in range(0, z.shape[0], chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FiniteWidthTraining:
    """Trained-network predictions over initializations, to order 1/n.

    Shapes: for one output given as a 1-D ``y`` (N_A,) the output axes are
    dropped (the shapes below without ``n_out``); for ``y`` of shape
    (N_A, n_out) every array carries them, and ``cov.reshape(N_B n_out,
    N_B n_out)`` is the covariance of ``mean.ravel()``.

    Attributes
    ----------
    mean_infinite : ndarray (N_B, n_out)
        The infinite-width (frozen-NTK) mean on the test inputs.
    mean_correction : ndarray (N_B, n_out)
        Its 1/n coefficient: ``E[z(T)] = mean_infinite + mean_correction / n``.
    cov_infinite, cov_correction : ndarray (N_B, n_out, N_B, n_out)
        Likewise for the covariance over initializations,
        ``cov[b, i, c, j] = Cov(z_{i;b}(T), z_{j;c}(T))``. The infinite-width
        part is ``delta_ij`` times one (N_B, N_B) block; the correction has
        cross-output blocks ``i != j`` (module docstring).
    train_mean_infinite, train_mean_correction : ndarray (N_A, n_out)
        The same on the training inputs (the infinite-width mean is ``y``
        after convergence or a Newton leap).
    train_cov_infinite, train_cov_correction : ndarray (N_A, n_out, N_A, n_out)
        The covariance over initializations on the training inputs (zero at
        infinite width after convergence or a Newton leap; its 1/n
        coefficient need not be).
    ntk_change : ndarray (N, n_out, N, n_out)
        ``n E[H_{ij;ab}(T) - H_{ij;ab}(0)]`` over all inputs (training first):
        the predicted change of the NTK during training (representation
        learning), with its cross-output part ``i != j``.
    parts : dict str -> ndarray (N_B, n_out)
        The mean correction split by origin: ``"H1"`` (NTK mean shift),
        ``"AB"`` (NTK fluctuations), ``"dynamics"`` (dNTK and ddNTKs).
    width : int or None
        n, when given: then ``mean`` and ``cov`` are the finite-width values.
    """

    mean_infinite: np.ndarray
    mean_correction: np.ndarray
    cov_infinite: np.ndarray
    cov_correction: np.ndarray
    train_mean_infinite: np.ndarray
    train_mean_correction: np.ndarray
    ntk_change: np.ndarray
    parts: dict = field(default_factory=dict)
    width: int | None = None
    train_cov_infinite: np.ndarray | None = None
    train_cov_correction: np.ndarray | None = None

    @property
    def n_out(self) -> int:
        """Number of outputs (1 for the one-output shapes)."""
        return 1 if self.mean_infinite.ndim == 1 else self.mean_infinite.shape[1]

    @property
    def mean(self) -> np.ndarray:
        if self.width is None:
            raise ValueError("no width given: pass width=n to get the finite-width mean "
                             "(mean_infinite + mean_correction / n)")
        return self.mean_infinite + self.mean_correction / self.width

    @property
    def cov(self) -> np.ndarray:
        if self.width is None:
            raise ValueError("no width given: pass width=n to get the finite-width covariance")
        return self.cov_infinite + self.cov_correction / self.width

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over initializations, shaped like ``mean``."""
        c = self.cov
        m = int(np.prod(self.mean_infinite.shape))
        return np.sqrt(np.clip(np.diag(c.reshape(m, m)), 0.0, None)).reshape(
            self.mean_infinite.shape)


def _end_of_training(st: TrainingStatistics, y, sched):
    """The engine on one-output statistics (or lifted ones): arrays over all N inputs."""
    Na, N = st.n_train, st.N

    # kernel part: F(Theta), DF(H1), and second derivatives along the A,B covariance
    c, V = _cov_directions(st.cov_H, Na)
    dirs = np.concatenate([st.H1[None], V], axis=0)
    # Hzz[:, :, r, s] as directions for E[DF(DeltaH) z z^T]
    Hzz_dirs = np.moveaxis(st.Hzz, (2, 3), (0, 1)).reshape(N * N, N, N)
    F0, F1, F2 = _kernel_map_jets(st.Theta, np.concatenate([dirs, Hzz_dirs]), sched, Na)
    F1_H1, F1_V, F1_zz = F1[0], F1[1:1 + len(c)], F1[1 + len(c):].reshape(N, N, N, Na)
    F2_V = F2[1:1 + len(c)]

    mean_inf_all = F0 @ y
    m_H1 = F1_H1 @ y
    m_AB = 0.5 * np.einsum("k,kan,n->a", c, F2_V, y)

    # dynamical part by the degree-3 cubature
    pts = _cubature_points(st.K)
    e, h = _dynamics_batched(st, pts, y, sched)
    m_dyn = e.mean(0)
    ntk_change = h.mean(0)
    ntk_change = 0.5 * (ntk_change + ntk_change.T)
    mean_corr_all = m_H1 + m_AB + m_dyn

    # covariance: G = C(H0) z with C(H) = 1 - [F(H), 0]
    def pad(Fm):
        out = np.zeros(Fm.shape[:-1] + (N,))
        out[..., :Na] = Fm
        return out
    C0 = np.eye(N) - pad(F0)
    cov_inf_all = C0 @ st.K @ C0.T
    D_H1 = pad(F1_H1)
    # E[DF(DeltaH) z z^T] (times n): sum_r DF(Hzz[:,:,r,s])_{a r}
    EDz = np.einsum("rsar->as", np.pad(F1_zz, ((0, 0), (0, 0), (0, 0), (0, N - Na))))
    D2 = 0.5 * np.einsum("k,kar->ar", c, pad(F2_V))
    DV = pad(F1_V)                                                     # (k, N, N)
    cov_corr = (C0 @ st.G1 @ C0.T
                - (D_H1 @ st.K @ C0.T + C0 @ st.K @ D_H1.T)
                - (EDz @ C0.T + C0 @ EDz.T)
                + np.einsum("k,kar,rs,kbs->ab", c, DV, st.K, DV, optimize=True)
                - (D2 @ st.K @ C0.T + C0 @ st.K @ D2.T)
                + np.einsum("k,ka,kb->ab", c, F1_V @ y, F1_V @ y))
    # 2 Cov(C0 z, Z1) by Stein: E[(C0 z)_a Z1_b] = sum_j (C0 K)_{aj} E[d_j Z1_b]
    dirs = st.K @ C0.T                                                 # column a: direction u_a
    rows = list(range(N))          # every input: the training block of the covariance too
    cross = np.zeros((N, N))
    hstep = 1.0
    batch = []
    for a in rows:
        for s in (1.0, -1.0, 2.0, -2.0):
            batch.append(pts + s * hstep * dirs[:, a][None, :])
    if rows:
        eb, _ = _dynamics_batched(st, np.concatenate(batch, axis=0), y, sched)
        eb = eb.reshape(len(rows), 4, pts.shape[0], N).mean(2)          # (rows, shift, N)
        deriv = (8.0 * (eb[:, 0] - eb[:, 1]) - (eb[:, 2] - eb[:, 3])) / (12.0 * hstep)
        for k, a in enumerate(rows):
            cross[a] = deriv[k]
    cov_corr = cov_corr + cross + cross.T
    return (mean_inf_all, mean_corr_all, cov_inf_all, cov_corr, ntk_change,
            {"H1": m_H1, "AB": m_AB, "dynamics": m_dyn})


def end_of_training(stats: TrainingStatistics, y, schedule, *, width=None) -> FiniteWidthTraining:
    """Mean and covariance of trained outputs at order 1/n, from the statistics.

    Parameters
    ----------
    stats : TrainingStatistics
        Output-layer statistics (:func:`training_statistics`, or measured).
    y : array_like (N_A,) or (N_A, n_out)
        Training targets; ``n_out`` columns train ``n_out`` outputs on the
        summed MSE loss (module docstring). A 1-D ``y`` gives the one-output
        shapes (no output axes).
    schedule : list of ndarray (N_A, N_A)
        Step matrices (:func:`algorithm_schedule`), acting on the input index
        of every output alike (``M_t`` times the identity on outputs).
    width : int, optional

    Returns
    -------
    FiniteWidthTraining
        Shapes with output axes for a 2-D ``y`` (see there).
    """
    st = stats
    Na, N = st.n_train, st.N
    y = np.asarray(y, float)
    one = y.ndim == 1
    if one:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != Na or y.shape[1] < 1:
        raise ValueError(f"y must have one target per training input ({Na}): shape ({Na},) "
                         f"or ({Na}, n_out); got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or inf; drop or impute those targets")
    if width is not None and (int(width) != width or width < 1):
        raise ValueError(f"width must be a positive integer; got {width!r}")
    sched = [np.asarray(M, float) for M in schedule]
    for M in sched:
        if M.shape != (Na, Na):
            raise ValueError(f"each step matrix of schedule must be ({Na}, {Na}) (one row per "
                             f"training input); got {M.shape}")
    n_out = y.shape[1]
    w = None if width is None else int(width)
    if n_out == 1:
        mi, mc, ci, cc, h, parts = _end_of_training(st, y[:, 0], sched)
        test = slice(Na, N)
        if one:
            return FiniteWidthTraining(
                mean_infinite=mi[test], mean_correction=mc[test], cov_infinite=ci[test, test],
                cov_correction=cc[test, test], train_mean_infinite=mi[:Na],
                train_mean_correction=mc[:Na], ntk_change=h,
                parts={k: v[test] for k, v in parts.items()}, width=w,
                train_cov_infinite=ci[:Na, :Na], train_cov_correction=cc[:Na, :Na])
        pos = np.arange(N)[:, None]
        lst = st
    else:
        lst = st.lifted(n_out)
        pos = st.output_positions(n_out)                               # (N, n_out)
        y_l = np.empty(Na * n_out)
        y_l[pos[:Na]] = y
        sched_l = [np.kron(np.eye(n_out), M) for M in sched]
        mi, mc, ci, cc, h, parts = _end_of_training(lst, y_l, sched_l)
    pa, pb = pos[:Na], pos[Na:]
    pair = (lambda X, p: X[p[:, :, None, None], p[None, None, :, :]])
    return FiniteWidthTraining(
        mean_infinite=mi[pb], mean_correction=mc[pb], cov_infinite=pair(ci, pb),
        cov_correction=pair(cc, pb), train_mean_infinite=mi[pa], train_mean_correction=mc[pa],
        ntk_change=pair(h, pos), parts={k: v[pb] for k, v in parts.items()}, width=w,
        train_cov_infinite=pair(ci, pa), train_cov_correction=pair(cc, pa))


def finite_width_training(mlp, X_train, y_train, X_test=None, *, algorithm="gd", learning_rate=None,
                          steps=None, width=None, accuracy="default") -> FiniteWidthTraining:
    """Predict what training does to a finite-width MLP's outputs, at order 1/n.

    Parameters
    ----------
    mlp : pdlt.MLP
        Plain or residual MLP (:func:`training_statistics`); its hidden width
        n_{L-1} is the n of the correction unless ``width`` is given, and its
        ``n_out`` must match the targets.
    X_train : array_like (N_A, n0)
    y_train : array_like (N_A,) or (N_A, n_out)
        A 1-D ``y_train`` (``n_out = 1``) gives results without output axes.
    X_test : array_like (N_B, n0), optional
        None: predictions on the training inputs only (``train_mean_*``,
        ``ntk_change``; the test arrays are empty).
    algorithm, learning_rate, steps
        See :func:`algorithm_schedule`.
    width : int, optional
        Default ``mlp.widths[-2]`` (the width feeding the output).

    Returns
    -------
    FiniteWidthTraining
        ``mean`` (N_B,) or (N_B, n_out), ``cov`` (N_B, N_B) or
        (N_B, n_out, N_B, n_out).

    Notes
    -----
    Several outputs are trained together and interact at order 1/n (module
    docstring): the cost is that of the one-output engine on
    ``n_out (N_A + N_B)`` inputs.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning.finite_training import finite_width_training
    >>> mlp = pdlt.MLP(n0=2, width=64, depth=2, n_out=1, activation="tanh", C_W=1.0)
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]]); Xt = np.array([[0.6, 0.8]])
    >>> r = finite_width_training(mlp, X, [0.5, -0.5], Xt, algorithm="newton")
    >>> r.mean.shape
    (1,)
    >>> r2 = finite_width_training(mlp.with_(n_out=2), X, [[0.5, 0.1], [-0.5, 0.3]], Xt,
    ...                            algorithm="newton")
    >>> r2.mean.shape, r2.cov.shape
    ((1, 2), (1, 2, 1, 2))
    """
    mlp = check_mlp(mlp)
    Xa, y, was_1d = check_data(X_train, y_train, mlp.n0, name_X="X_train", name_y="y_train")
    mlp = _check_outputs(mlp, y.shape[1])
    st = training_statistics(mlp, Xa, X_test, accuracy=accuracy)
    sched = algorithm_schedule(st.Theta[:st.n_train, :st.n_train], algorithm,
                               learning_rate=learning_rate, steps=steps)
    n = mlp.widths[-2] if width is None else width
    return end_of_training(st, y[:, 0] if was_1d else y, sched, width=n)


def finite_width_learning_size(mlp, K1=1.0, *, steps=40):
    """The size of finite-width learning effects of ``mlp``, for ``pdlt diagnose``.

    A reference problem that needs no data: one training input and one test
    input orthogonal to it, both with first-layer kernel ``K1``
    (``x = sqrt(n0 (K1 - C_b) / C_W) e_a`` in two input dimensions), target
    ``y = sqrt(K^(L))`` (the output's own scale), trained by gradient descent
    with ``eta = 1 / (2 Theta)`` for ``steps`` steps (converged to ~1e-12).

    Returns
    -------
    dict
        ``representation_learning``: ``E[H(T) - H(0)] / Theta`` at the training
        input (the relative NTK change), ``prediction_correction``: the
        finite-width shift of the trained mean at the test input relative to
        the target, ``|m1 / n| / y``, both at the MLP's width ``n = n_{L-1}``;
        the 1/n coefficients ``ntk_change_coefficient`` and
        ``mean_correction_coefficient`` (in the same relative units, times n);
        the reference problem's ``Theta``, ``y``, ``test_mean_infinite``, and
        ``one_minus_rho``, the train/test correlation's distance from 1 at the
        output. Where ``one_minus_rho < 5e-3`` (deep relu or gelu networks: the
        two inputs nearly coincide) the test-input correction is ill-conditioned
        (cancellation in the fourth-derivative source of G1 and H1), so
        ``prediction_correction`` and ``mean_correction_coefficient`` are None
        and ``prediction_correction_note`` says why.

    Residual MLPs: the same reference problem with the MLP's hidden layers
    (``mlp.with_(n0=2, n_out=1)``: a scalar gamma leaves that output layer
    plain), solved from :func:`training_statistics` (the N-input residual
    statistics of :func:`pdlt.statistics`). Cost grows like the N-input residual
    folds (measured, one CPU: relu 3 / 14 / 45 s, tanh 16 / 55 s at depth
    10 / 20 / 40), so ``pdlt diagnose --residual`` does not run it.

    Notes
    -----
    Cost. The two inputs' kernel and NTK come first (:func:`_reference_kernel`);
    the order-1/n statistics then run for both inputs only where the test-input
    correction is reported, and otherwise for the training input alone (the
    training input's entries of every statistic are its one-input statistics,
    and nothing else is reported): scalar affine recursions, milliseconds per
    10^4 layers besides the one-variable table. Two uncorrelated inputs (odd
    activations with ``C_b = 0``: the reference problem of tanh, erf, sin at
    every depth) fold as affine maps over all layers
    (:mod:`pdlt.theory._affine_two_input`). benchmarks/README.md, "Diagnose at
    depth: the reference problem without a per-layer fold".
    """
    from ..network import MLP
    from ..theory.kernel import first_layer_kernel
    from ..theory.statistics import (ORDER_ONE_OVER_N, _closure, _finite_fold,
                                     _kernel_fold_shared, shared_tables)

    mlp = check_mlp(mlp)
    C_b, C_W = mlp.C_b[0], mlp.C_W[0]
    if not K1 > C_b:
        raise ValueError(f"K1 = {K1} must exceed C_b = {C_b} (the inputs' part of K^(1) is "
                         "K1 - C_b)")
    scale = math.sqrt(2.0 * (K1 - C_b) / C_W)
    if mlp.is_residual:
        return _residual_learning_size(mlp, scale, steps)
    ref = MLP(n0=2, widths=mlp.widths[1:-1], n_out=1, activation=mlp.activation,
              C_b=mlp.C_b, C_W=mlp.C_W, lambda_b=mlp.lambda_b, lambda_W=mlp.lambda_W)
    x = np.array([[scale, 0.0], [0.0, scale]])
    _kink_caution(ref, x)
    names = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
    need = _closure(names + ("G1", "H1")) & set(ORDER_ONE_OVER_N)
    with shared_tables():       # the kernel's one-variable table serves the fold too
        Ks, Ths = _reference_kernel(ref, x, K1)
        # the test-input correction goes through the off-diagonal G1 and H1, whose fourth-
        # derivative source loses accuracy steeply as the two inputs' correlation nears 1
        # (measured: one ulp of <ssss> moves it by <= 4e-6 relative while 1 - rho >= 5e-3 for
        # relu and gelu, then by 1e-3 .. 1 at 1 - rho ~ 2e-3 .. 1e-3; benchmarks/README.md):
        # beyond, the number is withheld rather than printed as if it were fine, and only
        # the training input's statistics are computed
        KL = Ks[-1]
        one_minus_rho = 1.0 - float(KL[0, 1]) / math.sqrt(float(KL[0, 0] * KL[1, 1]))
        reported = one_minus_rho >= _RHO_RELIABLE
        if not reported:    # the training input alone: its one-input flow from K1
            Ks1, Ths1, _, _ = _kernel_fold_shared(ref, *first_layer_kernel(ref, None, K1),
                                                  1e-12, False)
        Kf, Tf = (Ks, Ths) if reported else (Ks1, Ths1)
        vals, _ = _finite_fold(ref, Kf, Tf, need, "default")
    st = TrainingStatistics.from_tensors(K=Kf[-1], G1=vals["G1"][-1], Theta=Tf[-1],
                                         H1=vals["H1"][-1], n_train=1,
                                         **{k: vals[k][-1] for k in names})
    y = math.sqrt(float(Kf[-1, 0, 0]))
    Th = float(Tf[-1, 0, 0])
    sched = algorithm_schedule(st.Theta[:1, :1], "gd", learning_rate=0.5 / Th, steps=steps)
    r = end_of_training(st, np.array([y]), sched)
    n = mlp.widths[-2]
    dh = float(r.ntk_change[0, 0]) / Th
    if reported:
        test_mean = float(r.mean_infinite[0])
    else:       # the infinite-width kernel prediction, as end_of_training makes it
        F0 = _kernel_map_jets(Ths[-1], np.zeros((0, 2, 2)), sched, 1)[0]
        test_mean = float((F0 @ np.array([y]))[1])
    dm = float(r.mean_correction[0]) / y if reported else None
    return _learning_size_result(dh, dm, n, Th, y, test_mean, one_minus_rho)


def _learning_size_result(dh, dm, n, Th, y, test_mean, one_minus_rho):
    """:func:`finite_width_learning_size`'s dict; the test-input correction ``dm`` is
    withheld (None, with the reason) where ``1 - rho < _RHO_RELIABLE``."""
    out = {"representation_learning": dh / n, "prediction_correction": None,
           "ntk_change_coefficient": dh, "mean_correction_coefficient": None, "Theta": Th,
           "y": y, "test_mean_infinite": test_mean, "width": n,
           "prediction_correction_note": None, "one_minus_rho": one_minus_rho}
    if one_minus_rho >= _RHO_RELIABLE:
        out["prediction_correction"], out["mean_correction_coefficient"] = abs(dm) / n, dm
    else:
        out["prediction_correction_note"] = (
            f"not computed reliably: the reference problem's train and test inputs are "
            f"correlated to 1 - rho = {one_minus_rho:.2g} < {_RHO_RELIABLE:g} at the output, "
            "where the test-input correction loses its digits to cancellation (fewer layers "
            "keep the inputs apart)")
    return out


def _residual_learning_size(mlp, scale, steps):
    """:func:`finite_width_learning_size` of a residual MLP (inputs ``scale e_a``): the
    two-input training statistics of its reference problem from :func:`training_statistics`."""
    # the same hidden layers (residual ones included) with two input dimensions and one
    # output; a scalar gamma leaves that output layer plain
    ref = mlp.with_(n0=2, n_out=1)
    xa, xb = np.array([[scale, 0.0]]), np.array([[0.0, scale]])
    st = training_statistics(ref, xa, xb)
    y = math.sqrt(float(st.K[0, 0]))
    Th = float(st.Theta[0, 0])
    sched = algorithm_schedule(st.Theta[:1, :1], "gd", learning_rate=0.5 / Th, steps=steps)
    r = end_of_training(st, np.array([y]), sched)
    n = mlp.widths[-2]
    dh = float(r.ntk_change[0, 0]) / Th
    dm = float(r.mean_correction[0]) / y
    # the test-input correction is withheld where the inputs nearly coincide at the output
    # (the cancellation in the off-diagonal G1, H1: _learning_size_result)
    one_minus_rho = 1.0 - float(st.K[0, 1]) / math.sqrt(float(st.K[0, 0] * st.K[1, 1]))
    return _learning_size_result(dh, dm, n, Th, y, float(r.mean_infinite[0]), one_minus_rho)


#: smallest 1 - rho (train/test correlation at the output) at which the reference
#: problem's prediction correction is computed reliably
_RHO_RELIABLE = 5e-3


def _kink_caution(ref, x):
    """:func:`training_statistics`' caution for a kinked activation, raised as it raises it.

    Its own check and text, from the statistics of a one-layer copy of ``ref``
    (no hidden layer: nothing to fold).
    """
    from ..network import MLP
    if ref.activation.kinks:
        training_statistics(MLP(n0=ref.n0, widths=[], n_out=1, activation=ref.activation),
                            x[:1], x[1:])


def _reference_kernel(ref, x, K1):
    r"""K, Theta (L, 2, 2) of the reference problem's two inputs (equal norms) at every layer.

    Two inputs uncorrelated to round-off (``|K_01| <= 1e-17 sqrt(K_00 K_11)``;
    an odd activation with ``C_b = 0`` keeps orthogonal inputs so at every
    layer) have factorized pair averages, ``<f(z_0) g(z_1)> = <f>_0 <g>_1``
    (the Mehler series' first term; the rest is ``O(rho)``, below float64
    resolution): then the diagonal is the one-input flow and

    .. math::
        K^{(l+1)}_{01} = C_b + C_W \langle\sigma\rangle^2,\qquad
        \Theta^{(l+1)}_{01} = \lambda_b + \lambda_W \langle\sigma\rangle^2
            + C_W \langle\sigma'\rangle^2 \Theta^{(l)}_{01}

    with the means from the one-variable table at ``K^(l)_00`` (all layers in
    one call); the diagonal's first layer is then ``K1`` itself (``x``
    reproduces it up to the rounding of its entries), so that it is the flow of
    ``pdlt.statistics(mlp, K1=K1)`` to the bit. Otherwise (or if the inputs
    become correlated) the two-input flow of :func:`pdlt.theory.kernel_blocks.kernel_matrix`
    for activations with closed-form pairs (~30 us per layer), else the general
    two-input fold, :func:`pdlt.theory.kernel.kernel_fold`.
    """
    from ..gaussian._closed import closed_family
    from ..theory._averages import _INDEPENDENT
    from ..theory.kernel import first_layer_kernel
    from ..theory.kernel_blocks import kernel_matrix
    from ..theory.statistics import _DistinctTable, _kernel_fold_shared

    def uncorrelated(K):
        return bool(np.all(np.abs(K[..., 0, 1]) <= _INDEPENDENT
                           * np.sqrt(K[..., 0, 0] * K[..., 1, 1])))

    K0, T0 = first_layer_kernel(ref, x)
    act, L = ref.activation, ref.depth
    if (L > 1 and not act.kinks and uncorrelated(K0) and K0[0, 0] == K0[1, 1]
            and T0[0, 0] == T0[1, 1] and T0[0, 1] == T0[1, 0]):
        Kd, Td, _, _ = _kernel_fold_shared(ref, *first_layer_kernel(ref, None, K1), 1e-12,
                                           False)
        K0, T0 = K0.copy(), T0.copy()
        K0[0, 0] = K0[1, 1] = Kd[0, 0, 0]
        T0[0, 0] = T0[1, 1] = Td[0, 0, 0]
        k, th = Kd[:, 0, 0], Td[:, 0, 0]
        if np.all(k[:-1] > 0):
            t = _DistinctTable(act, np.repeat(k[:-1, None], 2, axis=1))   # the fold's table
            m, p = np.asarray(t["m0s"])[:, 0], np.asarray(t["m0p"])[:, 0]
            cb, cw, lb, lw = (np.asarray(v, dtype=float)[1:L] for v in
                              (ref.C_b, ref.C_W, ref.lambda_b, ref.lambda_W))
            K01 = np.concatenate([[K0[0, 1]], cb + cw * m * m])
            src, gain = (lb + lw * m * m).tolist(), (cw * p * p).tolist()
            T01 = [float(T0[0, 1])]
            for s_, g_ in zip(src, gain):
                T01.append(s_ + g_ * T01[-1])
            Ks, Ths = np.empty((L, 2, 2)), np.empty((L, 2, 2))
            Ks[:, 0, 0] = Ks[:, 1, 1] = k
            Ths[:, 0, 0] = Ths[:, 1, 1] = th
            Ks[:, 0, 1] = Ks[:, 1, 0] = K01
            Ths[:, 0, 1] = Ths[:, 1, 0] = T01
            if uncorrelated(Ks) and np.all(np.isfinite(Ths)):
                return Ks, Ths
    if closed_family(act) is not None:
        # closed-form pairs (ReLU family, erf, sin, gelu): the blocked kernel's fused passes
        # (pdlt.theory.kernel_blocks; equal to the fold to a few ulps of each entry)
        km = kernel_matrix(ref, x, layers="all", threads=1, memory_budget=None)
        return np.asarray(km.K), np.asarray(km.Theta)
    return _kernel_fold_shown(ref, K0, T0)


#: layers per call of the general two-input kernel fold in :func:`_kernel_fold_shown`
_KERNEL_CHUNK = 256


def _kernel_fold_shown(mlp, K0, T0):
    """:func:`pdlt.theory.kernel.kernel_fold` (K, Theta) in calls of :data:`_KERNEL_CHUNK`
    layers under a progress bar (``pdlt._progress``: a Mehler series per layer, ~2 ms for
    swish, until the two inputs are collinear to ``s <= 1e-2``, after ~100 layers; then
    the collinear rule of :mod:`pdlt.gaussian._collinear`, ~0.15 ms: ~2 s at depth 1e4).
    Each call continues from the last layer of the one before on the same steps: the same
    numbers as one call."""
    from .._progress import layers as shown_layers
    from ..network import MLP
    from ..theory.kernel import kernel_fold

    L, w = mlp.depth, mlp.widths
    Ks, Ths = np.empty((L,) + K0.shape), np.empty((L,) + K0.shape)
    Ks[0], Ths[0] = K0, T0
    per = {k: tuple(getattr(mlp, k)) for k in ("C_b", "C_W", "lambda_b", "lambda_W")}
    for a in shown_layers(range(1, L, _KERNEL_CHUNK),
                          f"K, Theta, 2 inputs (x{_KERNEL_CHUNK} layers)"):
        b = min(a + _KERNEL_CHUNK, L)                   # layers a .. b (1-based), a given
        sub = MLP(n0=w[a - 1], widths=list(w[a:b]), n_out=w[b],
                  activation=mlp.activation, **{k: v[a - 1:b] for k, v in per.items()})
        Kc, Tc, _, _ = kernel_fold(sub, Ks[a - 1], Ths[a - 1], susceptibilities=False)
        Ks[a:b], Ths[a:b] = Kc[1:], Tc[1:]
    return Ks, Ths
