"""Your own PyTorch model, end to end: diagnose, initialize, train, compare.

1. An ``nn.Sequential`` MLP with PyTorch's default initialization is
   diagnosed by the effective theory (``pdlt.torch.diagnose``): it is far from
   criticality, and the signal decays with depth.
2. ``pdlt.torch.init_critical_`` re-initializes it at criticality; the
   diagnosis is repeated, and checked against re-initialized copies.
3. An ensemble of critically initialized networks is trained by full-batch
   gradient descent with ``pdlt.torch.param_groups`` (the book's learning-rate
   tensor) on scikit-learn's diabetes data, at half the largest stable rate
   ``pdlt.torch.max_stable_learning_rate``.
4. The ensemble's mean prediction on held-out inputs is compared with the
   theory's kernel (frozen-NTK) prediction for the same gradient-descent run
   (``pdlt.learning.NTKRegressor``).

Run ``python examples/own_model.py`` (width 256, 16 networks, 300 steps, 1000
verification copies: about a minute of CPU time; 32 networks took 80 s of CPU
on 2 cores and gave RMS(ensemble mean - theory)/RMS(theory) = 3 %) or
``python examples/own_model.py --quick`` (CI size: width 64, 4 networks, 60
steps, 200 copies; about 6 s of CPU time after the imports).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import pdlt.torch
from pdlt.learning import NTKRegressor

FULL = dict(width=256, networks=16, steps=300, copies=1000)
QUICK = dict(width=64, networks=4, steps=60, copies=200)


def make_model(n0, width, depth=3):
    """The user's model: a plain nn.Sequential MLP with PyTorch's default init."""
    layers = [nn.Linear(n0, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).double()


def load_data(seed=0):
    """Diabetes (442 patients, 10 features): standardized features and target."""
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    idx = np.random.default_rng(seed).permutation(len(y))
    tr, te = idx[:300], idx[300:]
    return X[tr], y[tr], X[te], y[te]


def train_ensemble(n0, width, networks, steps, lr, X, y, X_test):
    """Train ``networks`` critically initialized copies at once; test predictions (M, N_test).

    The copies are stacked (``torch.func.stack_module_state``) and run in one
    batched call; the loss is summed over networks, so each network gets its
    own gradient. ``param_groups`` of one copy gives each stacked parameter
    its rate ``eta * lambda_mu`` by name.
    """
    from torch.func import functional_call, stack_module_state, vmap

    Xt, yt, Xs = (torch.as_tensor(a, dtype=torch.float64) for a in (X, y[:, None], X_test))
    models = [make_model(n0, width) for _ in range(networks)]
    for m, model in enumerate(models):
        pdlt.torch.init_critical_(model, seed=1000 + m)
    params, buffers = stack_module_state(models)          # name -> (M, ...) leaf tensors
    groups = pdlt.torch.param_groups(models[0], lr=lr)    # name -> eta * lambda_mu
    opt = torch.optim.SGD([{"params": [params[g["name"]]], "lr": g["lr"]} for g in groups])
    template = models[0]

    def forward(p, b, x):
        return functional_call(template, (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, None))
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((batched(params, buffers, Xt) - yt) ** 2).sum()  # the book's (1/2) sum
        loss.backward()
        opt.step()
    with torch.no_grad():
        return batched(params, buffers, Xs)[:, :, 0].numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (about 15 s)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    X, y, X_test, y_test = load_data()
    n0 = X.shape[1]
    torch.manual_seed(0)
    model = make_model(n0, cfg["width"])

    print("=== 1. the model as PyTorch initializes it ===")
    before = pdlt.torch.diagnose(model, X, learning=False)
    print(before)

    print("\n=== 2. at criticality (init_critical_), checked on re-initialized copies ===")
    pdlt.torch.init_critical_(model, seed=0)
    after = pdlt.torch.diagnose(model, X, verify=True, networks=cfg["copies"], learning=False)
    print(after)

    print("\n=== 3. train an ensemble with the book's learning-rate tensor ===")
    eta_max = pdlt.torch.max_stable_learning_rate(model, X)
    lr = 0.5 * eta_max
    print(f"largest stable rate 2/lambda_max(Theta) = {eta_max:.4g}; training at eta = {lr:.4g}")
    preds = train_ensemble(n0, cfg["width"], cfg["networks"], cfg["steps"], lr, X, y, X_test)

    print("\n=== 4. the theory's kernel prediction next to the ensemble's mean ===")
    reg = NTKRegressor(after.mlp.with_(C_b=after.theory.critical_C_b,
                                       C_W=after.theory.critical_C_W),
                       learning_rate=lr, steps=cfg["steps"]).fit(X, y)
    mean_th, std_th = reg.predict(X_test, return_std=True)
    mean_ens = preds.mean(0)
    se_ens = preds.std(0, ddof=1) / np.sqrt(len(preds))
    z = (mean_ens - mean_th) / se_ens
    for i in range(5):
        print(f"test input {i}: theory {mean_th[i]:+.4f} (spread over inits {std_th[i]:.3f})   "
              f"ensemble {mean_ens[i]:+.4f} +- {se_ens[i]:.4f}   target {y_test[i]:+.3f}")
    rel = np.sqrt(np.mean((mean_ens - mean_th) ** 2) / np.mean(mean_th ** 2))
    mse = lambda p: float(np.mean((p - y_test) ** 2))  # noqa: E731
    print(f"over {len(y_test)} test inputs: RMS(ensemble mean - theory)/RMS(theory) = {rel:.3g}, "
          f"median |z| = {np.median(np.abs(z)):.2f}; test MSE theory {mse(mean_th):.3f}, "
          f"ensemble mean {mse(mean_ens):.3f} (the target's variance is 1)")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return dict(before=before, after=after, eta_max=eta_max, mean_theory=mean_th,
                std_theory=std_th, mean_ensemble=mean_ens, stderr_ensemble=se_ens,
                relative_rms=rel, networks=cfg["networks"], y_test=y_test)


if __name__ == "__main__":
    main()
