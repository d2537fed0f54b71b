"""<tanh(z_1) tanh(z_2) tanh(z_3) tanh(z_4)>_K at four distinct directions, K up to ~30,
by the trapezoidal rule in the eigenbasis (numpy only, no pdlt integration code).

``z = A u``, ``A = U sqrt(lambda)``; along axis j tanh's nearest poles (``z_k = i pi / 2``)
are at ``|Im u_j| = d_j = (pi / 2) / max_k |A_kj|``, and the trapezoid's aliasing error
with the Gaussian weight is ``~exp(y^2 / 2 - 2 pi y / h)`` at ``y = min(d_j, sqrt(2 log
1/eps))``: the step solves it for ``eps``; the grid is cut at ``|u_j| <= sqrt(2 log
1/eps) + 1`` (its Gaussian tail below eps). Two targets ``eps`` (1e-11, 1e-14): their
difference is the reference's own resolution. The same construction as
``residual_tanh_reference.py`` (written anew here for one average, at K ~ 30).

    PYTHONPATH=src python benchmarks/plain_tanh_four_reference.py

prints the reference for the first-layer kernel of ``plain_graded.py``'s tanh, N = 4,
K ~ 30 case, and the engine's values: the capped rule at "default" and "high", the
graded rule. Measured (90 s, one core): reference -0.007986693555617 (the two targets
differ by 2.1e-14); graded 2.0e-15 off; capped rule 8.4e-7 ("default"), 8.0e-7 ("high").
"""

import time

import numpy as np


def trapezoid_tanh4(K, eps):
    lam, U = np.linalg.eigh(K)
    lam = np.clip(lam, 0.0, None)
    A = U * np.sqrt(lam)
    ymax = np.sqrt(2.0 * np.log(1.0 / eps))
    nodes = []
    for j in range(4):
        d = (np.pi / 2) / np.max(np.abs(A[:, j]))
        y = min(d, ymax)
        h = 2.0 * np.pi * y / (y * y / 2.0 + np.log(1.0 / eps))
        n = int(np.ceil((ymax + 1.0) / h))
        u = h * np.arange(-n, n + 1)
        nodes.append((u, h * np.exp(-u * u / 2) / np.sqrt(2 * np.pi)))
    (u0, w0), (u1, w1), (u2, w2), (u3, w3) = nodes
    # inner three axes as a grid, the first axis looped
    g = np.stack(np.meshgrid(u1, u2, u3, indexing="ij"), axis=-1).reshape(-1, 3)
    wg = (w1[:, None, None] * w2[None, :, None] * w3[None, None, :]).ravel()
    keep = wg > eps * 1e-3 * wg.max()
    g, wg = g[keep], wg[keep]
    zin = g @ A[:, 1:].T                                      # (P, 4)
    total = 0.0
    for a, wa in zip(u0, w0):
        z = zin + a * A[:, 0]
        total += wa * np.dot(wg, np.prod(np.tanh(z), axis=1))
    return total, sum(len(u) for u, _ in nodes), len(g) * len(u0)


if __name__ == "__main__":
    import pdlt
    from pdlt.gaussian._graded import expect_graded
    from pdlt.gaussian._multi import expect_nd
    from pdlt.theory.kernel import first_layer_kernel
    x = np.random.default_rng(0).standard_normal((4, 8))
    m = pdlt.MLP(n0=8, width=64, depth=3, activation="tanh", C_b=0.0, C_W=1.0)
    K, _ = first_layer_kernel(m, x, None)
    x = x * np.sqrt(30.0 / np.max(np.diag(K)))
    K, _ = first_layer_kernel(m, x, None)
    print("K =", K.round(4).tolist())
    refs = []
    for eps in (1e-11, 1e-14):
        t = time.time()
        r, n, pts = trapezoid_tanh4(K, eps)
        refs.append(r)
        print(f"trapezoid eps {eps:g}: {r!r}  ({pts:.2e} points, {time.time() - t:.0f} s)")
    ref, res = refs[-1], abs(refs[-1] - refs[0])
    for name, v in [("capped default", expect_nd([np.tanh] * 4, K)),
                    ("capped high", expect_nd([np.tanh] * 4, K, accuracy="high")),
                    ("graded", expect_graded([np.tanh] * 4, K))]:
        print(f"{name:15s} {float(v)!r}  |diff| = {abs(float(v) - ref):.1e} (resolution {res:.1e})")
