r"""The dNTK/ddNTK pair patterns of the P..U estimators, batched over the ensemble.

:func:`pdlt.experiment.ntk.derivative_pairs` computes the six neuron-pair
patterns the P..U estimators need with ``torch.func`` (``jacrev``, ``jvp``,
``vmap`` over networks): per network it materializes Jacobian rows, Hessian-
vector products and third derivatives as vectors of all ``P`` parameters.
:func:`derivative_pairs_batched` computes the same numbers for a plain MLP
from recursions over the layers that never form a parameter vector: every
step is a batched matrix product of a layer's weights with a few vectors of
that layer's width, over all networks at once. Same fields, shapes and
definitions (``tests/experiment/test_estimators_derivative.py`` checks
agreement with the autodiff path to 1e-11 relative); residual MLPs fall back
to the autodiff path.

Derivation (rescaled coordinates of :func:`pdlt.experiment.ntk.network_function`:
``W_l = W0_l + sqrt(lambda_W/n_{l-1}) phi_W``, ``b_l = b0_l + sqrt(lambda_b) phi_b``;
write ``lw_l = lambda_W/n_{l-1}``, ``lb_l = lambda_b``, ``h^(0)_a = x_a``,
``h^(l) = sigma(z^(l))``)
------------------------------------------------------------------------------

*Jacobian rows.* ``J_{i;a} = d z^(L)_{i;a} / d phi`` has the layer-l blocks
``sqrt(lw_l) delta^(l)_{i;a} (x) h^(l-1)_a`` (weights) and ``sqrt(lb_l)
delta^(l)_{i;a}`` (biases), with the backward vectors
``delta^(L)_{i;a} = e_i``, ``delta^(l)_{i;a} = sigma'(z^(l)_a) . W_{l+1}^T delta^(l+1)_{i;a}``.

*Jets along Jacobian rows.* Displacing the parameters along directions
``v_k = J_{j_k; c_k}`` (``k = (j, c)``: a neuron of the subset and an input)
moves layer l's weights by ``lw_l delta_k (x) h_{c_k}`` and biases by
``lb_l delta_k`` (``delta_k = delta^(l)_{j_k;c_k}``, ``h = h^(l-1)``), so the
mixed derivatives of ``z^(l)_a`` obey

.. math::
    \partial_k z_a &= \delta_k\,[lb + lw\,h_{c_k}\cdot h_a] + W\,\partial_k h_a \\
    \partial_{kl} z_a &= lw\,[\delta_k\,(h_{c_k}\cdot\partial_l h_a)
        + \delta_l\,(h_{c_l}\cdot\partial_k h_a)] + W\,\partial_{kl} h_a \\
    \partial_{klm} z_a &= lw\,[\delta_k\,(h_{c_k}\cdot\partial_{lm} h_a)
        + \delta_l\,(h_{c_l}\cdot\partial_{km} h_a)
        + \delta_m\,(h_{c_m}\cdot\partial_{kl} h_a)] + W\,\partial_{klm} h_a

with ``d h = sigma' d z``, ``d_kl h = sigma'' d_k z d_l z + sigma' d_kl z`` and
``d_klm h = sigma''' d_k z d_l z d_m z + sigma'' (d_kl z d_m z + d_km z d_l z
+ d_lm z d_k z) + sigma' d_klm z`` (zero at the input). At the last layer
``d_k z_{i;a} = H``, ``d_kl z_{i;a} = dH_{i,k,l}`` and ``d_klm z_{i;a} =
ddIH_{i,k,l,m}``.

*Hessian-vector products.* ``U_{(i,a),v} = Hess z_{i;a} . J_v`` has the
layer-l blocks ``sqrt(lw) [d_v delta_{i;a} (x) h_a + delta_{i;a} (x) d_v h_a]``
and ``sqrt(lb) d_v delta_{i;a}``, where ``d_v delta^(L) = 0`` and

.. math::
    \partial_v\delta^{(l)}_{i;a} = \sigma''\,\partial_v z^{(l)}_a\,W_{l+1}^T\delta^{(l+1)}_{i;a}
      + \sigma'\,\big[lw_{l+1}\,h^{(l)}_{c_v}\,(\delta^{(l+1)}_v\cdot\delta^{(l+1)}_{i;a})
      + W_{l+1}^T\,\partial_v\delta^{(l+1)}_{i;a}\big],

so ``U . U'`` is a sum over layers of products of neuron dot products:
``lb <dd, dd'> + lw [<dd, dd'> (h_a.h_a') + <dd, delta'> (h_a . d h_a') +
<delta, dd'> (d h_a . h_a') + <delta, delta'> (d h_a . d h_a')]``, which gives
``ddIIH`` (``ddII_* = U . U``).

Cost per network and layer: products of the layer's weight matrix with the
``s N`` backward vectors, ``K`` first-order, ``K^2`` second-order and
``K s N^2`` third-order jets (same-neuron pairs only) and ``s N K``
Hessian-vector recursions (``K = s N``), each of the layer's width; against
the autodiff path's ``(s N)^2 + s^2 N^3`` passes over all ``P`` parameters
(``benchmarks/README.md``, "Report cost": 14-70x less CPU at widths 32-128).
"""

from __future__ import annotations

import torch

from . import ntk as _ntk

__all__ = ["derivative_pairs_batched", "batched_bytes_per_network"]


def _activation_derivatives(tact, z):
    """sigma, sigma', sigma'', sigma''' at z by nested forward-mode autodiff (elementwise)."""
    from torch.func import jvp

    one = torch.ones_like(z)

    def d1(u):
        return jvp(tact.sigma, (u,), (one,))[1]

    def d2(u):
        return jvp(d1, (u,), (one,))[1]

    s0 = tact.sigma(z)
    s1, s2 = jvp(d1, (z,), (one,))
    _, s3 = jvp(d2, (z,), (one,))
    return s0, s1, s2, s3


def batched_bytes_per_network(mlp, N, layer, neurons, fields=_ntk._PAIR_FIELDS, item=8):
    """Working memory of :func:`derivative_pairs_batched` per network, in bytes (an upper bound).

    Counts what the recursions keep for every layer up to ``layer`` (forward
    values and the four activation derivatives, backward vectors, first- and
    second-order jets: ``n (5 N + 2 s N + 2 N K + N K^2)`` floats per layer,
    ``K = s N``; ``N K`` instead of ``N K^2`` for P alone), three times that
    for the temporaries of one layer step, the third-order jets ``n N K s N^2`` (seven arrays of that size at once) when
    R is asked for, and the Hessian-vector Gram blocks (twelve ``R x R``
    arrays, ``R = s N K``) when S, T or U is; ``item`` bytes per float.
    Residual MLPs take the autodiff path, whose memory this does not bound.

    Parameters
    ----------
    mlp : pdlt.MLP
    N : int
        Number of inputs.
    layer : int
        1-based layer measured.
    neurons : int
        Subset size ``s`` (capped at the layer's width).
    fields : sequence of str
        The fields computed (see :func:`derivative_pairs_batched`).
    item : int
        Bytes per float (8: float64).

    Returns
    -------
    int
    """
    want = set(fields)
    s = int(min(neurons, mlp.widths[layer]))
    K = s * N
    d2 = bool(want & {"dH_iij", "ddI_iijj"})
    d2_diag = "dH_ijj" in want and not d2
    d3 = "ddI_iijj" in want
    gram = bool(want & {"ddII_iijj", "ddII_ijij", "ddII_ijji"})
    per_unit = (5 * N + 2 * s * N + 2 * N * K + (N * K * K if d2 else 0)
                + (N * N * K if d2_diag else 0))
    count = 0
    for l in range(1, int(layer) + 1):
        n = int(mlp.widths[l])
        count += 3 * n * per_unit + (7 * n * N * K * s * N * N if d3 else 0)
    if gram:
        R = s * N * K
        count += 12 * R * R + 6 * int(max(mlp.widths[1:layer + 1])) * R
    return int(item * count)


def derivative_pairs_batched(weights, biases, x, mlp, layer, neurons, fields=_ntk._PAIR_FIELDS):
    """The fields of :func:`pdlt.experiment.ntk.derivative_pairs`, by batched layer recursions.

    Parameters
    ----------
    weights, biases : lists of tensors (M, n_l, n_{l-1}) and (M, n_l)
    x : tensor (N, n0)
    mlp : pdlt.MLP
        A residual MLP (``gamma != 0`` or ``xi != 1`` in some layer) is passed
        to :func:`pdlt.experiment.ntk.derivative_pairs` (autodiff).
    layer : int
        1-based layer.
    neurons : int
        Subset size ``s`` (the first ``s`` neurons of the layer); capped at its width.
    fields : sequence of str
        Which fields to compute (default all).

    Returns
    -------
    DerivativePairs
        Fields of shape (M, s, s, N, N, N) (``dH_*``) and (M, s, s, N, N, N, N)
        (``dd*``); the fields not asked for are None.

    Raises
    ------
    ValueError
        If ``fields`` names an unknown field.
    """
    unknown = set(fields) - set(_ntk._PAIR_FIELDS)
    if unknown:
        raise ValueError(f"fields: unknown {sorted(unknown)}; choose from {_ntk._PAIR_FIELDS}")
    gam, xis = _ntk._residual_params(mlp, len(weights))
    if any(g != 0.0 for g in gam[:layer]) or any(v != 1.0 for v in xis[:layer]):
        return _ntk.derivative_pairs(weights, biases, x, mlp, layer, neurons, fields)
    from .activations import torch_activation

    want = set(fields)
    tact = torch_activation(mlp.activation)
    L = int(layer)
    s = int(min(neurons, weights[L - 1].shape[1]))
    B = weights[0].shape[0]
    N = x.shape[0]
    K = s * N                               # directions k = (j, c), index j * N + c
    dt, dev = weights[0].dtype, weights[0].device
    Ws = [weights[l] for l in range(L)]
    bs = [biases[l] for l in range(L)]
    Ws[-1], bs[-1] = Ws[-1][:, :s], bs[-1][:, :s]
    lw = [float(mlp.lambda_W[l]) / float(mlp.widths[l]) for l in range(L)]
    lb = [float(mlp.lambda_b[l]) for l in range(L)]
    cK = torch.arange(K, device=dev) % N     # the input c of direction k

    # forward pass: h[l] = h^(l) (B, n_l, N), l = 0..L-1; sigma derivatives at z^(1..L-1)
    h = [x.T.to(dt).expand(B, -1, -1)]
    sd = [None]
    z = None
    for l in range(1, L + 1):
        z = torch.baddbmm(bs[l - 1][:, :, None], Ws[l - 1], h[-1])
        if l < L:
            s0, s1, s2, s3 = _activation_derivatives(tact, z)
            h.append(s0)
            sd.append((s1, s2, s3))
    # backward vectors delta[l] (B, n_l, s, N) [.., i, a] and g[l] = W_{l+1}^T delta[l+1]
    delta = [None] * (L + 1)
    g = [None] * (L + 1)
    eye = torch.eye(s, dtype=dt, device=dev)
    delta[L] = eye[None, :, :, None].expand(B, s, s, N)
    for l in range(L - 1, 0, -1):
        n_next = Ws[l].shape[1]
        g[l] = torch.bmm(Ws[l].transpose(1, 2), delta[l + 1].reshape(B, n_next, s * N)) \
            .reshape(B, -1, s, N)
        delta[l] = sd[l][0][:, :, None, :] * g[l]

    def dirs(l):  # delta_k^(l) (B, n_l, K)
        return delta[l].reshape(B, -1, K)

    def matvec(l, v):  # W_l @ v over the neuron axis 1, any trailing shape
        shp = v.shape
        return torch.bmm(Ws[l - 1], v.reshape(B, shp[1], -1)).reshape(B, -1, *shp[2:])

    def gather_c(P):
        """P (B, N_c, ...) -> (B, K, ...) with entry k taken at c = c(k)."""
        return P[:, cK]

    need_d3 = "ddI_iijj" in want
    # P alone needs the second-order jets only along same-neuron direction pairs
    # ((j,c), (j,d)): s N^2 of them instead of K^2 = s^2 N^2 (the recursion closes on them)
    diag_d2 = want & {"dH_ijj", "dH_iij", "ddI_iijj"} == {"dH_ijj"}
    need_d2 = bool(want & {"dH_iij", "ddI_iijj"})
    need_U = bool(want & {"ddII_iijj", "ddII_ijij", "ddII_ijji"})
    # forward jets; D1[l] (B, n, N_a, K), D2[l] (B, n, N_a, K, K), D3[l] (B, n, N_a, K, s, N, N)
    # [.., k1, j, c, d] = d_{k1} d_{(j,c)} d_{(j,d)} z (only same-neuron pairs (j,c), (j,d))
    D1 = [None] * (L + 1)
    D2 = [None] * (L + 1)
    D3 = [None] * (L + 1)
    dh1 = [None] * (L + 1)   # d_k h^(l) (B, n, N, K); None (zero) at l = 0
    D2d = None               # diag_d2: (B, n, N_a, s, N_c, N_d) = d_{(j,c)} d_{(j,d)} z_a
    for l in range(1, L + 1):
        hp = h[l - 1]
        Gh = hp.transpose(1, 2) @ hp                           # (B, N_c, N_a)
        A = lb[l - 1] + lw[l - 1] * gather_c(Gh)               # (B, K, N_a)
        dk = dirs(l)                                           # (B, n, K)
        D1[l] = dk[:, :, None, :] * A.transpose(1, 2)[:, None]
        if l > 1:
            D1[l] = D1[l] + matvec(l, dh1[l - 1])
        if need_d2 or need_d3:
            if l > 1:
                s1, s2, _ = sd[l - 1]
                # P1[c, a, k'] = h_c . d_{k'} h_a ; T[a, k, k'] = delta_k (h_{c_k} . d_{k'} h_a)
                P1 = torch.einsum("bmc,bmak->bcak", hp, dh1[l - 1])
                Pk = gather_c(P1)                               # (B, K, N_a, K')
                term = dk[:, :, None, :, None] * Pk.permute(0, 2, 1, 3)[:, None]
                d2h = (s2[..., None, None] * D1[l - 1][..., :, None] * D1[l - 1][..., None, :]
                       + s1[..., None, None] * D2[l - 1])
                D2[l] = lw[l - 1] * (term + term.transpose(-1, -2)) + matvec(l, d2h)
            else:
                D2[l] = torch.zeros(B, dk.shape[1], N, K, K, dtype=dt, device=dev)
        if diag_d2:
            n_l = dk.shape[1]
            if l > 1:
                s1, s2, _ = sd[l - 1]
                d1v = D1[l - 1].reshape(B, -1, N, s, N)               # [.., a, j, c]
                P1 = torch.einsum("bmc,bmak->bcak", hp, dh1[l - 1])   # (B, N_c, N_a, K)
                Pd = P1.reshape(B, N, N, s, N).permute(0, 2, 3, 1, 4)  # [a, j, c, d]
                # delta_(j,c) (h_c . d_(j,d) h_a)
                term = dk.reshape(B, n_l, 1, s, N, 1) * Pd[:, None]
                d2h = (s2[..., None, None, None] * d1v[..., :, :, None] * d1v[..., :, None, :]
                       + s1[..., None, None, None] * D2d)
                D2d = lw[l - 1] * (term + term.transpose(-1, -2)) + matvec(l, d2h)
            else:
                D2d = torch.zeros(B, n_l, N, s, N, N, dtype=dt, device=dev)
        if need_d3:
            n_l = dk.shape[1]
            if l > 1:
                s1, s2, s3 = sd[l - 1]
                d1z = D1[l - 1]                                 # (B, n, N, K)
                d1v = d1z.reshape(*d1z.shape[:3], s, N)         # [.., j, c]
                d2z = D2[l - 1]                                 # (B, n, N, K, K)
                d2v = d2z.reshape(*d2z.shape[:3], K, s, N)      # [.., k1, j, c]
                d2jj = torch.diagonal(d2z.reshape(*d2z.shape[:3], s, N, s, N), dim1=3, dim2=5)
                d2jj = d2jj.permute(0, 1, 2, 5, 3, 4)           # [.., j, c, d]
                sh = (*d1z.shape[:3], K, s, N, N)
                # d_{k1 (j,c) (j,d)} h at layer l-1
                d3h = (s3[..., None, None, None, None]
                       * d1z[..., :, None, None, None] * d1v[..., None, :, :, None]
                       * d1v[..., None, :, None, :]
                       + s2[..., None, None, None, None]
                       * (d2v[..., :, :, :, None] * d1v[..., None, :, None, :]
                          + d2v[..., :, :, None, :] * d1v[..., None, :, :, None]
                          + d2jj[..., None, :, :, :] * d1z[..., :, None, None, None])
                       + s1[..., None, None, None, None] * D3[l - 1]).expand(sh)
                # d_k h (B, n, N, K) and d_kl h for the three lw terms
                d2h = (s2[..., None, None] * D1[l - 1][..., :, None] * D1[l - 1][..., None, :]
                       + s1[..., None, None] * D2[l - 1])       # (B, n, N, K, K)
                d2hv = d2h.reshape(*d2h.shape[:3], K, s, N)     # [.., k1, j, c]
                d2hjj = torch.diagonal(d2h.reshape(*d2h.shape[:3], s, N, s, N), dim1=3, dim2=5)
                d2hjj = d2hjj.permute(0, 1, 2, 5, 3, 4)         # [.., j, c, d]
                # delta_{k1} (h_{c1} . d_{(j,c)(j,d)} h_a)
                Q23 = torch.einsum("bmx,bmajcd->bxajcd", hp, d2hjj)      # [c1, a, j, c, d]
                t1 = dirs(l)[:, :, None, :, None, None, None] \
                    * gather_c(Q23).permute(0, 2, 1, 3, 4, 5)[:, None]   # [.., a, k1, j, c, d]
                # delta_{(j,c)} (h_c . d_{k1 (j,d)} h_a)
                Q13 = torch.einsum("bmx,bmakjd->bxakjd", hp, d2hv)       # [c', a, k1, j, d]
                dv = delta[l]                                            # (B, n, s, N) [j, c]
                t2 = torch.einsum("bnjc,bcakjd->bnakjcd", dv, Q13)
                # delta_{(j,d)} (h_d . d_{k1 (j,c)} h_a)
                t3 = torch.einsum("bnjd,bdakjc->bnakjcd", dv, Q13)
                D3[l] = lw[l - 1] * (t1 + t2 + t3) + matvec(l, d3h)
            else:
                D3[l] = torch.zeros(B, n_l, N, K, s, N, N, dtype=dt, device=dev)
        if l < L:
            dh1[l] = sd[l][0][..., None] * D1[l]
    out = {}
    if diag_d2:   # dH_ijj[i, j, a, b, c] = D2d[i, a, j, b, c]
        out["dH_ijj"] = D2d.permute(0, 1, 3, 2, 4, 5)
    if need_d2:
        d2L = D2[L].reshape(B, s, N, s, N, s, N)   # [i, a, j1, b, j2, c]
        if "dH_ijj" in want:   # [i, j, a, b, c] = D2[i, a, (j,b), (j,c)]
            t = torch.diagonal(d2L, dim1=3, dim2=5)          # (B, s_i, N_a, N_b, N_c, s_j)
            out["dH_ijj"] = t.permute(0, 1, 5, 2, 3, 4)
        if "dH_iij" in want:   # [i, j, a, b, c] = D2[i, a, (i,b), (j,c)]
            t = torch.diagonal(d2L, dim1=1, dim2=3)          # (B, N_a, N_b, s_j, N_c, s_i)
            out["dH_iij"] = t.permute(0, 5, 3, 1, 2, 4)
    if need_d3:   # ddI_iijj[i, j, a, b, c, d] = D3[i, a, (i,b), j, c, d]
        d3L = D3[L].reshape(B, s, N, s, N, s, N, N)     # [i, a, i', b, j, c, d]
        t = torch.diagonal(d3L, dim1=1, dim2=3)             # (B, N_a, N_b, s_j, N_c, N_d, s_i)
        out["ddI_iijj"] = t.permute(0, 6, 3, 1, 2, 4, 5)
    if need_U:
        R = s * N * K
        gram = torch.zeros(B, R, R, dtype=dt, device=dev)
        dd = None   # d_v delta^(l)_{i;a} (B, n_l, s, N, K) [i, a, v]
        for l in range(L, 0, -1):
            if l == L:
                dd = torch.zeros(B, s, s, N, K, dtype=dt, device=dev)
            else:
                n_next = Ws[l].shape[1]
                s1, s2, _ = sd[l]
                # E[i, a, v] = delta_v^(l+1) . delta_{i;a}^(l+1)
                E = torch.einsum("bmia,bmk->biak", delta[l + 1], dirs(l + 1))
                hK = h[l][:, :, cK]                                       # (B, n_l, K)
                back = torch.bmm(Ws[l].transpose(1, 2), dd.reshape(B, n_next, -1)) \
                    .reshape(B, -1, s, N, K)
                dd = (s2[:, :, None, :, None] * D1[l][:, :, None, :, :] * g[l][..., None]
                      + s1[:, :, None, :, None] * (lw[l] * hK[:, :, None, None, :] * E[:, None]
                                                   + back))
            ddf = dd.reshape(B, -1, R)                                    # rows (i, a, v)
            dl = delta[l]                                                 # (B, n, s, N)
            hp = h[l - 1]                                                 # (B, n', N)
            dd_dd = ddf.transpose(1, 2) @ ddf                             # (B, R, R)
            gram += lb[l - 1] * dd_dd
            # h_a . h_a' over rows (i, a, v)
            Gh = hp.transpose(1, 2) @ hp                                  # (B, N, N)
            Ga = Gh[:, None, :, None, None, :, None].expand(B, s, N, K, s, N, K) \
                .reshape(B, R, R)
            acc = dd_dd * Ga
            if l > 1:
                dh = dh1[l - 1]                                           # (B, n', N, K)
                dl_f = dl[..., None].expand(*dl.shape, K).reshape(B, -1, R)   # delta_{i;a}
                dd_dl = ddf.transpose(1, 2) @ dl_f                        # <dd_r, delta_r'>
                dl_dl = dl_f.transpose(1, 2) @ dl_f                       # <delta_r, delta_r'>
                hdh = torch.einsum("bma,bmcv->bacv", hp, dh)              # h_a . d_v h_c
                # (h_a . d_v' h_a') over (r, r'): depends on a, a', v'
                X = hdh[:, None, :, None, None, :, :].expand(B, s, N, K, s, N, K).reshape(B, R, R)
                dhdh = torch.einsum("bmav,bmcw->bavcw", dh, dh)           # d_v h_a . d_w h_c
                Y = dhdh[:, None, :, :, None, :, :].expand(B, s, N, K, s, N, K).reshape(B, R, R)
                acc = acc + dd_dl * X + dd_dl.transpose(1, 2) * X.transpose(1, 2) + dl_dl * Y
            gram += lw[l - 1] * acc
        U = gram.reshape(B, s, N, s, N, s, N, s, N)   # [i, a, j, c, i', b, j', d]
        if "ddII_iijj" in want:   # U[(i,a),(j,c)] . U[(i,b),(j,d)]
            t = torch.diagonal(torch.diagonal(U, dim1=1, dim2=5), dim1=2, dim2=5)
            # t: (B, N_a, N_c, N_b, N_d, s_i, s_j)
            out["ddII_iijj"] = t.permute(0, 5, 6, 1, 3, 2, 4)
        if "ddII_ijij" in want:   # U[(i,a),(i,c)] . U[(j,b),(j,d)]
            t = torch.diagonal(torch.diagonal(U, dim1=1, dim2=3), dim1=3, dim2=5)
            # after first: (B, N_a, N_c, i', N_b, j', N_d, s_i) -> second over (i', j'):
            # (B, N_a, N_c, N_b, N_d, s_i, s_j)
            out["ddII_ijij"] = t.permute(0, 5, 6, 1, 3, 2, 4)
        if "ddII_ijji" in want:   # U[(i,a),(j,c)] . U[(j,b),(i,d)]
            t = torch.diagonal(torch.diagonal(U, dim1=1, dim2=7), dim1=2, dim2=4)
            # first (i with i''): (B, N_a, j, N_c, i', N_b, N_d, s_i); second (j with i'):
            # (B, N_a, N_c, N_b, N_d, s_i, s_j)
            out["ddII_ijji"] = t.permute(0, 5, 6, 1, 3, 2, 4)
    return _ntk.DerivativePairs(*(out[k] if k in want else None for k in _ntk._PAIR_FIELDS))
