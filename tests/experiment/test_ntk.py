"""NTK forward equation against autodiff; dNTK and ddNTKs against finite differences.

Finite-difference tolerances: central differences with step h have
truncation error ~ h^2 |f'''| and rounding error ~ eps |f| / h^k for a k-th
derivative. With O(1) derivatives (tanh, gelu, sin nets with C_W ~ 1):
second mixed difference, h = 1e-4: 1e-8 + 2e-16/1e-8 ~ 1e-8, tested at
1e-6 (relative to the tensor's max); third mixed difference, h = 1e-3:
1e-6 + 2e-16/1e-9 ~ 1e-6, tested at 1e-4.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from pdlt.experiment import (ddntk_autodiff, dntk_autodiff, network_function,  # noqa: E402
                             ntk_autodiff, ntk_forward)

EPS = np.finfo(float).eps
CONFIGS = {
    "tanh": dict(activation="tanh", C_W=1.5, C_b=0.1),
    "gelu": dict(activation="gelu", C_W=1.2, C_b=0.05),
    "relu": dict(activation="relu", C_W=2.0, C_b=0.0),
    "sin": dict(activation="sin", C_W=1.0, C_b=0.2),
    "leaky_relu": dict(activation=pdlt.activation("leaky_relu", slope=0.2), C_W=1.8),
    "swish": dict(activation="swish", C_W=1.7),
}


def tiny(cfg, widths=(3, 4), n0=2, n_out=2, M=3, N=2, seed=0):
    L = len(widths) + 1
    mlp = pdlt.MLP(n0=n0, widths=list(widths), n_out=n_out, lambda_b=[0.7, 1.3, 0.9, 1.2][:L],
                   lambda_W=[1.1, 0.6, 1.4, 0.8][:L], **cfg)
    g = torch.Generator().manual_seed(seed)
    ws = mlp.widths
    Ws = [torch.randn(M, ws[l + 1], ws[l], generator=g, dtype=torch.float64) * np.sqrt(mlp.C_W[l] / ws[l])
          for l in range(mlp.depth)]
    bs = [0.3 * torch.randn(M, ws[l + 1], generator=g, dtype=torch.float64) for l in range(mlp.depth)]
    x = torch.randn(N, n0, generator=g, dtype=torch.float64)
    return mlp, Ws, bs, x


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_equation_matches_autodiff(name):
    mlp, Ws, bs, x = tiny(CONFIGS[name], widths=(5, 4, 3), N=3)
    Hf = ntk_forward(Ws, bs, x, mlp)
    for l in range(1, mlp.depth + 1):
        Ha = ntk_autodiff(Ws, bs, x, mlp, l)
        assert Ha.shape == (3, mlp.widths[l], mlp.widths[l], 3, 3)
        scale = Ha.abs().max().item()
        err = (Hf[l - 1] - Ha).abs().max().item()
        assert err <= 1e-10 * scale, f"layer {l}: |forward - autodiff| = {err:.2e}"
        # symmetry H_{i1 i2; a1 a2} = H_{i2 i1; a2 a1}
        assert torch.allclose(Hf[l - 1], Hf[l - 1].permute(0, 2, 1, 4, 3), rtol=0, atol=100 * EPS * scale)


def _z(mlp, Ws, bs, x, layer, m):
    f, P = network_function([w[m] for w in Ws], [b[m] for b in bs], x, mlp, layer)
    return f, P


@pytest.mark.parametrize("name", ["tanh", "gelu", "sin"])
def test_dntk_matches_finite_differences(name):
    mlp, Ws, bs, x = tiny(CONFIGS[name], M=2)
    L = mlp.depth
    dH = dntk_autodiff(Ws, bs, x, mlp, L)  # (M, i0, i1, i2, a0, a1, a2)
    n, N = mlp.widths[L], x.shape[0]
    h = 1e-4
    for m in range(2):
        f, P = _z(mlp, Ws, bs, x, L, m)
        phi0 = torch.zeros(P, dtype=torch.float64)
        J = torch.func.jacrev(f)(phi0)  # rows (i, a)
        # D^2 z[J_u, J_v] by the mixed central difference
        fd = torch.empty(n * N, n * N, n * N, dtype=torch.float64)
        for u in range(n * N):
            for v in range(n * N):
                fd[:, u, v] = (f(h * J[u] + h * J[v]) - f(h * J[u] - h * J[v])
                               - f(-h * J[u] + h * J[v]) + f(-h * J[u] - h * J[v])) / (4 * h * h)
        ref = fd.reshape(n, N, n, N, n, N).permute(0, 2, 4, 1, 3, 5)
        scale = ref.abs().max().item()
        assert (dH[m] - ref).abs().max().item() < 1e-6 * scale
        # symmetry under (i1,a1) <-> (i2,a2)
        assert torch.allclose(dH[m], dH[m].permute(0, 2, 1, 3, 5, 4), atol=1e3 * EPS * scale, rtol=0)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_dntk_is_the_derivative_of_the_forward_equation_ntk(name):
    """sum_mu lambda_mu (d_mu H_{i1i2}) (d_mu z_{i3}) = dH_{i1i2i3} + dH_{i2i1i3} (NOTATION.md):
    move the parameters along J_{i3} (rescaled coordinates) and difference the
    forward-equation NTK."""
    mlp, Ws, bs, x = tiny(CONFIGS[name], M=1)
    L = mlp.depth
    n, N = mlp.widths[L], x.shape[0]
    dH = dntk_autodiff(Ws, bs, x, mlp, L)[0]
    f, P = _z(mlp, Ws, bs, x, L, 0)
    J = torch.func.jacrev(f)(torch.zeros(P, dtype=torch.float64))
    scales = []
    for l in range(L):
        scales += [(Ws[l].shape[1:], np.sqrt(mlp.lambda_W[l] / mlp.widths[l])),
                   (bs[l].shape[1:], np.sqrt(mlp.lambda_b[l]))]
    sizes = [int(np.prod(s)) for s, _ in scales]
    h = 1e-5

    def H_at(phi):
        parts = torch.split(phi, sizes)
        W2 = [Ws[l] + scales[2 * l][1] * parts[2 * l].reshape(scales[2 * l][0]) for l in range(L)]
        b2 = [bs[l] + scales[2 * l + 1][1] * parts[2 * l + 1].reshape(scales[2 * l + 1][0]) for l in range(L)]
        return ntk_forward(W2, b2, x, mlp)[-1][0]  # (i1, i2, a1, a2)

    for i3 in range(n):
        for a3 in range(N):
            v = J[i3 * N + a3]
            fd = (H_at(h * v) - H_at(-h * v)) / (2 * h)
            ref = dH[:, :, i3, :, :, a3] + dH[:, :, i3, :, :, a3].permute(1, 0, 3, 2)
            assert (fd - ref).abs().max().item() < 1e-6 * ref.abs().max().item()


@pytest.mark.parametrize("name", ["tanh", "sin"])
def test_ddntks_match_finite_differences(name):
    mlp, Ws, bs, x = tiny(CONFIGS[name], widths=(3, 3), n0=2, n_out=2, M=1, N=1)
    L = mlp.depth
    n, N = mlp.widths[L], x.shape[0]
    p = n * N
    ddI, ddII = ddntk_autodiff(Ws, bs, x, mlp, L)
    ddI, ddII = ddI[0].reshape(p, p, p, p), ddII[0].reshape(p, p, p, p)  # N = 1
    dH = dntk_autodiff(Ws, bs, x, mlp, L)[0].reshape(p, p, p)
    f, P = _z(mlp, Ws, bs, x, L, 0)
    phi0 = torch.zeros(P, dtype=torch.float64)
    J = torch.func.jacrev(f)(phi0)
    # (1) ddI = D^3 z[J1, J2, J3]: third mixed central difference, h = 1e-3
    h = 1e-3
    for u in range(p):
        for v in range(p):
            for w in range(p):
                fd = sum(su * sv * sw * f(h * (su * J[u] + sv * J[v] + sw * J[w]))
                         for su in (1, -1) for sv in (1, -1) for sw in (1, -1)) / (8 * h ** 3)
                ref = ddI[:, u, v, w]
                assert (fd - ref).abs().max().item() < 1e-4 * max(1.0, ddI.abs().max().item())
    # (2) moving phi along J3 changes dH_{i0i1i2} by ddI_{0123} + ddII_{0123} + ddII_{0213};
    # dH at the moved point is recomputed by autodiff around the moved parameters.
    h = 1e-5
    for w in range(p):
        def dH_at(t):
            f2, _ = network_function([Ws[l][0] for l in range(L)], [bs[l][0] for l in range(L)], x, mlp, L)
            shift = t * J[w]
            g = lambda phi: f2(phi + shift)  # noqa: E731
            Jt = torch.func.jacrev(g)(phi0)
            G = torch.func.vmap(lambda v: torch.func.jvp(torch.func.jacrev(g), (phi0,), (v,))[1])(Jt)
            return torch.einsum("vip,up->iuv", G, Jt)
        fd = (dH_at(h) - dH_at(-h)) / (2 * h)
        ref = ddI[:, :, :, w] + ddII[:, :, :, w] + ddII[:, :, :, w].permute(0, 2, 1)
        assert (fd - ref).abs().max().item() < 1e-6 * ref.abs().max().item()
    assert dH.shape == (p, p, p)


def test_first_layer_derivatives_vanish():
    """z^(1) is linear in the parameters: dH^(1) = ddH^(1) = 0 exactly."""
    mlp, Ws, bs, x = tiny(CONFIGS["tanh"], M=2)
    assert dntk_autodiff(Ws, bs, x, mlp, 1).abs().max().item() == 0.0
    a, b = ddntk_autodiff(Ws, bs, x, mlp, 1)
    assert a.abs().max().item() == 0.0 and b.abs().max().item() == 0.0


def test_user_activation_needs_torch_twin():
    from pdlt.experiment import torch_activation
    act = pdlt.activation(lambda z: np.tanh(z) * 0.5)
    with pytest.raises(ValueError, match="torch_fn"):
        torch_activation(act)
    object.__setattr__(act, "torch_fn", lambda z: torch.tanh(z) * 0.5)
    ta = torch_activation(act)
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)
    assert torch.allclose(ta.d1(z), 0.5 / torch.cosh(z) ** 2, atol=1e-14)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "linear", "tanh", "sin", "erf", "sigmoid",
                                  "softplus", "swish", "gelu", "elu", "monomial"])
def test_torch_activations_match_numpy(name):
    from pdlt.experiment import torch_activation
    act = pdlt.activation(name, p=3) if name == "monomial" else pdlt.activation(name)
    ta = torch_activation(act)
    z = np.linspace(-3, 3, 61) + 1e-3
    zt = torch.as_tensor(z)
    np.testing.assert_allclose(ta.sigma(zt).numpy(), act.sigma(z), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ta.d1(zt).numpy(), act.d1(z), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,residual", [("tanh", False), ("gelu", False), ("tanh", True)])
def test_derivative_pairs_are_the_full_tensors_restricted(name, residual):
    """derivative_pairs (J, Hess z J and same-neuron third derivatives on the first s
    neurons only) equals the patterns of the full dNTK/ddNTKs, for s = n and s < n,
    two inputs, and a residual last layer (which keeps the skip rows of the subset)."""
    from pdlt.experiment.ntk import derivative_pairs
    if residual:
        mlp0, Ws, bs, x = tiny(CONFIGS[name], widths=(4, 4), n_out=4, M=2, N=2)
        mlp = pdlt.MLP(n0=2, widths=[4, 4], n_out=4, gamma=0.6, lambda_b=mlp0.lambda_b,
                       lambda_W=mlp0.lambda_W, **CONFIGS[name])
    else:
        mlp, Ws, bs, x = tiny(CONFIGS[name], widths=(3, 4), n_out=4, M=2, N=2)
    L = mlp.depth
    dH = dntk_autodiff(Ws, bs, x, mlp, L)
    ddI, ddII = ddntk_autodiff(Ws, bs, x, mlp, L)

    def pat(t, f):
        return torch.stack([torch.stack([f(t, i, j) for j in range(s)], 1) for i in range(s)], 1)
    for s in (4, 2):
        p = derivative_pairs(Ws, bs, x, mlp, L, s)
        ref = {"dH_ijj": pat(dH, lambda t, i, j: t[:, i, j, j]),
               "dH_iij": pat(dH, lambda t, i, j: t[:, i, i, j]),
               "ddI_iijj": pat(ddI, lambda t, i, j: t[:, i, i, j, j]),
               "ddII_iijj": pat(ddII, lambda t, i, j: t[:, i, i, j, j]),
               "ddII_ijij": pat(ddII, lambda t, i, j: t[:, i, j, i, j]),
               "ddII_ijji": pat(ddII, lambda t, i, j: t[:, i, j, j, i])}
        for k, r in ref.items():
            v = getattr(p, k)
            assert v.shape == r.shape == (2, s, s) + (2,) * (r.dim() - 3), k
            assert (v - r).abs().max().item() <= 1e-12 * r.abs().max().item(), (k, s)
    only = derivative_pairs(Ws, bs, x, mlp, L, 3, fields=("dH_iij",))
    assert only.ddI_iijj is None and only.dH_iij.shape == (2, 3, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="fields"):
        derivative_pairs(Ws, bs, x, mlp, L, 3, fields=("dH_jij",))
