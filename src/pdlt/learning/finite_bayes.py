r"""Bayesian inference at finite width: the O(1/n) posterior and representation learning.

At finite width the prior over an MLP's outputs is nearly Gaussian
(``K + G1/n`` and ``V/n`` with ``n = n_{L-1}``, ``shared/NOTATION.md``), and
conditioning on data does two things it cannot do at infinite width (book
§6.4): the posterior of one output neuron depends on the targets of the
others, and the posterior covariance depends on the targets.

* :func:`finite_width_posterior` (from an MLP) and
  :func:`nearly_gaussian_posterior` (from K, V, G1 directly): the posterior
  mean and covariance at test inputs to order 1/n, and the log evidence;
  ``noise = 0`` is allowed whenever ``K_AA + G1_AA/n`` is invertible; a residual
  output layer with a non-odd activation adds the output's O(1/n) three-point function
  (``kappa3``), which enters linearly;
* :func:`hebbian_kernel_shift`: the posterior mean of every hidden-layer
  metric, which moves along the outer product of the whitened targets by
  O(1/n) ("Hebbian" representation learning, book §6.4.2);
* :func:`importance_posterior`: the referee, the exact posterior of an
  ensemble of prior draws by self-normalized importance sampling with a block
  jackknife standard error.

Checked in ``tests/learning/test_finite_bayes.py`` against exact Bayesian
inference over ensembles of real finite-width networks.
Derivation: ``docs/derivations/finite_bayes.rst``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._common import SingularKernelError, check_data, check_duplicates, check_mlp, check_noise, eigh_psd

__all__ = ["FiniteWidthPosterior", "RepresentationShift", "ImportancePosterior",
           "nearly_gaussian_posterior", "finite_width_posterior", "hebbian_kernel_shift",
           "importance_posterior"]

_FIX = "add noise > 0, remove duplicate training inputs, or increase the width"


@dataclass(frozen=True)
class FiniteWidthPosterior:
    """Posterior of the network output at test inputs, at O(1/n).

    Attributes
    ----------
    mean : ndarray (M, n_out)
        ``E[z_B | y]`` to O(1/n).
    cov : ndarray (M, M) if n_out == 1, else (n_out, M, n_out, M)
        ``Cov[z_B | y]`` to O(1/n) (output neurons are correlated at finite
        width).
    mean_infinite_width : ndarray (M, n_out)
        NNGP posterior mean with the kernel ``K`` alone.
    cov_infinite_width : ndarray (M, M)
        NNGP posterior covariance (the same for every output neuron).
    log_evidence, log_evidence_infinite_width : float
        Log marginal likelihood of the training targets, O(1/n) and n = inf.
    width : float
        The ``n`` of the 1/n expansion (``n_{L-1}``).
    """

    mean: np.ndarray
    cov: np.ndarray
    mean_infinite_width: np.ndarray
    cov_infinite_width: np.ndarray
    log_evidence: float
    log_evidence_infinite_width: float
    width: float

    @property
    def std(self) -> np.ndarray:
        """Posterior standard deviation, shape (M, n_out)."""
        c = self.cov
        if c.ndim == 2:
            return np.sqrt(np.clip(np.diag(c), 0.0, None))[:, None]
        d = np.einsum("imim->mi", c)
        return np.sqrt(np.clip(d, 0.0, None))

    @property
    def std_infinite_width(self) -> np.ndarray:
        """NNGP posterior standard deviation, shape (M, n_out)."""
        s = np.sqrt(np.clip(np.diag(self.cov_infinite_width), 0.0, None))
        return np.repeat(s[:, None], self.mean.shape[1], axis=1)


@dataclass(frozen=True)
class RepresentationShift:
    """Posterior mean of every hidden-layer metric at O(1/n).

    Attributes
    ----------
    layers : tuple of int
        Hidden layers ``1 .. L-1``.
    prior : ndarray (L-1, D, D)
        Prior mean ``K^(l) + G1^(l)/n_{l-1}`` on the D inputs ``x``.
    shift : ndarray (L-1, D, D)
        ``E[Ghat^(l) | y] - E[Ghat^(l)]``, O(1/n).
    x : ndarray (D, n0)
        Inputs: the training inputs first, then the extra ones.
    """

    layers: tuple
    prior: np.ndarray
    shift: np.ndarray
    x: np.ndarray

    @property
    def posterior(self) -> np.ndarray:
        """``prior + shift``, shape (L-1, D, D)."""
        return self.prior + self.shift


@dataclass(frozen=True)
class ImportancePosterior:
    """Exact posterior moments from weighted prior draws, with jackknife errors.

    Attributes
    ----------
    mean, mean_stderr : ndarray (M, n_out)
    var, var_stderr : ndarray (M, n_out)
        Posterior variance of each test output.
    observables, observables_stderr : ndarray (...) or None
        Posterior mean minus prior mean of the extra observables (shift), if given.
    ess : float
        Effective sample size ``(sum w)^2 / sum w^2``.
    networks : int
    """

    mean: np.ndarray
    mean_stderr: np.ndarray
    var: np.ndarray
    var_stderr: np.ndarray
    observables: np.ndarray | None
    observables_stderr: np.ndarray | None
    ess: float
    networks: int


# ---------------------------------------------------------------------------
# the core: conditioning a nearly-Gaussian vector
# ---------------------------------------------------------------------------

def _check_blocks(Sigma, V, y, n_train, n):
    Sigma = np.asarray(Sigma, dtype=float)
    n_in = Sigma.shape[0] if Sigma.ndim == 2 else -1
    if Sigma.ndim != 2 or Sigma.shape != (n_in, n_in):
        raise ValueError(f"K must be a square (D, D) kernel over train+test inputs; got shape "
                         f"{Sigma.shape}")
    V = np.asarray(V, dtype=float)
    if V.shape != (n_in,) * 4:
        raise ValueError(f"V must have shape {(n_in,) * 4} (V[a,b,c,d] = V_(ab)(cd)); got {V.shape}")
    if not (isinstance(n_train, (int, np.integer)) and 1 <= n_train <= n_in):
        raise ValueError(f"n_train must be an integer in [1, {n_in}] (training inputs come first); "
                         f"got {n_train!r}")
    y2 = np.asarray(y, dtype=float)
    if y2.ndim == 1:
        y2 = y2[:, None]
    if y2.ndim != 2 or y2.shape[0] != n_train:
        raise ValueError(f"y must have shape ({n_train},) or ({n_train}, n_out); got "
                         f"{np.shape(y)}")
    if not np.all(np.isfinite(y2)):
        raise ValueError("y contains NaN or inf; drop or impute those targets")
    n = float(n)
    if not n > 0:
        raise ValueError(f"n (the width n_{{L-1}}) must be > 0; got {n}")
    return Sigma, V, y2, n


def _gaussian_factor(SAA):
    eigh_psd(SAA, "the training covariance K_AA + G1_AA/n + noise * I", _FIX)
    try:
        return scipy.linalg.cho_factor(SAA, lower=True)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - caught by the eigenvalue check
        raise SingularKernelError(f"the training covariance is not positive definite ({exc}); "
                                  f"{_FIX}") from exc


def _gauss_log_evidence(cf, y2, alpha):
    N, n_out = y2.shape
    logdet = 2.0 * np.sum(np.log(np.diag(cf[0])))
    return float(-0.5 * np.sum(y2 * alpha) - 0.5 * n_out * logdet
                 - 0.5 * n_out * N * math.log(2 * math.pi))


def nearly_gaussian_posterior(K, V, y, n_train, noise=0.0, *, G1=None, n=1.0, kappa3=None):
    """Posterior of a nearly-Gaussian prior conditioned on noisy training outputs.

    The prior of the outputs on D = N + M inputs (training first) has the
    cumulants ``delta_ij (K + G1/n)`` and ``kappa4 = (1/n)[V + 2 perms]`` of
    ``shared/NOTATION.md``, and optionally the three-point function
    ``E[z_{i;a} z_{j;b} z_{k;c}] = (1/n)[d_ij kappa3_abc + d_ik kappa3_acb + d_jk kappa3_bca]``
    (a residual output layer with a non-odd activation); formulas:
    ``docs/derivations/finite_bayes.rst``.

    Parameters
    ----------
    K : array_like (D, D)
        Leading-order kernel over train+test inputs.
    V : array_like (D, D, D, D)
        Four-point vertex, ``V[a,b,c,d] = V_{(ab)(cd)}``, normalized by ``n``.
    y : array_like (N,) or (N, n_out)
        Training targets.
    n_train : int
        N, the number of training inputs (the first N rows of K).
    noise : float, default 0
        Observation-noise variance ``s2``.
    G1 : array_like (D, D), optional
        NLO metric (default 0).
    n : float, default 1
        The width of the 1/n expansion.
    kappa3 : array_like (D, D, D), optional
        Three-point function normalized by ``n``: ``kappa3[a, b, c] = n E[z_{i;a} z_{i;b}
        z_{k;c}]`` (i != k), symmetric in a, b (the layout of
        :func:`pdlt.theory.residual_multi_mean.residual_kappa3_multi`). Default (or all
        zeros): none, and the result is exactly that without it. One output (n_out = 1):
        the full third cumulant is ``(kappa3_abc + kappa3_acb + kappa3_bca) / n``.

    Returns
    -------
    FiniteWidthPosterior

    Raises
    ------
    SingularKernelError
        If ``K_AA + G1_AA/n + noise I`` is singular.
    """
    Sig0, V, y2, n = _check_blocks(K, V, y, n_train, n)
    k3 = _check_kappa3(kappa3, Sig0.shape[0])
    noise = check_noise(noise)
    n_in = Sig0.shape[0]
    G1 = np.zeros((n_in, n_in)) if G1 is None else np.asarray(G1, dtype=float)
    if G1.shape != (n_in, n_in):
        raise ValueError(f"G1 must have shape {(n_in, n_in)}; got {G1.shape}")
    N, M, n_out = n_train, n_in - n_train, y2.shape[1]
    if M < 1:
        raise ValueError("need at least one test input after the N training inputs in K")
    Sig0 = 0.5 * (Sig0 + Sig0.T)
    Sig = Sig0 + 0.5 * (G1 + G1.T) / n
    I_N = np.eye(N)

    def gauss(sig):
        cf = _gaussian_factor(sig[:N, :N] + noise * I_N)
        alpha = scipy.linalg.cho_solve(cf, y2)                 # Sigma_AA^-1 y   (N, n_out)
        reg = scipy.linalg.cho_solve(cf, sig[:N, N:]).T            # Sigma_BA Sigma_AA^-1 (M, N)
        cov = sig[N:, N:] - reg @ sig[:N, N:]
        return cf, alpha, reg, reg @ y2, 0.5 * (cov + cov.T)

    cf_inf, alpha_inf, _, m_inf, S_inf = gauss(Sig0)
    cf, alpha, reg, m0, S0 = gauss(Sig)
    prec = scipy.linalg.cho_solve(cf, I_N)
    prec = 0.5 * (prec + prec.T)
    Y2 = alpha @ alpha.T                                       # sum_k alpha_k alpha_k^T
    X = Y2 - n_out * prec
    VA = V[:, :N, :N, :N]                                      # V_(a b)(c d), b c d in A
    VDD = V[:, :, :N, :N]                                      # V_(a b)(c d), a b in D
    VX = V[:, :N, :, :N]                                       # V_(a c)(b d), c d in A
    c = 0.5 / n
    # t_{a,i} = (1/2n)[V_(ab)(cd) alpha_bi X_cd - 2 V_(ac)(bd) alpha_bi P_cd]
    t = c * (np.einsum("abcd,cd,bi->ai", VA, X, alpha, optimize=True)
             - 2.0 * np.einsum("acbd,cd,bi->ai", VA, prec, alpha, optimize=True))
    W = np.hstack([-reg, np.eye(M)])                             # (M, D)
    mean = m0 + W @ t
    # U_{ij;ab}
    diag_part = c * (np.einsum("abcd,cd->ab", VDD, X) - 2.0 * np.einsum("acbd,cd->ab", VX, prec))
    cross = c * (np.einsum("acbd,ci,dj->ijab", VX, alpha, alpha, optimize=True)
                 + np.einsum("adbc,di,cj->ijab", VX, alpha, alpha, optimize=True))
    u_cov = cross + np.eye(n_out)[:, :, None, None] * diag_part[None, None]
    dS = np.einsum("ma,ijab,pb->imjp", W, u_cov, W, optimize=True)   # (n_out, M, n_out, M)
    cov = dS + np.eye(n_out)[:, None, :, None] * S0[None, :, None, :]
    cov = 0.5 * (cov + cov.transpose(2, 3, 0, 1))
    if n_out == 1:
        cov = cov[0, :, 0, :]
    # log evidence: Gaussian part + (1/24) kappa4 . H4(y) on the training block
    VAA = V[:N, :N, :N, :N]
    VAX = np.swapaxes(VAA, 1, 2)                               # V_(ac)(bd) -> [a,b,c,d]
    T4 = 3.0 * np.einsum("abcd,ab,cd->", VAA, Y2, Y2)
    T2 = (n_out * np.einsum("abcd,ab,cd->", VAA, prec, Y2)
          + 2.0 * np.einsum("abcd,ab,cd->", VAX, prec, Y2))
    T0 = (n_out ** 2 * np.einsum("abcd,ab,cd->", VAA, prec, prec)
          + 2.0 * n_out * np.einsum("abcd,ab,cd->", VAX, prec, prec))
    logZ = _gauss_log_evidence(cf, y2, alpha) + (T4 - 6.0 * T2 + 3.0 * T0) / (24.0 * n)
    if k3 is not None:
        # the three-point function enters linearly (the (1/6) kappa3 . H3 Edgeworth term)
        d_mean, d_cov, T3 = _three_point_terms(k3, alpha, prec, X, Y2, n)
        mean = mean + W @ d_mean
        d_cov = np.einsum("ma,ijab,pb->imjp", W, d_cov, W, optimize=True)
        d_cov = 0.5 * (d_cov + d_cov.transpose(2, 3, 0, 1))
        cov = cov + (d_cov[0, :, 0, :] if n_out == 1 else d_cov)
        logZ = logZ + T3 / (6.0 * n)
    return FiniteWidthPosterior(mean=mean, cov=cov, mean_infinite_width=m_inf,
                                cov_infinite_width=S_inf, log_evidence=float(logZ),
                                log_evidence_infinite_width=_gauss_log_evidence(cf_inf, y2, alpha_inf),
                                width=n)


def _check_kappa3(kappa3, n_in):
    """``kappa3`` as a float (D, D, D) array, or None when absent or exactly zero."""
    if kappa3 is None:
        return None
    k3 = np.asarray(kappa3, dtype=float)
    if k3.shape != (n_in,) * 3:
        raise ValueError(f"kappa3 must have shape {(n_in,) * 3} (kappa3[a,b,c] = n E[z_(i;a) "
                         f"z_(i;b) z_(k;c)], i != k, over train+test inputs); got {k3.shape}")
    if not np.all(np.isfinite(k3)):
        raise ValueError("kappa3 contains NaN or inf")
    scale = np.abs(k3).max()
    if scale == 0.0:
        return None
    if np.abs(k3 - k3.transpose(1, 0, 2)).max() > 1e-8 * scale:
        raise ValueError("kappa3[a, b, c] must be symmetric in a, b (it is n E[z_(i;a) z_(i;b) "
                         "z_(k;c)] with i != k); symmetrize it or check the index order")
    return 0.5 * (k3 + k3.transpose(1, 0, 2))


def _three_point_terms(k3, alpha, prec, X, Y2, n):
    """The O(1/n) three-point terms of the posterior (``docs/derivations/finite_bayes.rst``).

    Returns ``t3`` (D, n_out) (mean shift before ``W``), ``U3`` (n_out, n_out, D, D)
    (covariance shift before ``W . W^T``) and the log-evidence term ``T3`` (times
    ``1/(6n)``).
    """
    N, n_out = alpha.shape
    kA = k3[:, :N, :N]                                   # kappa3_(a c d), c d in A
    s = alpha.sum(axis=1)                                # sum over output neurons, (N,)
    # t_{a,i} = (1/2n)[2 k_acd (alpha_ci s_d - P_cd) + k_cda X_cd]
    t3 = (np.einsum("acd,ci,d->ai", kA, alpha, s)
          - np.einsum("acd,cd->a", kA, prec)[:, None]
          + 0.5 * np.einsum("cda,cd->a", k3[:N, :N, :], X)[:, None]) / n
    # U_{ij;ab} = (1/n)[d_ij k_abc s_c + k_acb alpha_ci + k_bca alpha_cj]
    kc = k3[:, :N, :]                                    # [a, c, b] = kappa3_acb
    U3 = (np.eye(n_out)[:, :, None, None] * np.einsum("abc,c->ab", k3[:, :, :N], s)[None, None]
          + np.einsum("acb,ci->iab", kc, alpha)[:, None]
          + np.einsum("bca,cj->jab", kc, alpha)[None, :]) / n
    kAA = k3[:N, :N, :N]
    T3 = 3.0 * (np.einsum("abc,ab,c->", kAA, Y2, s)
                - n_out * np.einsum("abc,ab,c->", kAA, prec, s)
                - 2.0 * np.einsum("acb,ab,c->", kAA, prec, s))
    return t3, U3, T3


# ---------------------------------------------------------------------------
# MLP entry points
# ---------------------------------------------------------------------------

def _mlp_data(mlp, X_train, y_train, X_test, noise):
    mlp = check_mlp(mlp)
    X_train, y2, _ = check_data(X_train, y_train, mlp.n0, "X_train", "y_train")
    noise = check_noise(noise)
    check_duplicates(X_train, noise)
    if y2.shape[1] != mlp.n_out:
        raise ValueError(f"y_train has {y2.shape[1]} output columns but the MLP has n_out="
                         f"{mlp.n_out}; give one target column per output neuron (the "
                         "finite-width posterior couples the output neurons)")
    if X_test is None:
        return mlp, X_train, y2, np.empty((0, mlp.n0)), noise
    return mlp, X_train, y2, check_data(X_test, None, mlp.n0, "X_test"), noise


def finite_width_posterior(mlp, X_train, y_train, X_test, noise=0.0, *, accuracy="default"):
    """Bayesian posterior of an MLP's output at ``X_test``, to order 1/n.

    The prior is the nearly-Gaussian output distribution of ``mlp`` at its
    widths (``K^(L) + G1^(L)/n`` and ``V^(L)/n`` with ``n = n_{L-1}``, from
    :func:`pdlt.statistics`); the likelihood is Gaussian
    with variance ``noise``. Derivation: ``docs/derivations/finite_bayes.rst``
    (book §6.4).

    Parameters
    ----------
    mlp : pdlt.MLP
    X_train : array_like (N, n0)
    y_train : array_like (N,) or (N, n_out)
        One column per output neuron of ``mlp``.
    X_test : array_like (M, n0)
    noise : float, default 0
        Observation-noise variance; 0 is the noiseless limit (distinct
        training inputs needed).
    accuracy : {"fast", "default", "high"}
        Rule of the vertex's four-variable expectations.

    Returns
    -------
    FiniteWidthPosterior
        ``mean`` (M, n_out), ``cov`` ((M, M) for one output), and the
        infinite-width (NNGP) ``mean_infinite_width``, ``cov_infinite_width``.

    Notes
    -----
    A residual output layer (``gamma[L-1] != 0``, so ``n_out = n_{L-1}``) with a non-odd
    activation (relu, gelu) gives the output an O(1/n) three-point function
    (:func:`pdlt.theory.residual_multi_mean.residual_kappa3_multi`); it enters the
    posterior linearly, at the order of V (``kappa3`` of :func:`nearly_gaussian_posterior`).
    With ``n_out = n`` outputs the sums over output neurons in the correction (``X``,
    ``sum_k alpha_k``) grow with ``n_out``: the series is an expansion in ``1/n`` at fixed
    targets per neuron, and its next term is not small unless those sums are (see
    ``docs/derivations/finite_bayes.rst``).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning.finite_bayes import finite_width_posterior
    >>> mlp = pdlt.MLP(1, width=16, depth=3, activation="tanh", C_W=1.0, C_b=0.1)
    >>> post = finite_width_posterior(mlp, [[0.5], [-1.0]], [1.0, -0.5], [[0.2]], noise=0.1)
    >>> post.mean.shape, post.cov.shape
    ((1, 1), (1, 1))
    >>> bool(abs(post.mean - post.mean_infinite_width).max() < 0.2)
    True
    """
    from ..theory.statistics import statistics

    mlp, X_train, y2, X_test, noise = _mlp_data(mlp, X_train, y_train, X_test, noise)
    if X_test.shape[0] == 0:
        raise ValueError("X_test must have at least one row")
    x = np.vstack([X_train, X_test])
    n = mlp.widths[mlp.depth - 1]
    if mlp.is_residual and mlp.gamma[-1] != 0.0 and mlp.n_out > 1:
        from .._validation import _warn
        _warn(f"finite_width_posterior: the output layer is residual, so all n_out = n = "
              f"{mlp.n_out} outputs are observed; the O(1/n) correction sums over the n "
              "output neurons and the 1/n expansion is not controlled (measured: an O(1) "
              "error at n = 8, docs/derivations/finite_bayes.rst). Observe fewer outputs: a "
              "plain output layer (gamma[L-1] = 0), or nearly_gaussian_posterior with the "
              "same K, V, G1, kappa3 for the observed neurons")
    if _has_output_three_point(mlp):
        # z^(L) = xi [b + W sigma] + gamma z^(L-1) keeps an O(1/n_{L-1}) three-point
        # function for a non-odd sigma: it shifts the posterior at the same order as V
        st = statistics(mlp, x, get=("V", "G1", "kappa3"), accuracy=accuracy)
        return nearly_gaussian_posterior(st.K[-1], st.V[-1], y2, X_train.shape[0], noise,
                                         G1=st.G1[-1], n=n, kappa3=st.kappa3[-1])
    st = statistics(mlp, x, get=("V", "G1"), accuracy=accuracy)
    return nearly_gaussian_posterior(st.K[-1], st.V[-1], y2, X_train.shape[0], noise,
                                     G1=st.G1[-1], n=n)


def _has_output_three_point(mlp):
    """True for a residual output layer with a non-odd activation (O(1/n) kappa3)."""
    if not (mlp.is_residual and mlp.gamma[-1] != 0.0):
        return False
    from ..theory._averages import is_odd
    return not is_odd(mlp.activation)


def hebbian_kernel_shift(mlp, X_train, y_train, X=None, noise=0.0, *, accuracy="default"):
    """Posterior mean of each hidden-layer metric: representation learning at O(1/n).

    ``Ghat^(l)_ab = (1/n_l) sum_j z^(l)_{j;a} z^(l)_{j;b}`` moves under Bayesian
    conditioning by ``(1/2) C^(l,L) . [alpha alpha^T - n_out (K_AA + s2)^-1]``
    with the mixed vertex ``C^(l,L)`` (``docs/derivations/finite_bayes.rst``;
    book §6.4.2), plus ``sum_(i,c) Cov(Ghat^(l)_ab, z_(i;c)) alpha_(i;c)`` when the output
    layer is residual with a non-odd activation (then that covariance is O(1/n):
    :func:`pdlt.theory.residual_multi_mean.residual_mixed_three_point`). Zero at infinite
    width.

    Parameters
    ----------
    mlp : pdlt.MLP
        A plain or residual MLP. Residual: the mixed vertex of
        :func:`pdlt.theory.residual_multi_mean.residual_mixed_vertex` (the neurons' own
        pasts and the cross-layer field covariance); a residual *output* layer
        (``gamma[L-1] != 0``) with a non-odd activation adds the linear term above (with
        ``n_out = n`` observed outputs the caveat of :func:`finite_width_posterior` applies).
    X_train : array_like (N, n0)
    y_train : array_like (N,) or (N, n_out)
    X : array_like (M, n0), optional
        Extra inputs on which to report the metric (besides the training ones).
    noise : float, default 0
    accuracy : {"fast", "default", "high"}

    Returns
    -------
    RepresentationShift
        Over the D = N + M inputs (training first), for layers 1..L-1.
    """
    from ..theory.statistics import statistics
    from ..theory.vertex import apply_M, kernel_derivative_operator

    mlp, X_train, y2, Xe, noise = _mlp_data(mlp, X_train, y_train, X, noise)
    if mlp.depth < 2:
        raise ValueError("a depth-1 network has no hidden layer to learn a representation; "
                         "use depth >= 2")
    x = np.vstack([X_train, Xe])
    N, L = X_train.shape[0], mlp.depth
    fw = statistics(mlp, x, get=("V", "G1"), accuracy=accuracy)
    Ks = fw.K
    KA = Ks[-1][:N, :N] + noise * np.eye(N)
    cf = _gaussian_factor(KA)
    alpha = scipy.linalg.cho_solve(cf, y2)
    prec = scipy.linalg.cho_solve(cf, np.eye(N))
    X_heb = alpha @ alpha.T - y2.shape[1] * 0.5 * (prec + prec.T)
    k3mix = s_heb = None
    if _has_output_three_point(mlp):   # Cov(Ghat, z) is O(1/n): the linear-response term
        from ..theory.residual_multi_mean import residual_mixed_three_point
        k3mix = residual_mixed_three_point(mlp, Ks=Ks, accuracy=accuracy)
        s_heb = alpha.sum(axis=1)
    if mlp.is_residual:     # C^(l,L) of every hidden layer (residual_multi_mean)
        from ..theory.residual_multi_mean import residual_mixed_vertex
        Cres = residual_mixed_vertex(mlp, Ks=Ks, accuracy=accuracy)
    else:
        ops = {lp: kernel_derivative_operator(mlp.activation, Ks[lp - 1]) for lp in range(1, L)}
    prior, shift = [], []
    for l in range(1, L):
        K, V, G1 = Ks[l - 1], fw.V[l - 1], fw.G1[l - 1]
        n_l, n_prev = mlp.widths[l], mlp.widths[l - 1]
        if mlp.is_residual:
            C = Cres[l - 1]
        else:
            # C^(l,l) = (K_ac K_bd + K_ad K_bc) / n_l + V^(l) / n_{l-1}
            C = (np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)) / n_l \
                + V / n_prev
            for lp in range(l, L):
                # C^(l,lp+1) = C_W^(lp+1) M^(lp) acting on the second pair
                moved = apply_M(ops[lp], np.moveaxis(C, (2, 3), (0, 1)))
                C = mlp.C_W[lp] * np.moveaxis(moved, (0, 1), (2, 3))
        prior.append(K + G1 / n_prev)
        shift.append(0.5 * np.einsum("abcd,cd->ab", C[:, :, :N, :N], X_heb))
        if k3mix is not None:
            # Cov(Ghat^(l)_ab, z_(i;c)) alpha_(i;c), summed over the output neurons
            shift[-1] = shift[-1] + np.einsum("abc,c->ab", k3mix[l - 1][:, :, :N], s_heb)
    return RepresentationShift(tuple(range(1, L)), np.array(prior), np.array(shift), x)


# ---------------------------------------------------------------------------
# the referee: exact posterior by importance sampling over prior draws
# ---------------------------------------------------------------------------

def importance_posterior(z_train, z_test, y_train, noise, *, observables=None, blocks=50):
    """Exact posterior moments of an ensemble of prior draws, by importance sampling.

    Each draw m is weighted by the likelihood ``w_m = exp(-|y - z_{A,m}|^2 / (2 noise))``;
    posterior means are self-normalized weighted means. Standard errors come
    from a jackknife over ``blocks`` contiguous blocks of draws (it accounts
    for the weights' variance, i.e. the effective sample size).

    Parameters
    ----------
    z_train : array_like (R, N, n_out)
        Prior draws of the outputs at the training inputs (R draws).
    z_test : array_like (R, M, n_out)
        The same draws at the test inputs.
    y_train : array_like (N,) or (N, n_out)
    noise : float
        Likelihood variance, > 0.
    observables : array_like (R, ...), optional
        Per-draw quantities whose posterior-minus-prior mean is also returned
        (e.g. hidden-layer metrics).
    blocks : int, default 50

    Returns
    -------
    ImportancePosterior
    """
    zA = np.asarray(z_train, dtype=float)
    zB = np.asarray(z_test, dtype=float)
    if zA.ndim != 3 or zB.ndim != 3 or zA.shape[0] != zB.shape[0] or zA.shape[2] != zB.shape[2]:
        raise ValueError(f"z_train and z_test must have shapes (R, N, n_out) and (R, M, n_out) "
                         f"with the same R and n_out; got {zA.shape} and {zB.shape}")
    n_draws = zA.shape[0]
    y2 = np.asarray(y_train, dtype=float).reshape(zA.shape[1], -1)
    s2 = check_noise(noise)
    if s2 <= 0:
        raise ValueError("noise must be > 0 for importance sampling (the noiseless likelihood "
                         "is a delta function); use a small positive noise")
    if not (isinstance(blocks, (int, np.integer)) and 2 <= blocks <= n_draws):
        raise ValueError(f"blocks must be an integer in [2, R={n_draws}]; got {blocks!r}")
    logw = -0.5 * np.sum((zA - y2[None]) ** 2, axis=(1, 2)) / s2
    w = np.exp(logw - logw.max())
    obs = None if observables is None else np.asarray(observables, dtype=float)
    if obs is not None and obs.shape[0] != n_draws:
        raise ValueError(f"observables must have R={n_draws} rows (one per draw); got {obs.shape}")

    # per-block sums of the sufficient statistics, then leave-one-block-out estimates
    edges = np.linspace(0, n_draws, blocks + 1).astype(int)

    def bsum(a):
        return np.add.reduceat(a, edges[:-1], axis=0)

    Sw = bsum(w)
    Swz = bsum(w[:, None, None] * zB)
    Swzz = bsum(w[:, None, None] * zB * zB)
    parts = [Sw, Swz, Swzz]
    if obs is not None:
        parts += [bsum(w.reshape((n_draws,) + (1,) * (obs.ndim - 1)) * obs), bsum(obs),
                  np.diff(edges).astype(float)]

    def estimate(sums):
        sw, swz, swzz = sums[:3]
        mu = swz / sw
        var = swzz / sw - mu * mu
        out = [mu, var]
        if obs is not None:
            swo, so, cnt = sums[3:]
            out.append(swo / sw - so / cnt)
        return out

    total = [p.sum(axis=0) for p in parts]
    full = estimate(total)
    loo = [estimate([t - p[k] for t, p in zip(total, parts)]) for k in range(blocks)]
    errs = []
    for j in range(len(full)):
        arr = np.array([e[j] for e in loo])
        errs.append(np.sqrt((blocks - 1) / blocks * np.sum((arr - arr.mean(axis=0)) ** 2, axis=0)))
    ess = float(w.sum() ** 2 / np.sum(w * w))
    return ImportancePosterior(mean=full[0], mean_stderr=errs[0], var=full[1], var_stderr=errs[1],
                               observables=full[2] if obs is not None else None,
                               observables_stderr=errs[2] if obs is not None else None,
                               ess=ess, networks=n_draws)
