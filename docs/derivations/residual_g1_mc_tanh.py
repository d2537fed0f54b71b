"""Monte Carlo check of the exact residual G1^(3) for tanh (odd sigma: kappa3 = 0, the
<(sigma^2)''''> Var(Khat) term and the p >= 4 Hermite terms are what is tested).

tanh, gamma = 0.5, C_W = 0.9, C_b = 0.05, K1 = 1; widths 16/32/64; layer 1 sampled, the
layer-2 conditional expectation by 24-node Gauss-Hermite; control variates with known
means; fit m(n) = G1 + b/n. Usage: PYTHONPATH=src python docs/derivations/residual_g1_mc_tanh.py 1e6
(about 45 s).
"""
import sys, time
import numpy as np
import pdlt
from pdlt.theory.residual_ntk import residual_vertex_metric
from pdlt.theory._averages import LayerAverages, OneVariableTable
from pdlt.theory.kernel import LayerHyper
from pdlt.theory.vertex import metric_step, vertex_step
gamma, CW, Cb, K1 = 0.5, 0.9, 0.05, 1.0
N = int(float(sys.argv[1]))
m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, activation="tanh", C_W=CW, C_b=Cb, gamma=gamma)
exact = residual_vertex_metric(m, K1)["G1"][2]
K = pdlt.flow(m, K1=K1).K
def one_input(l):  # the averages at K^(l) and the hyperparameters of the step l -> l+1
    avg = LayerAverages(m.activation, np.array([[K[l - 1]]]),
                        OneVariableTable(m.activation, K[l - 1:l]).at(slice(None)))
    return avg, LayerHyper.of(m, l)
# the truncation: the one-input V, G1 steps (kappa3 = 0 for odd sigma)
avg, hp = one_input(1)
V2 = vertex_step(avg, {"K": np.array([[K[0]]]), "V": np.zeros((1, 1, 1, 1))}, hp)
avg, hp = one_input(2)
st = {"K": np.array([[K[1]]]), "V": V2, "G1": np.zeros((1, 1))}
trunc = float(metric_step(avg, st, hp)[0, 0])
print("exact", exact, "trunc", trunc, "K", K)
x, w = np.polynomial.hermite_e.hermegauss(24); w = w / w.sum()
def f(mu, v):  # E[tanh(mu + sqrt(v) e)^2]
    return (np.tanh(mu[..., None] + np.sqrt(v)[..., None] * x) ** 2) @ w
s2K2 = float(pdlt.gaussian.expect(lambda z: np.tanh(z) ** 2, K[1]))
rng = np.random.default_rng(7)
rows = []
for n in (16, 32, 64):
    X, CV = [], []
    done = 0
    while done < N:
        b = min(20000, N - done)
        z1 = np.sqrt(K1) * rng.standard_normal((b, n))
        t1 = np.tanh(z1) ** 2
        G = Cb + CW * t1.mean(1)
        X.append(n * CW * (f(gamma * z1, np.broadcast_to(G[:, None], z1.shape)).mean(1) - s2K2))
        s1 = float(pdlt.gaussian.expect(lambda z: np.tanh(z) ** 2, K1))
        s4 = float(pdlt.gaussian.expect(lambda z: np.tanh(z) ** 4, K1))
        CV.append(np.stack([n * (t1.mean(1) - s1), n * ((z1 * z1).mean(1) - K1),
                            np.sqrt(n) * ((t1 * t1).mean(1) - s4)], 1))
        done += b
    X, C = np.concatenate(X), np.concatenate(CV)
    A = np.column_stack([np.ones(len(X)), C])
    coef, *_ = np.linalg.lstsq(A, X, rcond=None)
    r = X - C @ coef[1:]
    rows.append((r.mean(), r.std() / np.sqrt(len(r))))
    print(n, rows[-1], flush=True)
y = np.array([r[0] for r in rows]); se = np.array([r[1] for r in rows])
A = np.column_stack([np.ones(3), 1 / np.array([16, 32, 64])]); W = 1 / se ** 2
cov = np.linalg.inv(A.T @ (A * W[:, None])); beta = cov @ (A.T @ (W * y))
G, sG = beta[0], np.sqrt(cov[0, 0])
print(f"G1^(3) = {G:.5f} +- {sG:.5f}; exact {exact:.5f} z={(G-exact)/sG:+.1f}; trunc {trunc:.5f} z={(G-trunc)/sG:+.1f}; x0.5 z={(G-exact/2)/sG:+.1f} x2 z={(G-2*exact)/sG:+.1f}; res {4*sG/abs(exact):.3f}")
