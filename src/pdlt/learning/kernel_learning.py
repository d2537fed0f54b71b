r"""Gradient descent at infinite width: learning with the frozen NTK (book ch. 7, 10).

At infinite width the NTK does not change during training, so full-batch
gradient descent on the MSE loss ``L = (1/2) sum_{i, a in A} (z_{i;a} - y_{i;a})^2``
(the 1/2-sum convention; no 1/N) with the learning-rate tensor of
``shared/NOTATION.md`` is a linear model. Writing ``Theta`` for the
last-layer frozen NTK ``Theta^(L)``, ``A`` for the training and ``B`` for
the test inputs, one step of learning rate ``eta`` moves the outputs by

.. math::
    z_A(t+1) = z_A(t) - \eta\,\Theta_{AA} (z_A(t) - y_A),\qquad
    z_B(t+1) = z_B(t) - \eta\,\Theta_{BA} (z_A(t) - y_A),

so after ``t`` discrete steps (book §10.2)

.. math::
    z_A(t) - y_A = (1 - \eta\Theta_{AA})^t (z_A(0) - y_A),\qquad
    z_B(t) = z_B(0) - \Theta_{BA}\Theta_{AA}^{-1}\,[1 - (1 - \eta\Theta_{AA})^t]\,(z_A(0) - y_A).

The modes converge iff ``0 < eta < 2 / lambda_max(Theta_AA)`` (the
stability bound). At ``t -> infinity`` the test output is kernel regression
with ``Theta``, independent of ``eta``; Newton's method (``eta
Theta_AA^{-1}`` in place of ``eta``, eta = 1) gets there in one step ("giant
leap"). Since ``z(0) ~ N(0, K)`` with ``K = K^(L)`` the NNGP kernel, the
trained output is Gaussian over initializations with mean and covariance
(book §10.2.4, the "kernel prediction")

.. math::
    m_B(t) = P_t\, y_A,\qquad
    \Sigma_{BB}(t) = K_{BB} - P_t K_{AB} - K_{BA} P_t^T + P_t K_{AA} P_t^T,\qquad
    P_t = \Theta_{BA}\Theta_{AA}^{-1}[1 - (1 - \eta\Theta_{AA})^t].

``Theta_AA^{-1}[1 - (1 - eta Theta_AA)^t] = eta sum_{s<t} (1 - eta Theta_AA)^s``
is evaluated in the eigenbasis of ``Theta_AA`` without forming an inverse, so
finite-``t`` results exist even for a singular NTK; only ``t = infinity`` and
Newton's step need it invertible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._common import (EstimatorBase, UnstableLearningRateError, check_data, check_mlp, check_noise,
                      check_targets, eigh_psd, estimator_data, last_layer_kernels, not_fitted,
                      check_duplicates, resolve_noise)

__all__ = ["KernelPrediction", "stability_bound", "check_learning_rate", "propagator",
           "linear_model_outputs", "newton_step", "kernel_prediction", "ntk_prediction",
           "NTKRegressor"]

_FIX = ("add noise > 0 (a ridge on Theta_AA's diagonal), or train for a finite number of "
        "steps")


@dataclass(frozen=True)
class KernelPrediction:
    """Distribution of the trained output over initializations.

    Attributes
    ----------
    mean : ndarray (M, n_out)
    cov : ndarray (M, M)
        Covariance of each output component across initializations.
    learning_rate : float or None
    steps : int or None
        None for the infinite-time limit.
    """

    mean: np.ndarray
    cov: np.ndarray
    learning_rate: float | None
    steps: int | None

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over initializations, shape (M,)."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


def stability_bound(Theta_train) -> float:
    """Largest stable learning rate, ``2 / lambda_max(Theta_AA)``.

    Gradient descent with the frozen NTK converges for ``0 < eta`` below it
    and diverges (mode of ``lambda_max`` flips sign with growing amplitude)
    above it.

    Parameters
    ----------
    Theta_train : array_like (N, N)

    Returns
    -------
    float
    """
    w = np.linalg.eigvalsh(np.asarray(Theta_train, dtype=float))
    if w[-1] <= 0:
        raise ValueError("Theta_train has no positive eigenvalue; it is not an NTK")
    return float(2.0 / w[-1])


def check_learning_rate(learning_rate, Theta_train) -> float:
    """Validate ``0 < learning_rate < 2 / lambda_max(Theta_train)``; returns it as float."""
    try:
        eta = float(learning_rate)
    except (TypeError, ValueError):
        raise TypeError(f"learning_rate must be a number; got {learning_rate!r}") from None
    bound = stability_bound(Theta_train)
    if not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"learning_rate must be finite and > 0; got {learning_rate!r}")
    if eta >= bound:
        raise UnstableLearningRateError(
            f"learning_rate={eta:.6g} is unstable: gradient descent with the frozen NTK "
            f"converges only for learning_rate < 2 / lambda_max(Theta_train) = {bound:.6g}; "
            f"use a smaller learning rate (e.g. {bound / 2:.6g})")
    return eta


def _check_finite_width_fit(width, noise):
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer (the hidden width n); got {width!r}")
    if noise != 0:
        raise ValueError("noise (a ridge on Theta_AA) has no finite-width network counterpart; "
                         "use noise=0 with width=")


def _check_steps(steps):
    if steps is None:
        return None
    if isinstance(steps, (bool, np.bool_)) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer or None (trained to convergence); "
                         f"got {steps!r}")
    return int(steps)


def _gain(w, eta, t):
    """``(1 - (1 - eta w)^t) / w`` elementwise (``eta t`` at w = 0)."""
    w = np.asarray(w, dtype=float)
    out = np.empty_like(w)
    zero = w <= 0
    out[zero] = eta * t
    x = eta * w[~zero]
    small = x < 1
    g = np.empty_like(x)
    # 1 - (1 - x)^t without cancellation for small x
    g[small] = -np.expm1(t * np.log1p(-x[small]))
    g[~small] = 1.0 - np.power(1.0 - x[~small], t)
    out[~zero] = g / w[~zero]
    return out


def propagator(Theta_train, Theta_cross, learning_rate=None, steps=None):
    """``P_t = Theta_BA Theta_AA^{-1} [1 - (1 - eta Theta_AA)^t]``, the map from residuals to output change.

    ``z_B(t) = z_B(0) - P_t (z_A(0) - y_A)``. For ``steps=None`` it is
    ``Theta_BA Theta_AA^{-1}`` (and ``learning_rate`` is not needed).

    Parameters
    ----------
    Theta_train : array_like (N, N)
    Theta_cross : array_like (M, N)
        ``Theta_BA``; pass ``Theta_train`` itself for the training outputs.
    learning_rate : float, optional
        Required for finite ``steps``; must be below :func:`stability_bound`.
    steps : int, optional

    Returns
    -------
    P : ndarray (M, N)

    Raises
    ------
    SingularKernelError
        ``steps=None`` with a singular ``Theta_AA``.
    UnstableLearningRateError
        ``learning_rate >= 2 / lambda_max(Theta_AA)``.
    """
    Th = np.asarray(Theta_train, dtype=float)
    Tc = np.atleast_2d(np.asarray(Theta_cross, dtype=float))
    if Th.ndim != 2 or Th.shape[0] != Th.shape[1] or Tc.shape[1] != Th.shape[0]:
        raise ValueError(f"Theta_train must be (N, N) and Theta_cross (M, N); got {Th.shape} "
                         f"and {Tc.shape}")
    steps = _check_steps(steps)
    if steps is None:
        w, U = eigh_psd(Th, "the training NTK Theta_AA", _FIX)
        return ((Tc @ U) / w) @ U.T
    if learning_rate is None:
        raise ValueError("finite steps need a learning_rate (below 2 / lambda_max(Theta_train) "
                         f"= {stability_bound(Th):.6g})")
    eta = check_learning_rate(learning_rate, Th)
    w, U = eigh_psd(Th, "the training NTK Theta_AA", _FIX, allow_singular=True)
    return ((Tc @ U) * _gain(w, eta, steps)) @ U.T


def linear_model_outputs(Theta_train, Theta_cross, z0_train, z0_test, y, learning_rate=None,
                         steps=None):
    """Outputs of the frozen-NTK linear model after gradient descent, for given initial outputs.

    Parameters
    ----------
    Theta_train : array_like (N, N)
    Theta_cross : array_like (M, N)
    z0_train : array_like (N,) or (N, n_out)
        Outputs at initialization on the training inputs.
    z0_test : array_like (M,) or (M, n_out)
    y : array_like, shape of ``z0_train``
    learning_rate : float, optional
    steps : int, sequence of int, or None
        A sequence gives the trajectory (leading axis over ``steps``);
        None the infinite-time limit.

    Returns
    -------
    z_train, z_test : ndarray
        Shapes ``(N, ...)`` and ``(M, ...)``, or ``(T, N, ...)`` and
        ``(T, M, ...)`` for a sequence of steps.
    """
    z0a = np.asarray(z0_train, dtype=float)
    z0b = np.asarray(z0_test, dtype=float)
    y = np.asarray(y, dtype=float)
    if y.shape != z0a.shape:
        raise ValueError(f"y has shape {y.shape} but z0_train has shape {z0a.shape}")
    if z0b.shape[1:] != z0a.shape[1:]:
        raise ValueError(f"z0_test {z0b.shape} and z0_train {z0a.shape} differ in output shape")
    r0 = z0a - y
    if np.ndim(steps) == 1:
        outs = [linear_model_outputs(Theta_train, Theta_cross, z0a, z0b, y, learning_rate, int(t))
                for t in steps]
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
    P_train = propagator(Theta_train, Theta_train, learning_rate, steps)
    P_test = propagator(Theta_train, Theta_cross, learning_rate, steps)
    return z0a - P_train @ r0, z0b - P_test @ r0


def newton_step(Theta_train, Theta_cross, z0_train, z0_test, y):
    """One Newton step of the linear model: the "giant leap" to the global minimum.

    The update ``theta_mu -= sum lambda_mu (dz_A/dtheta_mu) Theta_AA^{-1} (z_A - y_A)``
    (gradient descent with ``eta Theta_AA^{-1}``, eta = 1) moves the outputs
    by ``dz = -Theta_{., A} Theta_AA^{-1} (z_A(0) - y_A)``: the training
    outputs land on ``y_A`` and the test outputs on the infinite-time limit.

    Returns
    -------
    z_train, z_test : ndarray
    """
    Th = np.asarray(Theta_train, dtype=float)
    Tc = np.atleast_2d(np.asarray(Theta_cross, dtype=float))
    z0a, z0b, y = (np.asarray(v, dtype=float) for v in (z0_train, z0_test, y))
    w, U = eigh_psd(Th, "the training NTK Theta_AA", "add noise > 0 (a ridge on Theta_AA)")
    step = U @ ((U.T @ (z0a - y)) / (w if (z0a.ndim == 1) else w[:, None]))  # Theta^-1 (z - y)
    return z0a - Th @ step, z0b - Tc @ step


def kernel_prediction(K_train, K_cross, K_test, Theta_train, Theta_cross, y,
                      learning_rate=None, steps=None) -> KernelPrediction:
    """Mean and covariance over initializations of the output trained by gradient descent.

    Parameters
    ----------
    K_train, K_cross, K_test : array_like (N, N), (M, N), (M, M)
        NNGP kernel ``K^(L)`` blocks: the law of the outputs at initialization.
    Theta_train, Theta_cross : array_like (N, N), (M, N)
        Frozen NTK blocks.
    y : array_like (N,) or (N, n_out)
    learning_rate : float, optional
        Needed for finite ``steps``.
    steps : int, optional
        None: trained to convergence.

    Returns
    -------
    KernelPrediction
    """
    K_train, K_cross, K_test = (np.atleast_2d(np.asarray(a, dtype=float))
                                for a in (K_train, K_cross, K_test))
    y2, _ = check_targets(y, K_train.shape[0])
    prop = propagator(Theta_train, Theta_cross, learning_rate, steps)
    if K_cross.shape != prop.shape or K_test.shape != (prop.shape[0],) * 2:
        raise ValueError(f"K blocks {K_train.shape}, {K_cross.shape}, {K_test.shape} do not match "
                         f"the NTK blocks ({prop.shape[1]} train, {prop.shape[0]} test inputs)")
    mean = prop @ y2
    prop_k = prop @ K_cross.T                                # P K_AB
    cov = K_test - prop_k - prop_k.T + prop @ K_train @ prop.T
    eta = None if learning_rate is None else float(learning_rate)
    return KernelPrediction(mean, 0.5 * (cov + cov.T), eta, _check_steps(steps))


def ntk_prediction(mlp, X_train, y_train, X_test, learning_rate=None, steps=None,
                   noise=0.0) -> KernelPrediction:
    """Kernel prediction of an MLP trained by gradient descent at infinite width.

    Parameters
    ----------
    mlp : pdlt.MLP
    X_train : array_like (N, n0)
    y_train : array_like (N,) or (N, n_out)
    X_test : array_like (M, n0)
    learning_rate : float, optional
        Default for finite ``steps``: ``1 / lambda_max(Theta_AA)``, half the
        stability bound.
    steps : int, optional
        None: trained to convergence.
    noise : float, default 0
        Ridge added to ``Theta_AA``'s diagonal (regularizes a singular NTK;
        at ``noise = 0`` this is plain gradient descent).

    Returns
    -------
    KernelPrediction
    """
    mlp = check_mlp(mlp)
    X_train, y2, _ = check_data(X_train, y_train, mlp.n0, "X_train", "y_train")
    X_test = check_data(X_test, None, mlp.n0, "X_test")
    noise = check_noise(noise)
    N = X_train.shape[0]
    if steps is None:
        check_duplicates(X_train, noise)
    K, Th = last_layer_kernels(mlp, X_train, X_test)
    Th_train = Th[:N, :N] + noise * np.eye(N)
    if steps is not None and learning_rate is None:
        learning_rate = 0.5 * stability_bound(Th_train)
    return kernel_prediction(K[:N, :N], K[N:, :N], K[N:, N:], Th_train, Th[N:, :N], y2,
                             learning_rate, steps)


class NTKRegressor(EstimatorBase):
    """An MLP trained by gradient descent at infinite width (scikit-learn API).

    ``predict`` gives the mean over random initializations of the trained
    network's output and, with ``return_std=True``, its standard deviation
    over initializations (book §10.2.4).

    Parameters
    ----------
    mlp : pdlt.MLP, optional
        Its input width is set to the number of features seen in
        :meth:`fit`. Default: critical ReLU, ``depth=3``.
    learning_rate : float, optional
        Gradient-descent step ``eta``; must be below ``2 / lambda_max(Theta_AA)``.
        Default: half that bound. Irrelevant when ``steps`` is None.
    steps : int, optional
        Number of full-batch steps; None trains to convergence.
    noise : float or "auto", default "auto"
        Ridge added to the training NTK's diagonal. ``"auto"``: 0 when
        ``Theta_AA`` is numerically invertible, otherwise the smallest
        jitter that makes it so, ``10 max(10 eps N lambda_max,
        |lambda_min|)`` (:func:`pdlt.learning._common.resolve_noise`); with
        ``width`` always 0 (a ridge has no finite-network counterpart).
        ``0``: plain gradient descent.
    width : int, optional
        Add the order-1/n finite-width correction of a network whose last
        hidden layer has ``width`` neurons (book, "The End of Training";
        :mod:`pdlt.learning.finite_training`): the mean and covariance over
        initializations of the trained finite network, for the same
        gradient-descent run (``steps=None``: the steps that bring every
        kernel mode to 1e-10 of convergence). ``y`` with several columns
        trains that many outputs together (they interact at order 1/n);
        ``noise = 0`` (a ridge has no network counterpart); cost grows like
        N^5 in the number of training plus test inputs times outputs.

    Attributes
    ----------
    mlp_ : pdlt.MLP
    learning_rate_ : float or None
        The learning rate used (None for ``steps=None``).
    stability_bound_ : float
        ``2 / lambda_max(Theta_AA)``.
    noise_ : float
        The ridge used (the jitter for ``noise="auto"``).
    X_train_, y_train_ : ndarray
    n_features_in_ : int

    Notes
    -----
    Hyperparameters are checked in :meth:`fit` (scikit-learn's convention),
    ``learning_rate`` even when ``steps`` is None. With ``width``,
    :meth:`finite_width_prediction` warns (:class:`pdlt.ValidityWarning`)
    when the learning rate reaches ``2 / lambda_high``, ``lambda_high`` the
    finite-width NTK's largest eigenvalue at three standard deviations of
    its 1/n fluctuation (:func:`pdlt._validation.learning_rate_margin`), and
    when the 1/n correction of the mean or covariance exceeds 0.3 of the
    infinite-width value.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning import NTKRegressor
    >>> X = np.linspace(-2, 2, 6)[:, None]
    >>> reg = NTKRegressor(pdlt.MLP(1, width=100, depth=3, activation="tanh")).fit(X, np.sin(X[:, 0]))
    >>> bool(np.allclose(reg.predict(X), np.sin(X[:, 0]), atol=1e-6))
    True
    """

    def __init__(self, mlp=None, learning_rate=None, steps=None, noise="auto", width=None):
        self.mlp = mlp
        self.learning_rate = learning_rate
        self.steps = steps
        self.noise = noise
        self.width = width

    def fit(self, X, y):
        """Store the training data and check the learning rate; returns ``self``."""
        from .._validation import check_float, check_int
        from .bayes import _default_mlp
        if not isinstance(self.noise, str):
            check_noise(self.noise)
        steps = _check_steps(self.steps)
        if self.learning_rate is not None:
            check_float(self.learning_rate, "learning_rate", positive=True,
                        fix="a gradient-descent step; None picks half the stability bound")
        if self.width is not None:
            check_int(self.width, "width", fix="the hidden width n of the finite network")
        X, y2, was_1d = estimator_data(self, X, y, reset=True)
        mlp = _default_mlp(self.mlp, X.shape[1])
        K, Th = last_layer_kernels(mlp, X)
        if self.width is not None and self.noise == "auto":
            noise = 0.0
        else:
            noise = resolve_noise(self.noise, Th)
        Th = Th + noise * np.eye(X.shape[0])
        bound = stability_bound(Th)
        if self.width is not None:
            _check_finite_width_fit(self.width, noise)
            eta = 0.5 * bound if self.learning_rate is None else check_learning_rate(
                self.learning_rate, Th)
            if steps is None:
                # a finite run is needed: converge every kernel mode to 1e-10
                w = np.linalg.eigvalsh(Th)
                if w[0] <= 1e-12 * w[-1]:
                    raise ValueError("training to convergence at finite width needs an "
                                     "invertible Theta_AA: remove duplicate inputs or give steps")
                rate = max(abs(1 - eta * w[0]), abs(1 - eta * w[-1]))
                steps = int(math.ceil(math.log(1e-10) / math.log(rate)))
                if steps > 100_000:
                    raise ValueError(f"training to convergence would take {steps} steps (Theta_AA "
                                     "is ill-conditioned); give steps= explicitly")
            self.steps_ = steps
        elif steps is None:
            eta = None
            check_duplicates(X, noise, "X")
            # the infinite-time limit needs an invertible Theta_AA: fail here, not in predict
            eigh_psd(Th, "the training NTK Theta_AA", _FIX)
        else:
            eta = 0.5 * bound if self.learning_rate is None else check_learning_rate(
                self.learning_rate, Th)
        self.mlp_ = mlp
        self.noise_ = noise
        self.X_train_ = X
        self.y_train_ = y2
        self._y_1d = was_1d
        self.learning_rate_ = eta
        self.stability_bound_ = bound
        return self

    def predict(self, X, return_std=False, return_cov=False):
        """Mean over initializations (and std or covariance) of the trained output at ``X``.

        Returns
        -------
        mean : ndarray (M,) or (M, n_out)
        std : ndarray (M,) or (M, n_out)
            If ``return_std``; (M, n_out) with ``width`` and several outputs.
        cov : ndarray (M, M) or (M, n_out, M, n_out)
            If ``return_cov``: one (M, M) block shared by all outputs at
            infinite width; with ``width`` and several outputs the full
            covariance, the outputs being correlated at order 1/n.
        """
        if not hasattr(self, "stability_bound_"):
            raise not_fitted(self)
        if return_std and return_cov:
            raise ValueError("return_std and return_cov cannot both be True; pick one")
        X = estimator_data(self, X, reset=False)
        if self.width is not None:
            pred = self.finite_width_prediction(X)
            mean = pred.mean if (self._y_1d or pred.n_out > 1) else pred.mean[:, None]
        else:
            N = self.X_train_.shape[0]
            K, Th = last_layer_kernels(self.mlp_, self.X_train_, X)
            Th_train = Th[:N, :N] + self.noise_ * np.eye(N)
            pred = kernel_prediction(K[:N, :N], K[N:, :N], K[N:, N:], Th_train, Th[N:, :N],
                                     self.y_train_, self.learning_rate_, self.steps)
            mean = pred.mean[:, 0] if self._y_1d else pred.mean
        if return_cov:
            return mean, pred.cov
        if return_std:
            return mean, pred.std
        return mean

    def finite_width_prediction(self, X):
        """The order-1/n prediction at ``X`` (needs ``width``).

        Returns
        -------
        pdlt.learning.finite_training.FiniteWidthTraining
            ``mean``, ``cov`` at ``width``; ``mean_infinite``,
            ``mean_correction`` (the 1/n coefficient), the NTK change.
        """
        from .finite_training import algorithm_schedule, end_of_training, training_statistics
        if not hasattr(self, "stability_bound_"):
            raise not_fitted(self)
        if self.width is None:
            raise ValueError("finite_width_prediction needs width=n (the network's width)")
        from .._validation import (check_aspect_ratio, check_correction,
                                   check_learning_rate_fluctuations)
        X = estimator_data(self, X, reset=False)
        st = training_statistics(self.mlp_, self.X_train_, X)
        Na = self.X_train_.shape[0]
        sched = algorithm_schedule(st.Theta[:Na, :Na], "gd", learning_rate=self.learning_rate_,
                                   steps=self.steps_)
        y = self.y_train_[:, 0] if self.y_train_.shape[1] == 1 else self.y_train_
        out = end_of_training(st, y, sched, width=self.width)
        # validity of the truncated expansion (pdlt.ValidityWarning)
        n = self.width
        check_correction(out.mean_infinite, out.mean_correction / n,
                         f"trained mean over initializations at width n={n}")
        check_correction(out.cov_infinite, out.cov_correction / n,
                         f"covariance over initializations at width n={n}")
        check_aspect_ratio(self.mlp_.with_(width=int(n)))
        # one output's block: the top eigenvectors e_i (x) v of Theta_AA (x) 1 see the
        # one-output fluctuation for any number of outputs
        self.finite_width_stability_bound_ = check_learning_rate_fluctuations(
            self.learning_rate_, st.Theta[:Na, :Na], st.cov_H[:Na, :Na, :Na, :Na],
            st.H1[:Na, :Na], n)
        return out
