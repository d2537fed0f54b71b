r"""Nearly-kernel methods: the quadratic model in the parameters (book §11.4).

Book §11.4. Expanding a network to second order
around its initialization ``theta_0``,

.. math::
    z_i(\theta) = z_i + \sum_\mu \phi_{i\mu}\,\Delta\theta_\mu
        + \tfrac12\sum_{\mu\nu}\psi_{i\mu\nu}\,\Delta\theta_\mu\Delta\theta_\nu,\qquad
    \phi_{i\mu} = \partial_\mu z_i,\ \psi_{i\mu\nu} = \partial_\mu\partial_\nu z_i,

gives the *quadratic model*: a linear model (a kernel method with the NTK)
plus a quadratic correction whose feature function is itself learned. With
the learning-rate tensor of ``shared/NOTATION.md`` (``lambda_mu`` per
parameter) its kernels are (composite indices ``i`` = neuron and input)

.. math::
    H_{i_1 i_2} = \sum_\mu \lambda_\mu \phi_{i_1\mu}\phi_{i_2\mu}\quad\text{(NTK)},\qquad
    dH_{i_0 i_1 i_2} = \sum_{\mu\nu}\lambda_\mu\lambda_\nu\,\psi_{i_0\mu\nu}
        \phi_{i_1\mu}\phi_{i_2\nu}\quad\text{(meta-kernel, the dNTK)}.

One gradient-descent step ``Delta theta_mu = -eta lambda_mu sum_j phi_{j mu}
eps_j`` (``eps_j = dLoss/dz_j``) moves the quadratic model's output by, exactly,

.. math::
    \Delta z_{i} = -\eta\sum_j H_{ij}\epsilon_j
        + \frac{\eta^2}{2}\sum_{j_1 j_2} dH_{i j_1 j_2}\epsilon_{j_1}\epsilon_{j_2},

and its NTK by ``Delta H_{i1 i2} = -eta sum_j (dH_{i1 i2 j} + dH_{i2 i1 j}) eps_j
+ eta^2 sum_{j1 j2} ddH_{i1 i2 j1 j2} eps_j1 eps_j2`` with the (constant)
second meta-kernel ``ddH_{i1 i2 j1 j2} = sum_{mu nu rho} lambda_mu lambda_nu
lambda_rho psi_{i1 mu nu} psi_{i2 mu rho} phi_{j1 nu} phi_{j2 rho}`` (the
quadratic model's version of the ddNTK ``ddIIH``). For a real network these
are the first terms of its Taylor series (the dNTK is O(1/n) in size,
book ch. 11); for the quadratic model they are exact, which is what
:func:`quadratic_step` computes and the tests check on an explicit model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MetaKernels", "meta_kernels", "quadratic_model", "quadratic_step"]


@dataclass(frozen=True)
class MetaKernels:
    """NTK and meta-kernels of a quadratic model (composite output indices).

    Attributes
    ----------
    H : ndarray (P, P)
        NTK.
    dH : ndarray (P, P, P)
        Meta-kernel (dNTK), ``dH[i0, i1, i2]``; symmetric in (i1, i2).
    ddH : ndarray (P, P, P, P)
        Second meta-kernel, ``ddH[i1, i2, j1, j2]``.
    """

    H: np.ndarray
    dH: np.ndarray
    ddH: np.ndarray


def _check(phi, psi, lam):
    phi = np.asarray(phi, dtype=float)
    if phi.ndim != 2:
        raise ValueError(f"phi must have shape (P, n_params) (first derivatives of the P "
                         f"outputs); got {phi.shape}")
    n_z, n_params = phi.shape
    psi = np.asarray(psi, dtype=float)
    if psi.shape != (n_z, n_params, n_params):
        raise ValueError(f"psi must have shape {(n_z, n_params, n_params)} (second derivatives); "
                         f"got {psi.shape}")
    if not np.allclose(psi, np.swapaxes(psi, 1, 2), rtol=1e-12, atol=0):
        raise ValueError("psi must be symmetric in its two parameter indices (it is a Hessian)")
    lam = np.broadcast_to(np.asarray(lam, dtype=float), (n_params,))
    if np.any(lam < 0):
        raise ValueError("lam (the learning-rate tensor lambda_mu) must be >= 0")
    return phi, psi, lam


def meta_kernels(phi, psi, lam=1.0) -> MetaKernels:
    """NTK, dNTK (meta-kernel) and second meta-kernel of a quadratic model.

    Parameters
    ----------
    phi : array_like (P, Q)
        ``d z_i / d theta_mu`` for P outputs (neuron x input) and Q parameters.
    psi : array_like (P, Q, Q)
        ``d^2 z_i / d theta_mu d theta_nu``.
    lam : float or array_like (Q,), default 1
        Learning-rate tensor ``lambda_mu``.

    Returns
    -------
    MetaKernels
    """
    phi, psi, lam = _check(phi, psi, lam)
    lphi = phi * lam                                   # lambda_mu phi_{i mu}
    H = lphi @ phi.T
    dH = np.einsum("amn,bm,cn->abc", psi, lphi, lphi, optimize=True)
    # ddH_{i1 i2 j1 j2} = sum lambda_mu lambda_nu lambda_rho psi_{i1 mu nu} psi_{i2 mu rho}
    #                     phi_{j1 nu} phi_{j2 rho}
    psi_l = np.einsum("amn,cn->amc", psi, lphi, optimize=True)     # (P, Q, P)
    ddH = np.einsum("amc,m,bmd->abcd", psi_l, lam, psi_l, optimize=True)
    return MetaKernels(H, dH, ddH)


def quadratic_model(z0, phi, psi, dtheta):
    """Outputs of the quadratic model at ``theta_0 + dtheta``.

    Parameters
    ----------
    z0 : array_like (P,)
    phi : array_like (P, Q)
    psi : array_like (P, Q, Q)
    dtheta : array_like (Q,)

    Returns
    -------
    ndarray (P,)
    """
    phi, psi, _ = _check(phi, psi, 1.0)
    d = np.asarray(dtheta, dtype=float)
    return np.asarray(z0, float) + phi @ d + 0.5 * np.einsum("amn,m,n->a", psi, d, d)


def quadratic_step(kernels: MetaKernels, eps, eta):
    """Change of the quadratic model's outputs and NTK after one gradient step.

    Exact for the quadratic model (module docstring): ``Delta z = -eta H eps
    + (eta^2/2) dH eps eps`` and ``Delta H = -eta (dH + dH^T) eps + eta^2 ddH eps eps``.

    Parameters
    ----------
    kernels : MetaKernels
    eps : array_like (P,)
        ``dLoss/dz`` at the current outputs (MSE: ``z - y`` on training
        outputs, 0 elsewhere).
    eta : float
        Global learning rate.

    Returns
    -------
    dz : ndarray (P,)
    dH : ndarray (P, P)
    """
    eps = np.asarray(eps, dtype=float)
    n_z = kernels.H.shape[0]
    if eps.shape != (n_z,):
        raise ValueError(f"eps must have shape ({n_z},) (one entry per output); got {eps.shape}")
    eta = float(eta)
    dz = -eta * kernels.H @ eps + 0.5 * eta ** 2 * np.einsum("abc,b,c->a", kernels.dH, eps, eps)
    lin = np.einsum("abc,c->ab", kernels.dH, eps)
    dH = -eta * (lin + lin.T) + eta ** 2 * np.einsum("abcd,c,d->ab", kernels.ddH, eps, eps)
    return dz, dH
