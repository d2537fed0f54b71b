r"""Full-batch gradient descent of an ensemble of real MLPs (needs PyTorch).

The referee of :mod:`pdlt.learning.kernel_learning`: M networks drawn exactly
as :class:`pdlt.experiment.Ensemble` draws them (network m has the same
initial parameters as in ``Ensemble(mlp, networks, seed)``), trained together,
batched over the network axis, on the MSE loss with the 1/2-sum convention

.. math::
    \mathcal{L} = \frac12 \sum_{a \in A} \sum_i (z_{i;a} - y_{i;a})^2

(no 1/N), with the learning-rate tensor of ``shared/NOTATION.md``: a bias of
layer l steps by ``eta * lambda_b^(l) * dL/db`` and a weight of layer l by
``eta * lambda_W^(l) / n_{l-1} * dL/dW``. Then at first order the outputs
move by ``-eta H (z - y)`` with the NTK H of NOTATION.md, so at infinite
width the trained ensemble follows the frozen-NTK linear model.

Residual MLPs (``mlp.gamma``, ``mlp.xi``; NOTATION.md): the forward pass is
``z^(l) = xi^(l) [b^(l) + W^(l) sigma(z^(l-1))] + gamma^(l) z^(l-1)``, exactly
that of :func:`pdlt.experiment.ntk.preactivations` for the residual ensembles,
and the learning-rate tensor is unchanged (``lambda_b^(l)``, ``lambda_W^(l) /
n_{l-1}`` on ``b^(l)``, ``W^(l)``; ``xi`` and ``gamma`` are fixed
hyperparameters, not trained), so the recorded NTK is the forward-equation NTK
``H' = xi^2 [lambda_b + lambda_W sigma.sigma / n] + Y H Y^T``, ``Y = xi W
diag(sigma') + gamma 1`` (:mod:`pdlt.experiment.ntk`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..network import MLP, validate_inputs
from .activations import torch_activation
from .ensemble import DEFAULT_MEMORY_BUDGET, Ensemble
from .estimators import Estimate

__all__ = ["TrainedEnsemble", "train_ensemble"]


@dataclass(frozen=True)
class TrainedEnsemble:
    """Outputs of M networks along full-batch gradient descent.

    Attributes
    ----------
    steps : ndarray (T,) of int
        The recorded step counts (0 = initialization).
    train : ndarray (M, T, N, n_out)
        Outputs on the training inputs after each recorded step.
    test : ndarray (M, T, N_test, n_out)
        Outputs on the test inputs.
    loss : ndarray (M, T)
        Training loss ``(1/2) sum (z - y)^2`` per network.
    learning_rate : float
    seed : int
    ntk : ndarray (M, T, N + N_test, N + N_test) or None
        Output-layer NTK at the recorded steps (``train_ensemble(ntk=True)``);
        for ``n_out > 1`` of shape (M, T, N_all, n_out, N_all, n_out) with
        ``[m, t, a, i, b, j] = H_{ij;ab}``.
    antithetic : bool
        Networks come in sign-flipped pairs (``train_ensemble(antithetic=True)``);
        standard errors are then computed over pair averages.
    """

    steps: np.ndarray
    train: np.ndarray
    test: np.ndarray
    loss: np.ndarray
    learning_rate: float
    seed: int
    antithetic: bool = False
    ntk: np.ndarray | None = None

    def _units(self, values):
        """Independent units: pair averages when antithetic, networks otherwise."""
        return 0.5 * (values[0::2] + values[1::2]) if self.antithetic else values

    @property
    def n_networks(self) -> int:
        return self.test.shape[0]

    def _index(self, step):
        if step is None:
            return len(self.steps) - 1
        hits = np.flatnonzero(self.steps == step)
        if not hits.size:
            raise ValueError(f"step {step} was not recorded; recorded: {self.steps.tolist()}")
        return int(hits[0])

    def mean(self, step=None, on="test") -> Estimate:
        """Ensemble mean of the outputs (N', n_out) at a recorded step (default: last)."""
        z = getattr(self, on)[:, self._index(step)]
        u = self._units(z)
        return Estimate(u.mean(0), u.std(0, ddof=1) / np.sqrt(u.shape[0]), z.shape[0])

    def ntk_change(self, step=None) -> Estimate:
        """Mean change ``H(step) - H(0)`` of the output-layer NTK, with stderr.

        Shape (N_all, N_all) for one output, (N_all, n_out, N_all, n_out) otherwise.
        """
        if self.ntk is None:
            raise ValueError("no NTK recorded: train with train_ensemble(..., ntk=True)")
        if self.steps[0] != 0:
            raise ValueError("the NTK change needs step 0 among the recorded steps")
        d = self.ntk[:, self._index(step)] - self.ntk[:, 0]
        u = self._units(d)
        return Estimate(u.mean(0), u.std(0, ddof=1) / np.sqrt(u.shape[0]), d.shape[0])

    def cov(self, step=None, on="test", component=0) -> Estimate:
        """Covariance over networks (N', N') of one output component, with delta-method stderr."""
        z = getattr(self, on)[:, self._index(step), :, component]
        M = z.shape[0]
        d = z - z.mean(0)
        prod = d[:, :, None] * d[:, None, :]
        u = self._units(prod)
        return Estimate(prod.sum(0) / (M - 1), u.std(0, ddof=1) / np.sqrt(u.shape[0]), M)

    def variance(self, C0, Khat, step=None, on="test", component=0) -> Estimate:
        """Variance over networks of each output, with an exactly unbiased control variate.

        At infinite width the trained output is linear in the initial outputs
        of the network, ``z(T) = C0 z(0) + const`` over all recorded inputs
        (training first). Given its hidden layers a network's initial output is
        exactly Gaussian with its own last-layer kernel ``Khat``
        (:func:`pdlt.report.learning.hidden_kernels`, same ``seed``: the
        antithetic sign flip of the last layer leaves ``Khat`` unchanged; residual
        hidden layers are fine, a residual output layer is not: its output has the mean
        ``gamma z^(L-1)`` given the hidden layers), so
        ``c = w^2 - diag(C0 Khat C0^T)`` with ``w = C0 z(0)`` has mean exactly
        zero at any width, and ``(z - zbar)^2 - beta c`` estimates the variance with the
        part that follows ``w^2`` removed; ``beta`` is the least-squares
        coefficient over the independent units (its O(1/M) bias is far below
        the standard error).

        Parameters
        ----------
        C0 : array_like (N', N + N_test)
            Rows: the outputs whose variance is wanted (``N'`` = the inputs of
            ``on``); columns: the initial outputs, training inputs first.
        Khat : array_like (M, N + N_test, N + N_test)
            Every network's last-layer kernel on the same inputs.
        step, on, component
            As for :meth:`cov`.

        Returns
        -------
        Estimate
            Mean and stderr of shape (N',).
        """
        z = getattr(self, on)[:, self._index(step), :, component]           # (M, N')
        M = z.shape[0]
        C0 = np.asarray(C0, float)
        Kh = np.asarray(Khat, float)
        n_all = self.train.shape[2] + self.test.shape[2]
        if C0.shape != (z.shape[1], n_all):
            raise ValueError(f"C0 must have shape ({z.shape[1]}, {n_all}) (one row per output "
                             f"of on={on!r}, one column per training then test input); got "
                             f"{C0.shape}")
        if Kh.shape != (M, n_all, n_all):
            raise ValueError(f"Khat must have shape ({M}, {n_all}, {n_all}) (one kernel per "
                             f"network over the training then test inputs); got {Kh.shape}")
        if self.steps[0] != 0:
            raise ValueError("the control variate needs the initial outputs: record step 0")
        z0 = np.concatenate([self.train[:, 0, :, component], self.test[:, 0, :, component]], 1)
        w = z0 @ C0.T
        c = self._units(w * w - np.einsum("bi,mij,bj->mb", C0, Kh, C0, optimize=True))
        d = z - z.mean(0)
        q = self._units(d * d * M / (M - 1))
        cc = c - c.mean(0)
        beta = ((q - q.mean(0)) * cc).sum(0) / np.maximum((cc * cc).sum(0), 1e-300)
        u = q - beta * c
        return Estimate(u.mean(0), u.std(0, ddof=1) / np.sqrt(u.shape[0]), M)


def _forward(Ws, bs, x, tact, gamma=None, xi=None):
    """Outputs (B, N, n_L) of B networks on inputs x (N, n0).

    ``gamma``, ``xi``: per-layer residual hyperparameters (``mlp.gamma``,
    ``mlp.xi``; None: plain), ``z' = xi [b + W sigma(z)] + gamma z``.
    """
    h = x
    z = None
    for l, (W, b) in enumerate(zip(Ws, bs)):
        if l > 0:
            h = tact.sigma(z)
        # z_{i;a} = b_i + sum_j W_ij h_{j;a}: (B, N, n_l)
        z_new = torch.matmul(h, W.transpose(1, 2)) + b[:, None, :]
        if gamma is not None and (gamma[l] != 0.0 or xi[l] != 1.0):
            z_new = xi[l] * z_new + gamma[l] * z if gamma[l] != 0.0 else xi[l] * z_new
        z = z_new
    return z


def _antithetic_flip(Ws, bs, mlp):
    """Make network 2k+1 the sign-flipped copy of network 2k (``z^(L) -> -z^(L)``), in place.

    A plain output layer (``gamma^(L) = 0``): negate its weights and bias
    (``xi^(L)`` only scales). A residual output layer carries ``gamma z^(L-1)``,
    which that flip leaves alone; for an odd activation negating ``W^(1)`` and
    every bias flips every layer (``z^(l) -> -z^(l)``), for another activation
    no parameter flip negates the output, and the caller refuses.
    """
    L = len(Ws)
    if mlp.gamma[-1] == 0.0:
        flip_W, flip_b = {L - 1}, {L - 1}
    else:
        flip_W, flip_b = {0}, set(range(L))
    with torch.no_grad():
        for l, (W, b) in enumerate(zip(Ws, bs)):
            W[1::2] = (-1.0 if l in flip_W else 1.0) * W[0::2]
            b[1::2] = (-1.0 if l in flip_b else 1.0) * b[0::2]


def _output_ntk(Ws, bs, x, tact, mlp, params):
    """Output NTK ``sum_mu lambda_mu d_mu z_{i;a} d_mu z_{j;b}``, by N n_out backward passes.

    Returns ndarray (B, N, N) for one output, (B, N, n_out, N, n_out) otherwise
    (``[m, a, i, b, j] = H_{ij;ab}`` of network m).
    """
    z = _forward(Ws, bs, x, tact, mlp.gamma, mlp.xi)                    # (B, N, n_out)
    L = mlp.depth
    lam = [mlp.lambda_W[l] / mlp.widths[l] for l in range(L)] + [mlp.lambda_b[l] for l in range(L)]
    B, N, n_out = z.shape
    pairs = [(a, i) for a in range(N) for i in range(n_out)]
    g = [torch.autograd.grad(z[:, a, i].sum(), params, retain_graph=k < len(pairs) - 1)
         for k, (a, i) in enumerate(pairs)]
    H = torch.zeros((B, len(pairs), len(pairs)), dtype=z.dtype, device=z.device)
    for p_idx, lr in enumerate(lam):
        G = torch.stack([g[k][p_idx].reshape(B, -1) for k in range(len(pairs))], dim=1)
        H += lr * G @ G.transpose(1, 2)
    H = H.detach().cpu().double().numpy()
    return H if n_out == 1 else H.reshape(B, N, n_out, N, n_out)


def train_ensemble(mlp, X_train, y_train, X_test, *, networks=100, learning_rate=None, steps=None,
                   record=None, seed=0, dtype=torch.float64, device="cpu",
                   memory_budget=DEFAULT_MEMORY_BUDGET, chunk_size=None,
                   step_matrices=None, antithetic=False, ntk=False) -> TrainedEnsemble:
    """Train M networks by full-batch gradient descent on the MSE loss.

    Parameters
    ----------
    mlp : pdlt.MLP
        Plain or residual (``gamma``, ``xi``: the module docstring).
    X_train : array_like (N, n0)
    y_train : array_like (N,) or (N, n_out)
        ``n_out`` must equal ``mlp.n_out`` (a 1-D ``y`` needs ``n_out = 1``).
    X_test : array_like (N_test, n0)
    networks : int, default 100
    learning_rate : float
        ``eta``; the step of parameter mu is ``eta * lambda_mu * dL/dtheta_mu``.
    steps : int
        Number of full-batch steps.
    record : sequence of int, optional
        Steps at which outputs are recorded (default ``(0, steps)``).
    seed : int, default 0
        Same networks as ``Ensemble(mlp, networks, seed)``.
    dtype, device, memory_budget, chunk_size
        As for :class:`Ensemble`.
    step_matrices : sequence of array_like (N, N), optional
        A general schedule instead of ``learning_rate`` and ``steps``: step t
        moves parameter mu by ``-lambda_mu sum_c (d_mu z_c) (M_t (z - y))_c``,
        i.e. one unit step on the loss ``(1/2) (z - y)^T M_t (z - y)``
        (``M_t = eta 1`` is gradient descent; ``M_t = Theta_AA^{-1}`` is the
        Newton "giant leap"; :func:`pdlt.learning.finite_training.algorithm_schedule`).
        ``steps`` is then ``len(step_matrices)``; ``learning_rate`` is reported as 1.
    antithetic : bool, default False
        Variance reduction for means: network 2k+1 is network 2k with the last
        layer's weights and biases negated (``z -> -z``, ``H`` unchanged,
        ``dH -> -dH``: the distribution of the ensemble is unchanged). A
        residual output layer (``gamma^(L) != 0``, i.e. ``n_out`` = width) needs
        an odd activation: then ``W^(1)`` and every bias are negated, which
        flips every layer; for other activations it is refused (no parameter
        flip negates the output). The
        pair average cancels every part of the trained output that is odd in
        the initial output, which dominates the spread, so a mean's standard
        error shrinks from O(1) to O(n^{-1/2}). Needs an even ``networks``;
        standard errors must then be computed over pairs
        (:attr:`TrainedEnsemble.antithetic`).
    ntk : bool, default False
        Also record the output-layer NTK ``H_{ij; a b}`` of every network on
        the training and test inputs (training first) at the recorded steps
        (one backward pass per input and output; it agrees with the forward
        equation of :func:`pdlt.experiment.ntk.ntk_forward`), to measure how
        the NTK moves during training, across outputs too when ``n_out > 1``.

    Returns
    -------
    TrainedEnsemble
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    Xa = validate_inputs(X_train, mlp.n0, "X_train")
    Xb = validate_inputs(X_test, mlp.n0, "X_test")
    y = np.asarray(y_train, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (Xa.shape[0], mlp.n_out):
        raise ValueError(f"y_train must have shape ({Xa.shape[0]},) or ({Xa.shape[0]}, "
                         f"{mlp.n_out}) (one target per input and output); got {np.shape(y_train)}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y_train contains NaN or inf; drop or impute those targets")
    mats = None
    if step_matrices is not None:
        if learning_rate is not None or steps is not None:
            raise ValueError("give either step_matrices or learning_rate and steps, not both")
        mats = [np.asarray(m, dtype=float) for m in step_matrices]
        for m in mats:
            if m.shape != (Xa.shape[0], Xa.shape[0]) or not np.all(np.isfinite(m)):
                raise ValueError(f"each of step_matrices must be a finite ({Xa.shape[0]}, "
                                 f"{Xa.shape[0]}) matrix (one row per training input); got "
                                 f"shape {m.shape}")
            if not np.allclose(m, m.T, rtol=1e-12, atol=1e-14 * np.abs(m).max()):
                raise ValueError("step_matrices must be symmetric (the step is the gradient "
                                 "of (1/2) eps^T M eps)")
        learning_rate, steps = 1.0, len(mats)
    if learning_rate is None or steps is None:
        raise ValueError("train_ensemble needs learning_rate and steps (or step_matrices)")
    eta = float(learning_rate)
    if not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"learning_rate must be finite and > 0; got {learning_rate!r}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    steps = int(steps)
    rec = np.unique(np.asarray((0, steps) if record is None else record, dtype=int))
    if rec[0] < 0 or rec[-1] > steps:
        raise ValueError(f"record must lie in 0..steps={steps}; got {rec.tolist()}")
    if antithetic and networks % 2:
        raise ValueError(f"antithetic=True pairs networks: networks must be even; got {networks}")
    if antithetic and mlp.gamma[-1] != 0.0:
        from ..theory._averages import is_odd
        if not is_odd(mlp.activation):
            raise ValueError(
                f"antithetic=True needs a sign flip of the network that negates the output; the "
                f"output layer is residual (gamma[{mlp.depth - 1}] = {mlp.gamma[-1]:g}) and "
                f"{mlp.activation.name!r} is not odd, so there is none. Use antithetic=False, "
                "a plain output layer (n_out != width with a scalar gamma) or an odd activation")
    ens = Ensemble(mlp, networks=networks, seed=seed, dtype=dtype, device=device,
                   memory_budget=memory_budget, chunk_size=chunk_size)
    tact = torch_activation(mlp.activation)
    res = (mlp.gamma, mlp.xi) if mlp.is_residual else ()
    conv = dict(dtype=dtype, device=ens.device)
    xa, xb = torch.as_tensor(Xa, **conv), torch.as_tensor(Xb, **conv)
    yt = torch.as_tensor(y, **conv)
    mats_t = None if mats is None else [torch.as_tensor(m, **conv) for m in mats]
    # per-parameter learning rates (NOTATION.md): lambda_b^(l), lambda_W^(l) / n_{l-1}
    lr_W = [eta * mlp.lambda_W[l] / mlp.widths[l] for l in range(mlp.depth)]
    lr_b = [eta * mlp.lambda_b[l] for l in range(mlp.depth)]

    N = Xa.shape[0] + Xb.shape[0]
    item = torch.finfo(dtype).bits // 8
    per_net = item * (4 * ens.n_parameters + 8 * N * sum(mlp.widths[1:]))
    chunk = chunk_size or int(max(1, min(networks, memory_budget // per_net)))
    if antithetic:
        chunk = max(2, chunk - chunk % 2)
    M, T = networks, rec.size
    out_a = np.empty((M, T, Xa.shape[0], mlp.n_out))
    out_b = np.empty((M, T, Xb.shape[0], mlp.n_out))
    loss = np.empty((M, T))
    out_h = (np.empty((M, T) + ((N, N) if mlp.n_out == 1 else (N, mlp.n_out, N, mlp.n_out)))
             if ntk else None)
    x_all = torch.cat([xa, xb], dim=0) if ntk else None
    for start in range(0, M, chunk):
        stop = min(M, start + chunk)
        Ws, bs = ens.parameters(start, stop)
        if antithetic:
            _antithetic_flip(Ws, bs, mlp)
        params = [p.requires_grad_(True) for p in (*Ws, *bs)]
        k = 0
        for t in range(steps + 1):
            za = _forward(Ws, bs, xa, tact, *res)
            resid = za - yt
            if k < T and t == rec[k]:
                with torch.no_grad():
                    zb = _forward(Ws, bs, xb, tact, *res)
                out_a[start:stop, k] = za.detach().cpu().double().numpy()
                out_b[start:stop, k] = zb.cpu().double().numpy()
                if ntk:
                    out_h[start:stop, k] = _output_ntk(Ws, bs, x_all, tact, mlp, params)
                loss[start:stop, k] = (0.5 * (resid.detach() ** 2).sum((1, 2))).cpu().double().numpy()
                k += 1
            if t == steps:
                break
            # the loss of the batch is the sum of the networks' losses, so each
            # network's gradient is its own
            if mats_t is None:
                objective = 0.5 * (resid ** 2).sum()
            else:
                objective = 0.5 * (resid * torch.matmul(mats_t[t], resid)).sum()
            grads = torch.autograd.grad(objective, params)
            with torch.no_grad():
                L = mlp.depth
                for l in range(L):
                    Ws[l].sub_(lr_W[l] * grads[l])
                    bs[l].sub_(lr_b[l] * grads[L + l])
    return TrainedEnsemble(rec, out_a, out_b, loss, eta, int(seed), bool(antithetic), out_h)
