r"""Bayesian inference with the infinite-width prior: the NNGP (book ch. 6).

At infinite width the output of an MLP at initialization is a Gaussian
process with covariance ``delta_{ij} K^(L)_{ab}`` (the kernel of
:func:`pdlt.flow` at the last layer), one independent process per output
component. Conditioning on training data ``(x_A, y_A)`` with Gaussian
observation noise of variance ``noise`` (a jitter when small) gives the
posterior of the network function at test inputs ``x_B`` (book §6.3):

.. math::
    m_B = K_{BA} (K_{AA} + \sigma^2 I)^{-1} y_A, \qquad
    \Sigma_{BB} = K_{BB} - K_{BA} (K_{AA} + \sigma^2 I)^{-1} K_{AB},

and the log evidence (marginal likelihood of the training targets under the
prior, book §6.2; summed over output components ``i``)

.. math::
    \log p(y_A \mid \mathcal{H}) = \sum_i \Big[-\tfrac12 y_{i;A}^T
        (K_{AA} + \sigma^2 I)^{-1} y_{i;A} - \tfrac12 \log\det(K_{AA} + \sigma^2 I)
        - \tfrac{N}{2}\log 2\pi\Big].

Differences of log evidence between hyperparameters (``C_b, C_W``, depth,
activation) are log Bayes factors: :func:`evidence_scan` compares them,
e.g. across the critical point ("evidence for criticality").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._common import (EstimatorBase, SingularKernelError, check_data, check_mlp, check_noise,
                      eigh_psd, estimator_data, last_layer_kernels, not_fitted,
                      check_duplicates, resolve_noise)

__all__ = ["Posterior", "EvidenceScan", "gp_posterior", "log_evidence", "nngp_posterior",
           "evidence_scan", "NNGPRegressor"]

_FIX = "add noise > 0 (a jitter such as noise=1e-8 * mean(diag K) is enough for duplicates)"


@dataclass(frozen=True)
class Posterior:
    """Posterior of the network output at test inputs.

    Attributes
    ----------
    mean : ndarray (M, n_out)
        Posterior mean ``m_B``.
    cov : ndarray (M, M)
        Posterior covariance ``Sigma_BB`` of each output component (the same
        for every component).
    log_evidence : float
        Log marginal likelihood of the training targets.
    """

    mean: np.ndarray
    cov: np.ndarray
    log_evidence: float

    @property
    def std(self) -> np.ndarray:
        """Posterior standard deviation, shape (M,) (negative round-off clipped to 0)."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


@dataclass(frozen=True)
class EvidenceScan:
    """Log evidence over a grid of hyperparameters.

    Attributes
    ----------
    C_W : ndarray (P,)
    depth : ndarray (Q,) of int
    log_evidence : ndarray (P, Q)
        NaN where the kernel was singular (see ``errors``).
    errors : dict
        ``(C_W, depth) -> message`` for the NaN entries.
    """

    C_W: np.ndarray
    depth: np.ndarray
    log_evidence: np.ndarray
    errors: dict

    def best(self):
        """``(C_W, depth)`` with the largest log evidence."""
        i, j = np.unravel_index(np.nanargmax(self.log_evidence), self.log_evidence.shape)
        return float(self.C_W[i]), int(self.depth[j])


def _factor(K_train, noise):
    """Cholesky factor of K_AA + noise I, with a clear error if singular."""
    k_reg = K_train + noise * np.eye(K_train.shape[0])
    # eigenvalue check first: a Cholesky of a numerically singular matrix may
    # "succeed" with a garbage pivot
    eigh_psd(k_reg, "the training kernel K_AA + noise * I", _FIX)
    try:
        return scipy.linalg.cho_factor(k_reg, lower=True)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - caught by the eigenvalue check
        raise SingularKernelError(f"the training kernel K_AA + noise * I is not positive "
                                  f"definite ({exc}); {_FIX}") from exc


def _log_evidence(cf, y):
    """Log evidence from the Cholesky factor, in a scaled form.

    ``y^T A^{-1} y`` is computed as ``s^2 (y/s)^T A^{-1} (y/s)`` with ``s =
    max |y|``, so no intermediate product overflows while the result fits
    float64; a result that does not fit (``|y|`` near 1e160 with an O(1)
    kernel) is refused with an error rather than returned as NaN or -inf.
    """
    N, n_out = y.shape
    logdet = 2.0 * np.sum(np.log(np.diag(cf[0])))
    s = float(np.max(np.abs(y))) if y.size else 0.0
    if s > 0:
        ys = y / s
        q = float(np.sum(ys * scipy.linalg.cho_solve(cf, ys)))
        with np.errstate(over="ignore"):
            quad = q * s * s
    else:
        quad = 0.0
    out = -0.5 * quad - 0.5 * n_out * logdet - 0.5 * n_out * N * math.log(2 * math.pi)
    if not math.isfinite(out):
        raise ValueError(f"the log evidence overflows float64: y^T (K + noise I)^-1 y = {q:.3g} "
                         f"x max|y|^2 with max|y| = {s:.3g}; standardize the targets (e.g. "
                         "y / y.std()) -- the posterior mean scales linearly with y")
    return float(out)


def gp_posterior(K_train, K_cross, K_test, y, noise=0.0) -> Posterior:
    """Gaussian-process posterior from kernel blocks.

    Parameters
    ----------
    K_train : array_like (N, N)
        ``K_AA``, prior covariance of the training outputs.
    K_cross : array_like (M, N)
        ``K_BA``, test-train covariance.
    K_test : array_like (M, M)
        ``K_BB``.
    y : array_like (N,) or (N, n_out)
        Training targets.
    noise : float, default 0
        Observation-noise variance added to the diagonal of ``K_AA``.

    Returns
    -------
    Posterior
        Mean (M, n_out) and covariance (M, M) of the noiseless output.

    Raises
    ------
    SingularKernelError
        If ``K_AA + noise I`` is singular (e.g. duplicate training inputs and
        ``noise=0``): add noise > 0.
    """
    K_train = np.asarray(K_train, dtype=float)
    K_cross = np.atleast_2d(np.asarray(K_cross, dtype=float))
    K_test = np.atleast_2d(np.asarray(K_test, dtype=float))
    N = K_train.shape[0]
    if K_train.shape != (N, N) or K_cross.shape[1] != N or K_test.shape != (K_cross.shape[0],) * 2:
        raise ValueError(f"kernel blocks have inconsistent shapes: K_train {K_train.shape}, "
                         f"K_cross {K_cross.shape}, K_test {K_test.shape}; need (N, N), (M, N), "
                         "(M, M)")
    from ._common import check_targets
    y2, _ = check_targets(y, N)
    cf = _factor(K_train, check_noise(noise))
    mean = K_cross @ scipy.linalg.cho_solve(cf, y2)               # K_BA (K_AA + s2)^-1 y
    w = scipy.linalg.solve_triangular(cf[0], K_cross.T, lower=True)  # L^-1 K_AB
    cov = K_test - w.T @ w                                          # K_BB - K_BA (..)^-1 K_AB
    return Posterior(mean, 0.5 * (cov + cov.T), _log_evidence(cf, y2))


def log_evidence(K_train, y, noise=0.0) -> float:
    """Log marginal likelihood of ``y`` under the prior ``N(0, K_AA + noise I)``.

    Parameters
    ----------
    K_train : array_like (N, N)
    y : array_like (N,) or (N, n_out)
        Output components are independent and their log evidences add.
    noise : float, default 0

    Returns
    -------
    float
    """
    from ._common import check_targets
    K_train = np.asarray(K_train, dtype=float)
    y2, _ = check_targets(y, K_train.shape[0])
    return _log_evidence(_factor(K_train, check_noise(noise)), y2)


def nngp_posterior(mlp, X_train, y_train, X_test, noise=0.0) -> Posterior:
    """NNGP posterior of an MLP's output at ``X_test`` given training data.

    Parameters
    ----------
    mlp : pdlt.MLP
        Its last-layer kernel ``K^(L)`` is the prior covariance.
    X_train : array_like (N, n0)
    y_train : array_like (N,) or (N, n_out)
    X_test : array_like (M, n0)
    noise : float, default 0

    Returns
    -------
    Posterior

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning import nngp_posterior
    >>> mlp = pdlt.MLP(1, width=100, depth=3, activation="relu", C_W=2.0, C_b=0.1)
    >>> x = np.linspace(-1, 1, 5)[:, None]
    >>> post = nngp_posterior(mlp, x, np.sin(3 * x), x)
    >>> bool(np.allclose(post.mean, np.sin(3 * x), atol=1e-8))
    True
    """
    mlp = check_mlp(mlp)
    X_train, y2, _ = check_data(X_train, y_train, mlp.n0, "X_train", "y_train")
    X_test = check_data(X_test, None, mlp.n0, "X_test")
    N = X_train.shape[0]
    check_duplicates(X_train, check_noise(noise))
    K, _ = last_layer_kernels(mlp, X_train, X_test)
    return gp_posterior(K[:N, :N], K[N:, :N], K[N:, N:], y2, noise)


def evidence_scan(mlp, X, y, *, C_W=None, depth=None, noise=0.0) -> EvidenceScan:
    """Log evidence of the training data over a grid of ``C_W`` and depth.

    Every other hyperparameter of ``mlp`` (``C_b``, activation, ...) is kept.
    Where the kernel is singular (e.g. deep in the ordered phase every input
    gets the same kernel), the entry is NaN with a warning; ``noise > 0``
    avoids that.

    Parameters
    ----------
    mlp : pdlt.MLP
    X : array_like (N, n0)
    y : array_like (N,) or (N, n_out)
    C_W : array_like (P,), optional
        Default: the MLP's own (first-layer) ``C_W``.
    depth : array_like (Q,) of int, optional
        Default: the MLP's depth.
    noise : float, default 0

    Returns
    -------
    EvidenceScan
    """
    mlp = check_mlp(mlp)
    X, y2, _ = check_data(X, y, mlp.n0)
    noise = check_noise(noise)
    cws = np.atleast_1d(np.asarray(mlp.C_W[0] if C_W is None else C_W, dtype=float))
    deps = np.atleast_1d(np.asarray(mlp.depth if depth is None else depth)).astype(int)
    out = np.full((cws.size, deps.size), np.nan)
    errors = {}
    for i, cw in enumerate(cws):
        for j, L in enumerate(deps):
            m = mlp.with_(C_W=float(cw), depth=int(L))
            try:
                K, _ = last_layer_kernels(m, X)
                out[i, j] = _log_evidence(_factor(K, noise), y2)
            except (np.linalg.LinAlgError, FloatingPointError) as exc:
                errors[(float(cw), int(L))] = str(exc)
    if errors:
        warnings.warn(f"{len(errors)} of {out.size} grid points have a singular or overflowing "
                      "kernel; their log evidence is NaN (see .errors; noise > 0 helps)",
                      RuntimeWarning, stacklevel=2)
    return EvidenceScan(cws, deps, out, errors)


class NNGPRegressor(EstimatorBase):
    """Bayesian inference with an infinite-width MLP prior (scikit-learn API).

    Parameters
    ----------
    mlp : pdlt.MLP, optional
        The network whose last-layer kernel ``K^(L)`` is the prior. Its input
        width is set to the number of features seen in :meth:`fit` (``K^(1)``
        averages over features, so the prior does not depend on n0 otherwise).
        Default: ``pdlt.MLP(n0, width=100, depth=3, activation="relu",
        C_b=0, C_W=2)`` (critical ReLU).
    noise : float or "auto", default "auto"
        Observation-noise variance added to the training kernel's diagonal.
        ``"auto"``: 0 when ``K_AA`` is numerically invertible, otherwise the
        smallest jitter that makes it so, ``10 max(10 eps N lambda_max,
        |lambda_min|)`` (:func:`pdlt.learning._common.resolve_noise`): duplicate
        or collinear inputs are then well defined. ``0``: exact
        interpolation; duplicate inputs raise :class:`SingularKernelError`.
    width : int, optional
        Use the posterior of a network whose hidden layers have ``width``
        neurons, at order 1/n (book §6.4;
        :func:`pdlt.learning.finite_bayes.finite_width_posterior`): the prior
        is the nearly-Gaussian ``K + G1/n``, ``V/n``.

    Attributes
    ----------
    mlp_ : pdlt.MLP
        The MLP used, with ``n0 = n_features_in_``.
    X_train_ : ndarray (N, ``n_features_in_``)
    y_train_ : ndarray (N, n_out)
    alpha_ : ndarray (N, n_out)
        ``(K_AA + noise I)^{-1} y``.
    log_evidence_ : float
        Log marginal likelihood of the training targets.
    noise_ : float
        The noise variance used (the jitter for ``noise="auto"``).
    n_features_in_ : int

    Notes
    -----
    Hyperparameters are checked in :meth:`fit` (scikit-learn's convention:
    ``__init__`` only stores them). ``X`` must be 2-D ``(N, n_features)``;
    a 1-D ``X`` is refused (reshape with ``X.reshape(-1, 1)``).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning import NNGPRegressor
    >>> X = np.linspace(-2, 2, 8)[:, None]
    >>> reg = NNGPRegressor(pdlt.MLP(1, width=100, depth=3, activation="tanh"), noise=1e-4)
    >>> mean, std = reg.fit(X, np.sin(X[:, 0])).predict(np.array([[0.3]]), return_std=True)
    >>> mean.shape, std.shape
    ((1,), (1,))
    """

    def __init__(self, mlp=None, noise="auto", width=None):
        self.width = width
        self.mlp = mlp
        self.noise = noise

    def fit(self, X, y):
        """Condition the prior on training data; returns ``self``.

        Raises
        ------
        SingularKernelError
            Duplicate training inputs with ``noise=0``: add noise > 0.
        ValueError
            NaN/inf in X or y, or inconsistent shapes.
        """
        from .._validation import check_int

        if self.width is not None:
            check_int(self.width, "width", fix="the hidden width n of the finite network")
        if not isinstance(self.noise, str):
            check_noise(self.noise, "noise")
        X, y2, was_1d = estimator_data(self, X, y, reset=True)
        mlp = _default_mlp(self.mlp, X.shape[1])
        K, _ = last_layer_kernels(mlp, X)
        noise = resolve_noise(self.noise, K)
        check_duplicates(X, noise, "X")
        cf = _factor(K, noise)
        self.noise_ = noise
        self.mlp_ = mlp
        self.X_train_ = X
        self.y_train_ = y2
        self._y_1d = was_1d
        self._cf = cf
        self.alpha_ = scipy.linalg.cho_solve(cf, y2)
        self.log_evidence_ = _log_evidence(cf, y2)
        return self

    def predict(self, X, return_std=False, return_cov=False):
        """Posterior mean (and standard deviation or covariance) at ``X``.

        Parameters
        ----------
        X : array_like (M, n_features)
        return_std, return_cov : bool
            At most one of them.

        Returns
        -------
        mean : ndarray (M,) or (M, n_out)
            Shape follows the ``y`` given to :meth:`fit`.
        std : ndarray (M,), if ``return_std``
        cov : ndarray (M, M), if ``return_cov``
        """
        if not hasattr(self, "alpha_"):
            raise not_fitted(self)
        if return_std and return_cov:
            raise ValueError("return_std and return_cov cannot both be True; pick one")
        X = estimator_data(self, X, reset=False)
        if self.width is not None:
            post = self.finite_width_prediction(X)
            mean = post.mean[:, 0] if self._y_1d else post.mean
            if return_cov:
                return mean, post.cov
            if return_std:
                return mean, (post.std[:, 0] if self._y_1d else post.std)
            return mean
        N = self.X_train_.shape[0]
        K, _ = last_layer_kernels(self.mlp_, self.X_train_, X)
        K_cross, K_test = K[N:, :N], K[N:, N:]
        mean = K_cross @ self.alpha_
        if self._y_1d:
            mean = mean[:, 0]
        if not (return_std or return_cov):
            return mean
        w = scipy.linalg.solve_triangular(self._cf[0], K_cross.T, lower=True)
        if return_cov:
            cov = K_test - w.T @ w
            return mean, 0.5 * (cov + cov.T)
        var = np.diag(K_test) - np.sum(w * w, axis=0)
        return mean, np.sqrt(np.clip(var, 0.0, None))


    def finite_width_prediction(self, X):
        """The order-1/n posterior at ``X`` (needs ``width``).

        Returns
        -------
        pdlt.learning.finite_bayes.FiniteWidthPosterior
            ``mean``, ``cov``, ``mean_infinite_width``, ``log_evidence``, ...
        """
        from .finite_bayes import finite_width_posterior
        if not hasattr(self, "alpha_"):
            raise not_fitted(self)
        from .._validation import check_aspect_ratio, check_correction, check_int
        w = self.width
        if w is None:
            raise ValueError("finite_width_prediction needs width=n (the network's width)")
        w = check_int(w, "width", fix="the hidden width n of the finite network")
        X = estimator_data(self, X, reset=False)
        mlp = self.mlp_.with_(width=w)
        post = finite_width_posterior(mlp, self.X_train_, self.y_train_, X, noise=self.noise_)
        # validity of the truncated expansion (pdlt.ValidityWarning)
        check_correction(post.mean_infinite_width, post.mean - post.mean_infinite_width,
                         f"NNGP posterior mean at width n={w}")
        if post.cov.ndim == 2:
            check_correction(post.cov_infinite_width, post.cov - post.cov_infinite_width,
                             f"NNGP posterior covariance at width n={w}")
        check_aspect_ratio(mlp)
        return post


def _default_mlp(mlp, n_features):
    from ..network import MLP
    if mlp is None:
        return MLP(n_features, width=100, depth=3, activation="relu", C_b=0.0, C_W=2.0)
    check_mlp(mlp)
    return mlp if mlp.n0 == n_features else mlp.with_(n0=n_features)
