"""ReLU's D (NTK-metric cross-correlation) by its exact martingale form.

:func:`pdlt.experiment.estimators.relu_ntk_metric_martingale` replaces the plain
``n Cov(H_ii, z_j z_j)`` (a product of two fluctuations, per-network scatter ~4x D
at width 32) by the conditional means of the squared martingale differences of
the layers below. Checked here: (1) on the same networks it agrees with the plain
estimator (paired, exactly unbiased at finite width), and the same paired check
rejects the estimator with ``E[d^2 | k-1]`` off by 20 % (dropping the O(1/n)
``beta^2 q`` term moves it by only 3 paired se at 60,000 networks of width 6); (2) the report's (n, 2n) row of D for relu
passes, is resolved to <= 50 % and rejects the theory x0, x0.5 and x2.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import powered  # noqa: E402

from pdlt.experiment import Ensemble  # noqa: E402
from pdlt.experiment import ntk as _ntk  # noqa: E402
from pdlt.experiment.activations import torch_activation  # noqa: E402
from pdlt.experiment.estimators import relu_ntk_metric_martingale  # noqa: E402
from pdlt.report import suite as S  # noqa: E402
from pdlt.report.rows import critical_mlp  # noqa: E402


def _per_network(mlp, M, seed):
    """Per network: s, u, q per layer and the last layer's plain D terms (h, zz, pair)."""
    ens = Ensemble(mlp, networks=M, seed=seed)
    x = torch.as_tensor(ens.single_input(1.0))
    tact = torch_activation(mlp.activation)
    L = mlp.depth
    cols, last = [], []
    Ws, bs = ens.parameters(0, M)
    per = []
    for l, z, H in _ntk._forward(Ws, bs, x, tact, L, ntk=True, mlp=mlp):
        z, H = z[..., 0], H[:, 0, :, 0, :]
        sg, sp = tact.sigma(z), tact.d1(z)
        hd = torch.diagonal(H, dim1=1, dim2=2)
        a = sg * sp
        per.append(torch.stack([(sg ** 2).mean(1), (sp ** 2 * hd).mean(1),
                                torch.einsum("mi,mij,mj->m", a, H, a)], 1))
        if l == L:
            q, n = z ** 2, z.shape[1]
            pair = (hd.sum(1) * q.sum(1) - (hd * q).sum(1)) / (n * (n - 1))
            last.append(torch.stack([hd.mean(1), q.mean(1), pair], 1))
    cols = torch.stack(per, 2).numpy()   # (M, 3, L)
    return cols[:, 0], cols[:, 1], cols[:, 2], torch.cat(last).numpy()


def _estimator(mlp, s, u, q, **wrong):
    th = __import__("pdlt").flow(mlp, K1=1.0)
    widths = np.array([mlp.widths[l] for l in range(1, mlp.depth + 1)], float)
    out = relu_ntk_metric_martingale(s, u, q, 1.0, float(np.asarray(th.Theta)[0]), mlp.C_b,
                                     mlp.C_W, mlp.lambda_b, mlp.lambda_W, widths)
    if wrong.get("dd"):
        # E[d^2] 20 % too large: the estimator's d-d part is the one without f
        no_f = relu_ntk_metric_martingale(s, np.zeros_like(u), np.zeros_like(q), 1.0, 0.0,
                                          mlp.C_b, mlp.C_W, mlp.lambda_b, mlp.lambda_W, widths)
        out = out + 0.2 * no_f
    return out[:, -1]


def test_relu_D_martingale_is_unbiased_and_paired_check_has_power():
    mlp = critical_mlp("relu", 6, 4, lambda_b=0.5, lambda_W=1.5)
    s, u, q, last = _per_network(mlp, 60000, seed=3)
    h, zz, pair = last.T
    n = mlp.fan_in(mlp.depth)
    plain = n * (pair - zz.mean() * h - h.mean() * zz)   # delta-method linearization
    plain_est = n * (pair.mean() - h.mean() * zz.mean())

    def z_of(cv):
        diff = plain - cv
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        return abs(plain_est - cv.mean()) / se

    cv = _estimator(mlp, s, u, q)
    assert z_of(cv) < 4
    # the martingale form scatters far less than the plain product
    assert cv.std() < plain.std() / 2
    # measured: z 1.4 here, 5.9 for E[d^2] 20 % off; the beta^2 q term (an O(1/n) part,
    # z 3.2 when dropped) is below this check's resolution
    assert z_of(_estimator(mlp, s, u, q, dd=True)) > 4


def test_relu_D_report_row_powered():
    cases = [S.Case("relu", n, 4, 600, seed=7 + j, cv_networks=1500, stats=("D",))
             for j, n in enumerate((16, 32))]
    res = S.run_suite(cases, stats=("D",))
    (row,) = res.rows
    assert row.family == "D" and row.activation == "relu"
    powered(row.theory, row.measured, row.stderr, row.allowance, label=row.statistic,
            max_resolution=0.5)
    # the plain pass did not run for D: the control variate measured it
    assert [lab.split(": ")[-1] for lab, _, _ in res.timings] == ["theory",
                                                                  "control variates"] * 2
