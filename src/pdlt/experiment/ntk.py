r"""Preactivations, the NTK by its forward equation, and autodiff NTK/dNTK/ddNTKs.

Parameters of M networks are stored batched over the network axis:
``weights[l-1]`` has shape (M, n_l, n_{l-1}) and ``biases[l-1]`` (M, n_l)
for layer l = 1..L. Inputs ``x`` have shape (N, n0). Index order of every
returned tensor: the network axis, then neuron indices in the order
``shared/NOTATION.md`` writes them, then input indices in the same order:
``H[m, i1, i2, a1, a2] = H_{i1 i2; a1 a2}``,
``dH[m, i0, i1, i2, a0, a1, a2]``, ``ddI[m, i0, i1, i2, i3, a0, a1, a2, a3]``.

Forward equation of the NTK (book eq. 8.12; book section as cited)
----------------------------------------------------------------------
With ``sigma_{j;a} = sigma(z^(l)_{j;a})`` and the hyperparameters of layer l+1,

.. math::
    H^{(l+1)}_{i_1 i_2; a_1 a_2} = \delta_{i_1 i_2}\Big[\lambda_b
        + \frac{\lambda_W}{n_l}\sum_j \sigma_{j;a_1}\sigma_{j;a_2}\Big]
        + \sum_{j_1 j_2} W_{i_1 j_1} W_{i_2 j_2}\,
          \sigma'_{j_1;a_1}\sigma'_{j_2;a_2}\, H^{(l)}_{j_1 j_2; a_1 a_2},

starting from ``H^(1) = delta_{i1 i2} [lambda_b + lambda_W x_a . x_b / n_0]``.
It needs no Jacobian: per layer two batched matmuls of
(n_{l+1} x n_l) by (n_l x N n) over the (network, input) batch, treating H as
one symmetric (N n) x (N n) matrix per network. It agrees with the autodiff NTK
(:func:`ntk_autodiff`, ``J Lambda J^T``) to ~1e-13 relative in float64
(``tests/experiment/test_ntk.py`` checks 1e-10).

Residual MLPs (book appendix B): ``z^(l+1) = xi [b + W sigma(z^(l))] + gamma z^(l)``
and the forward equation becomes ``H' = xi^2 [lambda_b + lambda_W sigma.sigma/n]
delta + Y H Y^T`` with ``Y = xi W diag(sigma') + gamma 1`` (the same two matmuls).
Functions that take an ``mlp`` read ``mlp.gamma`` and ``mlp.xi``; those that
take an activation also accept the MLP in its place.

Derivatives by torch.func
-------------------------
In rescaled coordinates ``phi_mu = theta_mu / sqrt(lambda_mu)`` the
learning rates disappear: ``H = J J^T``, ``dH_{i0i1i2} = D^2 z_{i0}[J_{i1},
J_{i2}]``, ``ddIH_{i0i1i2i3} = D^3 z_{i0}[J_{i1}, J_{i2}, J_{i3}]`` and
``ddIIH_{i0i1i2i3} = (Hess z_{i0} J_{i2}) . (Hess z_{i1} J_{i3})``, with
``J_i = d z_i / d phi`` (book ch. 11 and "The End of Training"; definitions
of NOTATION.md). They are computed per network by forward-over-reverse
(``jvp`` of ``jacrev``) and vectorized over networks with ``vmap``. Cost:
with ``p = n_l N`` outputs and ``P`` parameters, the dNTK needs ``p``
forward-over-reverse passes and memory ``p^2 P`` per network; the ddNTKs
``p^2`` third-order passes and memory ``p^3 P``. They are meant for
widths up to a few tens. The ensemble estimators of P..U need only six
neuron-pair patterns of these tensors, on a subset of ``s`` neurons:
:func:`derivative_pairs` computes just those, at a cost that does not grow
with the width beyond ``P`` (widths 128 and more).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.func import jacrev, jvp, vmap

__all__ = ["preactivations", "ntk_forward", "ntk_autodiff", "dntk_autodiff", "ddntk_autodiff",
           "network_function", "derivative_pairs", "DerivativePairs"]


# ---------------------------------------------------------------------------
# forward pass and NTK forward equation (internal layout H[m, a1, i1, a2, i2])
# ---------------------------------------------------------------------------

def _first_layer_ntk(x, mlp, B, n1, dtype, device):
    N = x.shape[0]
    theta1 = mlp.lambda_b[0] + mlp.lambda_W[0] / mlp.widths[0] * (x @ x.T)  # (N, N)
    eye = torch.eye(n1, dtype=dtype, device=device)
    H = theta1[:, None, :, None] * eye[None, :, None, :]  # (a1, i1, a2, i2)
    return H.expand(B, N, n1, N, n1)


def _ntk_step(H, sp, sig, W, lb, lW, gamma=0.0, xi=1.0):
    """One step of the NTK forward equation, internal layout.

    H is the symmetric (N n) x (N n) matrix ``H[(a1, i1), (a2, i2)]`` of each
    network, stored (B, N, n, N, n). With the block-diagonal
    ``Wt = diag_a(W diag(sigma'_a))`` the step is ``Wt H Wt^T`` plus the
    diagonal term: two batched matmuls of (n' x n) by (n x N n) over the
    (network, input) batch, using ``(Wt H)^T = H Wt^T``.

    sp, sig : (B, n, N) sigma'(z), sigma(z); W : (B, n', n).
    Residual layer: ``Wt -> xi Wt + gamma 1`` and the diagonal term gets ``xi^2``.
    Returns (B, N, n', N, n').
    """
    B, N, n = H.shape[0], H.shape[1], H.shape[2]
    n_out = W.shape[1]
    Wa = W[:, None, :, :] * sp.transpose(1, 2)[:, :, None, :]  # (B, N, n', n): W diag(sigma'_a)
    plain = gamma == 0.0 and xi == 1.0
    if not plain:
        Wa = xi * Wa
        if gamma != 0.0:
            Wa = Wa + gamma * torch.eye(n, dtype=Wa.dtype, device=Wa.device)
    Wa = Wa.reshape(B * N, n_out, n)
    X = torch.bmm(Wa, H.reshape(B * N, n, N * n))  # (Wt H)[(a1 i1), (a2 j2)]
    Xt = X.reshape(B, N * n_out, N * n).transpose(1, 2).reshape(B * N, n, N * n_out)
    Z = torch.bmm(Wa, Xt).reshape(B, N, n_out, N, n_out)  # Wt (Wt H)^T = Wt H Wt^T
    gram = sig.transpose(1, 2) @ sig  # (B, N, N): sum_j sigma_j;a1 sigma_j;a2
    diag = lb + lW / n * gram
    Z.diagonal(dim1=2, dim2=4).add_((diag if plain else xi * xi * diag)[..., None])
    return Z


def _residual_params(mlp, depth):
    """Per-layer (gamma, xi) of an MLP, or the plain ones when mlp is None."""
    gam = getattr(mlp, "gamma", None)
    xis = getattr(mlp, "xi", None)
    if gam is None:
        return (0.0,) * depth, (1.0,) * depth
    return tuple(gam), tuple(xis)


def _forward(weights, biases, x, tact, upto, *, ntk=False, mlp=None):
    """Yield ``(l, z, H)`` for l = 1..upto; z (B, n_l, N), H (B, N, n, N, n) or None.

    Residual layers (``mlp.gamma``, ``mlp.xi``) are applied when ``mlp`` is given.
    """
    B = weights[0].shape[0]
    gam, xis = _residual_params(mlp, len(weights))
    z = torch.matmul(weights[0], x.T) + biases[0][:, :, None]
    H = _first_layer_ntk(x, mlp, B, z.shape[1], z.dtype, z.device) if ntk else None
    yield 1, z, H
    for l in range(1, upto):
        sig = tact.sigma(z)
        z_next = torch.baddbmm(biases[l][:, :, None], weights[l], sig)
        g, xi = gam[l], xis[l]
        if g != 0.0 or xi != 1.0:
            z_next = xi * z_next + g * z if g != 0.0 else xi * z_next
        if ntk:
            H = _ntk_step(H, tact.d1(z), sig, weights[l], mlp.lambda_b[l], mlp.lambda_W[l],
                          g, xi)
        z = z_next
        yield l + 1, z, H


def preactivations(weights, biases, x, act, upto=None):
    """Preactivations ``z^(l)`` of M networks.

    Parameters
    ----------
    weights, biases : lists of tensors (M, n_l, n_{l-1}) and (M, n_l)
    x : tensor (N, n0)
    act : pdlt.Activation or pdlt.MLP
        The activation; pass the MLP itself for a residual network (its
        ``gamma`` and ``xi`` are then applied).
    upto : int, optional
        Last layer (default: all).

    Returns
    -------
    list of tensors (M, n_l, N), layers 1..upto
    """
    from .activations import torch_activation
    upto = upto or len(weights)
    mlp = act if hasattr(act, "gamma") and hasattr(act, "activation") else None
    tact = torch_activation(mlp.activation if mlp is not None else act)
    return [z for _, z, _ in _forward(weights, biases, x, tact, upto, mlp=mlp)]


def ntk_forward(weights, biases, x, mlp, upto=None):
    """The NTK of M networks by the forward equation (no Jacobian).

    Parameters
    ----------
    weights, biases : lists of tensors (M, n_l, n_{l-1}) and (M, n_l)
    x : tensor (N, n0)
    mlp : pdlt.MLP
        Supplies the activation and ``lambda_b``, ``lambda_W``.
    upto : int, optional

    Returns
    -------
    list of tensors (M, n_l, n_l, N, N)
        ``H^(l)_{i1 i2; a1 a2}`` for l = 1..upto.
    """
    from .activations import torch_activation
    upto = upto or len(weights)
    out = []
    for _, _, H in _forward(weights, biases, x, torch_activation(mlp.activation), upto,
                            ntk=True, mlp=mlp):
        out.append(H.permute(0, 2, 4, 1, 3))
    return out


# ---------------------------------------------------------------------------
# autodiff (torch.func) in rescaled coordinates phi = theta / sqrt(lambda)
# ---------------------------------------------------------------------------

def network_function(ws, bs, x, mlp, layer, tact=None):
    """``f(phi) -> z^(layer)`` flattened (index ``i * N + a``) for one network.

    ``ws``, ``bs`` are one network's weights (n_l, n_{l-1}) and biases;
    ``phi`` is a flat vector of parameter displacements in rescaled
    coordinates (``W = W0 + sqrt(lambda_W / n_{l-1}) phi_W``, ``b = b0 +
    sqrt(lambda_b) phi_b``), so ``d/dphi = sqrt(lambda) d/dtheta``.

    Returns
    -------
    f : callable
    P : int
        Number of parameters up to ``layer``.
    """
    from .activations import torch_activation
    tact = tact or torch_activation(mlp.activation)
    shapes = []
    for l in range(layer):
        shapes.append((ws[l].shape, math.sqrt(mlp.lambda_W[l] / mlp.widths[l])))
        shapes.append((bs[l].shape, math.sqrt(mlp.lambda_b[l])))
    sizes = [math.prod(s) for s, _ in shapes]
    P = sum(sizes)

    gam, xis = _residual_params(mlp, len(ws))

    def f(phi):
        parts = torch.split(phi, sizes)
        h = x.T
        z = None
        for l in range(layer):
            W = ws[l] + shapes[2 * l][1] * parts[2 * l].reshape(shapes[2 * l][0])
            b = bs[l] + shapes[2 * l + 1][1] * parts[2 * l + 1].reshape(shapes[2 * l + 1][0])
            z_new = W @ h + b[:, None]
            if gam[l] != 0.0 or xis[l] != 1.0:   # residual layer (l >= 1, 0-based)
                # a last layer restricted to its first rows (derivative_pairs) keeps
                # the skip connection of those rows only
                z_new = xis[l] * z_new + gam[l] * z[: z_new.shape[0]]
            z = z_new
            if l < layer - 1:
                h = tact.sigma(z)
        return z.reshape(-1)
    return f, P


def _per_network(fn, weights, biases, x, mlp, layer):
    """vmap ``fn(f, phi0)`` over the network axis."""
    from .activations import torch_activation
    tact = torch_activation(mlp.activation)

    def one(ws, bs):
        f, P = network_function(ws, bs, x, mlp, layer, tact)
        phi0 = torch.zeros(P, dtype=x.dtype, device=x.device)
        return fn(f, phi0)
    return vmap(one)([w for w in weights[:layer]], [b for b in biases[:layer]])


def _jac_and_hvps(f, phi0):
    J = jacrev(f)(phi0)  # (p, P)
    G = vmap(lambda v: jvp(jacrev(f), (phi0,), (v,))[1])(J)  # G[v, i0, :] = Hess z_i0 . J_v
    return J, G


def ntk_autodiff(weights, biases, x, mlp, layer):
    """The NTK ``J Lambda J^T`` of M networks at one layer, by ``torch.func.jacrev``.

    Returns
    -------
    tensor (M, n_l, n_l, N, N)
    """
    N = x.shape[0]

    def fn(f, phi0):
        J = jacrev(f)(phi0)
        return J @ J.T
    H = _per_network(fn, weights, biases, x, mlp, layer)
    n = weights[layer - 1].shape[1]
    return H.reshape(-1, n, N, n, N).permute(0, 1, 3, 2, 4)


def dntk_autodiff(weights, biases, x, mlp, layer):
    """The dNTK ``dH_{i0 i1 i2; a0 a1 a2}`` of M networks at one layer.

    ``dH_{i0i1i2} = sum lambda_mu lambda_nu (d_mu d_nu z_{i0}) (d_mu z_{i1}) (d_nu z_{i2})``
    (NOTATION.md; book ch. 11, book section as cited).

    Returns
    -------
    tensor (M, n, n, n, N, N, N)
    """
    N = x.shape[0]
    n = weights[layer - 1].shape[1]

    def fn(f, phi0):
        J, G = _jac_and_hvps(f, phi0)
        return torch.einsum("vip,up->iuv", G, J)
    dH = _per_network(fn, weights, biases, x, mlp, layer)
    return dH.reshape(-1, n, N, n, N, n, N).permute(0, 1, 3, 5, 2, 4, 6)


def ddntk_autodiff(weights, biases, x, mlp, layer):
    """The two ddNTKs ``ddIH`` and ``ddIIH`` of M networks at one layer.

    ``ddIH_{i0i1i2i3} = sum l l l (d1 d2 d3 z_{i0})(d1 z_{i1})(d2 z_{i2})(d3 z_{i3})``,
    ``ddIIH_{i0i1i2i3} = sum l l l (d1 d2 z_{i0})(d1 d3 z_{i1})(d2 z_{i2})(d3 z_{i3})``
    (NOTATION.md; book "The End of Training", book section as cited).

    Returns
    -------
    ddI, ddII : tensors (M, n, n, n, n, N, N, N, N)
    """
    N = x.shape[0]
    n = weights[layer - 1].shape[1]

    def fn(f, phi0):
        J, G = _jac_and_hvps(f, phi0)

        def hvp_along(v):
            return lambda phi: jvp(jacrev(f), (phi,), (v,))[1]

        # T[v, w, i0, :] = d/dt (Hess z_i0 . J_v)(phi0 + t J_w)
        T = vmap(lambda v: vmap(lambda w: jvp(hvp_along(v), (phi0,), (w,))[1])(J))(J)
        ddI = torch.einsum("klip,jp->ijkl", T, J)
        ddII = torch.einsum("kip,ljp->ijkl", G, G)
        return ddI, ddII
    ddI, ddII = _per_network(fn, weights, biases, x, mlp, layer)
    perm = (0, 1, 3, 5, 7, 2, 4, 6, 8)
    return (ddI.reshape(-1, n, N, n, N, n, N, n, N).permute(*perm),
            ddII.reshape(-1, n, N, n, N, n, N, n, N).permute(*perm))


# ---------------------------------------------------------------------------
# the neuron-pair patterns of the dNTK and ddNTKs on a subset of neurons
# ---------------------------------------------------------------------------

class DerivativePairs(NamedTuple):
    """Neuron-pair patterns of the dNTK and ddNTKs on the first ``s`` neurons.

    Each field is a tensor over the network axis, two neuron indices
    ``i, j`` of the subset (``0 <= i, j < s``, the diagonal ``i = j``
    included) and the input indices, or None when not asked for:

    ``dH_ijj[m, i, j, a0, a1, a2] = dH_{i j j; a0 a1 a2}``,
    ``dH_iij[m, i, j, a0, a1, a2] = dH_{i i j; a0 a1 a2}``,
    ``ddI_iijj[m, i, j, a0, a1, a2, a3] = ddIH_{i i j j; a0 a1 a2 a3}``,
    ``ddII_iijj``, ``ddII_ijij``, ``ddII_ijji`` likewise for ``ddIIH`` with
    the neuron pattern in the name (``ddII_ijji[m, i, j, ...] = ddIIH_{i j j i; ...}``).
    """

    dH_ijj: torch.Tensor | None
    dH_iij: torch.Tensor | None
    ddI_iijj: torch.Tensor | None
    ddII_iijj: torch.Tensor | None
    ddII_ijij: torch.Tensor | None
    ddII_ijji: torch.Tensor | None


_PAIR_FIELDS = DerivativePairs._fields


def derivative_pairs(weights, biases, x, mlp, layer, neurons, fields=_PAIR_FIELDS):
    r"""The dNTK/ddNTK entries the P..U estimators need, on the first ``neurons`` neurons.

    The estimators of P, Q, R, S, T, U (:func:`pdlt.experiment.estimators.estimate_statistic`)
    average six neuron patterns over ordered pairs ``i != j``. The neurons of a
    layer are exchangeable at initialization, so averaging over the ordered pairs
    of a fixed subset of ``s`` neurons is still unbiased. This function computes
    only those entries, for the subset ``S = {0, .., s-1}`` (see the module
    docstring for the rescaled coordinates ``phi``):

    * ``J_j = d z_{j} / d phi`` for ``j`` in S (all inputs): ``s N`` reverse passes
      of the network restricted to the rows S of its last layer (the other rows
      cannot affect ``z_S``);
    * ``G[(j,c), (i,a)] = Hess z_{i;a} . J_{j;c}`` for ``i, j`` in S:
      ``s N`` forward-over-reverse passes; then
      ``dH_{i0i1i2} = G[i2, i0] . J_{i1}`` and
      ``ddIIH_{i0i1i2i3} = G[i2, i0] . G[i3, i1]`` for the patterns needed;
    * for ``ddIH_{iijj} = D^3 z_i[J_i, J_j, J_j]`` only the third derivatives
      along two Jacobian rows of the *same* neuron j: ``s N^2`` passes
      ``d/dt G[(j,c)](phi0 + t J_{j;d})``, dotted with ``J_{i}``.

    Cost per network, with ``P`` the parameters up to ``layer``: time about
    ``(s N)^2 + s^2 N^3`` reverse passes, memory about ``(s^2 N^2 + s^2 N^3) P``
    floats (against ``(n N)^3`` passes and ``(n N)^3 P`` floats for the full
    :func:`ddntk_autodiff`). With ``neurons >= n_l`` the patterns are those of
    the full tensors (``tests/experiment/test_ntk.py`` checks 1e-12 relative).

    Parameters
    ----------
    weights, biases : lists of tensors (M, n_l, n_{l-1}) and (M, n_l)
    x : tensor (N, n0)
    mlp : pdlt.MLP
    layer : int
        1-based layer.
    neurons : int
        Subset size ``s``; capped at the width ``n_layer``.
    fields : sequence of str
        Which fields of :class:`DerivativePairs` to compute (default all);
        ``ddI_iijj`` is the expensive one (third derivatives).

    Returns
    -------
    DerivativePairs
        Fields of shape (M, s, s, N, N, N) (``dH_*``) and (M, s, s, N, N, N, N)
        (``dd*``); the fields not asked for are None.
    """
    unknown = set(fields) - set(_PAIR_FIELDS)
    if unknown:
        raise ValueError(f"fields: unknown {sorted(unknown)}; choose from {_PAIR_FIELDS}")
    N = x.shape[0]
    s = int(min(neurons, weights[layer - 1].shape[1]))
    ws = list(weights[:layer])
    bs = list(biases[:layer])
    ws[-1], bs[-1] = ws[-1][:, :s], bs[-1][:, :s]  # the rows S of the last layer
    want = set(fields)
    need_G = bool(want - {"ddI_iijj"})

    def fn(f, phi0):
        J = jacrev(f)(phi0)  # (s N, P), rows (j, c)
        Pn = J.shape[1]
        J3 = J.reshape(s, N, Pn)
        out = {}
        if need_G:
            G = vmap(lambda v: jvp(jacrev(f), (phi0,), (v,))[1])(J)  # G[(j,c), (i,a), :]
            G5 = G.reshape(s, N, s, N, Pn)  # G5[j, c, i, a, :] = Hess z_{i;a} . J_{j;c}
            if "dH_ijj" in want:   # dH_{(i,a0)(j,a1)(j,a2)} = G[(j,a2),(i,a0)] . J_{(j,a1)}
                out["dH_ijj"] = torch.einsum("jciap,jbp->ijabc", G5, J3)
            if "dH_iij" in want:   # dH_{(i,a0)(i,a1)(j,a2)} = G[(j,a2),(i,a0)] . J_{(i,a1)}
                out["dH_iij"] = torch.einsum("jciap,ibp->ijabc", G5, J3)
            if "ddII_iijj" in want:  # G[(j,a2),(i,a0)] . G[(j,a3),(i,a1)]
                out["ddII_iijj"] = torch.einsum("jciap,jdibp->ijabcd", G5, G5)
            if "ddII_ijij" in want:  # G[(i,a2),(i,a0)] . G[(j,a3),(j,a1)]
                Gd = torch.diagonal(G5, dim1=0, dim2=2).permute(3, 0, 1, 2)  # [i, c, a, :]
                out["ddII_ijij"] = torch.einsum("icap,jdbp->ijabcd", Gd, Gd)
            if "ddII_ijji" in want:  # G[(j,a2),(i,a0)] . G[(i,a3),(j,a1)]
                out["ddII_ijji"] = torch.einsum("jciap,idjbp->ijabcd", G5, G5)
        if "ddI_iijj" in want:
            # T[(j,c,d), (i,a), :] = d/dt (Hess z_{i;a} . J_{j;c})(phi0 + t J_{j;d})
            Jc = J3[:, :, None, :].expand(s, N, N, Pn).reshape(s * N * N, Pn)
            Jd = J3[:, None, :, :].expand(s, N, N, Pn).reshape(s * N * N, Pn)

            def third(v, w):
                return jvp(lambda phi: jvp(jacrev(f), (phi,), (v,))[1], (phi0,), (w,))[1]
            T = vmap(third)(Jc, Jd).reshape(s, N, N, s, N, Pn)
            # ddIH_{(i,a0)(i,a1)(j,a2)(j,a3)} = T[(j,a2,a3), (i,a0)] . J_{(i,a1)}
            out["ddI_iijj"] = torch.einsum("jcdiap,ibp->ijabcd", T, J3)
        return tuple(out.get(k, torch.zeros(0, dtype=J.dtype, device=J.device))
                     for k in _PAIR_FIELDS)

    res = _per_network(fn, ws, bs, x, mlp, layer)
    return DerivativePairs(*(r if k in want else None for k, r in zip(_PAIR_FIELDS, res)))
