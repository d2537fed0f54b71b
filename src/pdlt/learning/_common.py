"""Validation and linear algebra shared by :mod:`pdlt.learning` (numpy only)."""

from __future__ import annotations

import numpy as np

from ..network import MLP, validate_inputs

__all__ = ["SingularKernelError", "UnstableLearningRateError", "check_data", "check_mlp",
           "check_targets", "check_noise", "check_duplicates", "resolve_noise", "estimator_data", "not_fitted", "last_layer_kernels", "eigh_psd", "EstimatorBase"]

_EPS = np.finfo(float).eps
#: an eigenvalue below ``_SINGULAR_RTOL * N * lambda_max`` counts as zero: ten
#: times numpy's matrix-rank tolerance (a duplicate training input gives an
#: eigenvalue of a few eps * lambda_max; see ``eigh_psd``)
_SINGULAR_RTOL = 10 * _EPS


class SingularKernelError(np.linalg.LinAlgError):
    """The training kernel cannot be inverted (duplicate inputs without noise)."""


class UnstableLearningRateError(ValueError):
    """Gradient descent with this learning rate diverges (eta >= 2 / lambda_max(Theta))."""


def check_mlp(mlp, name="mlp") -> MLP:
    if not isinstance(mlp, MLP):
        raise TypeError(f"{name} must be a pdlt.MLP, e.g. pdlt.MLP(n0, width=100, depth=4, "
                        f"activation='tanh'); got {type(mlp).__name__}")
    return mlp


def check_targets(y, n, name="y"):
    """Targets as float64 (N, n_out); returns (y2d, was_1d)."""
    arr = np.asarray(y, dtype=float)
    was_1d = arr.ndim == 1
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, n_out); got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but the inputs have {n}; give one "
                         "target per input")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"{name} contains NaN or inf (first in row {row}); drop or impute "
                         "those targets")
    return np.ascontiguousarray(arr), was_1d


def check_data(X, y=None, n0=None, name_X="X", name_y="y"):
    """Inputs (N, n0) float64 and, if given, targets (N, n_out) float64."""
    X = np.asarray(X, dtype=float) if not isinstance(X, np.ndarray) else X
    if np.ndim(X) != 2:
        raise ValueError(f"{name_X} must be a 2-D array of shape (N, n_features); got shape "
                         f"{np.shape(X)} (reshape a single feature with X.reshape(-1, 1))")
    X = validate_inputs(X, n0, name_X)
    if y is None:
        return X
    y2, was_1d = check_targets(y, X.shape[0], name_y)
    return X, y2, was_1d


def check_noise(noise, name="noise") -> float:
    try:
        s2 = float(noise)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number (a variance >= 0); got {noise!r}") from None
    if not np.isfinite(s2) or s2 < 0:
        raise ValueError(f"{name} is a variance added to the kernel's diagonal and must be "
                         f"finite and >= 0; got {noise!r}")
    return s2


def resolve_noise(noise, K, name="noise") -> float:
    """The variance added to ``K``'s diagonal: ``noise``, or the automatic jitter.

    ``noise="auto"``: none (0.0) when ``K`` is numerically invertible, i.e.
    its smallest eigenvalue is above the tolerance ``tol = 10 eps N
    lambda_max`` of :func:`eigh_psd`; otherwise ``10 max(tol, |lambda_min|)``
    -- ten times the larger of that tolerance and the size of the kernel's
    own numerical error (a PSD kernel computed to finite accuracy can show
    ``lambda_min`` slightly below zero). Well-conditioned kernels thus give
    exactly the ``noise=0`` result, and duplicate or collinear training
    inputs (or a low-rank kernel, e.g. ReLU on one feature) get the smallest
    ridge that makes them well defined.
    """
    if isinstance(noise, str):
        if noise != "auto":
            raise ValueError(f"{name} must be a variance >= 0 or 'auto' (an automatic jitter); "
                             f"got {noise!r}")
        K = np.asarray(K, dtype=float)
        if K.size == 0:
            return 0.0
        w = np.linalg.eigvalsh(K)
        top = max(float(w[-1]), 0.0)
        tol = _SINGULAR_RTOL * K.shape[0] * top
        if top > 0 and w[0] > tol:
            return 0.0
        return 10.0 * max(tol, abs(float(w[0])), np.finfo(float).tiny)
    return check_noise(noise, name)


def last_layer_kernels(mlp, X_train, X_test=None, *, rtol=1e-12):
    """Output-layer kernel K^(L) and frozen NTK Theta^(L) on train and test inputs.

    Parameters
    ----------
    mlp : pdlt.MLP
    X_train : ndarray (N, n0)
    X_test : ndarray (M, n0), optional

    Returns
    -------
    K, Theta : ndarray (N + M, N + M)
        Training inputs first. Computed in one :func:`pdlt.flow` call, so the
        cross blocks are consistent with the diagonal ones.
    """
    from ..theory.statistics import flow

    x = X_train if X_test is None else np.vstack([X_train, X_test])
    last = flow(mlp, x, rtol=rtol)[-1]
    K = np.asarray(last.K, dtype=float)
    Th = np.asarray(last.Theta, dtype=float)
    return 0.5 * (K + K.T), 0.5 * (Th + Th.T)


def eigh_psd(A, name, fix, *, allow_singular=False):
    """Eigendecomposition of a symmetric PSD matrix, raising if it is singular.

    Returns ``(w, U)`` with ascending ``w``; eigenvalues below
    ``100 eps N lambda_max`` are set to 0 (``allow_singular``) or raise
    :class:`SingularKernelError` whose message names ``name`` and ``fix``.
    """
    w, U = np.linalg.eigh(A)
    n = A.shape[0]
    top = max(float(w[-1]), 0.0)
    tol = _SINGULAR_RTOL * n * top
    if top <= 0 or w[0] <= tol:
        if not allow_singular:
            raise SingularKernelError(
                f"{name} is singular (smallest eigenvalue {w[0]:.3e}, largest {top:.3e}): "
                f"duplicate or collinear training inputs, or a degenerate kernel; {fix}")
        w = np.where(w <= tol, 0.0, w)
    return w, U


def check_duplicates(X, noise, name="X_train"):
    """Raise :class:`SingularKernelError` for repeated inputs when ``noise == 0``."""
    if noise > 0:
        return
    _, first, counts = np.unique(X, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        row = int(first[np.argmax(counts > 1)])
        raise SingularKernelError(
            f"{name} repeats input row {row} ({int(counts.max())} copies): the training kernel is "
            "singular without observation noise; add noise > 0 (e.g. noise=1e-6), or remove the "
            "duplicates")


class _MiniBase:
    """get_params/set_params for when scikit-learn is not installed."""

    @classmethod
    def _get_param_names(cls):
        import inspect

        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}; valid: "
                                 f"{', '.join(valid)}")
            setattr(self, k, v)
        return self

    def score(self, X, y):
        """Coefficient of determination R^2 of ``predict(X)`` (sklearn's definition)."""
        y = np.asarray(y, dtype=float)
        pred = np.asarray(self.predict(X), dtype=float).reshape(y.shape)
        ss_res = ((y - pred) ** 2).sum(axis=0)
        ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        return float(np.mean(1 - ss_res / ss_tot))


try:  # use scikit-learn's base classes when available (clone, pipelines, check_estimator)
    from sklearn.base import BaseEstimator as _SkBase
    from sklearn.base import RegressorMixin as _SkRegressor

    class EstimatorBase(_SkRegressor, _SkBase):
        """scikit-learn's RegressorMixin + BaseEstimator (multi-output targets allowed)."""

        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.target_tags.multi_output = True
            return tags

except ImportError:  # pragma: no cover - exercised without scikit-learn
    class EstimatorBase(_MiniBase):
        """Minimal estimator base (scikit-learn not installed)."""


def estimator_data(est, X, y=None, *, reset):
    """Validate estimator input at the boundary: sklearn's ``validate_data`` when available.

    ``reset=True`` (fit) records ``n_features_in_``; ``reset=False`` (predict)
    checks it. Returns clean float64 ``X`` (and ``(y2d, was_1d)``).
    """
    try:
        from sklearn.utils.validation import validate_data
    except ImportError:  # pragma: no cover - exercised without scikit-learn
        validate_data = None
    if validate_data is not None:
        if not reset:
            X = validate_data(est, X, reset=reset, dtype=np.float64)
        else:
            X, y = validate_data(est, X, y, reset=reset, dtype=np.float64, multi_output=True,
                                 y_numeric=True)
    if not reset:
        X = check_data(X, None, None, "X")
        if not reset and X.shape[1] != est.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} was "
                             f"fitted with {est.n_features_in_} features")
        return X
    X, y2, was_1d = check_data(X, y, None, "X", "y")
    est.n_features_in_ = X.shape[1]
    return X, y2, was_1d


def not_fitted(est):
    """The exception to raise when ``predict`` comes before ``fit``."""
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:  # pragma: no cover
        class NotFittedError(ValueError, AttributeError):
            pass
    return NotFittedError(f"this {type(est).__name__} instance is not fitted yet; call "
                          "fit(X, y) first")
