"""Monte Carlo check of the exact residual G1 (ReLU, K1 = 1, layers 3 and 4).

Real finite-width residual MLPs (``residual_mlp("relu", gamma)``, all widths n),
Rao-Blackwellized: layer 1 (and, for layer 4, layer 2) sampled; the last step's
conditional expectation exact (``E[relu(m + sqrt(v) eps)^2]`` in closed form).
Control variates with exactly known means (functions of the iid layer-1
preactivations and of the layer-2 noise) reduce the variance; widths 16, 32, 64
are fitted with ``m(n) = G1 + b/n``. Usage:
``PYTHONPATH=src python docs/derivations/residual_g1_mc.py [gamma] [N_per_width]``.
"""
import sys

import numpy as np
from scipy.special import ndtr

SQ2PI = np.sqrt(2 * np.pi)


def f(m, v):
    """E[relu(m + sqrt(v) eps)^2], eps ~ N(0, 1)."""
    s = np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m / s
    return (m * m + v) * ndtr(t) + m * s * np.exp(-0.5 * t * t) / SQ2PI


def run(n, N, gamma, rng, chunk=40000):
    CW = 2 * (1 - gamma ** 2)
    X3, X4, CV = [], [], []
    done = 0
    while done < N:
        b = min(chunk, N - done)
        z1 = rng.standard_normal((b, n))
        r1 = np.maximum(z1, 0) ** 2
        S1 = r1.mean(1)
        G1h = CW * S1
        X3.append(n * CW * (f(gamma * z1, G1h[:, None]).mean(1) - 0.5))
        eps = rng.standard_normal((b, n))
        z2 = np.sqrt(G1h)[:, None] * eps + gamma * z1
        S2 = (np.maximum(z2, 0) ** 2).mean(1)
        G2h = CW * S2
        Ez3 = (G2h[:, None] + gamma ** 2 * z2 * z2).mean(1)
        ES3 = f(gamma * z2, G2h[:, None]).mean(1)
        X4.append(n * (CW * (ES3 - 0.5) + gamma ** 2 * (Ez3 - 1.0)))
        cv = [n * (S1 - 0.5), n * ((z1 * z1).mean(1) - 1), n * ((eps * eps).mean(1) - 1),
              n * ((np.maximum(eps, 0) ** 2).mean(1) - 0.5), n * (z1 * eps).mean(1),
              n * ((r1 * r1).mean(1) - 1.5) / n ** 0.5, n * ((z1 * z1 * eps * eps).mean(1) - 1)]
        CV.append(np.stack(cv, 1))
        done += b
    out = []
    C = np.concatenate(CV)
    for X in (np.concatenate(X3), np.concatenate(X4)):
        A = np.column_stack([np.ones(len(X)), C])
        coef, *_ = np.linalg.lstsq(A, X, rcond=None)
        res = X - C @ coef[1:]
        out.append((float(res.mean()), float(res.std(ddof=C.shape[1] + 1) / np.sqrt(len(X)))))
    return out


def main():
    gamma = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    N = int(float(sys.argv[2])) if len(sys.argv) > 2 else 2_000_000
    from pdlt.theory.residual import residual_mlp
    from pdlt.theory.residual_ntk import residual_vertex_metric
    m = residual_mlp("relu", gamma, width=8, depth=4, n_out=8)
    exact = residual_vertex_metric(m, 1.0)["G1"]
    return check(gamma, N, exact, truncation(m))


def truncation(m, K=1.0):
    """G1 at layers 1..4 of the three-point truncation.

    The one-input V and G1 steps (:func:`pdlt.theory.vertex.vertex_step`,
    :func:`~pdlt.theory.vertex.metric_step`) plus the kappa3 feeds
    ``2 chi C_W <(s^2)'> kappa3`` (V) and ``C_W <(s^2)'''> kappa3 / 2`` (G1), kappa3 by
    :func:`~pdlt.theory.vertex.three_point_step`; K = 1 at every layer (residual ReLU,
    C_W = 2 (1 - gamma^2), C_b = 0).
    """
    from pdlt.theory._averages import LayerAverages, OneVariableTable
    from pdlt.theory.kernel import LayerHyper
    from pdlt.theory.vertex import metric_step, three_point_step, vertex_step
    act = m.activation
    t = OneVariableTable(act, np.array([K]))
    avg = LayerAverages(act, np.array([[K]]), t.at(slice(None)))
    V, G, k3 = 0.0, 0.0, 0.0
    trunc = [0.0]
    for l in range(1, 4):
        hp = LayerHyper.of(m, l)
        st = {"K": np.array([[K]]), "V": np.full((1, 1, 1, 1), V), "G1": np.full((1, 1), G),
              "kappa3": np.full((1, 1), k3)}
        CW = hp.C_W
        chi = CW * t["dss"][0] + hp.gamma ** 2
        Vn = float(vertex_step(avg, st, hp)[0, 0, 0, 0]) + chi * 2 * CW * t["d1ss"][0] * k3
        G = float(metric_step(avg, st, hp)[0, 0]) + CW * 0.5 * t["d3ss"][0] * k3
        k3 = float(np.squeeze(three_point_step(avg, st, hp)))
        V = Vn
        trunc.append(float(G))
    return trunc


def check(gamma, N, exact, trunc, seed=20261203, widths=(16, 32, 64)):
    """Fit m(n) = G1 + b/n per layer; print and return the rows (layer, G1, se, ...)."""
    rng = np.random.default_rng(seed)
    rows = [run(n, N, gamma, rng) for n in widths]
    out = []
    for li, layer in ((0, 3), (1, 4)):
        y = np.array([r[li][0] for r in rows])
        se = np.array([r[li][1] for r in rows])
        A = np.column_stack([np.ones(len(widths)), 1.0 / np.array(widths)])
        W = 1 / se ** 2
        cov = np.linalg.inv(A.T @ (A * W[:, None]))
        beta = cov @ (A.T @ (W * y))
        G1, seG = beta[0], np.sqrt(cov[0, 0])
        chi2 = float(np.sum(W * (y - A @ beta) ** 2))
        th, tr = exact[layer - 1], trunc[layer - 1]
        print(f"gamma={gamma} layer {layer}: m(n)={np.round(y, 4).tolist()} se={np.round(se, 4).tolist()}"
              f" -> G1 = {G1:.4f} +- {seG:.4f} (chi2 {chi2:.2f}, 1 dof); exact {th:.4f} "
              f"(z={(G1 - th) / seG:+.1f}), truncation {tr:.4f} (z={(G1 - tr) / seG:+.1f}), "
              f"x0.5 z={(G1 - 0.5 * th) / seG:+.1f}, x2 z={(G1 - 2 * th) / seG:+.1f}, "
              f"resolution 4se/|G1| = {4 * seG / abs(th):.3f}", flush=True)
        out.append(dict(layer=layer, G1=float(G1), se=float(seG), exact=float(th),
                        truncation=float(tr), chi2=chi2))
    return out


if __name__ == "__main__":
    main()
