"""Residual tanh at first-layer variance ~1 against an independent trapezoid reference (#15).

``python benchmarks/residual_tanh_reference.py [--validate] [--N 2,3] [--eps 1e-19,1e-22]
[--save out.npz]``

``statistics_reference.py``'s tensor Gauss-Hermite rule converges only like
``exp(-c d sqrt(nodes))`` for an integrand with a pole at distance d from the
real axis; tanh's poles at ``i pi / 2`` put d near 1.3 in a standard-normal
variable at first-layer variance ~1, where a rank-4 Gauss-Hermite reference
would need >~150 nodes per axis. This script replaces it, for tanh, by the
trapezoidal rule in the eigenbasis of each covariance, which converges like
``exp(-2 pi d / h)`` for integrands analytic in the strip ``|Im u| < d``:

* ``z = A u`` with ``A = U sqrt(lambda)`` (one axis per eigenvalue above 1e-13 of
  the largest, so coinciding inputs are integrated on their support);
* along axis j the nearest singularity of every factor ``f_k(z_k)`` (all built
  from tanh: poles at ``z_k = i pi (m + 1/2)``) is at ``|Im u_j| = d_j =
  (pi / 2) / max_k |A_kj|``; the step is chosen from the aliasing bound
  ``exp(y^2 / 2 - 2 pi y / h) = eps`` (the factor ``exp(y^2 / 2)`` is the growth
  of the Gaussian weight at ``Im u = y``) with ``y = min(d_j, sqrt(2 log(1 / eps)))``:
  the pole itself when it is near, the weight's own optimum
  ``h = pi sqrt(2 / log(1 / eps))`` when it is far. ``eps`` is nominal: the poles
  of merged powers (``tanh^2 sech^4``: order 6) multiply the bound by a power of
  ``1 / h``; measured in 1-D at variances 0.25..4 the error is ~3e-13 at
  ``eps = 1e-19`` and ~5e-16 at ``1e-22``, the same at every variance;
* the tensor grid is pruned to the ball ``|u|^2 <= 2 log(1e-3 / eps)`` (points whose
  weight product is below ``1e3 eps`` of the largest are dropped: Gaussian mass
  ~4e-17 outside at rank 4 and ``eps = 1e-22``; every integrand here is tanh-bounded
  times a polynomial of low degree).

It shares no integration code with ``pdlt.gaussian`` (which uses a nested rule
in the Cholesky basis with a fixed ``|u| <= 8``, its own spacing ladder and
node caps): only the harness of ``statistics_reference.py`` (``integrated_by``:
every pdlt module's binding of the engine's four entry points replaced,
closed-form pairs off, tripwires on the engine's integrators) is reused. Its own
error is the difference of two targets ``eps`` (``--eps``, default 1e-19 and
1e-22: about 1.25x the nodes per near-pole axis; in 1-D the coarser is ~500x
less accurate, so the difference overestimates the finer one's error).

``--validate`` checks the rule on 1-D and 2-D averages against mpmath at 30
digits (variances 0.5, 1, 2; two-variable covariances with correlation 0.6 and
-0.9), and a four-variable marginal (two factors set to 1 on a full-rank 4x4
covariance of variance up to 2, whose average is a 2-D one computed by mpmath).

The network (as ``residual_rules.py``): tanh, depth 4, width 32, C_b 0.1,
C_W 1, gamma 0.6, xi 0.8, N standard-normal inputs in 8 dimensions (seed 0), so
the first-layer variances are ``0.1 + |x|^2 / 8`` (N = 2: 0.53 and 1.35; N = 3
adds 0.61). Entries as ``residual_reference.py``: max |default - reference| at
the last layer where the statistic is not zero by symmetry, over its largest
entry there; in parentheses the reference's two-target difference, and the
engine's own estimate (``statistics(..., error=True)``) on the same scale.
``--plain``: the same network with gamma = 0, xi = 1 (the plain MLP, whose statistics
go through the plain modules; kappa3 is not defined there and P, Q are run once).
``--act swish``: the same with swish (poles of sigmoid at ``i pi``; ``--validate`` is
tanh's only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pdlt
from statistics_reference import Reference, integrated_by

from pdlt.theory.statistics import defined

STATS = ("K", "Theta", "V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1",
         "kappa3")
GROUPS = (STATS, ("P", "Q"))
EPS = (1e-19, 1e-22)


class Trapezoid(Reference):
    """Eigenbasis tensor trapezoid averages ``<prod_k f_k(z_k)>``, ``z ~ N(0, K)``.

    Parameters
    ----------
    eps : float
        Target of each axis' aliasing bound (see the module docstring).
    pole : float
        Distance of the factors' nearest singularity from the real axis in z
        (tanh and everything built from it: pi / 2).
    margin : float
        Take the aliasing bound at ``y = d_j - margin`` instead of at the pole
        (0: measured best, since the step is then set by the pole's distance alone
        and the pole order's prefactor is absorbed in the nominal ``eps``).
    """

    def __init__(self, eps=1e-22, pole=np.pi / 2, margin=0.0):
        super().__init__()
        self.eps, self.pole, self.margin = float(eps), float(pole), float(margin)
        self.L = np.log(1.0 / self.eps)
        self.R2 = 2.0 * np.log(1e-3 / self.eps)      # pruning radius^2 of the tensor grid
        self.points = 0                              # integrand evaluations (cost)

    def axis(self, a):
        """Nodes and weights (standard-normal density included) for axis scale ``a``."""
        y = np.sqrt(2 * self.L)
        if a > 0:
            y = min(y, self.pole / a - self.margin)
        if y <= 0:  # only with a margin
            raise ValueError(f"axis scale {a:.3g}: pole closer than the margin; lower margin")
        h = 2 * np.pi * y / (self.L + y * y / 2)
        n = int(np.floor(np.sqrt(self.R2) / h))
        u = h * np.arange(-n, n + 1)
        return u, h * np.exp(-u * u / 2) / np.sqrt(2 * np.pi)

    def one(self, f, K, mean=0.0):
        K, mean = np.broadcast_arrays(np.asarray(K, float), np.asarray(mean, float))
        out = np.empty(K.shape)
        for i in np.ndindex(K.shape):
            s = np.sqrt(K[i])
            u, w = self.axis(s)
            self.points += len(u)
            out[i] = np.asarray(f(mean[i] + s * u), float) @ w
        return out

    def factored(self, fs, A):
        """One covariance ``z = A u`` (r >= 1 axes) on the pruned trapezoid grid."""
        r = A.shape[1]
        rules = [self.axis(float(np.max(np.abs(A[:, j])))) for j in range(r)]
        # pruned tensor grid: all axes but the first as one sorted list by |u|^2
        if r > 1:
            mesh = np.meshgrid(*[ru for ru, _ in rules[1:]], indexing="ij")
            wmesh = np.meshgrid(*[rw for _, rw in rules[1:]], indexing="ij")
            rest = np.stack([m.ravel() for m in mesh], axis=1)
            wrest = np.prod(np.stack([m.ravel() for m in wmesh], axis=1), axis=1)
            rad = np.sum(rest * rest, axis=1)
            o = np.argsort(rad, kind="stable")
            rest, wrest, rad = rest[o], wrest[o], rad[o]
        else:
            rest, wrest, rad = np.zeros((1, 0)), np.ones(1), np.zeros(1)
        u1, w1 = rules[0]
        # parity: an integrand even under u -> -u (evenly many odd factors) is summed over
        # u_1 >= 0 with doubled weights (the grid is symmetric); an odd one is 0
        probe = np.random.default_rng(0).standard_normal((16, r)) @ A.T

        def g(z):
            v = np.ones(len(z))
            for k, f in enumerate(fs):
                v = v * np.asarray(f(z[:, k]), float)
            return v

        gp, gm = g(probe), g(-probe)
        tol = 1e-13 * max(float(np.max(np.abs(gp))), 1e-300)
        if np.all(np.abs(gp + gm) <= tol):
            return 0.0
        even = bool(np.all(np.abs(gp - gm) <= tol))
        if even:
            w1 = np.where(u1 > 0, 2 * w1, np.where(u1 < 0, 0.0, w1))
        total = 0.0
        block_u, block_w = [], []
        count = 0

        def flush():
            nonlocal total, count
            if not block_u:
                return
            nodes = np.concatenate(block_u)
            z = nodes @ A.T
            val = np.ones(len(z))
            for k, f in enumerate(fs):
                val = val * np.asarray(f(z[:, k]), float)
            total += float(val @ np.concatenate(block_w))
            self.points += len(z)
            block_u.clear()
            block_w.clear()
            count = 0

        for j in range(len(u1)):
            if w1[j] == 0.0:
                continue
            m = int(np.searchsorted(rad, self.R2 - u1[j] ** 2, side="right"))
            if m == 0:
                continue
            block_u.append(np.concatenate([np.full((m, 1), u1[j]), rest[:m]], axis=1))
            block_w.append(w1[j] * wrest[:m])
            count += m
            if count > 400_000:
                flush()
        flush()
        return total


# -- validation against mpmath ---------------------------------------------------------------

def _mp_funcs():
    import mpmath as mp
    sech = lambda z: 1 / mp.cosh(z)
    return {"tanh": (np.tanh, mp.tanh),
            "sech2": (lambda z: 1 / np.cosh(z) ** 2, lambda z: sech(z) ** 2),
            "tanh2 sech4": (lambda z: np.tanh(z) ** 2 / np.cosh(z) ** 4,
                            lambda z: mp.tanh(z) ** 2 * sech(z) ** 4),
            "tanh'' ^2": (lambda z: (2 * np.tanh(z) / np.cosh(z) ** 2) ** 2,
                          lambda z: (2 * mp.tanh(z) * sech(z) ** 2) ** 2),
            "z tanh": (lambda z: z * np.tanh(z), lambda z: z * mp.tanh(z)),
            "tanh''": (lambda z: -2 * np.tanh(z) / np.cosh(z) ** 2,
                       lambda z: -2 * mp.tanh(z) * sech(z) ** 2)}


def _mp_2d(g1, g2, C):
    """``<g1(z1) g2(z2)>`` at 30 digits: z1 = a u, z2 = b u + c v (Cholesky), nested quad."""
    import mpmath as mp
    mp.mp.dps = 30
    a = mp.sqrt(C[0][0])
    b = mp.mpf(C[0][1]) / a
    c = mp.sqrt(mp.mpf(C[1][1]) - b * b)
    phi = lambda t: mp.exp(-t * t / 2) / mp.sqrt(2 * mp.pi)
    cut = [-10, -4, 0, 4, 10]          # Gaussian mass beyond 10: 1.5e-23
    inner = lambda u: mp.quad(lambda v: g2(b * u + c * v) * phi(v), cut)
    return mp.quad(lambda u: g1(a * u) * phi(u) * inner(u), cut)


def validate(eps_list=EPS):
    import mpmath as mp
    mp.mp.dps = 30
    F = _mp_funcs()
    phi = lambda t: mp.exp(-t * t / 2) / mp.sqrt(2 * mp.pi)
    cut = [-12, -6, -3, 0, 3, 6, 12]
    print("| case | variance(s) | mpmath (30 digits) | " + " | ".join(
        f"eps {e:.0e}: error" for e in eps_list) + " | points |")
    print("|---|---|---:|" + "---:|" * len(eps_list) + "---:|")
    worst = 0.0
    for var in (0.5, 1.0, 2.0):
        for name in ("sech2", "tanh2 sech4", "tanh'' ^2", "z tanh"):
            f, g = F[name]
            s = mp.sqrt(var)
            exact = mp.quad(lambda u: g(s * u) * phi(u), cut)
            errs, pts = [], 0
            for e in eps_list:
                t = Trapezoid(e)
                errs.append(abs(float(t.one(f, var)) - float(exact)))
                pts = t.points
            worst = max(worst, errs[-1])
            print(f"| 1-D {name} | {var} | {mp.nstr(exact, 17)} | "
                  + " | ".join(f"{x:.1e}" for x in errs) + f" | {pts} |", flush=True)
    for var in (0.5, 1.0, 2.0):
        for rho, (n1, n2) in ((0.6, ("tanh2 sech4", "sech2")), (-0.9, ("tanh", "tanh''"))):
            C = [[var, rho * var * 0.8], [rho * var * 0.8, 0.64 * var]]
            exact = _mp_2d(F[n1][1], F[n2][1], C)
            errs, pts = [], 0
            for e in eps_list:
                t = Trapezoid(e)
                errs.append(abs(float(t.nd([F[n1][0], F[n2][0]], np.array(C))) - float(exact)))
                pts = t.points
            worst = max(worst, errs[-1])
            print(f"| 2-D {n1} x {n2}, rho {rho} | {var}, {0.64 * var:.2f} | "
                  f"{mp.nstr(exact, 17)} | " + " | ".join(f"{x:.1e}" for x in errs)
                  + f" | {pts} |", flush=True)
    # four variables, two factors 1: a rotated full-rank 4x4 grid against a 2-D mpmath value
    rng = np.random.default_rng(1)
    for var in (1.0, 2.0):
        B = rng.standard_normal((4, 4)) + 2.0
        C = B @ B.T
        d = np.sqrt(np.diag(C))
        D = np.diag([1.0, 1.0, 1.0, np.sqrt(0.7)])
        C = D @ (C / np.outer(d, d) * var) @ D
        one = lambda z: np.ones_like(z)
        f1, f4 = F["tanh2 sech4"], F["tanh'' ^2"]
        exact = _mp_2d(f1[1], f4[1], C[np.ix_([0, 3], [0, 3])].tolist())
        errs, pts = [], 0
        for e in eps_list:
            t = Trapezoid(e)
            errs.append(abs(float(t.nd([f1[0], one, one, f4[0]], C)) - float(exact)))
            pts = t.points
        worst = max(worst, errs[-1])
        print(f"| 4-D marginal tanh2 sech4 x 1 x 1 x tanh''^2 | {var} (eigen "
              f"{', '.join(f'{x:.2g}' for x in np.linalg.eigvalsh(C)[::-1])}) | "
              f"{mp.nstr(exact, 17)} | " + " | ".join(f"{x:.1e}" for x in errs)
              + f" | {pts} |", flush=True)
    # four variables, no factor 1: at variance 0.2 Gauss-Hermite (statistics_reference.py's
    # rule, 80 nodes per axis) is converged; an independent method on the same 4-D average
    C4 = C / C[0, 0] * 0.2
    fs = [F["tanh2 sech4"][0], F["sech2"][0], F["tanh"][0], F["tanh"][0]]
    gh = [float(Reference((8, 8, 8, q)).nd(fs, C4)) for q in (64, 80)]
    errs, pts = [], 0
    for e in eps_list:
        t = Trapezoid(e)
        errs.append(abs(float(t.nd(fs, C4)) - gh[1]))
        pts = t.points
    print(f"| 4-D tanh2 sech4 x sech2 x tanh x tanh (vs Gauss-Hermite 80^4; 64^4 differs by "
          f"{abs(gh[0] - gh[1]):.0e}) | 0.2 | {gh[1]:.17g} | "
          + " | ".join(f"{x:.1e}" for x in errs) + f" | {pts} |", flush=True)
    worst = max(worst, errs[-1])
    print(f"worst error at eps {eps_list[-1]:.0e}: {worst:.1e}")
    return worst


# -- the residual fold -----------------------------------------------------------------------

#: distance of each activation's nearest singularity from the real axis (tanh: poles at
#: i pi / 2; swish = z sigmoid(z): sigmoid's poles at i pi)
POLES = {"tanh": np.pi / 2, "swish": np.pi}


def case(N, depth=4, plain=False, act="tanh"):
    """The network and inputs; ``plain``: gamma = 0, xi = 1 (the plain MLP's own modules)."""
    res = {} if plain else dict(gamma=0.6, xi=0.8)
    mlp = pdlt.MLP(n0=8, width=32, depth=depth, activation=act, C_b=0.1, C_W=1.0, **res)
    x = np.random.default_rng(0).standard_normal((N, 8))
    return mlp, x


def _worst(diff, R):
    """max over layers of max |diff| / max |R| (layers where R is not zero), and the layer."""
    best = (0.0, -1)
    for l in range(len(R)):
        s = float(np.max(np.abs(R[l])))
        if s > 0:
            best = max(best, (float(np.max(np.abs(diff[l]))) / s, l))
    return best


def compare(N, eps_list=EPS, groups=GROUPS, save=None, plain=False, act="tanh"):
    mlp, x = case(N, plain=plain, act=act)
    rows, t_eng, t_ref, points = {}, 0.0, [0.0] * len(eps_list), [0] * len(eps_list)
    raw = {}
    for g, stats in enumerate(groups):
        stats = tuple(k for k in stats if k in defined(mlp, N))
        t0 = time.perf_counter()
        eng = pdlt.statistics(mlp, x, get=stats)
        t_eng += time.perf_counter() - t0
        est = pdlt.statistics(mlp, x, get=stats, error=True).error or {}
        refs = []
        for i, e in enumerate(eps_list):
            t0 = time.perf_counter()
            ref = Trapezoid(e, pole=POLES[act])
            with integrated_by(ref):
                refs.append(pdlt.statistics(mlp, x, get=stats))
            t_ref[i] += time.perf_counter() - t0
            points[i] += ref.points
            if save:            # partial results, in case a long run is cut short
                np.savez(save.replace(".npz", f"_group{g}_eps{e:.0e}.npz"),
                         **{f"{k}/engine": np.asarray(eng[k]) for k in stats},
                         **{f"{k}/eps{e:.0e}": np.asarray(refs[-1][k]) for k in stats})
                print(f"<!-- group {g} eps {e:.0e}: {time.perf_counter() - t0:.0f} s -->",
                      flush=True)
        for k in stats:
            R = np.asarray(refs[-1][k])
            nz = [l for l in range(len(R)) if np.any(R[l] != 0)]
            name = k if g == 0 or k not in rows else f"{k} (dntk)"
            raw[f"{name}/engine"] = np.asarray(eng[k])
            for e, r_ in zip(eps_list, refs):
                raw[f"{name}/eps{e:.0e}"] = np.asarray(r_[k])
            if k in est:
                raw[f"{name}/estimate"] = np.asarray(est[k])
            if not nz:          # zero by symmetry (kappa3 of tanh): absolute
                rows[name] = dict(d=float(np.max(np.abs(eng[k]))), r=0.0, e=np.nan, l=-1,
                                  s=0.0, wd=(0.0, -1), wr=(0.0, -1))
                continue
            l = nz[-1]
            scale = float(np.max(np.abs(R[l])))
            E = np.asarray(eng[k])
            diff = np.abs(E[l] - R[l])
            e_k = est.get(k)
            e_l = float(np.max(np.abs(np.asarray(e_k)[l]))) / scale if e_k is not None else np.nan
            rows[name] = dict(d=float(np.max(diff)) / scale,
                              r=float(np.max(np.abs(np.asarray(refs[-2][k][l]) - R[l]))) / scale,
                              e=e_l, l=l, s=scale, wd=_worst(E - R, R),
                              wr=_worst(np.asarray(refs[-2][k]) - R, R))
            if rows[name]["d"] > 1e-8 or rows[name]["wd"][0] > 1e-8:
                full = np.abs(E - R)
                idx = np.unravel_index(int(np.argmax(full)), full.shape)
                print(f"<!-- {name}: {rows[name]['d']:.2e} of scale {scale:.3e} at layer {l + 1}; "
                      f"largest |diff| at (layer-1, entry) {idx}: engine {E[idx]!r}, "
                      f"reference {R[idx]!r} -->", flush=True)
    if save:
        np.savez(save, **raw)
    return rows, t_eng, t_ref, points


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--validate", action="store_true", help="only the mpmath checks")
    ap.add_argument("--N", default="2")
    ap.add_argument("--eps", default=",".join(f"{e:.0e}" for e in EPS))
    ap.add_argument("--no-dntk", action="store_true",
                    help="skip the second run of P, Q through residual_multi_dntk")
    ap.add_argument("--save", default=None, help="npz of every array (suffix _N<N>)")
    ap.add_argument("--act", default="tanh", choices=sorted(POLES))
    ap.add_argument("--plain", action="store_true",
                    help="the plain MLP (gamma 0, xi 1; P, Q once: no second module)")
    a = ap.parse_args()
    eps_list = tuple(float(e) for e in a.eps.split(","))
    if a.validate:
        validate(eps_list)
        return
    for N in (int(n) for n in a.N.split(",")):
        save = a.save.replace(".npz", f"_N{N}.npz") if a.save else None
        rows, te, tr, pts = compare(N, eps_list, save=save, plain=a.plain, act=a.act,
                                    groups=GROUPS[:1] if a.no_dntk or a.plain else GROUPS)
        print(f"{'plain' if a.plain else 'residual'} {a.act} N={N}: default vs trapezoid "
              f"reference at eps {eps_list[-1]:.0e} "
              f"(reference's difference to eps {eps_list[-2]:.0e}; engine's own estimate), "
              "fraction of the largest entry at the last nonzero layer; worst layer: the "
              "same at the layer where it is largest")
        print("| statistic | layer | scale | default - reference | reference's own | "
              "engine's estimate | worst layer: default - reference | reference's own |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for k, v in rows.items():
            print(f"| {k} | {v['l'] + 1} | {v['s']:.2e} | {v['d']:.0e} | {v['r']:.0e} | "
                  f"{v['e']:.0e} | {v['wd'][0]:.0e} (layer {v['wd'][1] + 1}) | "
                  f"{v['wr'][0]:.0e} (layer {v['wr'][1] + 1}) |")
        print(f"<!-- N={N}: engine {te:.2f} s, reference {', '.join(f'{t:.1f}' for t in tr)} s, "
              f"points {', '.join(f'{p:.2e}' for p in pts)} -->", flush=True)


if __name__ == "__main__":
    main()
