r"""Generalization of the infinite-width predictors: bias and variance (book §10.3).

The trained output at a test input is Gaussian over initializations
(:func:`pdlt.learning.kernel_prediction`), so its expected squared test error
splits exactly into

.. math::
    \mathbb{E}\big[(z_{\beta} - y_{\beta})^2\big]
        = \underbrace{(m_\beta - y_\beta)^2}_{\text{bias}^2}
        + \underbrace{\Sigma_{\beta\beta}}_{\text{variance}},

summed over output components. How the two terms depend on ``C_W`` and
depth shows the role of criticality: off criticality the kernel either
forgets the inputs' differences (ordered phase: large bias) or amplifies
them (chaotic phase: large variance) exponentially in depth; at criticality
both behave as power laws (book §10.3).
``interpolation_extrapolation`` splits the error between test inputs inside
the training range and outside it. For the NNGP the same split holds with
the posterior mean and variance.

Data sets: :func:`sine_task` (synthetic 1-D) and :func:`diabetes_task`
(scikit-learn's diabetes regression data, standardized).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._common import check_data, check_mlp, check_noise

__all__ = ["Task", "BiasVariance", "sine_task", "diabetes_task", "bias_variance",
           "bias_variance_scan", "interpolation_extrapolation"]


@dataclass(frozen=True)
class Task:
    """A regression task: training and test inputs and targets.

    Attributes
    ----------
    X_train : ndarray (N, n0)
    y_train : ndarray (N,)
    X_test : ndarray (M, n0)
    y_test : ndarray (M,)
    name : str
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str = "task"

    @property
    def n0(self) -> int:
        return self.X_train.shape[1]


@dataclass(frozen=True)
class BiasVariance:
    """Expected squared test error, split into bias^2 and variance per test input.

    Attributes
    ----------
    bias2, variance : ndarray (M,)
    """

    bias2: np.ndarray
    variance: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """``bias2 + variance`` per test input."""
        return self.bias2 + self.variance

    def mean(self) -> dict:
        """Averages over the test inputs: ``{"bias2", "variance", "error"}``."""
        return {"bias2": float(np.mean(self.bias2)), "variance": float(np.mean(self.variance)),
                "error": float(np.mean(self.error))}


def sine_task(n_train=8, n_test=81, *, train_range=(-1.0, 1.0), test_range=(-2.0, 2.0),
              frequency=1.5, noise=0.0, seed=0) -> Task:
    """Synthetic 1-D task ``y = sin(frequency * pi * x / 2)`` (+ Gaussian noise on train targets).

    Training inputs are evenly spaced over ``train_range``; test inputs over
    the wider ``test_range``, so both interpolation and extrapolation occur.
    """
    rng = np.random.default_rng(seed)
    xa = np.linspace(*train_range, int(n_train))[:, None]
    xb = np.linspace(*test_range, int(n_test))[:, None]
    f = lambda x: np.sin(frequency * np.pi * x[:, 0] / 2)  # noqa: E731
    ya = f(xa) + float(noise) * rng.standard_normal(xa.shape[0])
    return Task(xa, ya, xb, f(xb), "sine")


def diabetes_task(n_train=40, n_test=100, *, seed=0) -> Task:
    """scikit-learn's diabetes data (442 patients, 10 features), standardized.

    Features and target are standardized with the training set's mean and
    standard deviation; ``n_train`` and ``n_test`` disjoint patients are
    drawn at random with ``seed``. Needs scikit-learn (the data ship inside it).
    """
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as exc:
        raise ImportError("diabetes_task needs scikit-learn: pip install scikit-learn") from exc
    X, y = load_diabetes(return_X_y=True)
    if n_train + n_test > X.shape[0]:
        raise ValueError(f"n_train + n_test must be <= {X.shape[0]}; got {n_train + n_test}")
    idx = np.random.default_rng(seed).permutation(X.shape[0])
    a, b = idx[:n_train], idx[n_train:n_train + n_test]
    mu, sd = X[a].mean(0), X[a].std(0)
    my, sy = y[a].mean(), y[a].std()
    return Task((X[a] - mu) / sd, (y[a] - my) / sy, (X[b] - mu) / sd, (y[b] - my) / sy,
                "diabetes")


def _predict(mlp, task, method, noise, learning_rate, steps):
    if method == "ntk":
        from .kernel_learning import ntk_prediction
        p = ntk_prediction(mlp, task.X_train, task.y_train, task.X_test, learning_rate, steps,
                           noise)
    elif method == "nngp":
        from .bayes import nngp_posterior
        p = nngp_posterior(mlp, task.X_train, task.y_train, task.X_test, noise)
    else:
        raise ValueError(f"method must be 'ntk' or 'nngp'; got {method!r}")
    return p.mean, np.diag(p.cov)


def bias_variance(mlp, task, *, method="ntk", noise=0.0, learning_rate=None,
                  steps=None) -> BiasVariance:
    """Bias^2 and variance of the infinite-width predictor at each test input.

    Parameters
    ----------
    mlp : pdlt.MLP
    task : Task
    method : {"ntk", "nngp"}
        ``"ntk"``: the kernel prediction of gradient descent (variance over
        initializations); ``"nngp"``: the Bayesian posterior (posterior
        variance).
    noise, learning_rate, steps
        As for :func:`pdlt.learning.ntk_prediction` / :func:`pdlt.learning.nngp_posterior`.

    Returns
    -------
    BiasVariance
    """
    mlp = check_mlp(mlp)
    check_noise(noise)
    yb = np.asarray(task.y_test, dtype=float)
    yb = yb[:, None] if yb.ndim == 1 else yb
    check_data(task.X_test, yb, mlp.n0, "task.X_test", "task.y_test")
    mean, var = _predict(mlp, task, method, noise, learning_rate, steps)
    n_out = mean.shape[1]
    return BiasVariance(np.sum((mean - yb) ** 2, axis=1), n_out * np.clip(var, 0.0, None))


def bias_variance_scan(mlp, task, *, C_W=None, depth=None, method="ntk", noise=0.0,
                       learning_rate=None, steps=None) -> dict:
    """Test-averaged bias^2, variance and error over a grid of ``C_W`` and depth.

    Parameters
    ----------
    mlp : pdlt.MLP
        Everything but ``C_W`` and depth is kept.
    task : Task
    C_W : array_like (P,), optional
    depth : array_like (Q,), optional
    method, noise, learning_rate, steps
        As for :func:`bias_variance`.

    Returns
    -------
    dict
        ``C_W`` (P,), ``depth`` (Q,), and ``bias2``, ``variance``, ``error``
        of shape (P, Q), NaN where the kernel was singular or overflowed
        (listed in ``errors``).
    """
    mlp = check_mlp(mlp)
    cws = np.atleast_1d(np.asarray(mlp.C_W[0] if C_W is None else C_W, dtype=float))
    deps = np.atleast_1d(np.asarray(mlp.depth if depth is None else depth)).astype(int)
    out = {k: np.full((cws.size, deps.size), np.nan) for k in ("bias2", "variance", "error")}
    errors = {}
    for i, cw in enumerate(cws):
        for j, L in enumerate(deps):
            try:
                bv = bias_variance(mlp.with_(C_W=float(cw), depth=int(L)), task, method=method,
                                   noise=noise, learning_rate=learning_rate, steps=steps).mean()
            except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:
                errors[(float(cw), int(L))] = str(exc)
                continue
            for k in out:
                out[k][i, j] = bv[k]
    if errors:
        warnings.warn(f"{len(errors)} of {cws.size * deps.size} grid points failed (singular or "
                      "overflowing kernel); they are NaN (see 'errors')", RuntimeWarning,
                      stacklevel=2)
    return {"C_W": cws, "depth": deps, **out, "errors": errors}


def interpolation_extrapolation(mlp, task, **kwargs) -> dict:
    """Bias-variance split for test inputs inside versus outside the training range.

    A test input interpolates if each of its features lies within the
    training inputs' range of that feature (the bounding box), and
    extrapolates otherwise.

    Parameters
    ----------
    mlp : pdlt.MLP
    task : Task
    **kwargs
        Passed to :func:`bias_variance`.

    Returns
    -------
    dict
        ``{"interpolation": {...}, "extrapolation": {...}}``, each with the
        test-averaged ``bias2``, ``variance``, ``error`` and the count
        ``n``; averages are NaN for an empty group. Also ``inside`` (M,) bool
        and ``per_input`` (the :class:`BiasVariance`).
    """
    bv = bias_variance(mlp, task, **kwargs)
    lo, hi = task.X_train.min(0), task.X_train.max(0)
    inside = np.all((task.X_test >= lo) & (task.X_test <= hi), axis=1)
    out = {"inside": inside, "per_input": bv}
    for name, mask in (("interpolation", inside), ("extrapolation", ~inside)):
        n = int(mask.sum())
        stats = {k: (float(np.mean(v[mask])) if n else float("nan"))
                 for k, v in (("bias2", bv.bias2), ("variance", bv.variance), ("error", bv.error))}
        out[name] = {**stats, "n": n}
    return out
