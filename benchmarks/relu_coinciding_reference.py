"""A and H1 of two nearly coinciding ReLU-family inputs against a 40-digit reference (issue #15).

``python benchmarks/relu_coinciding_reference.py [--write] [--cases relu,leaky]``

The reference folds the engine's own step functions (``pdlt.theory.statistics._STEPS``:
V, G1, D, F, A, H1) in mpmath, on averages that share no code with the engine:

* every pair and four-point average of the ReLU family
  (``sigma = c_+ z theta(z) + c_- z theta(-z)``) is a product of piecewise monomials of
  two variables, ``z_a = sqrt(K_aa) r cos(phi)``, ``z_b = sqrt(K_bb) r cos(phi - psi)``:
  ``E[r^(m+n)] / (2 pi)`` times an angular integral split at the kinks (``mp.quad``);
* the derivative operators ``d<f_a f_b>/dK`` and the fourth-derivative sources
  ``(1/8) sum V <d^4 (f_a f_b)>`` are K-derivatives of those pair averages
  (``mp.diff`` at raised precision; ``<d_i d_j F> = dF/dK_ij`` (i != j),
  ``(1/2) <d_i^2 F> = dF/dK_ii``), no Stein forms, no closed forms of the engine;
* ``G = <d_b (p_a1 s_a2)>`` by Stein's lemma with ``K^-1`` (40 digits).

The kernels K, Theta are folded in mpmath from the same float64 inputs (two inputs
``[1, 0.3]``, ``[1, 0.3 + eps]``, n0 = 2, width 32, depth 4, C_b = 0.1). ``--write``
recomputes the reference (~1 min per case, relu; ~1.5 min leaky) and stores A and H1 of
the last layer to 30 digits in ``relu_coinciding_reference.json`` (read by
``tests/theory/test_kinked_coinciding.py``); every run then prints, per case, the
engine's distance to it: A as a fraction of its Cauchy-Schwarz scale
``sqrt(A_0000 A_1111)``, H1 absolute (ReLU's H1_aa = 0, so H1 has no Cauchy-Schwarz
scale; H1_01 itself is printed), each with the engine's stated estimate
(``error=True``) and the statistics :func:`pdlt.statistics` warned about.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import mpmath as mp
import numpy as np

import pdlt
from pdlt.theory import statistics as _stats
from pdlt.theory.kernel import LayerHyper

mp.mp.dps = 40
NAMES = ("V", "G1", "D", "F", "A", "H1")


def _er(k):
    """``E[r^k]``, ``r^2 ~ chi^2_2``."""
    return mp.power(2, mp.mpf(k) / 2) * mp.gamma(1 + mp.mpf(k) / 2)


def _g(c, m, cp, cm):
    return c ** m * (cp if c > 0 else cm)


def pair(Kaa, Kbb, Kab, fa, fb):
    """``E[h_a(z_a) h_b(z_b)]``, ``h(z) = z^m (c_+ if z > 0 else c_-)``, ``f = (m, c_+, c_-)``."""
    (m, ap, am), (n, bp, bm) = fa, fb
    ra, rb = mp.sqrt(Kaa), mp.sqrt(Kbb)
    c = Kab / (ra * rb)
    psi = mp.acos(c) if c < 1 else mp.mpf(0)
    cuts = sorted({mp.mpf(0), mp.pi / 2, 3 * mp.pi / 2, 2 * mp.pi,
                   *((psi + mp.pi / 2) % (2 * mp.pi), (psi + 3 * mp.pi / 2) % (2 * mp.pi))})
    ang = mp.quad(lambda p: _g(mp.cos(p), m, ap, am) * _g(mp.cos(p - psi), n, bp, bm), cuts)
    return ra ** m * rb ** n * _er(m + n) * ang / (2 * mp.pi)


class RefAverages:
    """The :class:`pdlt.theory._averages.LayerAverages` interface the steps read, in mpmath."""

    def __init__(self, si, K):
        self.cp, self.cm = mp.mpf(si[0]), mp.mpf(si[1])
        self.K = K
        self.N = 2

    def f(self, kind, extra=0):
        """(m, c_+, c_-): s = sigma, p = sigma', z = z."""
        return {"s": (1 + extra, self.cp, self.cm), "p": (extra, self.cp, self.cm),
                "z": (1 + extra, mp.mpf(1), mp.mpf(1)), "1": (extra, mp.mpf(1), mp.mpf(1))}[kind]

    def F(self, i, j, fa, fb, K=None):
        """``<fa(z_i) fb(z_j)>`` (same input: one variable)."""
        K = self.K if K is None else K
        if i == j:
            (m, ap, am), (n, bp, bm) = fa, fb
            return pair(K[i][i], K[i][i], K[i][i], (m + n, ap * bp, am * bm), (0, 1, 1))
        return pair(K[i][i], K[j][j], K[i][j], fa, fb)

    def _matrix(self, fa, fb):
        return np.array([[self.F(i, j, fa, fb) for j in range(2)] for i in range(2)],
                        dtype=object)

    @property
    def S(self):
        if not hasattr(self, "_S"):
            self._S = self._matrix(self.f("s"), self.f("s"))
        return self._S

    @property
    def PP(self):
        if not hasattr(self, "_PP"):
            self._PP = self._matrix(self.f("p"), self.f("p"))
        return self._PP

    def _fn(self, a, b, fa, fb):
        """``<fa_a fb_b>`` as a function of (K_aa, K_bb, K_ab)."""
        if a == b:
            return lambda x, y, z: self.F(0, 0, fa, fb, [[x]])
        return lambda x, y, z: pair(x, y, z, fa, fb)

    def _op(self, kind):
        fa = self.f(kind)
        K = self.K
        D1, D2, O = (np.zeros((2, 2), dtype=object) for _ in range(3))
        for a in range(2):
            for b in range(2):
                fn = self._fn(a, b, fa, fa)
                pt = (K[a][a], K[b][b], K[a][b])
                if a == b:
                    D1[a, a] = mp.diff(fn, pt, (1, 0, 0))
                    D2[a, a] = O[a, a] = mp.mpf(0)
                else:
                    D1[a, b] = mp.diff(fn, pt, (1, 0, 0))
                    D2[a, b] = mp.diff(fn, pt, (0, 1, 0))
                    O[a, b] = mp.diff(fn, pt, (0, 0, 1))
        return D1, D2, O

    @property
    def Mss(self):
        if not hasattr(self, "_Mss"):
            self._Mss = self._op("s")
        return self._Mss

    @property
    def Mpp(self):
        if not hasattr(self, "_Mpp"):
            self._Mpp = self._op("p")
        return self._Mpp

    def quad(self, slots):
        out = np.zeros((2,) * 4, dtype=object)
        for idx in np.ndindex(2, 2, 2, 2):
            parts = []
            for inp in range(2):
                mine = [s for s, i in zip(slots, idx) if i == inp]
                m = mine.count("s")
                parts.append((m, self.cp ** len(mine), self.cm ** len(mine)))
            out[idx] = pair(self.K[0][0], self.K[1][1], self.K[0][1], parts[0], parts[1])
        return out

    @property
    def G(self):
        """``G[a1, a2, b] = <d_b (p_a1 s_a2)>`` by Stein's lemma."""
        G = np.zeros((2, 2, 2), dtype=object)
        K = mp.matrix([[self.K[0][0], self.K[0][1]], [self.K[1][0], self.K[1][1]]])
        Ki = K ** -1
        for a1 in range(2):
            for a2 in range(2):
                if a1 == a2:
                    # <(p s)'> = <z p s> / K (one variable)
                    zps = self.F(a1, a1, (1, 1, 1), (1, self.cp ** 2, self.cm ** 2))
                    G[a1, a2, a1] = zps / self.K[a1][a1]
                    continue
                # <z_c p_a1 s_a2> for c = a1, a2
                fa, fb = self.f("p"), self.f("s")
                z = []
                for c in range(2):
                    ga = (fa[0] + (c == a1), fa[1], fa[2])
                    gb = (fb[0] + (c == a2), fb[1], fb[2])
                    z.append(self.F(a1, a2, ga, gb))
                for b in range(2):
                    G[a1, a2, b] = Ki[b, 0] * z[0] + Ki[b, 1] * z[1]
        return G

    def d4_source(self, V, of="s"):
        """``(1/2) sum_{e, e'} V_{e e'} d^2<f_a f_b>/dK_e dK_e'`` (e over ordered pairs)."""
        fa = self.f(of)
        K = self.K
        Q = np.zeros((2, 2), dtype=object)
        # directions: Delta^{ij} = (E_ij + E_ji) / 2 in coordinates (K_aa, K_bb, K_ab)
        for a in range(2):
            for b in range(2):
                if a == b:
                    fn = self._fn(a, a, fa, fa)
                    Q[a, a] = V[a, a, a, a] * mp.diff(fn, (K[a][a], 0, 0), (2, 0, 0)) / 2
                    continue
                fn = self._fn(a, b, fa, fa)
                pt = (K[a][a], K[b][b], K[a][b])
                H = {}
                for o in ((2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1)):
                    H[o] = mp.diff(fn, pt, o)

                def coord(i, j):
                    v = [mp.mpf(0)] * 3
                    if i == j:
                        v[0 if i == a else 1] = mp.mpf(1)
                    else:
                        v[2] = mp.mpf(1) / 2
                    return v

                def hess(u, w):
                    tot = mp.mpf(0)
                    for p in range(3):
                        for q in range(3):
                            o = [0, 0, 0]
                            o[p] += 1
                            o[q] += 1
                            tot += u[p] * w[q] * H[tuple(o)]
                    return tot

                tot = mp.mpf(0)
                for e in np.ndindex(2, 2):
                    for e2 in np.ndindex(2, 2):
                        tot += V[e + e2] * hess(coord(*e), coord(*e2))
                Q[a, b] = tot / 2
        return Q


def reference(mlp, x):
    """A and H1 at every layer (mpmath object arrays), folding the engine's steps."""
    si = mlp.activation.scale_invariant
    n0 = mlp.widths[0]
    X = [[mp.mpf(float(v)) for v in row] for row in x]
    dot = np.array([[mp.fsum(p * q for p, q in zip(X[i], X[j])) / n0 for j in range(2)]
                    for i in range(2)], dtype=object)
    K = mp.mpf(mlp.C_b[0]) + mp.mpf(mlp.C_W[0]) * dot
    Th = mp.mpf(mlp.lambda_b[0]) + mp.mpf(mlp.lambda_W[0]) * dot
    zero = lambda r: np.full((2,) * r, mp.mpf(0), dtype=object)  # noqa: E731
    st = {k: zero(2 if k in ("G1", "H1") else 4) for k in NAMES}
    out = [dict(st, K=K, Theta=Th)]
    for l in range(1, mlp.depth):
        hp = LayerHyper.of(mlp, l)
        avg = RefAverages(si, K)
        s = dict(st, K=K, Theta=Th)
        new = {k: _stats._STEPS[k](avg, s, hp) for k in NAMES}
        K = mp.mpf(hp.C_b) + mp.mpf(hp.C_W) * avg.S
        Th = mp.mpf(hp.lambda_b) + mp.mpf(hp.lambda_W) * avg.S + mp.mpf(hp.C_W) * avg.PP * Th
        st = new
        out.append(dict(new, K=K, Theta=Th))
    return out


CASES = {"relu": dict(activation="relu", C_b=0.1, C_W=2.0),
         "leaky": dict(activation="leaky_relu", C_b=0.1, C_W=1.5)}
EPS = tuple(float(e) for e in os.environ.get("EPS", "1e-1,1e-2,1e-3,1e-4,1e-5,1e-6").split(","))
JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relu_coinciding_reference.json")


def case(name, eps):
    """The MLP and the two inputs ``[1, 0.3]``, ``[1, 0.3 + eps]`` of a reference case."""
    return (pdlt.MLP(n0=2, width=32, depth=4, **CASES[name]),
            np.array([[1.0, 0.3], [1.0, 0.3 + eps]]))


def load():
    """The stored reference: name -> list of {eps, one_minus_rho2, A (16 str), H1 (4 str)}."""
    with open(JSON) as fh:
        return json.load(fh)


def compute(names):
    table = {}
    for name in names:
        rows = []
        for eps in EPS:
            mlp, x = case(name, eps)
            t0 = time.time()
            ref = reference(mlp, x)
            Kl = ref[-2]["K"]
            r = 1 - Kl[0, 1] ** 2 / (Kl[0, 0] * Kl[1, 1])
            rows.append(dict(eps=eps, one_minus_rho2=float(r),
                             A=[mp.nstr(v, 30) for v in ref[-1]["A"].reshape(-1)],
                             H1=[mp.nstr(v, 30) for v in ref[-1]["H1"].reshape(-1)]))
            print(f"{name} eps {eps:g}: reference in {time.time() - t0:.0f} s", flush=True)
        table[name] = rows
    return table


def compare(table):
    """Print the engine's distance to the reference: A as a fraction of its Cauchy-Schwarz
    scale, H1 absolute (ReLU's H1_aa = 0) and against H1_01 itself, with the stated
    estimates (error=True) and whether statistics() warned."""
    for name, rows in table.items():
        for row in rows:
            mlp, x = case(name, row["eps"])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                s = pdlt.statistics(mlp, x, get=["A", "H1"], error=True)
            rA = np.array([float(v) for v in row["A"]]).reshape(2, 2, 2, 2)
            rH = np.array([float(v) for v in row["H1"]]).reshape(2, 2)
            scale = np.sqrt(abs(rA[0, 0, 0, 0] * rA[1, 1, 1, 1]))
            dA = np.max(np.abs(s.A[-1] - rA)) / scale
            eA = np.max(s.error["A"][-1]) / scale
            dH = np.max(np.abs(s.H1[-1] - rH))
            eH = np.max(s.error["H1"][-1])
            warned = sorted({str(w.message).split(" ")[0].split("[")[0] for w in caught})
            print(f"{name:6s} 1-rho^2 {row['one_minus_rho2']:.1e}  A {dA:.1e} (est {eA:.1e})  "
                  f"H1 {dH:.1e} (est {eH:.1e}; H1_01 {rH[0, 1]:.2e})  warned {warned}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true",
                    help="recompute the 40-digit reference (minutes) and store it in the JSON")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    names = args.cases.split(",")
    if args.write:
        table = compute(names)
        old = load() if os.path.exists(JSON) else {}
        old.update(table)
        with open(JSON, "w") as fh:
            json.dump(old, fh, indent=1)
        print("wrote", JSON)
    compare({k: v for k, v in load().items() if k in names})


if __name__ == "__main__":
    main()
