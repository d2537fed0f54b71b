r"""Three- and four-variable Gaussian expectations (for the four-point vertex).

* :func:`expect_nd` -- ``<f_1(z_1) ... f_d(z_d)>_K`` for a batch of d x d
  covariances, d = 1..4;
* :func:`quad_expectations` -- ``<sigma_a1 sigma_a2 sigma_a3 sigma_a4>_K``
  for all quadruples of N inputs, as an (N, N, N, N) tensor.

Methods and their accuracy
--------------------------
**Factorization (any rank).** Each covariance is eigendecomposed and the
rows of ``U sqrt(max(lambda, 0))`` are orthogonalized by pivoted
Gram-Schmidt (largest conditional variance first): ``z = L u`` with L lower
triangular, conditional variances computed as norms (never negative), and
axes whose conditional variance is below 1e-14 of the largest variance
dropped, so rank-deficient covariances (N > n0 + 1 inputs at the first
layer) are integrated exactly on their support. A covariance with an
eigenvalue below ``-1e-9 d`` times its largest variance is indefinite and
raises :class:`KernelNotPSDError` naming it and the eigenvalue
(``check_psd`` names the inputs of a whole kernel).

**Smooth integrands: nested product rule, Gauss-Hermite or trapezoid per
axis.** A tensor rule in u is summed innermost-first, so ``f_k`` is
evaluated on only ``Q_1 ... Q_k`` points. Along axis k the integrand varies
on the scale ``s_k = max_i |L_ik|``. Narrow axes (``s_k <= 0.5``) use
Gauss-Hermite with ``Q(s) = ceil(q0 + q1 s)`` nodes (rounded up to a rule
size; ``(q0, q1)`` = (3, 18) "fast", (5, 30) "default", (8, 48) "high",
(12, 72) "higher", (16, 96) "highest"; with three or fewer variables each
accuracy uses the rule two up on these axes and one up on trapezoid axes:
there the grids cost at most ~3x more, and the merged powers of coinciding
inputs converge slowest, e.g. tanh ``<q q p p>`` at variance ~0.2 was 2e-5
at "default", 4e-8 one rule up, and tanh's dNTK and ddNTKs at N = 2, 3 were
1e-8..9e-8 of their scale off an independent reference with the Gauss-Hermite
axes one rule up, <= 2e-10 two up (``benchmarks/statistics_reference.py``));
wider axes use the trapezoidal rule on ``|u| <= 8`` with spacing
``h = min(pi^2 / (c s), 0.7)``, ``c`` = 16 / 30 / 32 / 40 / 48 for four variables
(+5 per variable less: the merged powers ``tanh^p`` have stronger
singularities), at most 640 nodes, and fewer where the tensor grid would
exceed ``min(8 x 64^d, 64^4)`` points (bounded cost; the boundary 0.5 and the
default c = 30, were 0.6 and 25, from random tanh inputs with N > n0, where four
variables load on one axis of scale ~0.6: V was 2.9e-8 off, now <= 4.5e-10, see
``_TRAP_FROM``)
(``axis_rules``; trapezoid sizes rounded up to a ladder ~6 % apart, so that
covariances of similar scales share one cached grid), one node for a zero
axis. The tensor grid is pruned: the lightest points of the outer axes that
together weigh at most ``_PRUNE_MASS = 1e-14`` of the Gaussian mass are
dropped, and per kept outer point the light nodes of the last axis (another
1e-14), so the error added is at most 2e-14 times the integrand's bound on
the dropped points (tanh: 2e-14 of the scale; integrands growing like
``|z|^4``, GELU and swish, measured ~1e-12; the error estimate's lower rule
is pruned at ``_PRUNE_MASS_ESTIMATE = 1e-12``, which adds at most 2e-12
times that bound to the estimate, so it stays an overestimate, for ~25 %
fewer of its points); an integrand even under
``z -> -z`` (products of odd and even functions with evenly many odd ones,
checked on a grid: all averages of tanh, erf, sin with an even number of
odd slots) is summed over ``u_1 >= 0`` with doubled weights, exactly. With
the last axis in cache-sized blocks this cut the points evaluated ~3.7x
(N = 16 tanh inputs, first layer) and the time per point ~2x (issue #15,
``benchmarks/theory_cost.py``). Gauss-Hermite converges only
like ``exp(-const sqrt(Q))`` for tanh (poles at ``i pi / 2``, i.e. at
``pi / (2 s)`` in u), the trapezoid like ``exp(-pi^2 / (s h)) = exp(-c)``.
Measured against independent references (plain Cholesky and composite
Gauss-Legendre on unit panels, converged to ~1e-13; ``benchmarks/accuracy.py``,
``tests/gaussian/test_multi.py``), relative to the Cauchy-Schwarz scale
``prod_k <|f_k|^d>^(1/d)``: every entry of ``quad_expectations`` for
N = 2, 3, 4 inputs at K ~ 1 and ~3 (axis scales up to 2): tanh <= 6e-11,
GELU, swish <= 3e-13, erf <= 1.2e-15 at "default"; three-variable tanh
at axis scales up to 3.4: fast 2.4e-6, default 4e-10, high 5e-12. (Gauss-Hermite
alone gave 6e-8 at K ~ 1 and 1e-6 at K ~ 3 at "default".) The cost is bounded: at most ``min(8 x 64^d, 64^4)``
points per expectation (64 per axis was the old Gauss-Hermite cap), so
averages with several wide axes get fewer nodes than the rule asks for and
may miss 1e-8 (variances above ~3 at the first layer): four-variable tanh at
axis scales (3.1, 2.0, 1.7, 0.9): estimate 3e-8, at (4.4, 2.8, 2.4, 1.3):
2e-6, at (6.2, 3.9, 3.3, 1.9): 5e-5 (about 1 s each); three-variable at
(6.2, 3.7, 1.5): 3e-8, at (10.7, 6.5, 2.6): 3e-5 (0.1-0.2 s). There the
error estimate, not a claim, says how good the result is. The error estimate is the
difference from a smaller rule on every resolved axis (Gauss-Hermite one
size smaller, trapezoid with 4/5 of the nodes): measured to overestimate
the error by 10x or more wherever the error exceeds round-off (1e-12); it does
not include the truncation at ``|u| = 8`` (below 1e-11 relative for
integrands growing like ``|z|^4``) nor round-off (~1e-13).

**The last axis by interpolation in the conditional mean.** Given the outer
axes, the last variable is ``m_p + l u`` with one slope l per covariance and a
mean m_p per outer point, so the inner sums are values of one function
``g(m) = sum_j w_j f(m + l u_j)`` at the P outer points. Where a cost model says
it pays (``_inner_interp``: direct evaluations against a table of g on a grid of
spacing 0.04 in m plus one degree-11 polynomial per outer point; from 256 outer
points), g is tabulated with the full last-axis rule and interpolated locally
(12 grid values per cell, Taylor form at the cell center). Its error is checked
at every cell center against the directly computed g and must stay below
``1e-14`` of ``max |g|`` (else spacing 0.02, else the direct sums): measured
~1e-15 for tanh, whose poles at ``i pi / 2`` bound g's smoothness when l is
small (spacing 0.05: 1e-14, 0.08: 4e-12); a kinked or otherwise unresolved g
fails the check and is summed directly. Against the direct sums: V of the
N = 16, depth-10 tanh benchmark within 2e-14 of its largest entry, every
statistic of tanh, erf, GELU at N = 2..4 within 4e-15, swish within 1.1e-12
(the direct sums' pruning of the last axis, which the table does not do, at
integrands growing like ``|z|``); N = 16 tanh V and G1 ~1.4x faster
(benchmarks/README.md, "Theory engine cost (#15)").

**GELU and erf: the innermost axis in closed form.** Their functions are
``P(z) + A(z) Phi(a z) + B(z) phi(a z)`` (``NormalFamily``; GELU's
``z Phi``, ``Phi + z phi``, ``(2 - z^2) phi`` and erf's), whose average over
the last axis given the outer ones is a closed form; when the pivoted last
variable carries such a function (every four-distinct-input average; merged
powers such as ``sigma^2`` do not qualify) the smooth path sums only the
outer axes (error of the closed form ~1e-16, checked against adaptive
quadrature in ``tests/gaussian/test_multi_normal.py``). GELU's trapezoid axes
use the rule of an entire function (``axis_rules``, ``growth``).

**GELU: the last two axes in closed form.** A three- or four-variable GELU
average with two slots among ``z Phi`` (sigma) and ``Phi + z phi``
(sigma') puts that pair last and integrates it in closed form
(``_zphi_pair``: with ``z Phi(z) = E_e[z 1{z > e}]`` the pair average is a
truncated moment of a bivariate normal; the bivariate CDF by Sheppard's
formula with 6-20 Gauss-Legendre nodes, 4e-16 absolute; sigma' pairs are its
mixed derivative in the two means, sigma sigma' pairs one derivative). Only the other one or two axes are
summed, with the rules the d-variable average gives them (the pair of the
fewest outer points is chosen), and the error estimate is the same
difference from the lower rule on those axes. Where the pair's augmented
correlation exceeds ``_PAIR_R_MAX`` = 0.925 the one-axis path is taken. Against
the one-axis path at "higher" (``tests/gaussian/test_gelu_pair.py``): within
its estimate plus the ``|u| = 8`` truncation (<= 1e-11 of the scale); the N = 16
V and G1 at depth 10: 19-31 -> 3.5-6 CPU s (old and new in the same runs),
GELU's ten NTK tensors at N = 8 from ~3.5x tanh's cost to ~0.9x, with
~20-25x fewer points per four-variable average (``benchmarks/gelu_cost.py``,
benchmarks/README.md "Fifth pass (h46): GELU"). At variances ~100 and up the
one-axis path is capped by its point budget (1e-6..1e-3 off at "highest")
while the pair path stays within its estimate.

**ReLU family (products of ``a_+- z`` and ``a_+-``): closed form.** The
functions are ``PiecewiseMonomial``. Every average of two to four of them
is first tried in closed form (:mod:`pdlt.gaussian._orthant`: Stein's lemma
reduces each truncated moment to orthant probabilities, closed for up to
three variables and one smooth 1-D integral (Plackett) for four; a
rank-deficient covariance, e.g. N > n0 inputs at the first layer, is cut
into simplicial cones): within 1e-12 of exact orthant values and of an
independent polar integral, ~0.1 ms per four-variable average instead of
~10 ms (issue #15: relu V and G1 for N = 16, depth 10, 207 s -> 2 s).
Covariances whose correlation matrix has its smallest eigenvalue between
1e-10 and 1e-6 (nearly but not exactly singular) and degenerate cone
geometries go to the split path below, one rule up. (That path was found
off on rank-deficient covariances: at "high" by up to 1.6e-8 of the scale
for rank-2 ``<relu^2 relu relu>`` (``tests/gaussian/test_orthant.py``), 4.7e-7
for rank-3 four-ReLU averages of 16 inputs in 3 dims, and 2.6e-5 for
averages with sigma' slots at rank 2 (``benchmarks/relu_orthant.py``).) **Three variables, one pair nearly coinciding** (``1 - rho^2 < 1e-3``, the third off
the pair's plane): ReLU-family pieces, and functions kinked at 0 only (elu), on the
unit sphere with the pair's sign changes at exact longitudes
(``_near_pair_triple``; the orthant form divides by ``1 - rho^2``, the split and exp
paths met the pair's sliver obliquely: 1.2e-6 off ``<theta theta theta>``, 4.3e-6 off
elu's ``<p p p>``, unreported; now within 4e-13 and 1e-14 of 30-digit / independent
references, ``benchmarks/relu_triple_reference.py``, ``elu_triple_reference.py``).
**Four elu variables, a pair below** ``1 - rho^2 = 0.15`` (``_exp_near_quad``): the
four-variable form of ``_near_pair_quad`` with elu along the rays (``_quad_sum_exp``);
the exp path missed the sliver of the jump of sigma'' (``<q q p p>`` 8.5e-5 of scale off
at ``1 - rho^2 = 1e-6``, estimate 5e-11; ``benchmarks/elu_quad_check.py``).
**Split path: closed-form inner axes.**
The last two axes are done
in closed form when the last two variables are of degree <= 1 and not
collinear (``sqrt(1 - rho^2) > 1e-3``): a bivariate normal orthant
probability (Owen's T) and its truncated first and mixed moments (Stein's
lemma); otherwise the last axis alone is done exactly by truncated Gaussian
moments of the piecewise polynomial. The outer axes (at most two for a
four-variable expectation of full rank) use split Gauss-Legendre: fixed
breakpoints (truncation at ``|u| = 8``), the variable's own kink, and the
kinks of later variables projected onto the axis with panels of their
smoothing width on both sides. Measured against an independent unpivoted
nested reference (``tests/gaussian/test_multi.py``): default <= 2e-11
(generic) and 6e-9 (strongly correlated, rho ~ 0.99), high <= 1e-11, fast
<= 2e-5; ~10 ms per four-variable expectation at "default"; with the merged
powers of coinciding inputs (relu^2, relu^3) every entry of
``quad_expectations`` for N = 2, 3, 4 is within 4e-10 at "default"
(``benchmarks/accuracy.py``). Error
estimate: the difference from the same panels with one node more (the rule converges
~40x per node, so the difference is the error itself: elu, three inputs, "default":
5.8e-10 against a true 5.9e-10 at the worst entry, 1.0-1.3x of it per layer, against an
independent nested reference; the former estimate, two nodes fewer, said 6e-7, ~1000x
the error: ``benchmarks/README.md``, elu section). Costs ``((q+1)/q)^d`` of the value.

**sin (products of sines, cosines and powers of z): closed form.** Functions
recognized as trigonometric polynomials (:mod:`pdlt.gaussian._trig`, passed as
``TrigPoly``) are averaged by expanding the product into
``exp(i k.z)`` terms, ``<z^n exp(i k.z)>_K = exp(-k^T K k / 2) E[(iKk + ...)^n]``:
round-off of the sum, any rank, cost and memory independent of K (sin at
``|x|^2 / n0 = 1e12``: the period limits; the trapezoid above capped its nodes
and missed V at layer 2 by ~30 % at 1e6). Small variances, where the
terms cancel, go to the smooth path below (``_trig._TRIG = False`` forces it
everywhere).

**elu: the innermost axis in closed form.** elu's sigma, sigma', sigma'' and
their products, powers, sums and products with powers of z are exponential
polynomials between kinks (:class:`~pdlt.gaussian._exppw.ExpPiecewise`, produced
by ``normal_family`` and the theory's integrand builders for the named elu);
the split path below then does its last axis by tilted truncated Gaussian moments
(:func:`~pdlt.gaussian._exppw.exp_inner`, module doc there) and sums only the outer
axes, with the same panels and the same error estimate (one node more per panel
on those axes). Against adaptive quadrature on one axis and a nested scipy
reference: <= 1e-12 of the scale; against the split path at "high" on 2-4
variables (random, rho 0.999, rank 2): <= 6e-13 (``tests/gaussian/test_exppw.py``).
A four-variable average: ~45-60 s -> ~1 s (``benchmarks/elu_exp_inner.py``).
Covariances with a variance below ``_exppw._EXP_MIN_VAR`` = 0.05 keep the
all-quadrature split path.

**Other kinked integrands (declared user kinks; elu with ``_exppw._EXP =
False``): nested split Gauss-Legendre** on all axes with the same panels (the
kinks given); ``(6-12 panels x 4-7 nodes)^d`` evaluations: slow for d = 4.

Coinciding indices are reduced before integrating:
``<sigma_a^2 sigma_b sigma_c>`` is a three-variable expectation of
``sigma^2, sigma, sigma`` and ``<sigma_a^4>`` a one-variable one
(:func:`pdlt.gaussian.expect`, error < 1e-14).
"""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import math
import os
import threading

import numpy as np
from scipy import special

from . import _exppw, _trig
from ._exppw import ExpPiecewise, agrees_on_probe, exp_inner
from ._orthant import orthant_expect
from ._rule import KernelNotPSDError, _gauss_legendre, expect

__all__ = ["expect_nd", "quad_expectations", "node_count", "axis_rules", "NormalFamily",
           "normal_family"]

_Q_SIZES = np.array([1, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80,
                     96])
_ACCURACY = {"fast": (3.0, 18.0), "default": (5.0, 30.0), "high": (8.0, 48.0),
             "higher": (12.0, 72.0), "highest": (16.0, 96.0)}
#: the smooth path's rules in order; with three or fewer variables each accuracy uses
#: the next one on trapezoid axes and the one after on Gauss-Hermite axes (those grids
#: cost (q'/q)^d <= ~3x more there, not ~6.5x as for four, and the merged powers of
#: coinciding inputs converge slowest: tanh <q q p p> at variance ~0.2 was 2e-5 at
#: "default", 4e-8 one rule up; the Gauss-Hermite axes one rule up still left tanh's
#: dNTK and ddNTKs 1e-8..9e-8 off an independent reference at N = 2, 3, two rules up
#: <= 2e-10: benchmarks/statistics_reference.py)
_LEVELS = ("fast", "default", "high", "higher", "highest")
_GH_STEP_UP = 2     # levels up for Gauss-Hermite axes with three or fewer variables
_TRAP_STEP_UP = 1   # levels up for trapezoid axes with three or fewer variables
#: the same for quad_expectations' averages of powers of sigma alone (V, G1): one level
#: up; two (for derivative products such as <q q p p>) tripled their cost at small
#: variances: 32 against 20 nodes per axis at s = 0.25 (issue #15, N = 16 benchmark)
_GH_STEP_UP_SIGMA = 1
# split rule per accuracy: fixed panel breakpoints (truncation at |u| = 8, Gaussian mass
# 1.2e-15) and Gauss-Legendre nodes per panel (measured errors in the module doc)
_SPLIT_RULES = {
    "fast": (np.array([-8.0, -5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 5.0, 8.0]), 4),
    "default": (np.array([-8.0, -6.0, -4.0, -2.5, -1.2, 0.0, 1.2, 2.5, 4.0, 6.0, 8.0]), 6),
    "high": (np.array([-8.0, -6.0, -4.5, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0]), 7),
}
# smooth path: trapezoidal rule on the axes of scale above _TRAP_FROM (axis_rules).
# 0.5 and default c = 30 (were 0.6 and 25): random tanh inputs with N > n0 (5-8 inputs in
# 2-3 dims, C_b 0.1, C_W 1.2, depth 4, 12 cases) left V up to 2.9e-8 of its largest entry
# off "high" (which is within 1e-11 of the eigenbasis reference of
# benchmarks/statistics_reference.py): four variables loading on one axis of scale ~0.6,
# their poles aligned there; Gauss-Hermite at s = 0.598 with 24 nodes gave 1.3e-8 of the
# average's scale, the trapezoid at s = 0.614 with c = 25 3e-8. Now <= 4.5e-10, at ~1.4x
# the CPU time of the N = 16, depth-10 tanh benchmark (7.6 -> 10.8 s)
_TRAP_FROM = 0.5
_TRAP_T = 8.0
_TRAP_HMAX = 0.7
_TRAP_QMAX = 640          # nodes per trapezoid axis at most, and the tensor grid of d axes
#: trapezoid sizes: the rule's node count is rounded up to the next of these (~6 % apart)
_TRAP_LADDER = np.unique(np.append(np.minimum(np.ceil(2.0 * 1.06 ** np.arange(100)), _TRAP_QMAX),
                                   _TRAP_QMAX)).astype(int)
# at most 8 x 64^d points (64 was the old Gauss-Hermite cap), and 64^4 for d = 4
_TRAP_POINTS = {d: min(8.0 * 64.0 ** d, 64.0 ** 4) for d in range(1, 5)}
_TRAP_C = {"fast": 16.0, "default": 30.0, "high": 32.0, "higher": 40.0, "highest": 48.0}
#: entire activations (``growth``: GELU) keep the former boundary and default c: no poles
#: to align (four-GELU products <= 3e-12 at c = 25, axis_rules)
_TRAP_FROM_ENTIRE = 0.6
_TRAP_C_ENTIRE = {**_TRAP_C, "default": 25.0}
_PHI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_MIN_S = 1e-3  # sqrt(1 - rho^2) of the last pair below this: one axis less in closed form
_GRADE = np.array([1.0])  # offsets around a projected kink, in units of its smoothing width
_CHUNK = 2 ** 22  # evaluation points per vectorized block
_BLOCK = 2 ** 16  # points of the innermost axis per block (temporaries of 512 kB: in cache)
_EPS = np.finfo(float).eps
#: bytes of cached tensor grids (_outer_grid; a quarter of it for _inner_ranges, an
#: eighth for _outer_bins), and of the grids the queued grid sums of one _gh_sum hold
_GRID_CACHE_BYTES = 2 ** 30
_HELD_BYTES = 2 ** 29
_GH_LOWER_STEPS = 1   # the error estimate's Gauss-Hermite rule: this many sizes smaller
#: a variable whose correlation with an earlier one exceeds this in absolute value
#: (conditional standard deviation below half its own) counts as merged (axis_rules)
_MERGED = 0.866


def _nbytes(value):
    """Bytes held by the arrays in ``value`` (arrays, nested tuples and lists)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _byte_cache(limit):
    """An LRU cache bounded by the bytes of its values' arrays, not by their count.

    The tensor grids cached here (:func:`_outer_grid`, :func:`_inner_ranges`) range
    from kilobytes to ~250 MB (4.3e6 kept outer points of a four-variable trapezoid
    rule); a count bound of 1024 held tens of GB for 16 random inputs at K1 = 30
    (~600 distinct rules), and the process was killed for memory (issue #15). Keys
    are the call's arguments with defaults applied; a value larger than ``limit`` is
    returned but not kept. The bound is the wrapper's ``limit`` attribute, read at
    every call. Thread-safe (the grid sums may run on threads).
    """
    def deco(fn):
        sig = inspect.signature(fn)
        store = collections.OrderedDict()
        held = [0]
        lock = threading.Lock()

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            key = bound.args
            with lock:
                if key in store:
                    store.move_to_end(key)
                    return store[key][0]
            value = fn(*args, **kwargs)
            size = _nbytes(value)
            with lock:
                cap = wrapper.limit
                if key not in store and size <= cap:
                    store[key] = (value, size)
                    held[0] += size
                    while held[0] > cap:
                        _, (_, s) = store.popitem(last=False)
                        held[0] -= s
            return value

        def cache_clear():
            with lock:
                store.clear()
                held[0] = 0

        wrapper.limit = limit
        wrapper.cache_clear = cache_clear
        wrapper.cache_bytes = lambda: held[0]
        wrapper.cache_len = lambda: len(store)
        return wrapper
    return deco


@functools.lru_cache(maxsize=64)
def _gh(q):
    x, w = np.polynomial.hermite_e.hermegauss(q)
    return x, w / w.sum()


@functools.lru_cache(maxsize=64)
def _trapezoid(q):
    """Trapezoidal rule in u on ``[-_TRAP_T, _TRAP_T]`` with q nodes, weights normalized to sum 1.

    For ``f(s u) phi(u)`` analytic in the strip ``|Im u| < a`` the error is
    about ``exp(-2 pi a / h)`` (``h`` the spacing), plus the aliasing of the
    Gaussian ``~ (2 pi / h)^4 exp(-2 pi^2 / h^2)`` (below 1e-13 for
    ``h <= 0.7``) and the truncation (Gaussian mass beyond 8: 1.2e-15).
    """
    u = np.linspace(-_TRAP_T, _TRAP_T, q)
    w = np.exp(-0.5 * u * u)
    return u, w / w.sum()


def _axis_rule(q):
    """1-D rule of an axis code: ``q > 1`` Gauss-Hermite, ``q < -1`` trapezoid, else one node."""
    if q > 1:
        return _gh(q)
    if q < -1:
        return _trapezoid(-q)
    return np.zeros(1), np.ones(1)


def rule_up(accuracy, steps=1):
    """The rule ``steps`` levels above ``accuracy`` in :data:`_LEVELS` (the highest stays)."""
    return _LEVELS[min(_LEVELS.index(accuracy) + steps, len(_LEVELS) - 1)]


def node_count(s, accuracy="default"):
    """Gauss-Hermite nodes used along an axis of scale ``s`` (see module doc)."""
    q0, q1 = _ACCURACY[accuracy]
    s = np.asarray(s, dtype=float)
    q = np.ceil(q0 + q1 * s)
    idx = np.searchsorted(_Q_SIZES, np.minimum(q, _Q_SIZES[-1]))
    out = _Q_SIZES[np.minimum(idx, len(_Q_SIZES) - 1)]
    return np.where(s > 0, out, 1)


#: entire activations whose products grow like a Gaussian off the real axis: the
#: trapezoid's spacing from ``1 / h^2 = c (1 + kappa s^2) / (2 pi^2)`` (see axis_rules);
#: kappa fitted to products of four GELUs (benchmarks/README.md, "Theory engine cost
#: (#15)"). erf (growth exp(y^2) per factor) needed kappa ~ 4.4, which gives as many
#: nodes as the strip rule: it keeps the strip rule.
_ENTIRE_GROWTH = {"gelu": 2.2}


def entire_growth(act):
    """``kappa`` of :data:`_ENTIRE_GROWTH` for ``act`` (verified), else None."""
    kappa = _ENTIRE_GROWTH.get(getattr(act, "name", None))
    if kappa is None or not isinstance(normal_family(act, "sigma"), NormalFamily):
        return None
    return kappa


def axis_rules(s, accuracy="default", growth=None, gh_up=None, merged=None):
    """Rule codes of the smooth path for axis scales ``s``: Gauss-Hermite or trapezoid.

    Gauss-Hermite (:func:`node_count` nodes, code ``q > 0``) on axes of scale
    ``s <= _TRAP_FROM`` (entire activations: ``_TRAP_FROM_ENTIRE``), where it
    converges fast; above, the trapezoidal rule
    (code ``-q``) with spacing ``h = pi^2 / (c s)`` (``c`` from ``accuracy``),
    at most 0.7, i.e. ``q = 1 + 2 _TRAP_T / h`` nodes (capped at
    ``_TRAP_QMAX``): for an activation analytic in ``|Im z| < pi / 2`` (tanh;
    sigmoid, swish and softplus reach ``pi``, erf, GELU and sin are entire)
    the strip in u has half-width ``pi / (2 s)`` and the error is about
    ``exp(-c)`` relative, times a constant that grows with the order of the
    singularity: for ``d < 4`` variables (powers such as ``tanh^3`` where
    inputs coincide) ``c`` grows by 5 per missing variable (measured:
    ``<tanh^3 tanh>`` at K ~ 1 is 3e-8 at c = 25, 4e-10 at c = 30).
    At most 640 nodes per axis; where the tensor grid would exceed
    ``min(8 x 64^d, 64^4)`` points (64 per axis was the old Gauss-Hermite
    cap) the trapezoid axes shrink by a common factor, so the cost per
    expectation stays bounded. ``s`` has shape (..., d). Gauss-Hermite converges only like
    ``exp(-const sqrt(Q))`` there (measured 6e-8 at ``s ~ 1`` with 40-48
    nodes against 4e-11 for the trapezoid with as many).

    ``growth`` (``kappa``, for entire activations such as GELU, whose products
    grow like ``exp(kappa s^2 y^2 / 2)`` at ``u + i y``): the trapezoid error
    is then ``exp(-2 pi^2 / (h^2 (1 + kappa s^2)))`` (the strip half-width that
    balances the growth), so ``1 / h^2 = c (1 + kappa s^2) / (2 pi^2)``; for
    GELU (kappa = 2.2) that is 1.2-1.5x fewer nodes per axis than the strip
    rule at s = 1..3, with errors of four-GELU products <= 3e-12 at c = 25
    (measured against mpmath, s = 0.6..3).

    ``merged`` (int, shape ``s.shape[:-1]``, or None): per covariance, the
    number of variables nearly proportional to an earlier one (``|rho|`` above
    ``_MERGED``, :func:`_gh_path`); each takes the rule one level up. Their singularities then sit on the earlier
    axes together with the others', as in a merged power: tanh
    ``<q^2(z_a) p^2(z_b)>`` at ``z_b = -z_a`` (inputs x, -x) is a pole of
    order 10 on one axis, and the two-variable rule at axis scale 0.57 was
    2.4e-8 of the Cauchy-Schwarz scale off (rho = -0.99: 2e-8), 4e-11 one
    level up (issue #15, h41b).
    """
    s = np.asarray(s, dtype=float)
    if merged is not None and np.any(merged):
        merged = np.broadcast_to(np.asarray(merged, dtype=int), s.shape[:-1])
        out = np.empty(s.shape, dtype=int)
        for m in np.unique(merged):
            sel = merged == m
            out[sel] = axis_rules(s[sel], rule_up(accuracy, int(m)), growth, gh_up)
        return out
    d = s.shape[-1] if s.ndim else 4
    gh_accuracy = accuracy
    if d <= 3:
        gh_accuracy = rule_up(accuracy, _GH_STEP_UP if gh_up is None else gh_up)
        accuracy = rule_up(accuracy, _TRAP_STEP_UP)
    gh = node_count(s, gh_accuracy)
    # fewer than four variables: the integrands are powers of the activation
    # (coinciding inputs merged), with stronger singularities: c + 5 per variable less
    c = (_TRAP_C if growth is None else _TRAP_C_ENTIRE)[accuracy] + 5.0 * max(0, 4 - d)
    trap_from = _TRAP_FROM if growth is None else _TRAP_FROM_ENTIRE
    if growth is None:
        inv_h = s * c / math.pi ** 2
    else:
        inv_h = np.sqrt(c * (1.0 + float(growth) * s * s) / (2.0 * math.pi ** 2))
    q = np.ceil(1.0 + 2.0 * _TRAP_T * np.maximum(inv_h, 1.0 / _TRAP_HMAX))
    # rounded up to a ladder of sizes ~6 % apart, so that covariances of similar
    # scales share one (pruned) grid: at most ~6 % more nodes per axis
    q = _TRAP_LADDER[np.searchsorted(_TRAP_LADDER, np.minimum(q, _TRAP_QMAX))]
    codes = np.where(s > trap_from, -q, gh)
    # over the point budget: shrink the trapezoid axes by a common factor (the
    # accuracy then drops, and the error estimate says by how much)
    size = np.prod(np.abs(codes).astype(float), axis=-1, keepdims=True)
    n_tr = np.maximum(np.sum(codes < -1, axis=-1, keepdims=True), 1)
    shrink = np.minimum(1.0, (_TRAP_POINTS[max(1, min(d, 4))] / size) ** (1.0 / n_tr))
    qs = np.maximum(np.floor(q * shrink), np.minimum(q, 16)).astype(int)
    return np.where(s > trap_from, -qs, gh)


def _validate_batch(K, d):
    K = np.asarray(K, dtype=float)
    if K.shape[-2:] != (d, d):
        raise ValueError(f"K must have shape (..., {d}, {d}) for {d} functions; got {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError("K contains NaN or inf")
    if np.max(np.abs(K - np.swapaxes(K, -1, -2)), initial=0.0) > 1e3 * _EPS * max(
            np.max(np.abs(K), initial=0.0), 1.0):
        raise ValueError("K must be symmetric")
    return 0.5 * (K + np.swapaxes(K, -1, -2))


_RANK_TOL = 1e-14   # conditional variance <= this x the largest variance: a zero axis
_INDEF_TOL = 1e-9   # eigenvalue < -this x d x the largest variance: genuinely indefinite


def _factor(K, where="", last=None):
    """Pivoted factor of a batch of PSD covariances, exact for any rank.

    ``z[order[:, k]] = sum_{j <= k} L[:, k, j] u_j`` with ``u ~ N(0, I)``:
    the rows of ``U sqrt(max(lambda, 0))`` (eigendecomposition) are
    orthogonalized by modified Gram-Schmidt, pivoting on the largest residual
    (conditional) variance, so the residual variances are norms, never
    negative, and an axis whose residual variance is below ``_RANK_TOL`` of
    the largest variance is a zero column (degenerate Gaussians are exact).

    ``last`` (an index, or None): that variable is pivoted last, the others
    largest first (:func:`_closed_last`).

    Returns
    -------
    order : ndarray (B, d) of int
    L : ndarray (B, d, d), lower triangular, zero columns beyond the rank

    Raises
    ------
    KernelNotPSDError
        If a covariance has an eigenvalue below ``-_INDEF_TOL d`` times its
        largest variance (round-off of a computed kernel is far smaller).
    """
    B, d, _ = K.shape
    lam, U = np.linalg.eigh(K)
    scale = np.maximum(np.max(np.diagonal(K, axis1=1, axis2=2), axis=1), 1e-300)
    bad = lam[:, 0] < -_INDEF_TOL * d * scale
    if bad.any():
        b = int(np.argmin(lam[:, 0] / scale))
        raise KernelNotPSDError(
            f"covariance{where} number {b} is not positive semi-definite: smallest eigenvalue "
            f"{lam[b, 0]:.3e} against the largest variance {scale[b]:.3e} (the round-off "
            "of a computed kernel is ~1e-12 of it); a kernel of real inputs is PSD, so "
            "check how K was built")
    R = U * np.sqrt(np.maximum(lam, 0.0))[:, None, :]     # z_i = R[i] . g, g ~ N(0, I)
    ar = np.arange(B)
    Lraw = np.zeros((B, d, d))
    order = np.zeros((B, d), dtype=int)
    used = np.zeros((B, d), dtype=bool)
    live = np.ones(B, dtype=bool)
    for j in range(d):
        n2 = np.einsum("bij,bij->bi", R, R)
        n2[used] = -1.0
        if last is not None and j < d - 1:
            n2[:, last] = -1.0
        piv = np.argmax(n2, axis=1)
        top = n2[ar, piv]
        live &= top > _RANK_TOL * scale
        q = R[ar, piv] / np.sqrt(np.where(live, top, 1.0))[:, None]
        q[~live] = 0.0
        col = np.einsum("bij,bj->bi", R, q)
        R -= col[:, :, None] * q[:, None, :]
        Lraw[:, :, j] = col
        order[:, j] = piv
        used[ar, piv] = True
    L = np.take_along_axis(Lraw, order[:, :, None], axis=1)
    L *= np.tril(np.ones((d, d)))[None]
    return order, L


class PiecewiseMonomial:
    """``c_plus z^n`` for ``z > 0`` and ``c_minus z^n`` for ``z < 0``, as a callable.

    Products of a piecewise-linear activation (ReLU family) and its
    derivative are of this form; :func:`expect_nd` integrates the innermost
    axis of such products exactly (truncated Gaussian moments).
    """

    __slots__ = ("cp", "cm", "n")

    def __init__(self, cp, cm, n):
        self.cp, self.cm, self.n = float(cp), float(cm), int(n)

    def __call__(self, z):
        z = np.asarray(z, dtype=float)
        c = np.where(z > 0, self.cp, self.cm)
        return c if self.n == 0 else c * z ** self.n

    def __mul__(self, other):
        return PiecewiseMonomial(self.cp * other.cp, self.cm * other.cm, self.n + other.n)

    def __repr__(self):
        return f"PiecewiseMonomial({self.cp}, {self.cm}, {self.n})"


class NormalFamily:
    """``f(z) = P(z) + A(z) Phi(a z) + B(z) phi(a z)``: a Gaussian average in closed form.

    ``P, A, B`` are polynomials (coefficient tuples, lowest power first),
    ``Phi``/``phi`` the standard normal CDF/density, ``a > 0``. GELU and its
    derivatives (``z Phi(z)``, ``Phi + z phi``, ``(2 - z^2) phi``) and erf
    and its derivatives (``2 Phi(sqrt(2) z) - 1``, ...) are of this form.
    Calls go to ``fn`` (the activation's own function, so values are
    bitwise those of the activation); :meth:`inner` gives
    ``<f(m + c u)>_{u ~ N(0, 1)}`` in closed form, so :func:`expect_nd`
    integrates the innermost axis of such a function exactly (one CDF and
    one exponential per outer point instead of a rule of 10-80 nodes).

    The closed forms (``W = a (m + c u) ~ N(mu0, s^2)``, ``r^2 = 1 + s^2``):
    ``<W^j phi(W)> = phi(mu0 / r) / r * E[Y^j]`` with ``Y ~ N(mu0 / r^2, s^2 / r^2)``
    (product of two Gaussians), ``<Phi(W)> = Phi(mu0 / r)`` and, by Stein's
    lemma, ``<W^j Phi(W)> = mu0 <W^(j-1) Phi> + s^2 ((j-1) <W^(j-2) Phi> + <W^(j-1) phi>)``.
    """

    __slots__ = ("fn", "P", "A", "B", "a")

    def __init__(self, fn, P=(), A=(), B=(), a=1.0):
        self.fn = fn
        self.P, self.A, self.B = (tuple(float(c) for c in v) for v in (P, A, B))
        self.a = float(a)

    def __call__(self, z):
        return self.fn(z)

    def formula(self, z):
        """The closed form itself (for checking ``fn`` against it)."""
        z = np.asarray(z, dtype=float)
        az = self.a * z
        poly = lambda c: sum(ck * z ** k for k, ck in enumerate(c)) if c else 0.0  # noqa: E731
        return poly(self.P) + poly(self.A) * special.ndtr(az) \
            + poly(self.B) * np.exp(-0.5 * az * az) * _PHI

    def inner(self, m, c):
        """``<f(m + c u)>`` over ``u ~ N(0, 1)``; m, c broadcastable arrays.

        Quantities that depend on c alone stay at c's shape (in the grid sums
        c is one value per covariance, m one per outer point), terms with a
        zero coefficient are skipped, and only the moments a term uses are
        formed: the same formulas, ~2.5x fewer full-size array operations for
        GELU's sigma.
        """
        m = np.asarray(m, dtype=float)
        c = np.asarray(c, dtype=float)
        shape = np.broadcast_shapes(m.shape, c.shape)
        fused = _FUSED_INNER.get((self.P, self.A, self.B, self.a))
        if fused is not None and m.shape == shape:
            return fused(m, c)
        out = None

        def add(acc, term):
            return term if acc is None else acc + term
        if self.P:
            # moments of N(m, c^2)
            c2 = c * c
            E = [None, m]
            for j in range(2, len(self.P)):
                E.append(m * E[j - 1] + (j - 1) * c2 * (E[j - 2] if j > 2 else 1.0))
            for k, pk in enumerate(self.P):
                if pk:
                    out = add(out, pk if k == 0 else pk * E[k])
        if self.A or self.B:
            a = self.a
            mu0 = m if a == 1.0 else a * m
            s2 = (a * c) ** 2
            r2 = 1.0 + s2
            r = np.sqrt(r2)
            x = mu0 * (1.0 / r)
            dens = np.exp(-0.5 * x * x) * (_PHI / r)          # <phi(W)>
            nN = max(len(self.A) - 1, len(self.B), 1)
            N = [dens]                                          # <W^j phi(W)>
            if nN > 1:
                mu, v = mu0 * (1.0 / r2), s2 / r2               # moments of N(mu, v)
                G = [1.0, mu]
                for j in range(2, nN):
                    G.append(mu * G[j - 1] + (j - 1) * v * G[j - 2])
                N += [dens * g for g in G[1:nN]]
            if self.A:
                M = [special.ndtr(x)]                           # <W^j Phi(W)>
                for j in range(1, len(self.A)):
                    M.append(mu0 * M[j - 1] + s2 * ((j - 1) * M[j - 2] + N[j - 1] if j >= 2
                                                    else N[j - 1]))
                for k, ak in enumerate(self.A):
                    if ak:
                        out = add(out, M[k] if ak * a ** -k == 1.0 else ak * a ** -k * M[k])
            for k, bk in enumerate(self.B):
                if bk:
                    out = add(out, N[k] if bk * a ** -k == 1.0 else bk * a ** -k * N[k])
        if out is None:
            return np.zeros(shape)
        return np.broadcast_to(out, shape).copy() if np.shape(out) != shape else out

    def __repr__(self):
        return f"NormalFamily(P={self.P}, A={self.A}, B={self.B}, a={self.a})"


def _inner_z_ndtr(m, c):
    """:meth:`NormalFamily.inner` of ``z Phi(z)`` (GELU's sigma), fused in place.

    The same formula, ``<W Phi(W)> = m Phi(m / r) + c^2 phi(m / r) / r``
    with ``r^2 = 1 + c^2``, in three full-size temporaries instead of ~nine:
    33 -> 23 ns per point (``ndtr`` alone is ~20 ns), the values equal to
    round-off. m (..., P), c broadcastable to it (one value per covariance).
    """
    r = np.sqrt(1.0 + c * c)
    x = m * (1.0 / r)
    out = special.ndtr(x)
    out *= m
    x *= x
    x *= -0.5
    np.exp(x, out=x)
    x *= (c * c) * (_PHI / r)
    out += x
    return out


def _inner_ndtr_z_phi(m, c):
    """Fused :meth:`NormalFamily.inner` of ``Phi(z) + z phi(z)`` (GELU's sigma'):
    ``Phi(m / r) + m phi(m / r) / r^3``."""
    r = np.sqrt(1.0 + c * c)
    x = m * (1.0 / r)
    out = special.ndtr(x)
    x *= x
    x *= -0.5
    np.exp(x, out=x)
    x *= _PHI / (r * r * r)
    x *= m
    out += x
    return out


def _inner_two_minus_z2_phi(m, c):
    """Fused :meth:`NormalFamily.inner` of ``(2 - z^2) phi(z)`` (GELU's sigma''):
    ``phi(m / r) / r (2 - c^2 / r^2 - m^2 / r^4)``."""
    r2 = 1.0 + c * c
    r = np.sqrt(r2)
    x = m * (1.0 / r)
    mu2 = m * (1.0 / r2)
    mu2 *= mu2
    np.subtract(2.0 - c * c / r2, mu2, out=mu2)
    x *= x
    x *= -0.5
    np.exp(x, out=x)
    x *= _PHI / r
    x *= mu2
    return x


#: (P, A, B, a) of a NormalFamily -> its fused inner closed form (GELU's three slots)
_FUSED_INNER = {((), (0.0, 1.0), (), 1.0): _inner_z_ndtr,
                ((), (1.0,), (0.0, 1.0), 1.0): _inner_ndtr_z_phi,
                ((), (), (2.0, 0.0, -1.0), 1.0): _inner_two_minus_z2_phi}

_SQRT2 = math.sqrt(2.0)
# slot functions of the named activations in the normal family (see NormalFamily)
_NORMAL_FAMILY = {
    "gelu": {"sigma": dict(A=(0.0, 1.0)), "d1": dict(A=(1.0,), B=(0.0, 1.0)),
             "d2": dict(B=(2.0, 0.0, -1.0))},
    "erf": {"sigma": dict(P=(-1.0,), A=(2.0,), a=_SQRT2),
            "d1": dict(B=(2.0 * _SQRT2,), a=_SQRT2),
            "d2": dict(B=(0.0, -4.0 * _SQRT2), a=_SQRT2)},
}
_FAMILY_PROBE = np.linspace(-12.0, 12.0, 241)


def normal_family(act, slot="sigma"):
    """``act``'s function ``slot`` ("sigma", "d1", "d2") as a ``NormalFamily`` (or, for the
    named elu, an :class:`~pdlt.gaussian._exppw.ExpPiecewise`), else itself.

    Only for the named activations listed in ``_NORMAL_FAMILY`` (GELU, erf)
    and only if the activation's function equals the closed form on a probe
    grid to 1e-14 (a user function that merely carries the name keeps its own
    rule).
    """
    fn = getattr(act, slot)
    ep = _exppw.exp_family(act, slot)       # elu: an ExpPiecewise (innermost axis exact)
    if ep is not None:
        return ep
    spec = _NORMAL_FAMILY.get(getattr(act, "name", None), {}).get(slot)
    if spec is None or getattr(act, "kinks", ()) or isinstance(fn, NormalFamily):
        return fn
    nf = NormalFamily(fn, **spec)
    return nf if agrees_on_probe(fn, nf.formula, _FAMILY_PROBE) else fn


def expect_nd(fs, K, *, kinks=(), scale_invariant=None, accuracy="default",
              return_error=False, where="", growth=None, gh_up=None):
    """``<f_1(z_1) f_2(z_2) ... f_d(z_d)>`` for ``z ~ N(0, K)``, d = 1..4.

    Parameters
    ----------
    fs : sequence of d callables
        Vectorized functions. If every one is a ``PiecewiseMonomial``
        the innermost axis is integrated exactly. Two variables of
        piecewise monomials, or of functions kinked at 0 only (elu), take
        the polar form (``_polar_pair``, ``_polar_pair_kinked``):
        uniform in the correlation, collinear covariances included; three
        and four piecewise monomials with a nearly coinciding pair, the
        forms of ``_near_pair_triple`` and ``_near_pair_quad``; four of elu's
        (``ExpPiecewise`` kinked at 0) with a pair below ``1 - rho^2 = 0.15``, the
        latter with elu along the rays (``_exp_near_quad``).
    K : array_like of shape (..., d, d)
        Covariances: symmetric positive semi-definite of any rank
        (degenerate Gaussians are integrated exactly on their support).
    kinks : sequence of float
        Points where some f_k is not smooth. Empty: the smooth product
        rule (Gauss-Hermite or trapezoid per axis); otherwise nested split
        Gauss-Legendre (module doc).
    scale_invariant : (a_plus, a_minus) or None
        Shorthand: every f_k is the piecewise-linear activation with these
        slopes (the innermost axis is then exact).
    accuracy : {"fast", "default", "high"}
        Node rule (module doc states the measured error).
    return_error : bool
        Also return an error estimate per covariance: the difference between
        this rule and the next lower one (an overestimate of the error of
        this rule when the rules converge geometrically); the split path of
        kinked integrands: the difference from one node more per panel (~ the
        error itself, module doc).
    where : str
        Text naming the caller's context (layer, inputs) for error messages.
    growth : float or None
        For entire functions (GELU: ``entire_growth``), ``kappa`` of the
        trapezoid rule for entire integrands (``axis_rules``); None: the
        strip rule (poles at ``i pi / 2``, tanh), right for any activation
        analytic in that strip.
    gh_up : int or None
        With three or fewer variables, the Gauss-Hermite axes take the rule
        this many levels above ``accuracy`` (default ``_GH_STEP_UP`` = 2, for
        the derivative products of the NTK tensors; :func:`quad_expectations`
        uses 1 for its powers of sigma).

    Returns
    -------
    ndarray of shape (...), and the error estimate of the same shape if
    ``return_error``

    Raises
    ------
    KernelNotPSDError
        A covariance has a negative eigenvalue beyond round-off.
    """
    fs = list(fs)
    d = len(fs)
    if not 1 <= d <= 4:
        raise ValueError(f"expect_nd takes 1 to 4 functions; got {d}")
    if accuracy not in _ACCURACY:
        raise ValueError(f"accuracy must be one of {sorted(_ACCURACY)}; got {accuracy!r}")
    K = _validate_batch(K, d)
    shape = K.shape[:-2]
    Kb = K.reshape(-1, d, d)
    if scale_invariant is not None and not all(isinstance(f, PiecewiseMonomial) for f in fs):
        ap, am = scale_invariant
        fs = [PiecewiseMonomial(ap, am, 1)] * d
    order, L = _factor(Kb, where)
    if _trig._TRIG and not kinks and growth is None:
        fs = _trig.trig_forms(fs) or fs     # recognized sin integrands (e.g. residual MLPs')
    if _trig._TRIG and all(isinstance(f, _trig.TrigPoly) for f in fs):
        # sin and its products: closed form, cost independent of K (pdlt.gaussian._trig)
        out, err = _trig.with_fallback(fs, Kb, return_error, lambda plain, Kr: expect_nd(
            plain, Kr, kinks=kinks, accuracy=accuracy, return_error=True, where=where))
        return (out.reshape(shape), err.reshape(shape)) if return_error else out.reshape(shape)
    pw = all(isinstance(f, PiecewiseMonomial) for f in fs)
    if pw and d >= 3 and _MERGE_COLLINEAR:
        merged = _merge_collinear(fs, Kb, accuracy, return_error, where)
        if merged is not None:
            out, err = merged
            return (out.reshape(shape), err.reshape(shape)) if return_error else out.reshape(shape)
    if pw and all(f.cp == f.cm for f in fs):
        # plain monomials (linear activation): Gauss-Hermite is exact for polynomials
        out, err = _gh_path(fs, order, L, accuracy, return_error, smooth=False)
    elif pw and d == 2 and _POLAR:
        out, err = _polar_pair(fs, Kb, order, L, accuracy, return_error)
    elif pw and d == 3 and _POLAR:
        out, err = _near_pair_triple(fs, Kb, order, L, accuracy, return_error)
    elif pw:
        out, err = _piecewise_path(fs, Kb, order, L, accuracy, return_error)
    elif d == 2 and _POLAR and len(kinks) and all(float(c) == 0.0 for c in kinks):
        out, err = _polar_pair_kinked(fs, Kb, order, L, accuracy, return_error)
    elif (d == 3 and _POLAR and len(kinks) and all(float(c) == 0.0 for c in kinks)
          and all(float(t) == 0.0 for f in fs for t in getattr(f, "kinks", ()))):
        out, err = _near_pair_triple(fs, Kb, order, L, accuracy, return_error,
                                     kinks=tuple(float(c) for c in kinks))
    elif len(kinks) == 0:
        out, err = _smooth_path(fs, Kb, order, L, accuracy, return_error, growth, gh_up)
    else:
        out, err = _kinked_path(fs, Kb, order, L, kinks, accuracy, return_error)
    if return_error:
        return out.reshape(shape), err.reshape(shape)
    return out.reshape(shape)


#: three or four piecewise monomials where two variables are exactly collinear
#: (``K_aa K_bb = K_ab^2`` in float64): one variable fewer (:func:`_merge_collinear`);
#: False: every such row takes the near-pair forms (an independent check in tests)
_MERGE_COLLINEAR = True


def _merge_collinear(fs, K, accuracy, return_error, where):
    r"""Rows of (B, d, d) K, d = 3, 4, with an exactly collinear pair: the average with one
    variable fewer; None where no row has one.

    ``det2(K_aa, K_bb, K_ab) <= 0`` (exact to a few ulps of itself; below 0 by round-off,
    e.g. -1e-18 of ``K_aa K_bb`` for residual relu at ``x, 0.7 x``, where the nearest PSD
    pair is the degenerate one) with both variances positive: the Gaussian is degenerate
    as given, ``z_b = c z_a`` with ``c = K_ab / K_aa``,
    and a piecewise monomial has ``f(c z) = |c|^n f(+-z)`` (the pieces swapped and the sign
    ``(-1)^n`` when ``c < 0``), so ``f_a(z_a) f_b(z_b)`` is one piecewise monomial of
    degree ``n_a + n_b`` times ``|c|^(n_b)``: :func:`expect_nd` of d - 1 functions on K with
    row and column b dropped (which merges again if another pair is collinear). Exact,
    not an approximation: the same average. Exactly collinear kinked inputs (ReLU-family
    networks with C_b = 0 at ``x, 2 x``) otherwise took the near-pair forms on a
    rank-deficient K, ~0.35 s per four-variable average (residual relu folds of three
    collinear inputs 1 s -> 25-180 s). Rows without such a pair: :func:`expect_nd` as
    before. The error estimate is the merged average's (its K is the given one, exactly
    degenerate: no rounding spread is added). Pairs with ``0 < 1 - rho^2`` at round-off
    keep the near-pair forms, whose estimate states the rounding's effect.
    """
    d = K.shape[-1]
    hit = np.full(K.shape[0], -1)
    pairs = list(itertools.combinations(range(d), 2))
    rel = _pair_rel(K, pairs)           # inf where a variance is 0: never merged
    for p in range(len(pairs)):
        hit = np.where((hit < 0) & (rel[:, p] <= 0.0), p, hit)
    if np.all(hit < 0):
        return None
    out = np.zeros(K.shape[0])
    err = np.zeros(K.shape[0])

    def nd(f, Kr):
        r = expect_nd(f, Kr, accuracy=accuracy, return_error=return_error, where=where)
        return r if return_error else (r, 0.0)

    plain = np.flatnonzero(hit < 0)
    if plain.size:
        out[plain], err[plain] = nd(fs, K[plain])
    for p, (a, b) in enumerate(pairs):
        rows = np.flatnonzero(hit == p)
        if rows.size == 0:
            continue
        c = K[rows, a, b] / K[rows, a, a]
        fb = fs[b]
        rest = [k for k in range(d) if k != b]
        for neg in (False, True):
            sel = (c < 0) == neg
            if not sel.any():
                continue
            sgn = -1.0 if fb.n % 2 else 1.0
            unit = PiecewiseMonomial(sgn * fb.cm, sgn * fb.cp, fb.n) if neg else fb
            merged = [fs[k] * unit if k == a else fs[k] for k in rest]
            Ks = K[rows[sel]][:, rest][:, :, rest]
            o, e = nd(merged, Ks)
            w = np.abs(c[sel]) ** fb.n
            out[rows[sel]], err[rows[sel]] = w * o, w * e
    return out, (err if return_error else None)


#: products of piecewise monomials under a well-conditioned covariance: the closed
#: form of :mod:`pdlt.gaussian._orthant` (Stein's lemma down to orthant probabilities);
#: False forces the split path everywhere (an independent reference for benchmarks)
_ORTHANT = True


#: two piecewise monomials (ReLU family pairs, the N = 2 entries of the four-point
#: tensors): the polar form of ``_polar_pair``; False: the orthant / split path
_POLAR = True
#: Gauss-Legendre nodes per angular piece of ``_polar_pair`` (the integrand is a
#: trigonometric polynomial of degree <= 8 on each piece: exact to round-off)
_POLAR_NODES = 32


def _two_product(a, b):
    """``a b = p + e`` exactly (Dekker / Veltkamp, float64)."""
    p = a * b
    c = 134217729.0 * a            # 2^27 + 1
    ah = c - (c - a)
    al = a - ah
    c = 134217729.0 * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def det2(Kaa, Kbb, Kab):
    """``K_aa K_bb - K_ab^2`` to a few ulps of the result (no cancellation: the products
    exactly as sums of two floats (:func:`_two_product`); the leading difference exact
    when they are within a factor 2, Sterbenz). Shared by the polar pair forms here and
    the kink terms of :mod:`pdlt.theory._averages`."""
    p1, e1 = _two_product(Kaa, Kbb)
    p2, e2 = _two_product(Kab, Kab)
    return (p1 - p2) + (e1 - e2)


def _pair_rel(K, pairs):
    """``1 - rho^2 = det2 / (K_aa K_bb)`` (B, len(pairs)) of the pairs ``(a, b, ...)`` of the
    covariances K (B, d, d), uniform in rho (:func:`det2`); inf where a variance is 0."""
    dg = np.einsum("bii->bi", K)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.stack([det2(dg[:, p[0]], dg[:, p[1]], K[:, p[0], p[1]])
                        / (dg[:, p[0]] * dg[:, p[1]]) for p in pairs], axis=1)
    return np.where(np.isfinite(rel), rel, np.inf)


def _pair_angle(v1, v2, k12):
    """The angle ``phi = atan2(sqrt(det K), K_12)`` in [0, pi] of a pair (B, 1), from
    :func:`det2` (uniform in rho, collinear included)."""
    return np.arctan2(np.sqrt(np.maximum(det2(v1, v2, k12), 0.0)), k12)[:, None]


def _polar_pair(fs, K, order, L, accuracy, return_error):
    r"""``<f_1(z_1) f_2(z_2)>`` of two piecewise monomials in polar form, uniform in rho.

    ``z_1 = sqrt(K_11) R cos(alpha)``, ``z_2 = sqrt(K_22) R cos(alpha - phi)`` with
    ``R^2 ~ chi^2_2`` and ``alpha`` uniform, independent: the average is
    ``K_11^(n_1/2) K_22^(n_2/2) E[R^(n_1+n_2)] (1/2 pi) int_0^(2 pi) g_1(cos alpha)
    g_2(cos(alpha - phi)) d alpha``, ``E[R^k] = 2^(k/2) Gamma(1 + k/2)``, integrated
    piece by piece between the four sign changes by Gauss-Legendre (a trigonometric
    polynomial on each piece). The angle is ``phi = atan2(sqrt(det K), K_12)`` with
    ``det K`` from exact products (no ``arccos(rho)``, no ``1 - rho^2`` cancellation):
    each value is within a few ulps of its own scale at any correlation, collinear
    inputs included (the orthant recursion divides by ``1 - rho^2``, and below
    ``1 - |rho| = 1e-6`` the split path was 3e-5 off ``<theta_1 theta_2>`` at
    ``1 - rho^2 = 6.7e-7``; ``benchmarks/relu_coinciding_reference.py``). A zero
    variance goes to :func:`_piecewise_path`. Error estimate: 16 eps times the
    integral of ``|integrand|`` (round-off of the sum of the pieces).
    """
    B = K.shape[0]
    v1, v2, k12 = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
    ok = (v1 > 0) & (v2 > 0)
    out = np.zeros(B)
    err = np.zeros(B) if return_error else None
    if not ok.all():
        rest = np.flatnonzero(~ok)
        o, e = _piecewise_path(fs, K[rest], order[rest], L[rest], accuracy, return_error)
        out[rest] = o
        if return_error:
            err[rest] = e
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out, err
    v1, v2, k12 = v1[idx], v2[idx], k12[idx]
    phi = _pair_angle(v1, v2, k12)                                # in [0, pi]
    two_pi = 2.0 * np.pi
    base = np.broadcast_to(np.array([0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi]), (len(idx), 4))
    cuts = np.concatenate([base, np.mod(phi + 0.5 * np.pi, two_pi),
                           np.mod(phi + 1.5 * np.pi, two_pi)], axis=1)
    cuts.sort(axis=1)                                                # (P, 6)
    x, w = _gauss_legendre(_POLAR_NODES)
    lo, hi = cuts[:, :-1, None], cuts[:, 1:, None]                  # (P, 5, 1)
    alpha = 0.5 * (hi + lo) + 0.5 * (hi - lo) * x
    wt = 0.5 * (hi - lo) * w / two_pi
    (f1, f2) = fs
    u, v = np.cos(alpha), np.cos(alpha - phi[:, :, None])
    g = (np.where(u > 0, f1.cp, f1.cm) * u ** f1.n) * (np.where(v > 0, f2.cp, f2.cm) * v ** f2.n)
    k = f1.n + f2.n
    pre = 2.0 ** (0.5 * k) * math.gamma(1.0 + 0.5 * k) * v1 ** (0.5 * f1.n) * v2 ** (0.5 * f2.n)
    out[idx] = pre * np.sum(wt * g, axis=(1, 2))
    if return_error:
        err[idx] = 16 * np.finfo(float).eps * pre * np.sum(wt * np.abs(g), axis=(1, 2))
    return out, err


#: three piecewise monomials of which one pair nearly coincides (``1 - rho^2 <``
#: ``_NEAR_PAIR``) and the third variable is off the pair's plane (its variance given the
#: pair ``>= _NEAR_PAIR_OFF`` of its own): the polar form of ``_near_pair_triple``;
#: elsewhere the orthant / split path (uniformly accurate there)
_NEAR_PAIR = 1e-3
_NEAR_PAIR_OFF = 1e-3
#: (angular nodes per panel, panels per piece, latitude nodes per piece) of
#: ``_near_pair_triple`` and of its lower rule (the error estimate)
_TRIPLE_RULE, _TRIPLE_LOWER = (48, 2, 32), (32, 2, 24)


def _triple_parts(K):
    """The pair (0, 1) of K (B, 3, 3) as ``z_0 = a g_1``, ``z_1 = b (cos phi g_1 + sin phi
    g_2)`` and the third as ``z_2 = c_1 g_1 + c_2 g_2 + s g_3`` (g standard normal):
    ``a, b, phi, c_1, c_2, s`` (B,) each. ``sin phi`` from :func:`det2` (uniform in rho);
    ``c_2`` divides an O(phi) difference by ``sin phi`` (error ~eps / phi, the
    conditioning of the average itself in K_12)."""
    K00, K11, K22 = K[:, 0, 0], K[:, 1, 1], K[:, 2, 2]
    K01, K02, K12 = K[:, 0, 1], K[:, 0, 2], K[:, 1, 2]
    a, b = np.sqrt(K00), np.sqrt(K11)
    phi = _pair_angle(a * a, b * b, K01)[:, 0]
    cphi, sphi = np.cos(phi), np.sin(phi)
    c1 = K02 / a
    with np.errstate(divide="ignore", invalid="ignore"):
        c2 = np.where(sphi > 0, (K12 / b - cphi * c1) / np.where(sphi > 0, sphi, 1.0), 0.0)
    s = np.sqrt(np.maximum(K22 - c1 * c1 - c2 * c2, 0.0))
    return a, b, phi, c1, c2, s


def _pm(f, u):
    """A :class:`PiecewiseMonomial` at u (no float conversion of its argument)."""
    c = np.where(u > 0, f.cp, f.cm)
    return c if f.n == 0 else c * u ** f.n


def _sphere_nodes(parts, q_a, sub, q_b, pieces=(True, True)):
    """Longitude / latitude nodes of ``_triple_sum`` (shared with the kinked form): alpha,
    its weights (B, M), beta_*, the latitude nodes and weights (2, B, M, q_b), mu; a
    latitude piece (above, below beta_*) not in ``pieces`` is None."""
    a, b, phi, c1, c2, s = parts
    B = len(a)
    two_pi = 2.0 * np.pi
    ac = np.arctan2(c2, c1)
    cuts = np.concatenate([np.broadcast_to([0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi], (B, 4)),
                           np.mod(np.stack([phi + 0.5 * np.pi, phi + 1.5 * np.pi,
                                            ac + 0.5 * np.pi, ac + 1.5 * np.pi], axis=1),
                                  two_pi)], axis=1)
    cuts.sort(axis=1)
    t = np.linspace(0.0, 1.0, sub + 1)[:-1]
    lo, hi = cuts[:, :-1, None], cuts[:, 1:, None]
    br = np.concatenate([(lo + (hi - lo) * t).reshape(B, -1), cuts[:, -1:]], axis=1)
    xa, wa = _gauss_legendre(q_a)
    lo, hi = br[:, :-1, None], br[:, 1:, None]
    al = (0.5 * (hi + lo) + 0.5 * (hi - lo) * xa).reshape(B, -1)        # (B, M)
    wal = (0.5 * (hi - lo) * wa).reshape(B, -1)
    mu = c1[:, None] * np.cos(al) + c2[:, None] * np.sin(al)
    bs = np.arctan2(-mu, s[:, None])             # z_2 changes sign at latitude bs
    xb, wb = _gauss_legendre(q_b)
    lat = []
    for lo_b, hi_b, want in ((bs, np.full_like(bs, 0.5 * np.pi), pieces[0]),
                             (np.full_like(bs, -0.5 * np.pi), bs, pieces[1])):
        if not want:
            lat.append(None)
            continue
        lat.append((0.5 * (hi_b + lo_b)[..., None] + 0.5 * (hi_b - lo_b)[..., None] * xb,
                    0.5 * (hi_b - lo_b)[..., None] * wb))
    return al, wal, bs, lat, mu


def _int_power(x, n):
    """``x ** n`` for an integer ``n >= 0``: numpy's own for ``n <= 2`` (a copy or a
    square: the same bits), repeated multiplication above (numpy's ``pow`` there is ~100x
    a multiply: the 252 ``_triple_sum`` calls of the N = 6 relu near-pair case took 9.4 s,
    now 4.3 s, h66; within ``n - 1`` ulp of it, the averages within 4.1e-16 of their
    magnitude)."""
    if n <= 2:
        return x ** n
    out = x * x
    for _ in range(n - 2):
        out *= x
    return out


def _triple_sum(fs, parts, rule):
    r"""``<f_0 f_1 f_2>`` on the sphere (``_near_pair_triple``) at one rule: (value, the
    same integral of ``|integrand|``)."""
    f0, f1, f2 = fs
    a, b, phi, c1, c2, s = parts
    al, wal, bs, lat, mu = _sphere_nodes(parts, *rule, pieces=(f2.cp != 0.0, f2.cm != 0.0))
    r2 = np.hypot(mu, s[:, None])
    m = 1 + f0.n + f1.n
    I = Ia = 0.0
    for piece, c in zip(lat, (f2.cp, f2.cm)):
        if c == 0.0:       # (relu, theta: z_2 < 0) adds zeros: the same bits without it
            continue
        be, w = piece
        g = c * _int_power(np.cos(be), m)
        if f2.n:
            g = g * np.sin(be - bs[..., None]) ** f2.n
        I = I + np.sum(w * g, axis=-1)
        Ia = Ia + np.sum(w * np.abs(g), axis=-1)
    pa = _pm(f0, np.cos(al)) * _pm(f1, np.cos(al - phi[:, None])) * r2 ** f2.n
    n = f0.n + f1.n + f2.n
    pre = (2.0 ** (0.5 * n) * math.gamma(0.5 * (n + 3)) / (math.gamma(1.5) * 4.0 * np.pi)
           * a ** f0.n * b ** f1.n)
    return pre * np.sum(wal * pa * I, axis=1), pre * np.sum(wal * np.abs(pa) * Ia, axis=1)


def _triple_sum_kinked(fs, parts, rule):
    """``<f_0 f_1 f_2>`` of functions kinked at 0 only: the sphere of ``_triple_sum`` times
    a radial Gauss-Legendre integral (chi, 3 degrees of freedom) on the panels of
    :data:`_RADIAL_BREAKS`: (value, the same integral of ``|integrand|``)."""
    a, b, phi, c1, c2, s = parts
    q_a, sub, q_b, q_r = rule
    xr, wr = _gauss_legendre(q_r)
    brr = np.array(_RADIAL_BREAKS)
    r = (0.5 * (brr[1:] + brr[:-1])[:, None] + 0.5 * np.diff(brr)[:, None] * xr).reshape(-1)
    wrad = ((0.5 * np.diff(brr)[:, None] * wr).reshape(-1) * r * r * np.exp(-0.5 * r * r)
            * math.sqrt(2.0 / math.pi))
    val, mag = np.zeros(len(a)), np.zeros(len(a))
    for i in range(len(a)):            # one row at a time: (M, 2 q_b, radial nodes) each
        p1 = tuple(x[i:i + 1] for x in parts)
        al, wal, bs, lat, mu = _sphere_nodes(p1, q_a, sub, q_b)
        be = np.concatenate([lat[0][0], lat[1][0]], axis=-1)[0]          # (M, 2 q_b)
        wb = np.concatenate([lat[1 - 1][1], lat[1][1]], axis=-1)[0]
        cb = np.cos(be)
        u0 = (a[i] * cb * np.cos(al[0])[:, None])[..., None] * r
        u1 = (b[i] * cb * np.cos(al[0] - phi[i])[:, None])[..., None] * r
        u2 = (cb * mu[0][:, None] + s[i] * np.sin(be))[..., None] * r
        g = (np.asarray(fs[0](u0), dtype=float) * np.asarray(fs[1](u1), dtype=float)
             * np.asarray(fs[2](u2), dtype=float))
        w = wal[0][:, None, None] * (wb * cb)[..., None] * wrad / (4.0 * np.pi)
        val[i], mag[i] = np.sum(w * g), np.sum(w * np.abs(g))
    return val, mag

#: (angular nodes per panel, panels per piece, latitude nodes per piece, radial nodes per
#: panel of :data:`_RADIAL_BREAKS`) of ``_near_pair_triple_kinked`` per accuracy, and the
#: lower rule of each (the error estimate)
_TRIPLE_KINKED_RULES = {"fast": (16, 2, 12, 10), "default": (24, 2, 16, 14),
                        "high": (32, 2, 24, 20)}
_TRIPLE_KINKED_LOWER = {"fast": (12, 2, 10, 8), "default": (16, 2, 12, 10),
                        "high": (24, 2, 16, 14)}



def _near_pair_triple(fs, K, order, L, accuracy, return_error, kinks=None):
    r"""``<f_0 f_1 f_2>`` of three piecewise monomials (or, with ``kinks``, of functions
    kinked at 0 only: elu), uniform in a nearly coinciding pair.

    Where the most correlated pair has ``1 - rho^2 < _NEAR_PAIR`` and the third variable's
    variance given the pair is ``>= _NEAR_PAIR_OFF`` of its own, with the pair as
    (0, 1) (:func:`_triple_parts`): the product is positively homogeneous of degree
    ``n = n_0 + n_1 + n_2`` in ``g``, so the average is ``E[|g|^n]`` (chi, 3 degrees of
    freedom) times the mean over the unit sphere,
    ``omega = (cos beta cos alpha, cos beta sin alpha, sin beta)``: ``z_0, z_1`` change
    sign at fixed longitudes alpha (``pi/2, 3 pi/2`` and those plus ``phi``: the sliver
    between them is a piece of its own, no ``1 - rho^2`` divides), ``z_2 = r_2
    cos beta_* ... = r_2 sin(beta - beta_*)`` at the latitude ``beta_* = atan2(-mu, s)``,
    ``mu = c_1 cos alpha + c_2 sin alpha``. Gauss-Legendre on the latitude pieces (a
    trigonometric polynomial on each: exact to round-off) and on the longitude pieces
    (analytic on each; :data:`_TRIPLE_RULE`). The orthant closed form divides by
    ``1 - rho^2`` and the split path meets the sliver obliquely: ``<theta theta theta>``
    2.4e-5 off at ``1 - rho = 1e-6`` (split path) -- that took the mixed entries of B, F
    of three relu inputs with one nearly coinciding pair ~1e-6 of scale off, unreported.
    Error estimate: the difference from :data:`_TRIPLE_LOWER`, plus 16 eps times the
    integral of ``|integrand|``, plus twice the change when K's off-diagonal moves by
    +-4 ulp (``c_2``'s rounding, ~eps / phi: against a 40-digit reference,
    ``benchmarks/relu_triple_reference.py``, within 3.7e-13 at ``1 - rho = 1e-10``, a few
    ulps at 1e-6 and above). The other rows (and zero variances): :func:`_piecewise_path`.

    Kinked at 0 (``kinks = (0,)``, not homogeneous): the same sphere times a radial
    Gauss-Legendre integral along each direction (:func:`_triple_sum_kinked`, smooth in
    the radius: no kink is crossed along a ray), rules :data:`_TRIPLE_KINKED_RULES`. The
    exp / split path it replaces was 4.3e-6 off elu's ``<p p p>`` at ``1 - rho = 1e-4``
    (its estimate said 1.1e-7); this form is within ~1e-14 at "default" at ``1 - rho =
    1e-1 .. 1e-8`` and 0 against the same form at higher rules, and within 2e-13 of the
    exp path at "high" at 1e-1. Cost ~0.1 s per average at "default" (value and lower
    rule; the rounding spread twice that again). The other rows: the exp path (elu's
    ``ExpPiecewise``) or the split path.
    """
    B = K.shape[0]
    dg = np.einsum("bii->bi", K)
    out = np.zeros(B)
    err = np.zeros(B) if return_error else None
    if kinks is None:
        one = lambda fp, parts, lower: _triple_sum(  # noqa: E731
            fp, parts, _TRIPLE_LOWER if lower else _TRIPLE_RULE)
    else:
        one = lambda fp, parts, lower: _triple_sum_kinked(  # noqa: E731
            fp, parts, (_TRIPLE_KINKED_LOWER if lower else _TRIPLE_KINKED_RULES)[accuracy])
    pairs = ((0, 1, 2), (0, 2, 1), (1, 2, 0))
    rel = _pair_rel(K, pairs)
    which = np.argmin(rel, axis=1)
    take = np.zeros(B, dtype=bool)
    for p, perm in enumerate(pairs):
        idx = np.flatnonzero((which == p) & (rel[:, p] < _NEAR_PAIR) & np.all(dg > 0, axis=1))
        if idx.size == 0:
            continue
        Kp = K[idx][:, perm][:, :, perm]
        parts = _triple_parts(Kp)
        off = parts[5] ** 2 >= _NEAR_PAIR_OFF * Kp[:, 2, 2]
        idx, parts = idx[off], tuple(x[off] for x in parts)
        if idx.size == 0:
            continue
        fp = [fs[i] for i in perm]
        val, mag = one(fp, parts, False)
        out[idx] = val
        if return_error:
            lo, _ = one(fp, parts, True)
            # the rounding of c_2 (an O(phi) difference over sin phi): measured as the
            # change when K's off-diagonal moves by +-4 ulp (the value's own conditioning)
            spread = np.zeros(idx.size)
            for sgn in (1.0, -1.0):
                Kq = Kp[off] * (1.0 + sgn * 4 * _EPS * (1.0 - np.eye(3)))
                spread = np.maximum(spread, np.abs(one(fp, _triple_parts(Kq), False)[0] - val))
            err[idx] = np.abs(val - lo) + 16 * _EPS * mag + 2.0 * spread
        take[idx] = True
    if not take.all():
        rest = np.flatnonzero(~take)
        if kinks is None:
            o, e = _piecewise_path(fs, K[rest], order[rest], L[rest], accuracy, return_error)
        else:
            o, e = _kinked_path(fs, K[rest], order[rest], L[rest], kinks, accuracy,
                                return_error)
        out[rest] = o
        if return_error:
            err[rest] = e
    return out, err


#: radial panels of ``_polar_pair_kinked`` (the standard radius; e^(-r^2/2) < 1e-39
#: beyond the last) and Gauss-Legendre nodes per radial panel / angular piece per rule
_RADIAL_BREAKS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.5, 13.5)
_POLAR_KINKED_RULES = {"fast": (12, 16), "default": (20, 24), "high": (28, 32)}


def _polar_sum(fs, v1, v2, phi, q_r, q_a):
    """The polar double integral of ``_polar_pair_kinked`` at one rule."""
    two_pi = 2.0 * np.pi
    P = len(v1)
    base = np.broadcast_to(np.array([0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi]), (P, 4))
    cuts = np.concatenate([base, np.mod(phi + 0.5 * np.pi, two_pi),
                           np.mod(phi + 1.5 * np.pi, two_pi)], axis=1)
    cuts.sort(axis=1)                                                # (P, 6)
    xa, wa = _gauss_legendre(q_a)
    lo, hi = cuts[:, :-1, None], cuts[:, 1:, None]
    alpha = (0.5 * (hi + lo) + 0.5 * (hi - lo) * xa).reshape(P, -1)  # (P, 5 q_a)
    wal = (0.5 * (hi - lo) * wa / two_pi).reshape(P, -1)
    xr, wr = _gauss_legendre(q_r)
    br = np.array(_RADIAL_BREAKS)
    r = (0.5 * (br[1:] + br[:-1])[:, None] + 0.5 * np.diff(br)[:, None] * xr).reshape(-1)
    wrad = (0.5 * np.diff(br)[:, None] * wr).reshape(-1) * r * np.exp(-0.5 * r * r)
    u = np.sqrt(v1)[:, None, None] * np.cos(alpha)[:, :, None] * r
    w = np.sqrt(v2)[:, None, None] * np.cos(alpha - phi)[:, :, None] * r
    g = np.asarray(fs[0](u), dtype=float) * np.asarray(fs[1](w), dtype=float)
    return np.einsum("par,pa,r->p", g, wal, wrad), np.einsum("par,pa,r->p", np.abs(g), wal, wrad)


def _polar_pair_kinked(fs, K, order, L, accuracy, return_error):
    r"""``<f_1(z_1) f_2(z_2)>`` of two functions kinked at 0 only (elu), uniform in rho.

    The polar form of ``_polar_pair`` with the radius integrated numerically: on
    each angular piece between the four sign changes of ``cos(alpha)``,
    ``cos(alpha - phi)`` the integrand ``r e^(-r^2/2) f_1(sqrt(K_11) r cos alpha)
    f_2(sqrt(K_22) r cos(alpha - phi))`` is smooth in r and alpha: Gauss-Legendre on
    the pieces and on radial panels (:data:`_RADIAL_BREAKS`), nodes per rule
    :data:`_POLAR_KINKED_RULES`. The split path's Cartesian panels met the kink of
    ``f_2`` along a line oblique to them: elu ``<p_a^2 p_b^2>`` 6e-7 ("default") and
    1.3e-6 ("high") off at ``1 - rho^2 = 5e-3``. Error estimate: the difference from
    the next lower rule plus 16 eps times the integral of ``|integrand|``. A zero
    variance goes to the split path.
    """
    B = K.shape[0]
    v1, v2, k12 = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
    ok = (v1 > 0) & (v2 > 0)
    out = np.zeros(B)
    err = np.zeros(B) if return_error else None
    if not ok.all():
        rest = np.flatnonzero(~ok)
        o, e = _split_path(fs, order[rest], L[rest], (0.0,), accuracy, return_error,
                           exact_inner=False)
        out[rest] = o
        if return_error:
            err[rest] = e
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out, err
    v1, v2, k12 = v1[idx], v2[idx], k12[idx]
    phi = _pair_angle(v1, v2, k12)
    q_r, q_a = _POLAR_KINKED_RULES[accuracy]
    val, mag = _polar_sum(fs, v1, v2, phi, q_r, q_a)
    out[idx] = val
    if return_error:
        lower = {"fast": (8, 12), "default": (12, 16), "high": (20, 24)}[accuracy]
        lo_val, _ = _polar_sum(fs, v1, v2, phi, *lower)
        err[idx] = np.abs(val - lo_val) + 16 * np.finfo(float).eps * mag
    return out, err


#: four piecewise monomials (n <= 2) of which one pair nearly coincides where the orthant
#: closed form does not apply (correlation matrix eigenvalue < 1e-6): ``_near_pair_quad``;
#: (angular nodes per panel, panels per angular piece, radial nodes per panel of
#: :data:`_RADIAL_BREAKS`, nodes per panel of the third variable's two sides: unused since
#: h66, every row's inner ``(g_3, g_4)`` average is closed-form) per accuracy, and the lower
#: rule of each (the error estimate)
#: (measured on the 48 rows of ``relu_quad_reference.json`` it takes: at most 7.2e-11,
#: 3.5e-14, 3.5e-14, 3.5e-14 off the reference at (8, 2, 8, 8), (12, 2, 10, 10),
#: (16, 2, 12, 12), (20, 2, 16, 16), 0.005 .. 0.018 s per average; with the former g_3
#: panels, h66's base: 8.6e-9, 2.5e-11, 6.3e-14, 3.5e-14, 0.05 .. 0.32 s)
_QUAD_RULES = {"fast": (12, 2, 10, 10), "default": (16, 2, 12, 12), "high": (20, 2, 16, 16)}
_QUAD_LOWER = {"fast": (8, 2, 8, 8), "default": (12, 2, 10, 10), "high": (16, 2, 12, 12)}
#: panels per side of the third variable's kink, and its range (standard units; ``_quad_sum_exp``)
_QUAD_G3_PANELS, _QUAD_G3_RANGE = 3, 11.0
#: panels per piece of g_3 (and angular panels per piece) where z_3's kink is graded: the
#: pieces are already short (``_quad_sum_exp``; ``_quad_sum``'s rows are closed-form)
_QUAD_G3_PANELS_THIN = 1
#: offsets (in units of the kink's width ``s3 / |c33|``) of the graded panels around the
#: fourth variable's kink in g_3 where it is nearly determined (``_quad_sum_exp``)
_QUAD_GRADE = (-4.0 ** 5, -4.0 ** 4, -4.0 ** 3, -16.0, -4.0, -1.0, 0.0, 1.0, 4.0, 16.0, 4.0 ** 3,
               4.0 ** 4, 4.0 ** 5)
#: offsets (in units of ``s3 / |c33|``) of the angular cuts graded around the directions
#: where z_2 and z_3 change sign together (``_quad_sum``)
_QUAD_ALPHA_GRADE = (1.0, 4.0, 16.0, 64.0)
#: z_3's kink in g_3 narrower than this (``s3 / |c33|``): the graded panels around it
_QUAD_THIN = 0.5
#: ``s3 / |c33|`` from which the radial axis gets breaks where the kinks of z_2 and z_3
#: in g_3 are 1, 4, 16 widths apart (``_quad_sum``)
_QUAD_R_GRADE_MIN = 1e-3
#: rows of four with a pair below this ``1 - rho^2`` take ``_near_pair_quad`` before the
#: orthant form (which is right to ~1e-15 at 1e-4 and above, but 2.9e-8 off
#: ``<theta theta theta theta>`` at 1e-10 by its cone form, estimate 1.6e-10)
_QUAD_FIRST = 1e-6


def _quad_parts(K):
    """The pair (0, 1) of K (B, 4, 4) as in :func:`_triple_parts` and the two others as
    ``z_2 = c21 g_1 + c22 g_2 + s2 g_3``, ``z_3 = c31 g_1 + c32 g_2 + c33 g_3 + s3 g_4``:
    ``(a, b, phi, c21, c22, s2, c31, c32, c33, s3)`` (B,) each."""
    a, b, phi, c21, c22, s2 = _triple_parts(K[:, :3, :3])
    _, _, _, c31, c32, _ = _triple_parts(K[:, [0, 1, 3]][:, :, [0, 1, 3]])
    with np.errstate(divide="ignore", invalid="ignore"):
        c33 = np.where(s2 > 0, (K[:, 2, 3] - c21 * c31 - c22 * c32) / np.where(s2 > 0, s2, 1.0),
                       0.0)
    s3 = np.sqrt(np.maximum(K[:, 3, 3] - c31 * c31 - c32 * c32 - c33 * c33, 0.0))
    return a, b, phi, c21, c22, s2, c31, c32, c33, s3


def _pm_normal(f, m, s):
    """``E[f(m + s w)]`` for a :class:`PiecewiseMonomial` f of degree <= 2, w ~ N(0, 1)
    (``s = 0``: ``f(m)``)."""
    if s == 0.0:
        return _pm(f, m)
    t = m / s
    P = special.ndtr(t)
    p = _PHI * np.exp(-0.5 * t * t)
    if f.n == 0:
        plus, full = P, 1.0
    elif f.n == 1:
        plus, full = m * P + s * p, m
    else:
        plus, full = (m * m + s * s) * P + m * s * p, m * m + s * s
    return f.cp * plus + f.cm * (full - plus)


#: Gauss-Legendre nodes of :func:`_bvn_near1`'s remainder integral (over ``[0, s]``)
_BVN_NEAR1_NODES = 20
#: s below which :func:`_bvn_near1` drops the remainder integral: at most 2.6e-20 there
#: (|h|, |k| <= 12; 1.6e-13 at s = 0.03, 7e-17 at 0.01)
_BVN_NEAR1_SMALL = 3e-3
_SQRT_HALF = math.sqrt(0.5)


def _bvn_near1(h, k, r, s, t1):
    r"""``Phi_2(h, k; r) = P(X < h, Y < k)`` for ``_PAIR_R_MAX < r < 1``, with
    ``s = sqrt(1 - r^2)`` and ``t1 = (k - r h) / s`` given (both stable where the caller
    has them from the factor: no ``1 - r`` is formed here).

    Drezner and Wesolowsky's form as Genz (2004) writes it for ``|r| > 0.925``:
    ``Phi(min(h, k))`` less ``(1 / 2 pi) int_0^s`` of the density along
    ``x = sqrt(1 - rho^2)``; the integrand's singular part at ``x = 0``
    (``exp(-(h - k)^2 / 2 x^2 - h k / 2)`` times a quadratic in ``x^2``) is integrated in
    closed form and the smooth remainder by Gauss-Legendre (:data:`_BVN_NEAR1_NODES`;
    dropped below ``s = _BVN_NEAR1_SMALL``, where it is < 3e-20).
    Every ``(h - k)^2 / x^2`` is formed from ``q = (h - k) / s = s h / (1 + r) - t1``.
    Absolute error <= 1.1e-16 against mpmath (``|h| <= 6``, ``|t1| <= 40``, ``1 - r =
    0.075 .. 5e-25``; ``tests/gaussian/test_near_pair_quad.py``).

    Parameters
    ----------
    h, k, t1 : ndarray
        Broadcast together.
    r, s : float

    Returns
    -------
    ndarray
    """
    q = s * h / (1.0 + r) - t1                        # (h - k) / s
    hk = h * k
    c = (4.0 - hk) / 8.0
    d = (12.0 - hk) / 16.0
    bs = (s * q) ** 2                                 # (h - k)^2
    q2 = q * q
    out = s * np.exp(-0.5 * (q2 + hk)) * (1.0 - c * (bs - s * s) * (1.0 - d * bs / 5.0) / 3.0
                                        + c * d * s ** 4 / 5.0)
    aq = np.abs(q)
    # exp(-h k / 2) Phi(-|q|) as erfcx (q^2 + h k >= 0: nothing overflows)
    tail = 0.5 * special.erfcx(aq * _SQRT_HALF) * np.exp(-0.5 * (q2 + hk))
    out -= np.sqrt(2.0 * np.pi) * tail * s * aq * (1.0 - c * bs * (1.0 - d * bs / 5.0) / 3.0)
    if s < _BVN_NEAR1_SMALL:
        return special.ndtr(np.minimum(h, k)) - out / (2.0 * np.pi)
    x, w = _bvn_rule(_BVN_NEAR1_NODES)
    for xi, wi in zip(x, w):
        u = 0.5 * (1.0 + xi)                          # x = s u on [0, s]
        xs = (s * u) ** 2
        rs = math.sqrt(1.0 - xs)
        f = (np.exp(-0.5 * hk * xs / (1.0 + rs) ** 2) / rs
             - (1.0 + c * xs * (1.0 + d * xs)))
        out += 0.5 * s * wi * np.exp(-0.5 * (q2 / (u * u) + hk)) * f
    return special.ndtr(np.minimum(h, k)) - out / (2.0 * np.pi)


def _trunc_pair_moments(n2, n3, h, k, r, s, d1, P, sets):
    r"""``N_S(a, b) = E[(X + h)^a (Y + k)^b prod_(S) 1{. > 0}]`` for a standard bivariate
    normal (X, Y) of correlation r (``s = sqrt(1 - r^2)`` >= 0, ``d1 = k - r h``), every
    ``a <= n2``, ``b <= n3`` and indicator set S of ``{X + h, Y + k}`` in ``sets`` (pairs
    of bools (ix, iy)); ``P`` the orthant probability ``Phi_2(h, k; r)`` (used where
    ``(True, True)`` is asked for). Returns ``{(ix, iy): {(a, b): ndarray}}``.

    Stein's lemma ``E[X g] = E[d_X g] + r E[d_Y g]`` (and Y's) lowers a or b by one; an
    indicator's derivative is a delta at its boundary, where the other variable is
    ``d + s Z`` (``d1`` given ``X = -h``, ``d2 = h - r k = s^2 h - r d1`` given ``Y = -k``):
    its moments in closed form in ``t = d / s`` (``Phi(t)``, ``s phi(t)``). No step
    divides by s but ``t``; at ``s = 0`` (the fourth variable determined) ``Phi(t)`` is
    the step ``1{d > 0}`` (1/2 at ``d = 0``) and ``s phi(t) = 0``: the limit.
    """
    d2 = s * s * h - r * d1
    ph, pk = _PHI * np.exp(-0.5 * h * h), _PHI * np.exp(-0.5 * k * k)

    def edge(d):
        """``(Phi(d / s), s phi(d / s))``."""
        if s > 0.0:
            t = d / s
            return special.ndtr(t), s * _PHI * np.exp(-0.5 * t * t)
        return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5)), np.zeros(np.shape(d))

    E1, E2 = edge(d1), edge(d2)

    def cond(m, d, E, ind):
        """``E[(d + s Z)^m (1{d + s Z > 0} if ind)]``, m <= 2."""
        if not ind:
            return (1.0, d, d * d + s * s)[m]
        Pt, spt = E
        return (Pt, d * Pt + spt, (d * d + s * s) * Pt + d * spt)[m]

    out = {}
    for ix, iy in sets:
        base = P if (ix and iy) else special.ndtr(h) if ix else special.ndtr(k) if iy else 1.0
        N = {(0, 0): base}
        # deltas: at X = -h (weight phi(h)), (Y + k)^m; at Y = -k, (X + h)^m
        dX = (lambda m: ph * cond(m, d1, E1, iy)) if ix else (lambda m: 0.0)
        dY = (lambda m: pk * cond(m, d2, E2, ix)) if iy else (lambda m: 0.0)
        get = lambda a, b: N[(a, b)] if a >= 0 and b >= 0 else 0.0  # noqa: E731
        for b in range(1, n3 + 1):
            N[(0, b)] = (k * get(0, b - 1) + (b - 1) * get(0, b - 2) + r * dX(b - 1)
                         + (dY(0) if b == 1 else 0.0))
        for a in range(1, n2 + 1):
            for b in range(n3 + 1):
                N[(a, b)] = (h * get(a - 1, b) + (a - 1) * get(a - 2, b)
                             + r * b * get(a - 1, b - 1) + (dX(b) if a == 1 else 0.0)
                             + (r * dY(a - 1) if b == 0 else 0.0))
        out[(ix, iy)] = N
    return out


def _pm_pair_normal(f2, f3, mu2, mu3, s2, c33, s3, e):
    r"""``E[f_2(mu2 + s2 g_3) f_3(mu3 + c33 g_3 + s3 g_4)]`` over independent standard
    ``g_3, g_4`` for :class:`PiecewiseMonomial` s of degree <= 2, in closed form (the
    inner average of every row of :func:`_quad_row`; ``s2 > 0``, ``hypot(c33, s3) > 0``;
    ``c33 = 0`` is ``r = 0``), and the same of ``|f_2 f_3|``: (value, magnitude).

    With ``u = s2 (X + h)``, ``v = sv (Y + k)`` (``sv = hypot(c33, s3)``, correlation
    ``r = c33 / sv``, ``s = s3 / sv``), ``f(z) = z^n (c_- + (c_+ - c_-) 1{z > 0})`` expands
    into the truncated moments of :func:`_trunc_pair_moments` (``|f|`` the same with
    ``|c_+|, (-1)^n |c_-|``); the orthant probability is :func:`_bvn_near1` for
    ``|r| > _PAIR_R_MAX`` (``r < 0`` by ``Phi(h) - Phi_2(h, -k; -r)``; ``s = 0``:
    ``Phi(min(h, k))``, or ``max(Phi(h) - Phi(-k), 0)`` at ``r = -1``) else :func:`_bvn`.
    ``e`` is ``mu3 s2 - c33 mu2`` formed from the row's coefficients: ``k - r h = e / (s2
    sv)`` and ``t1 = e / (s2 s3)`` (the kinks' distance in units of z_3's width) without
    the cancellation of ``k - r h``.
    Within 5.3e-15 absolute (values up to ~10) of mpmath (1D adaptive quadrature over g_3
    of the g_4 average) at ``s3 / |c33|`` 0 .. 0.45, and within 3.9e-16 of its
    Cauchy-Schwarz scale at ``s3 / |c33|`` 0.5 .. 1e3 and ``c33 = 0``
    (``tests/gaussian/test_near_pair_quad.py``).
    """
    a, b = f2.n, f3.n
    sgn2, sgn3 = (-1.0) ** a, (-1.0) ** b
    combos = {}          # (ix, iy): (coefficient in f_2 f_3, in |f_2 f_3|)
    for ix, c2, m2 in ((False, f2.cm, sgn2 * abs(f2.cm)),
                       (True, f2.cp - f2.cm, abs(f2.cp) - sgn2 * abs(f2.cm))):
        for iy, c3, m3 in ((False, f3.cm, sgn3 * abs(f3.cm)),
                           (True, f3.cp - f3.cm, abs(f3.cp) - sgn3 * abs(f3.cm))):
            if c2 * c3 != 0.0 or m2 * m3 != 0.0:
                combos[(ix, iy)] = (c2 * c3, m2 * m3)
    sv = math.hypot(c33, s3)
    r, s = c33 / sv, s3 / sv
    h, k = mu2 / s2, mu3 / sv
    d1 = e / (s2 * sv)
    P = None
    if (True, True) not in combos:
        pass
    elif s == 0.0:
        P = (special.ndtr(np.minimum(h, k)) if r > 0 else
             np.maximum(special.ndtr(h) - special.ndtr(-k), 0.0))
    elif r > _PAIR_R_MAX:
        P = _bvn_near1(h, k, r, s, e / (s2 * s3))
    elif r < -_PAIR_R_MAX:
        P = special.ndtr(h) - _bvn_near1(h, -k, -r, s, -e / (s2 * s3))
    else:
        P = _bvn(h.reshape(1, -1), k.reshape(1, -1), np.array([[r]])).reshape(h.shape)
    N = _trunc_pair_moments(a, b, h, k, r, s, d1, P, tuple(combos))
    val, mag = np.zeros(np.shape(h)), np.zeros(np.shape(h))
    for S, (cv, cm) in combos.items():
        val = val + cv * N[S][(a, b)]
        mag = mag + cm * N[S][(a, b)]
    scale = s2 ** a * sv ** b
    return val * scale, mag * scale


@functools.lru_cache(maxsize=16)
def _quad_rule_nodes(rule):
    """The nodes of one rule of :func:`_quad_sum` / :func:`_quad_sum_exp` shared by every
    row: radial ``(xr, wr, R, wR)`` on :data:`_RADIAL_BREAKS`, the third variable's unit
    panels ``{panels: (t, w)}``, angular ``(xa, wa)``."""
    q_a, sub, q_r, q_3 = rule
    xr, wr = _gauss_legendre(q_r)
    brr = np.array(_RADIAL_BREAKS)
    R = (0.5 * (brr[1:] + brr[:-1])[:, None] + 0.5 * np.diff(brr)[:, None] * xr).reshape(-1)
    wR = (0.5 * np.diff(brr)[:, None] * wr).reshape(-1) * R * np.exp(-0.5 * R * R)
    x3, w3 = _gauss_legendre(q_3)
    nodes3 = {}
    for P in (_QUAD_G3_PANELS, _QUAD_G3_PANELS_THIN):
        tt = (np.arange(P)[:, None] + 0.5 * (1.0 + x3)) / P                      # (P, q)
        nodes3[P] = tt.reshape(-1), np.broadcast_to(0.5 * w3 / P, tt.shape).reshape(-1)
    return (xr, wr, R, wR), nodes3, _gauss_legendre(q_a)


def _quad_angles(row, xa, wa, sub):
    """One row's angular nodes ``alpha`` (M,) and weights (over 2 pi), cut at the pair's
    sign changes and where z_2 and z_3 change sign together, and ``h = s3 / |c33|``."""
    a, b, phi, c21, c22, s2, c31, c32, c33, s3 = row
    two_pi = 2.0 * np.pi
    ts = np.linspace(0.0, 1.0, sub + 1)[:-1]
    # z_2 and z_3 change sign together along the directions alpha_0, alpha_0 + pi of
    # the pair's plane (a kink in alpha where z_3 is nearly determined: graded there)
    a0 = math.atan2(-(c21 * c33 - c31 * s2), c22 * c33 - c32 * s2)
    h = s3 / abs(c33) if c33 != 0.0 else np.inf
    extra = [a0, a0 + np.pi]
    if h < _QUAD_ALPHA_GRADE[-1]:
        extra += [a0 + sg * o * max(h, 1e-300) + sh for o in _QUAD_ALPHA_GRADE
                  if o * h < 0.5 for sg in (-1.0, 1.0) for sh in (0.0, np.pi)]
    cuts = np.unique(np.concatenate([[0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi], np.mod(
        [phi + 0.5 * np.pi, phi + 1.5 * np.pi] + extra, two_pi)]))
    lo, hi = cuts[:-1, None], cuts[1:, None]
    br = np.append((lo + (hi - lo) * ts).reshape(-1), two_pi)
    lo, hi = br[:-1, None], br[1:, None]
    al = (0.5 * (hi + lo) + 0.5 * (hi - lo) * xa).reshape(-1)                     # (M,)
    wal = (0.5 * (hi - lo) * wa).reshape(-1) / two_pi
    return al, wal, h


def _quad_radial_graded(row, h, ca, sa, xr, wr):
    """Radial nodes and weights (M, nR') with breaks where the kinks of z_2 (sharp) and
    z_3 (width h) in g_3, ``R |Delta(alpha)|`` apart, are 1, 4, 16 widths apart."""
    _, _, _, c21, c22, s2, c31, c32, c33, _ = row
    brr = np.array(_RADIAL_BREAKS)
    dlt = np.abs((c21 * ca + c22 * sa) / s2 - (c31 * ca + c32 * sa) / c33)
    with np.errstate(divide="ignore"):
        ro = np.stack([np.clip(o * h / dlt, 0.0, brr[-1]) for o in (1.0, 4.0, 16.0)], 1)
    rb = np.sort(np.concatenate([np.broadcast_to(brr, (len(ca), len(brr))), ro], 1), 1)
    lo_r, hi_r = rb[:, :-1, None], rb[:, 1:, None]
    Rm = (0.5 * (hi_r + lo_r) + 0.5 * (hi_r - lo_r) * xr).reshape(len(ca), -1)
    wRm = (0.5 * (hi_r - lo_r) * wr).reshape(len(ca), -1) * Rm * np.exp(-0.5 * Rm * Rm)
    return Rm, wRm


def _quad_g3_breaks(mu2, mu3, row, h, thin):
    """The third variable's panel breaks (M, nR, nb): its range, z_2's kink and, where
    z_3 is nearly determined (``thin``: E over g_4 a kink of width h in g_3), panels
    graded around z_3's kink."""
    s2, c33 = row[5], row[8]
    T3 = _QUAD_G3_RANGE
    br = [np.full(mu2.shape, -T3), np.clip(-mu2 / s2, -T3, T3), np.full(mu2.shape, T3)]
    if thin:
        k3 = -mu3 / c33
        br += [np.clip(k3 + h * o, -T3, T3) for o in _QUAD_GRADE]
        br += [np.full(mu2.shape, T3 * u) for u in (-2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3)]
    return np.sort(np.stack(br, axis=-1), axis=-1)


def _quad_sum(fs, parts, rule):
    r"""``<f_0 f_1 f_2 f_3>`` of ``_near_pair_quad`` at one rule, row by row: (value, the
    same integral of ``|integrand|``). Each row is :func:`_quad_row`, which remembers its
    last results: a fold asks for the same average many times (residual relu, two nearly
    coinciding inputs: 54 of 129 near-pair averages repeated; ~0.015 s each since the
    inner average is closed-form: h64 for thin rows, h66 for the others, 0.05 .. 1.5 s
    before)."""
    key = tuple((f.cp, f.cm, f.n) for f in fs)
    out = [_quad_row(key, tuple(float(x[i]) for x in parts), tuple(rule))
           for i in range(len(parts[0]))]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


@functools.lru_cache(maxsize=512)
def _quad_row(key, row, rule):
    """One row of :func:`_quad_sum`: ``key`` the four ``(cp, cm, n)``, ``row`` the ten
    parts of :func:`_quad_parts` as floats (``s2 > 0``, ``hypot(c33, s3) > 0``: the rows
    of :func:`_near_pair_quad` keep ``>= _NEAR_PAIR_OFF`` of both variances). Returns
    (value, integral of |integrand|).

    Every row takes its inner ``(g_3, g_4)`` average in closed form
    (:func:`_pm_pair_normal`: a bivariate normal of correlation ``c33 / hypot(c33, s3)``,
    Genz's near-1 form where ``|r| > _PAIR_R_MAX``, Sheppard's (:func:`_bvn`) otherwise;
    its magnitude ``E|f_2 f_3|`` there) at the outer ``(alpha, R)`` nodes; a thin row
    (``s3 < _QUAD_THIN |c33|``) with ``s3 / |c33| >= _QUAD_R_GRADE_MIN`` gets the graded
    radial breaks. (Until h66 the rows that are not thin summed ``g_3`` on 3 panels a side
    of z_2's kink, ``rule[3]`` nodes each, ``g_4`` by :func:`_pm_normal`: 0.05 .. 0.6 s a
    row, and z_3's kink of width ``s3 / |c33|`` ~ 0.5 unresolved: up to 2.7e-5 of the
    row's magnitude off a dense reference, 8.6e-9 on the N = 6 relu near-pair case's rows,
    where this form is within 4.3e-16; ``benchmarks/relu_quad_wide.py``.)"""
    f0, f1, f2, f3 = (PiecewiseMonomial(*k) for k in key)
    (xr, wr, R, wR), _, (xa, wa) = _quad_rule_nodes(rule)
    a, b, phi, c21, c22, s2, c31, c32, c33, s3 = row
    al, wal, h = _quad_angles(row, xa, wa, rule[1])
    ca, sa = np.cos(al), np.sin(al)
    pa = wal * _pm(f0, a * ca) * _pm(f1, b * np.cos(al - phi))                  # (M,)
    keep = pa != 0.0
    if not keep.any():
        return 0.0, 0.0    # the pair's product vanishes everywhere (e.g. relu at rho = -1)
    ca, sa, pa = ca[keep], sa[keep], pa[keep]
    Rm, wRm = R[None, :], wR[None, :]
    if s3 < _QUAD_THIN * abs(c33) and h >= _QUAD_R_GRADE_MIN:
        Rm, wRm = _quad_radial_graded(row, h, ca, sa, xr, wr)
    mu2 = (c21 * ca + c22 * sa)[:, None] * Rm                                   # (M, nR)
    mu3 = (c31 * ca + c32 * sa)[:, None] * Rm
    rad = wRm * Rm ** (f0.n + f1.n)
    # e = mu3 s2 - c33 mu2 from the coefficients (no cancellation where z_3 ~ z_2 c33 / s2)
    e = (c31 * s2 - c33 * c21) * ca + (c32 * s2 - c33 * c22) * sa              # (M,)
    e = e[:, None] * Rm
    I, Ia = _pm_pair_normal(f2, f3, mu2, mu3, s2, c33, s3, e)
    return float(np.sum(pa[:, None] * rad * I)), float(np.sum(np.abs(pa)[:, None] * rad * Ia))


def _near_pair_quad(fs, K, accuracy, return_error, kinked=False, near=None):
    r"""``<f_0 f_1 f_2 f_3>`` of four piecewise monomials (degree <= 2) with one nearly
    coinciding pair, uniform in its correlation: (taken (B,) bool, value, estimate).

    Rows whose most correlated pair has ``1 - rho^2 < _NEAR_PAIR`` and whose two other
    variables keep ``>= _NEAR_PAIR_OFF`` of their variance given what precedes them in the
    factor of :func:`_quad_parts` (the pair first). With ``(g_1, g_2) = R (cos alpha, sin
    alpha)``: alpha by Gauss-Legendre between the pair's sign changes (``pi/2, 3 pi/2`` and
    those plus ``phi``: the sliver between them a piece of its own, no ``1 - rho^2``
    divides), R on the panels of :data:`_RADIAL_BREAKS`, the ``(g_3, g_4)`` average in
    closed form (:func:`_pm_pair_normal`; until h66 ``g_3`` on panels split at ``z_2``'s
    sign change where ``s3 >= _QUAD_THIN |c33|``, which missed z_3's kink: up to 2.7e-5 of
    the magnitude off at ``s3 / |c33| ~ 0.5``): a smooth integrand on each piece of the
    outer axes (:data:`_QUAD_RULES`). The split path it replaces (the orthant form's
    fallback) missed the sliver: ``<theta theta theta theta>`` 2.2e-5 off at ``1 - rho^2 =
    1e-6`` (~ proportional to ``sqrt(1 - rho^2)``) with an estimate of 9e-15
    (``benchmarks/relu_quad_reference.py``). Error estimate: the difference from
    :data:`_QUAD_LOWER`, plus 16 eps times the integral of ``|integrand|``, plus twice the
    change when K's off-diagonal moves by +-4 ulp (``c22``, ``c32``'s rounding ~eps/phi;
    at the lower rule). Cost ~0.015 s per average at "default" (0.3 .. 0.6 s before h66
    where ``s3 >= _QUAD_THIN |c33|``).

    The two others are ordered so that the third has the larger share of its variance
    off the pair's plane (it must keep ``_NEAR_PAIR_OFF``); the fourth may be nearly
    determined by the first three (rank-3 K: four inputs in two dims at the first layer;
    ``s3 < _QUAD_THIN |c33|``): ``E`` over ``g_4`` is then a kink of width ``s3 / |c33|``
    in ``g_3``, and the ``(g_3, g_4)`` average, a bivariate normal of correlation
    ``c33 / hypot(c33, s3) ~ 1``, is taken in closed form (:func:`_pm_pair_normal`:
    Genz's near-1 bivariate CDF and Stein's lemma, within 5e-15 of mpmath); the angle is
    cut where ``z_2`` and ``z_3`` change sign together (graded, :data:`_QUAD_ALPHA_GRADE`)
    and, for ``s3 / |c33| >= _QUAD_R_GRADE_MIN``, the radial axis where the two kinks are
    1, 4, 16 widths apart (``R |Delta(alpha)|``; without them 4e-8 of 0.06 off at
    "default"). Measured: 5.2e-15 from the orthant cone form on a rank-3 K (s3 = 0), <=
    6e-15 from its direct recursion at ``s3 / |c33| = 0.005 .. 0.3`` where that is
    resolved, "default" within 1.7e-16 of "high" on the residual relu near-pair rows
    (``benchmarks/relu_quad_thin.py``); ~0.015 .. 0.05 s per average at "default" (was
    0.35 .. 1.5 s with 12 nodes on each of ~20 graded ``g_3`` panels, whose sum was up to
    4.7e-12 off at single nodes and 2.2e-12 off in the average). Rows not taken (a fourth
    variable in the pair's plane, degrees > 2) keep the orthant / split path.

    ``kinked``: ``fs`` are :class:`ExpPiecewise` kinked at 0 only (elu): the same form
    with ``f_0, f_1`` along each ray and ``g_4`` by :func:`exp_inner`
    (:func:`_quad_sum_exp`); ``near``: the ``1 - rho^2`` below which a row is taken
    (default :data:`_NEAR_PAIR`).
    """
    B = K.shape[0]
    near = _NEAR_PAIR if near is None else near
    dg = np.einsum("bii->bi", K)
    take = np.zeros(B, dtype=bool)
    out = np.zeros(B)
    err = np.zeros(B)
    if not kinked and any(f.n > 2 for f in fs):
        return take, out, err
    pairs = list(itertools.combinations(range(4), 2))
    rel = _pair_rel(K, pairs)
    which = np.argmin(rel, axis=1)
    for p, (i, j) in enumerate(pairs):
        idx = np.flatnonzero((which == p) & (rel[:, p] < near) & np.all(dg > 0, axis=1))
        if idx.size == 0:
            continue
        k2, k3 = [k for k in range(4) if k not in (i, j)]
        for perm in ([i, j, k2, k3], [i, j, k3, k2]):
            Kp = K[idx][:, perm][:, :, perm]
            parts = _quad_parts(Kp)
            # the third variable off the pair's plane (the fourth may be determined: rank 3)
            off = ((parts[5] ** 2 >= _NEAR_PAIR_OFF * Kp[:, 2, 2])
                   & (parts[8] ** 2 + parts[9] ** 2 >= _NEAR_PAIR_OFF * Kp[:, 3, 3]))
            if perm[2] == k2:    # the other order where it has the larger share of its own
                _, _, _, _, _, s3o = _triple_parts(K[idx][:, [i, j, k3]][:, :, [i, j, k3]])
                off &= parts[5] ** 2 / Kp[:, 2, 2] >= s3o ** 2 / K[idx, k3, k3]
            taken = _near_quad_rows(fs, perm, idx[off], Kp[off], tuple(x[off] for x in parts),
                                    accuracy, return_error, out, err, kinked)
            take[taken] = True
            idx = idx[~off]
            if idx.size == 0:
                break
    return take, out, err


def _near_quad_rows(fs, perm, idx, Kp, parts, accuracy, return_error, out, err, kinked=False):
    """``_near_pair_quad`` at rows idx, their covariances Kp permuted (pair first): fills
    out, err there; returns idx."""
    if idx.size:
        fp = [fs[k] for k in perm]
        summ, rules, lower = ((_quad_sum_exp, _QUAD_EXP_RULES, _QUAD_EXP_LOWER) if kinked
                              else (_quad_sum, _QUAD_RULES, _QUAD_LOWER))
        val, mag = summ(fp, parts, rules[accuracy])
        out[idx] = val
        if return_error:
            lo, _ = summ(fp, parts, lower[accuracy])
            spread = np.zeros(idx.size)
            for sgn in (1.0, -1.0):       # (at the lower rule: a difference of two sums)
                Kq = Kp * (1.0 + sgn * 4 * _EPS * (1.0 - np.eye(4)))
                spread = np.maximum(spread, np.abs(summ(fp, _quad_parts(Kq),
                                                        lower[accuracy])[0] - lo))
            err[idx] = np.abs(val - lo) + 16 * _EPS * mag + 2.0 * spread
    return idx


#: elu (``ExpPiecewise`` kinked at 0) four-variable rows whose most correlated pair has
#: ``1 - rho^2`` below this take ``_near_pair_quad``'s form (``_quad_sum_exp``) instead of
#: the exp path (``_exp_near_quad``)
_EXP_QUAD_NEAR = 0.15
#: (angular nodes per panel, panels per angular piece, radial nodes per panel of
#: :data:`_RADIAL_BREAKS`, nodes per panel of g_3) of ``_quad_sum_exp``, and the lower rule
#: of each (the error estimate)
_QUAD_EXP_RULES = {"fast": (12, 2, 10, 12), "default": (16, 2, 14, 16), "high": (20, 2, 20, 20)}
_QUAD_EXP_LOWER = {"fast": (8, 2, 8, 8), "default": (12, 2, 10, 12), "high": (16, 2, 14, 16)}
#: points of ``_quad_sum_exp`` whose weight is below this fraction of the largest are skipped
_QUAD_EXP_PRUNE = 1e-28


def _quad_sum_exp(fs, parts, rule):
    r"""``<f_0 f_1 f_2 f_3>`` of four :class:`ExpPiecewise` kinked at 0 only (elu) in the
    form of :func:`_quad_sum`: ``f_0, f_1`` along each ray ``(g_1, g_2) = R (cos alpha,
    sin alpha)`` (no kink is crossed along a ray: smooth in R), ``f_2`` on both sides of
    its kink in ``g_3``, ``E`` over ``g_4`` of ``f_3`` by :func:`exp_inner` (closed form).
    Row by row: (value, the same integral of ``|integrand|``)."""
    f0, f1, f2, f3 = fs
    (xr, wr, R, wR), nodes3, (xa, wa) = _quad_rule_nodes(rule)
    val, mag = np.zeros(len(parts[0])), np.zeros(len(parts[0]))
    thin = parts[9] < _QUAD_THIN * np.abs(parts[8])
    ev = lambda f, u: np.asarray(f(u), dtype=float)  # noqa: E731
    for i in range(len(parts[0])):
        row = tuple(float(x[i]) for x in parts)
        a, b, phi, c21, c22, s2, c31, c32, c33, s3 = row
        t, w3 = nodes3[_QUAD_G3_PANELS_THIN if thin[i] else _QUAD_G3_PANELS]
        al, wal, h = _quad_angles(row, xa, wa, rule[1])
        ca, sa, cb = np.cos(al), np.sin(al), np.cos(al - phi)
        Rm, wRm = np.broadcast_to(R, (len(al), len(R))), np.broadcast_to(wR, (len(al), len(R)))
        if thin[i] and h >= _QUAD_R_GRADE_MIN:
            Rm, wRm = _quad_radial_graded(row, h, ca, sa, xr, wr)
        # f_0 f_1 along the rays; a ray where either vanishes identically (sigma'') is dropped
        F = ev(f0, (a * ca)[:, None] * Rm) * ev(f1, (b * cb)[:, None] * Rm)      # (M, nR)
        keep = np.any(F != 0.0, axis=1)
        F, ca, sa, Rm, wRm, wal = F[keep], ca[keep], sa[keep], Rm[keep], wRm[keep], wal[keep]
        mu2 = (c21 * ca + c22 * sa)[:, None] * Rm                               # (M, nR)
        mu3 = (c31 * ca + c32 * sa)[:, None] * Rm
        br = _quad_g3_breaks(mu2, mu3, row, h, thin[i])                         # (M, nR, nb)
        # points whose weight is below _QUAD_EXP_PRUNE of the largest outer weight: not
        # evaluated (the integrand grows polynomially: their sum is < 1e-15 of the value)
        Wo = wal[:, None] * wRm * np.abs(F)
        thr = _QUAD_EXP_PRUNE * np.max(Wo)
        I = Ia = 0.0
        for j in range(br.shape[-1] - 1):
            lo3, hi3 = br[..., j:j + 1], br[..., j + 1:j + 2]
            g3 = lo3 + (hi3 - lo3) * t                                           # (M, nR, n3)
            w = (hi3 - lo3) * w3 * _PHI * np.exp(-0.5 * g3 * g3)
            live = Wo[..., None] * w > thr
            m3 = (mu3[..., None] + c33 * g3)[live]
            e3 = (ev(f3, m3) if s3 == 0.0 else
                  exp_inner([f3], m3[:, None], np.full(m3.shape + (1,), s3)))
            g = np.zeros(g3.shape)
            g[live] = ev(f2, (mu2[..., None] + s2 * g3)[live]) * e3
            I = I + np.sum(w * g, axis=-1)
            Ia = Ia + np.sum(w * np.abs(g), axis=-1)
        val[i] = np.sum(wal[:, None] * wRm * F * I)
        mag[i] = np.sum(wal[:, None] * wRm * np.abs(F) * Ia)
    return val, mag


def _piecewise_path(fs, K, order, L, accuracy, return_error):
    """Piecewise monomials (ReLU family): the orthant closed form where the correlation
    matrix's smallest eigenvalue is >= 1e-6, the split path (exact inner axes) elsewhere."""
    if not _ORTHANT or len(fs) < 2:
        return _split_path(fs, order, L, (0.0,), accuracy, return_error, exact_inner=True)
    if len(fs) == 4 and _POLAR:
        # a pair with 1 - rho^2 < _QUAD_FIRST: never the orthant's direct form (its
        # correlation eigenvalue is below 1e-6), and its cone form (eigenvalue < 1e-10)
        # drops an O(sqrt(eigenvalue)) sliver: _near_pair_quad first
        rel = np.min(_pair_rel(K, list(itertools.combinations(range(4), 2))), axis=1)
        first = np.flatnonzero(rel < _QUAD_FIRST)
        if first.size:
            took, o, e = _near_pair_quad(fs, K[first], accuracy, return_error)
            if took.any():
                rest = np.setdiff1d(np.arange(len(K)), first[took])
                out, err = np.zeros(len(K)), (np.zeros(len(K)) if return_error else None)
                out[first[took]] = o[took]
                if return_error:
                    err[first[took]] = e[took]
                if rest.size:
                    o, e = _piecewise_path(fs, K[rest], order[rest], L[rest], accuracy,
                                           return_error)
                    out[rest] = o
                    if return_error:
                        err[rest] = e
                return out, err
    out, err, ok = orthant_expect(fs, K, return_error)
    if not ok.all():
        # the few left (nearly singular, not exactly): the split path one rule up, and
        # its difference from this rule as the estimate (the split path's own estimate,
        # two nodes fewer per panel, overstated the error ~2000x on such a covariance:
        # 1.8e-6 against a true 8e-10 at "default", N = 16 relu inputs in 3 dims)
        rest = np.flatnonzero(~ok)
        if len(fs) == 4 and _POLAR:
            # one nearly coinciding pair: the split path misses its sliver (_near_pair_quad)
            took, o, e = _near_pair_quad(fs, K[rest], accuracy, return_error)
            out[rest[took]] = o[took]
            if return_error:
                err[rest[took]] = e[took]
            rest = rest[~took]
            if rest.size == 0:
                return out, (err if return_error else None)
        up = {"fast": "default", "default": "high"}.get(accuracy)
        if up is None:
            o, e = _split_path(fs, order[rest], L[rest], (0.0,), accuracy, return_error,
                               exact_inner=True)
        else:
            o, _ = _split_path(fs, order[rest], L[rest], (0.0,), up, False, exact_inner=True)
            if return_error:
                lo, _ = _split_path(fs, order[rest], L[rest], (0.0,), accuracy, False,
                                    exact_inner=True)
                e = np.abs(o - lo)
        out[rest] = o
        if return_error:
            err[rest] = e
    return out, (err if return_error else None)


def _closed_last(K, fs, order, L):
    """The factor whose last variable (the axis in closed form) is the normal-family
    factor with the largest conditional variance, where the covariance has full rank.

    :func:`_factor` pivots the largest variance first, so its last variable has
    the smallest conditional spread: the closed-form axis then takes the
    narrowest direction and the outer trapezoid axes the widest. With the
    widest conditional direction in closed form instead, the outer axes'
    scales (the pivots' conditional standard deviations, which set their
    node counts in :func:`axis_rules`) drop: GELU's four-variable averages at
    the N = 16 benchmark's kernels, 40,000 -> 25,000 outer points at layer 1,
    29,500 -> 18,500 at layer 5, 21,600 -> 14,400 at layer 10. The rule per
    axis is unchanged (its scale from the new factor's column), so is its
    error estimate. Rank-deficient covariances (and a reordering that would
    meet a pivot below the rank tolerance) keep :func:`_factor`'s order.
    """
    B, d, _ = L.shape
    exact = [k for k, f in enumerate(fs) if isinstance(f, NormalFamily)]
    if not exact:
        return order, L
    full = np.all(np.abs(np.diagonal(L, axis1=1, axis2=2)) > 0, axis=1)
    best = np.where(np.isin(order[:, d - 1], exact), L[:, d - 1, d - 1], -1.0)
    order, L = order.copy(), L.copy()
    for j in exact:
        oj, Lj = _factor(K, last=j)
        ok = full & np.all(np.abs(np.diagonal(Lj, axis1=1, axis2=2)) > 0, axis=1) \
            & (Lj[:, d - 1, d - 1] > best)
        order[ok], L[ok], best[ok] = oj[ok], Lj[ok], Lj[ok, d - 1, d - 1]
    return order, L


# ---------------------------------------------------------------------------
# GELU: the last two axes in closed form (bivariate normal)
# ---------------------------------------------------------------------------

#: (P, A, B, a) of GELU's sigma ``z Phi(z)`` ("s") and sigma' ``Phi(z) + z phi(z)`` ("p"):
#: any two such slots have the bivariate closed form of :func:`_zphi_pair`
_PAIR_KINDS = {((), (0.0, 1.0), (), 1.0): "s", ((), (1.0,), (0.0, 1.0), 1.0): "p"}
#: ``|r|`` (the correlation of the pair's augmented variables, :func:`_zphi_pair`) up to
#: which the pair path is taken, and the Gauss-Legendre sizes of :func:`_bvn` per ``|r|``:
#: <= 4e-16 absolute against Owen's T (scipy) on ``|h|, |k| <= 9`` at every bound, while
#: one size less leaves 4e-12 at ``|r| = 0.9`` (``tests/gaussian/test_gelu_pair.py``)
_PAIR_R_MAX = 0.925
_BVN_NODES = ((0.3, 6), (0.7, 12), (0.8, 16), (_PAIR_R_MAX, 20))
_PAIR_BLOCK = 2 ** 14     # points per block of the pair closed form (temporaries in cache)


def _pair_kind(f):
    """"s" for GELU's ``z Phi``, "p" for its ``Phi + z phi``, else None (any two of
    them form a pair: "s", "p" or, mixed, "sp")."""
    if not isinstance(f, NormalFamily):
        return None
    return _PAIR_KINDS.get((f.P, f.A, f.B, f.a))


@functools.lru_cache(maxsize=8)
def _bvn_rule(n):
    return np.polynomial.legendre.leggauss(n)


def _bvn(h, k, r):
    r"""Bivariate normal CDF ``Phi_2(h, k; r) = P(X < h, Y < k)`` for ``|r| <= _PAIR_R_MAX``.

    Sheppard's formula ``Phi(h) Phi(k) + (1 / 2 pi) int_0^{asin r}
    exp(-(h^2 - 2 h k sin t + k^2) / (2 cos^2 t)) dt``, the integral by
    Gauss-Legendre (its integrand is analytic while ``cos t >= 0.38``), the
    size from ``|r|`` (``_BVN_NODES``): absolute error <= 4e-16.

    Parameters
    ----------
    h, k : ndarray (b, P)
    r : ndarray (b, 1)
        One correlation per covariance (the nodes in t are per covariance).

    Returns
    -------
    ndarray (b, P)
    """
    rmax = float(np.max(np.abs(r), initial=0.0))
    n = next(q for bound, q in _BVN_NODES if rmax <= bound)
    x, w = _bvn_rule(n)
    a = np.arcsin(r)                                     # (b, 1)
    hs = h * h
    hs += k * k
    hs *= 0.5
    hk = h * k
    tot = np.zeros(np.shape(h))
    tmp = np.empty(np.shape(h))
    for xi, wi in zip(x, w):
        sn = np.sin(0.5 * (1.0 + xi) * a)                # (b, 1)
        # w_i exp((h k sin t - (h^2 + k^2) / 2) / cos^2 t), the weight in the exponent
        np.multiply(hk, sn, out=tmp)
        tmp -= hs
        tmp *= 1.0 / (1.0 - sn * sn)
        tmp += math.log(wi)
        np.exp(tmp, out=tmp)
        tot += tmp
    tot *= a * (0.25 / math.pi)                          # (asin r / 2) (1 / 2 pi)
    tot += special.ndtr(h) * special.ndtr(k)
    return tot


def _zphi_pair(m1, m2, v1, v2, c12, kind="s"):
    r"""``<g(X) g(Y)>`` for GELU's ``g(z) = z Phi(z)`` (``kind`` "s"), ``<g'(X) g'(Y)>``
    with ``g'(z) = Phi(z) + z phi(z)`` ("p") or ``<g(X) g'(Y)>`` ("sp"), for
    ``(X, Y) ~ N((m1, m2), [[v1, c12], [c12, v2]])``.

    With ``e1, e2 ~ N(0, 1)`` independent, ``g(X) = E_e[X 1{A > 0}]`` for
    ``A = X - e1`` (and ``B = Y - e2``), so the average is
    ``F = E[X Y 1{A > 0, B > 0}]``. ``(A, B)`` has covariance ``S = Sigma + I``;
    given ``(A, B)``, ``(X, Y)`` has mean ``m + beta ((A, B) - m)`` and
    covariance ``beta`` with ``beta = Sigma S^-1 = I - S^-1``. In the
    standardized ``a = (A - m1) / sigma_A``, ``b = (B - m2) / sigma_B``
    (correlation ``r = c12 / (sigma_A sigma_B)``, ``s = sqrt(1 - r^2)``;
    ``mu_X = m1 + p1 a + q1 b``, ``mu_Y = m2 + p2 a + q2 b``) the region is
    ``a > -h, b > -k`` (``h = m1 / sigma_A``, ``k = m2 / sigma_B``), and the
    truncated moments of a standard bivariate normal (Stein's lemma) close
    it: with ``P = Phi_2(h, k; r)``, ``A1 = phi(h) Phi((k - r h) / s)``,
    ``A2 = phi(k) Phi((h - r k) / s)``, ``Q = phi(h) phi((k - r h) / s)``:
    ``E[a] = A1 + r A2``, ``E[a^2] = P - h A1 - r^2 k A2 + r s Q``,
    ``E[a b] = r P - r h A1 - r k A2 + s Q`` (and b's by symmetry).
    Collected: ``(m1 m2 + c_P) P + (al11 m1 + al12 m2) A1 + (al21 m1 + al22 m2) A2
    + c_Q Q``. The derivative pair is ``d^2 F / dm1 dm2``: the indicator's
    derivatives are deltas at ``A = 0`` / ``B = 0``, giving
    ``P + [(m1 - (p1 + r q1) h) A1 + q1 s Q] / sigma_A + [(m2 - (q2 + r p2) k) A2
    + p2 s Q] / sigma_B + Q (mu_X mu_Y + beta_12) / (s sigma_A sigma_B)`` with the
    means at ``A = B = 0``; the mixed pair is ``dF / dm2`` (:func:`_sp_pair`).
    Exact (the bivariate CDF to 4e-16, :func:`_bvn`);
    any rank of Sigma (S is positive definite).

    Parameters
    ----------
    m1, m2 : ndarray (b, P)
        Conditional means at the outer points.
    v1, v2, c12 : ndarray (b, 1)
        The pair's conditional covariance (one per covariance), ``|r| <= _PAIR_R_MAX``.
    kind : {"s", "p", "sp"}

    Returns
    -------
    ndarray (b, P)
    """
    S11, S22 = v1 + 1.0, v2 + 1.0
    det = S11 * S22 - c12 * c12
    b11, b12, b22 = 1.0 - S22 / det, c12 / det, 1.0 - S11 / det    # beta = I - S^-1
    sa, sb = np.sqrt(S11), np.sqrt(S22)
    r = c12 / (sa * sb)
    s = np.sqrt(1.0 - r * r)
    p1, q1, p2, q2 = b11 * sa, b12 * sb, b12 * sa, b22 * sb    # mu_X = m1 + p1 a + q1 b, ...
    if kind == "s":
        pp, qq, x = p1 * p2, q1 * q2, p1 * q2 + q1 * p2
        cP = b12 + pp + qq + r * x
        cQ = s * (r * (pp + qq) + x)
        al11 = p2 + r * q2 - (pp + r * r * qq + r * x) / sa
        al12 = p1 + r * q1
        al21 = r * p2 + q2
        al22 = r * p1 + q1 - (r * r * pp + qq + r * x) / sb
    elif kind == "p":
        al11, al12 = (1.0 - (p1 + r * q1) / sa) / sa, 0.0
        al21, al22 = 0.0, (1.0 - (q2 + r * p2) / sb) / sb
    elif kind == "sp":
        return _sp_pair(m1, m2, b12, sa, sb, r, s, p1, q1, p2, q2)
    else:
        raise ValueError(f"kind must be 's', 'p' or 'sp'; got {kind!r}")
    h = m1 * (1.0 / sa)
    k = m2 * (1.0 / sb)
    out = _bvn(h, k, r)
    if kind == "s":
        out *= m1 * m2 + cP
    t = k - r * h
    t *= 1.0 / s                                          # (k - r h) / s
    ph = h * h
    ph *= -0.5
    np.exp(ph, out=ph)
    ph *= _PHI                                            # phi(h)
    A1 = special.ndtr(t)
    A1 *= ph
    t *= t
    t *= -0.5
    np.exp(t, out=t)
    t *= ph
    t *= _PHI                                             # Q
    if kind == "s":
        t *= cQ
    else:
        # Q [s (q1 / sigma_A + p2 / sigma_B) + (u1 u2 + beta_12) / (s sigma_A sigma_B)],
        # u1, u2 the means of X, Y at A = B = 0
        u1 = m1 * (1.0 - p1 / sa)
        u1 -= m2 * (q1 / sb)
        u2 = m2 * (1.0 - q2 / sb)
        u2 -= m1 * (p2 / sa)
        u1 *= u2
        u1 += b12
        u1 *= 1.0 / (s * sa * sb)
        u1 += s * (q1 / sa + p2 / sb)
        t *= u1
    out += t
    t = al11 * m1
    t += al12 * m2
    t *= A1
    out += t
    u = h - r * k
    u *= 1.0 / s
    A2 = special.ndtr(u)
    pk = k * k
    pk *= -0.5
    np.exp(pk, out=pk)
    A2 *= pk
    A2 *= _PHI
    t = al21 * m1
    t += al22 * m2
    t *= A2
    out += t
    return out


def _sp_pair(m1, m2, b12, sa, sb, r, s, p1, q1, p2, q2):
    r"""``<g(X) g'(Y)>`` (GELU's sigma and sigma'): :func:`_zphi_pair`'s ``dF / dm2``.

    ``E[X 1{A > 0, B > 0}] + E[X Y 1{A > 0} delta(B)]``: the first is
    ``m1 P + (p1 + r q1) A1 + (r p1 + q1) A2``; in the second ``b = -k`` and
    ``a ~ N(-r k, s^2)``, ``mu_X = c1 + p1 a``, ``mu_Y = c2 + p2 a``
    (``c1 = m1 - q1 k``, ``c2 = m2 - q2 k``), and with the truncated moments
    of a: ``[(c1 c2 + beta_12 - r k e + p1 p2 (r^2 k^2 + s^2)) A2
    + s (e - p1 p2 (r k + h)) Q] / sigma_B``, ``e = c1 p2 + c2 p1``.
    Arguments as computed in :func:`_zphi_pair` (the means (b, P), the
    rest (b, 1)); returns (b, P).
    """
    h = m1 * (1.0 / sa)
    k = m2 * (1.0 / sb)
    out = _bvn(h, k, r)
    out *= m1                                              # m1 P
    ph = np.exp(-0.5 * h * h)
    ph *= _PHI                                             # phi(h)
    t1 = k - r * h
    t1 *= 1.0 / s
    A1 = special.ndtr(t1)
    A1 *= ph
    out += (p1 + r * q1) * A1
    Q = np.exp(-0.5 * t1 * t1)
    Q *= ph
    Q *= _PHI                                              # phi(h) phi(t1) = phi(k) phi(t2)
    t2 = h - r * k
    t2 *= 1.0 / s
    A2 = special.ndtr(t2)
    A2 *= np.exp(-0.5 * k * k)
    A2 *= _PHI                                             # phi(k) Phi(t2)
    c1 = m1 - q1 * k
    c2 = m2 - q2 * k
    e = c1 * p2
    e += c2 * p1
    pp = p1 * p2
    coef = c1 * c2
    coef += b12 + pp * s * s
    coef -= r * k * e
    coef += (pp * r * r) * (k * k)
    coef *= 1.0 / sb
    coef += r * p1 + q1
    coef *= A2
    out += coef
    e -= pp * (r * k + h)
    e *= s / sb
    e *= Q
    out += e
    return out


def _pair_factor(R, scale, pair):
    """The outer axes of a factor whose last two variables are ``pair`` (i, j).

    ``R`` (B, d, d) with ``z_v = R[:, v] . g`` (:func:`_factor`'s eigenfactor);
    the other variables are pivoted largest conditional variance first
    (modified Gram-Schmidt, zero columns below the rank tolerance), then the
    pair's residuals give its conditional covariance.

    Returns
    -------
    order : ndarray (B, d - 2) of int
        The outer variables in pivot order.
    Lo : ndarray (B, d, d - 2)
        Every variable's coefficients on the outer axes (rows in input order;
        lower triangular in pivot order).
    S2 : ndarray (B, 2, 2)
        The pair's conditional covariance given the outer axes.
    """
    R = R.copy()
    B, d, _ = R.shape
    no = d - 2
    ar = np.arange(B)
    Lo = np.zeros((B, d, no))
    order = np.zeros((B, no), dtype=int)
    used = np.zeros((B, d), dtype=bool)
    used[:, list(pair)] = True
    for j in range(no):
        n2 = np.einsum("bij,bij->bi", R, R)
        n2[used] = -1.0
        piv = np.argmax(n2, axis=1)
        top = n2[ar, piv]
        live = top > _RANK_TOL * scale
        q = R[ar, piv] / np.sqrt(np.where(live, top, 1.0))[:, None]
        q[~live] = 0.0
        col = np.einsum("bij,bj->bi", R, q)
        R -= col[:, :, None] * q[:, None, :]
        Lo[:, :, j] = col
        order[:, j] = piv
        used[ar, piv] = True
    Rp = R[:, list(pair)]
    return order, Lo, np.einsum("bik,bjk->bij", Rp, Rp)


def _pair_choice(fs, K, accuracy, growth, gh_up):
    """Per covariance, the pair of sigma / sigma' slots (:func:`_pair_kind`) whose closed
    form costs the fewest
    outer points (:func:`axis_rules` on the outer axes, the d-variable rules), among
    the pairs with ``|r| <= _PAIR_R_MAX``.

    Returns ``(pairs, choice, order, Lo, S2, codes)``: the candidate pairs,
    per covariance the index of the chosen one (-1: none qualifies) and its
    factor (:func:`_pair_factor`) and outer rule codes.
    """
    B, d, _ = K.shape
    kinds = [_pair_kind(f) for f in fs]
    pairs = [(i, j) if kinds[i] == "s" or kinds[i] == kinds[j] else (j, i)
             for i, j in itertools.combinations(range(d), 2)
             if kinds[i] is not None and kinds[j] is not None]
    lam, U = np.linalg.eigh(K)
    R = U * np.sqrt(np.maximum(lam, 0.0))[:, None, :]
    scale = np.maximum(np.max(np.diagonal(K, axis1=1, axis2=2), axis=1), 1e-300)
    no = d - 2
    best = np.full(B, np.inf)
    choice = np.full(B, -1)
    order = np.zeros((B, no), dtype=int)
    Lo = np.zeros((B, d, no))
    S2 = np.zeros((B, 2, 2))
    codes = np.ones((B, no), dtype=int)
    for c, pair in enumerate(pairs):
        o, L, S = _pair_factor(R, scale, pair)
        s = np.concatenate([np.max(np.abs(L), axis=1), np.zeros((B, 2))], axis=1)
        q = axis_rules(s, accuracy, growth, gh_up)[:, :no]
        cost = np.prod(np.abs(q).astype(float), axis=1)
        r = S[:, 0, 1] / np.sqrt((S[:, 0, 0] + 1.0) * (S[:, 1, 1] + 1.0))
        take = (np.abs(r) <= _PAIR_R_MAX) & (cost < best)
        best[take], choice[take] = cost[take], c
        order[take], Lo[take], S2[take], codes[take] = o[take], L[take], S[take], q[take]
    return pairs, choice, order, Lo, S2, codes


def _pair_sum(fs, pairs, choice, order, Lo, S2, codes, mass):
    """The outer axes' pruned product rule (``codes``) with the pair's closed form
    (:func:`_zphi_pair`) at every outer point; entries with ``choice >= 0``."""
    B, d, no = Lo.shape
    out = np.zeros(B)
    fid = np.array([next(i for i, g in enumerate(fs) if g is f) for f in fs])
    sel = np.flatnonzero(choice >= 0)
    keys, inv = np.unique(np.concatenate([codes[sel], fid[order[sel]], choice[sel, None]],
                                         axis=1), axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    # |r| of each pair: blocks of similar |r| take the fewest nodes in _bvn
    rabs = np.abs(S2[:, 0, 1]) / np.sqrt((S2[:, 0, 0] + 1.0) * (S2[:, 1, 1] + 1.0))
    for g, key in enumerate(keys):
        idx = sel[inv == g]
        idx = idx[np.argsort(rabs[idx], kind="stable")]
        cds = tuple(int(q) for q in key[:no])
        fo = [fs[int(v)] for v in key[no:2 * no]]
        i, j = pairs[int(key[2 * no])]
        levels = _outer_grid(cds, False, mass)
        P = len(levels[-1][0])
        step = max(1, _PAIR_BLOCK // max(P, 1))
        for start in range(0, len(idx), step):
            bi = idx[start:start + step]
            Lb, ob = Lo[bi], order[bi]
            vals = []
            for k, (U, _, _, _) in enumerate(levels):
                coef = np.take_along_axis(Lb, ob[:, k, None, None], axis=1)[:, 0, :k + 1]
                vals.append(fo[k](coef @ U.T))                       # (b, P_k)
            Ul = levels[-1][0]
            ki, kj = _pair_kind(fs[i]), _pair_kind(fs[j])
            acc = _zphi_pair(Lb[:, i, :] @ Ul.T, Lb[:, j, :] @ Ul.T, S2[bi, 0, 0, None],
                             S2[bi, 1, 1, None], S2[bi, 0, 1, None],
                             ki if ki == kj else ki + kj)
            out[bi] = _fold_outer(vals, acc, levels, no + 1)
    return out


def _smooth_path(fs, K, order, L, accuracy, return_error, growth, gh_up):
    """The smooth path (:func:`_gh_path`); for GELU (``growth``) averages of three or
    four variables with two slots among ``z Phi`` and ``Phi + z phi``
    (:func:`_pair_kind`), the last two axes in closed form
    (:func:`_pair_sum`) where a pair qualifies, the outer axes with the rules
    the d-variable average gives them (so its error estimate, the difference
    from :func:`_lower_rule` on those axes, is of the same kind)."""
    B, d, _ = K.shape
    if growth is None or d < 3 or sum(_pair_kind(f) is not None for f in fs) < 2:
        if growth is not None and d > 1:
            order, L = _closed_last(K, fs, order, L)
        return _gh_path(fs, order, L, accuracy, return_error, growth=growth, gh_up=gh_up)
    pairs, choice, o, Lo, S2, codes = _pair_choice(fs, K, accuracy, growth, gh_up)
    out = _pair_sum(fs, pairs, choice, o, Lo, S2, codes, _PRUNE_MASS)
    err = None
    if return_error:
        err = np.abs(out - _pair_sum(fs, pairs, choice, o, Lo, S2, _lower_rule(codes),
                                     _PRUNE_MASS_ESTIMATE))
    rest = np.flatnonzero(choice < 0)
    if len(rest):
        ordr, Lr = _closed_last(K[rest], fs, order[rest], L[rest])
        o2, e2 = _gh_path(fs, ordr, Lr, accuracy, return_error, growth=growth, gh_up=gh_up)
        out[rest] = o2
        if return_error:
            err[rest] = e2
    return out, err


def _lower_rule(qs):
    """A smaller rule per axis, for the error estimate: Gauss-Hermite one size
    smaller (``_GH_LOWER_STEPS``), the trapezoid with 4/5 of the nodes (1 stays 1).

    One size, not two: two sizes down overestimated the error of tanh's
    all-Gauss-Hermite averages (small variances, deep layers) ~300x, e.g.
    5.7e-10 against a true 1.1e-12 at layer 10 of the N = 16 benchmark
    (issue #15); one size down gives 2.1e-11 there, still ~20x above the
    true error, for ~9 % more points in that fold.
    """
    idx = np.searchsorted(_Q_SIZES, np.abs(qs))
    lo = _Q_SIZES[np.maximum(idx - _GH_LOWER_STEPS, 1)]
    gh = np.where(qs > 1, np.minimum(lo, qs), 1)
    tr = -np.ceil(0.8 * np.abs(qs)).astype(int)
    return np.where(qs < -1, tr, gh)


def _gh_path(fs, order, L, accuracy, return_error, smooth=True, growth=None, gh_up=None):
    """Nested product rule with the node rule of ``accuracy`` (module doc).

    ``smooth``: the per-axis choice of ``axis_rules`` (Gauss-Hermite on
    narrow axes, trapezoid on wide ones); otherwise Gauss-Hermite only
    (exact for the polynomials of the linear activation). The error estimate
    is the difference from a smaller rule on every resolved axis
    (:func:`_lower_rule`): measured to overestimate the error (module doc).
    """
    s = np.max(np.abs(L), axis=1)               # per-axis scale (B, d)
    merged = None
    if smooth and growth is None:
        # variables nearly proportional to an earlier one (|correlation| above _MERGED,
        # e.g. inputs x, -x): their singularities merge with that one's
        C = L @ np.swapaxes(L, 1, 2)
        sd = np.sqrt(np.diagonal(C, axis1=1, axis2=2))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.abs(C) / (sd[:, :, None] * sd[:, None, :])
        near = np.tril(np.nan_to_num(rho) > _MERGED, -1)
        merged = np.sum(near.any(axis=2), axis=1)
    qs = axis_rules(s, accuracy, growth, gh_up, merged) if smooth else node_count(s, accuracy)
    d = L.shape[1]
    if d > 1:
        # a last variable of the normal family (GELU, erf): its axis in closed form
        exact = np.array([isinstance(f, NormalFamily) for f in fs])[order[:, d - 1]]
        qs[exact, d - 1] = 1
    even = _even_product(fs, float(np.max(np.abs(L), initial=0.0)))
    # polynomials (smooth=False, the linear activation) are integrated exactly by
    # Gauss-Hermite with all its nodes: no pruning there
    mass = _PRUNE_MASS if smooth else 0.0
    out = _gh_sum(fs, order, L, qs, even, mass)
    if not return_error:
        return out, None
    # the estimate's rule pruned harder (_PRUNE_MASS_ESTIMATE): its pruning error adds
    # to the estimate, which stays an overestimate, and ~25 % of its points go
    mass_lo = _PRUNE_MASS_ESTIMATE if smooth else 0.0
    return out, np.abs(out - _gh_sum(fs, order, L, _lower_rule(qs), even, mass_lo))


_PARITY_U = np.linspace(0.05, 8.0, 41)


def _even_product(fs, scale):
    """True if ``prod_k f_k(-z_k) = prod_k f_k(z_k)``: every f_k even or odd, evenly many odd.

    Checked on a grid out to 8 times the largest axis scale (and to 8), to
    1e-12 relative: halving the grid is then exact to that round-off.
    """
    z = np.concatenate([_PARITY_U, _PARITY_U * max(scale, 1e-300)])
    odd = 0
    for f in dict.fromkeys(fs):
        with np.errstate(all="ignore"):
            a, b = np.asarray(f(z), dtype=float), np.asarray(f(-z), dtype=float)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return False
        tol = 1e-12 * max(float(np.max(np.abs(a))), 1e-300)
        if np.all(np.abs(b - a) <= tol):
            continue
        if np.all(np.abs(b + a) <= tol):
            odd += sum(g is f for g in fs)
            continue
        return False
    return odd % 2 == 0


def _gh_sum(fs, order, L, qs, even=False, mass=None):
    """Nested product rule (codes ``qs`` per axis) on the pruned, possibly halved grid.

    The tensor grid is pruned (:func:`_outer_grid`, :func:`_inner_ranges`):
    points whose product of weights is so small that all of them together
    carry a Gaussian mass below ``2 _PRUNE_MASS`` are dropped; for an
    integrand even under ``z -> -z`` (``even``) only the half ``u_1 >= 0``
    is kept, with doubled weights. ``f_k`` (k < d) is evaluated on the kept
    points of the first k axes, ``f_d`` on the kept points of all d axes.
    """
    B, d, _ = L.shape
    mass = _PRUNE_MASS if mass is None else float(mass)
    out = np.empty(B)
    # one group per rule and per assignment of distinct functions to the axes
    fid = np.array([next(i for i, g in enumerate(fs) if g is f) for f in fs])
    keys, inv = np.unique(np.concatenate([qs, fid[order]], axis=1), axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    tasks, held = [], 0
    for g, key in enumerate(keys):
        idx = np.flatnonzero(inv == g)
        codes = tuple(int(q) for q in key[:d])
        fo = [fs[int(v)] for v in key[d:]]
        if d == 1:
            u, w = _axis_rule(codes[0])
            out[idx] = fo[0](L[idx, 0, 0, None] * u) @ w
            continue
        levels = _outer_grid(codes[:-1], bool(even), mass)
        if isinstance(fo[-1], NormalFamily):
            inner = (len(levels[-1][0]), None)        # the last axis in closed form
        else:
            inner = _inner_ranges(codes, bool(even), mass)
        step = max(1, _CHUNK // max(inner[0], 1))
        for start in range(0, len(idx), step):
            sel = idx[start:start + step]
            tasks.append((sel, fo, levels, inner[1:], inner[0] * len(sel)))
        # the queued tasks keep their grids alive (whatever the cache drops): run them
        # once they hold more than _HELD_BYTES, so that memory stays bounded however
        # many distinct rules a batch asks for (~600 for 16 random inputs at K1 = 30)
        held += _nbytes(levels) + _nbytes(inner[1:])
        if held > _HELD_BYTES:
            _run_tasks(tasks, L, out)
            tasks, held = [], 0
    _run_tasks(tasks, L, out)
    return out


def _threads():
    """Worker threads for the grid sums: ``PDLT_THREADS`` if set, else 1.

    Opt-in: on the shared 2-core dev machine two threads gave 1.3x wall on
    one first-layer case and no gain beyond the load's scatter on the whole
    N = 16 fold (benchmarks/README.md, "Theory engine cost (#15)").
    """
    env = os.environ.get("PDLT_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"PDLT_THREADS must be a positive integer; got {env!r}") from None
        if n < 1:
            raise ValueError(f"PDLT_THREADS must be a positive integer; got {env!r}")
        return n
    return 1


def _run_tasks(tasks, L, out):
    """``out[sel] = _grid_sum(...)`` for every task, on several threads when it pays.

    numpy's ufunc loops and matmul release the GIL, so the grid sums of
    different groups run in parallel; each task writes its own entries, so
    the result does not depend on the scheduling.
    """
    if not tasks:
        return
    n = _threads()
    total = sum(t[4] for t in tasks)
    if n == 1 or len(tasks) == 1 or total < 2 ** 20:
        for sel, fo, levels, inner, _ in tasks:
            out[sel] = _grid_sum(fo, L[sel], levels, inner)
        return
    from concurrent.futures import ThreadPoolExecutor

    def one(t):
        sel, fo, levels, inner, _ = t
        out[sel] = _grid_sum(fo, L[sel], levels, inner)

    # largest first, so that the threads finish together
    tasks = sorted(tasks, key=lambda t: -t[4])
    with ThreadPoolExecutor(max_workers=min(n, len(tasks))) as ex:
        for _ in ex.map(one, tasks):
            pass


def _grid_sum(fo, Lb, levels, inner):
    """``sum W prod_k f_k(z_k)`` over the kept grid points, for a batch of factors Lb (b, d, d)."""
    d = Lb.shape[1]
    vals = []
    for k, (U, w, parent, _) in enumerate(levels):
        vals.append(fo[k](Lb[:, k, :k + 1] @ U.T))                # (b, P_k)
    m = Lb[:, d - 1, :d - 1] @ levels[-1][0].T                   # (b, P) conditional means
    if inner[0] is None:
        acc = fo[d - 1].inner(m, Lb[:, d - 1, d - 1, None])        # closed form (NormalFamily)
        return _fold_outer(vals, acc, levels, d)
    b, P = m.shape
    acc = np.empty((b, P))
    direct = np.arange(b)
    if _INTERP and P >= _INTERP_MIN_P:
        # the last axis' sums by local interpolation in the mean where that is cheaper
        # (_inner_interp); covariances that miss its check: directly
        points = sum(len(sel) * (j1 - j0) for sel, j0, j1 in inner[2])
        direct = _inner_interp(fo[d - 1], m, Lb[:, d - 1, d - 1], inner[0], inner[1],
                               points, acc)
    if len(direct):
        acc[direct] = _inner_direct(fo[d - 1], m[direct], Lb[direct, d - 1, d - 1], inner)
    return _fold_outer(vals, acc, levels, d)


def _inner_direct(f_last, m, cl, inner):
    """``sum_j w_j f(m_p + cl u_j)`` over the kept last-axis nodes of each outer point p
    (``inner[2]``'s central ranges), for means m (b, P) and slopes cl (b,)."""
    cu = cl[:, None, None] * inner[0]                            # (b, 1, Q_d) last axis
    w_last = inner[1]
    b, P = m.shape
    acc = np.empty((b, P))
    ufunc = isinstance(f_last, np.ufunc)      # np.tanh: evaluated in place
    # one buffer for every block's z values (fresh ~512 kB temporaries per block
    # cost as much as the tanh itself: 9.2 -> 4.4 ns per point measured)
    buf = np.empty(max([b * max(1, _BLOCK // max(b * (j1 - j0), 1)) * (j1 - j0)
                        for _, j0, j1 in inner[2]], default=0))
    # outer points grouped by the central range of last-axis nodes they keep;
    # in blocks of ~_BLOCK points, so that the temporaries stay in cache
    for sel, j0, j1 in inner[2]:
        n = j1 - j0
        bs = max(1, _BLOCK // max(b * n, 1))
        mm = m[:, sel]
        for s in range(0, len(sel), bs):
            k = min(bs, len(sel) - s)
            z = buf[:b * k * n].reshape(b, k, n)
            np.add(mm[:, s:s + k, None], cu[:, :, j0:j1], out=z)
            v = f_last(z, out=z) if ufunc else f_last(z)
            acc[:, sel[s:s + k]] = v @ w_last[j0:j1]
    return acc


#: the last axis by interpolation (_inner_interp); False: every sum directly
_INTERP = True
_INTERP_POINTS = 12        # nodes per interpolation stencil (degree 11)
_INTERP_DELTA = (0.04, 0.02)   # grid spacings in the mean tried in turn
_INTERP_TOL = 1e-14        # largest error at the cell centers, relative to max |g|
_INTERP_MIN_P = 256        # outer points below this: directly (overheads dominate)
#: cost model, in direct evaluations (~4.2 ns each, measured on the N = 16 fold):
#: per tabulated value (grid and check), per interpolated value, and per task (the
#: covariances of one rule, tabulated together)
_INTERP_GRID, _INTERP_HORNER, _INTERP_FIXED = 1.5, 5.0, 24000.0


def _taylor_matrix(n):
    """``(n, n)``: Taylor coefficients at 0 of the interpolant through the nodes
    ``k - (n - 1) / 2``, k = 0..n-1, from its values there (exact rationals, rounded)."""
    from fractions import Fraction
    xs = [Fraction(2 * k - (n - 1), 2) for k in range(n)]
    M = np.empty((n, n))
    for k in range(n):
        poly, den = [Fraction(1)], Fraction(1)
        for j in range(n):
            if j != k:
                poly = [(poly[i - 1] if i else 0) - (poly[i] * xs[j] if i < len(poly) else 0)
                        for i in range(len(poly) + 1)]
                den *= xs[k] - xs[j]
        M[:, k] = [float(c / den) for c in poly]
    return M


_TAYLOR = _taylor_matrix(_INTERP_POINTS)


def _inner_interp(f, m, l, u, w, points, acc):
    """``acc[i, p] = g_i(m_ip) = sum_j w_j f(m_ip + l_i u_j)`` for the outer points' means
    m (b, P) and the full last-axis rule (u, w), by local polynomial interpolation of
    each g_i, where that is cheaper than the ``points`` direct evaluations per
    covariance; returns the indices of the covariances left to the direct sums
    (interpolation not cheaper, or its check missed).

    Each g_i is tabulated on a uniform grid of spacing delta over ``[min m_i, max m_i]``
    (each value a full sum over the rule) and interpolated by the degree-11
    polynomial through the 12 grid values around each cell, evaluated in Taylor form
    at the cell's center. For a smooth g the interpolation error is largest at the
    cell centers; there it is checked against the directly computed g at every cell
    and must stay below ``_INTERP_TOL`` of ``max |g_i|`` (else the next, finer
    spacing of ``_INTERP_DELTA``, else the direct sum). For tanh, whose poles at
    ``i pi / 2`` bound g's smoothness when l is small, the check's error at
    delta = 0.04 is ~1e-15 of ``max |g|`` (0.05: ~1e-14, 0.08: ~4e-12). The grid
    carries the full rule (the direct sums drop the last axis' nodes below
    ``_PRUNE_MASS`` of the weight): the two differ by at most ~1e-14 of ``max |f|``.
    """
    b, P = m.shape
    Q = len(u)
    n = _INTERP_POINTS
    lo = m.min(axis=1)
    span = float(np.max(m.max(axis=1) - lo))
    todo = np.arange(b)
    hopeless = []
    for delta in _INTERP_DELTA:
        ncell = int(math.ceil(span / delta)) + 1
        G = ncell + n - 1
        k = len(todo)
        if (_INTERP_GRID * (G + ncell) * Q + _INTERP_HORNER * P) * k + _INTERP_FIXED \
                >= points * k:
            break
        li, lt = lo[todo, None], l[todo, None, None]
        y = li + delta * (np.arange(G) - (n // 2 - 1))          # cell c: nodes c .. c+n-1
        gv = f(y[:, :, None] + lt * u) @ w                       # (k, G)
        C = np.lib.stride_tricks.sliding_window_view(gv, n, axis=1) @ _TAYLOR.T
        yc = li + delta * (np.arange(ncell) + 0.5)
        gc = f(yc[:, :, None] + lt * u) @ w                      # (k, ncell)
        miss = np.max(np.abs(C[:, :, 0] - gc), axis=1) / (
            _INTERP_TOL * np.maximum(np.max(np.abs(gv), axis=1), 1e-300))
        ok = miss <= 1.0
        # the error falls like delta^12: beyond 2^11 x the tolerance the next spacing
        # (half) would miss too (e.g. tanh(4 z), poles 4x closer): directly, at once
        far = miss > 2.0 ** 11
        hopeless.extend(todo[far].tolist())
        good = np.flatnonzero(ok)
        C = np.ascontiguousarray(np.transpose(C, (2, 0, 1)))      # (n, k, ncell)
        rows = max(1, _BLOCK // P)
        for r0 in range(0, len(good), rows):
            # a few covariances at a time: their values stay in cache through the n steps
            gi = good[r0:r0 + rows]
            t = (m[todo[gi]] - lo[todo[gi], None]) * (1.0 / delta)      # (r, P)
            c = np.minimum(t.astype(np.intp), ncell - 1)
            x = t - c - 0.5
            c += (gi * ncell)[:, None]                             # flat index in C[j]
            a = np.take(C[n - 1], c)
            for j in range(n - 2, -1, -1):
                a *= x
                a += np.take(C[j], c)
            acc[todo[gi]] = a
        todo = todo[~ok & ~far]
        if not len(todo):
            break
    return np.sort(np.concatenate([todo, np.array(hopeless, dtype=todo.dtype)]))


def _fold_outer(vals, acc, levels, d):
    """Sum the inner sums ``acc`` (b, P) over the outer levels, innermost first."""
    for k in range(d - 2, -1, -1):
        U, w, starts, _ = levels[k]
        acc = vals[k] * acc * w
        if k:
            acc = np.add.reduceat(acc, starts, axis=1)            # children -> parents
    return acc.sum(axis=1)


_PRUNE_MASS = 1e-14  # Gaussian mass of the dropped grid points, outer axes and last axis each
_PRUNE_MASS_ESTIMATE = 1e-12  # the same for the error estimate's lower rule


def _mass_threshold(W, mass):
    """Bin (0.1 in log10) below which the weights ``W`` sum to at most ``_PRUNE_MASS``.

    Returns the integer bin index ``j`` and the bins of W: entries in bins
    below j are dropped.
    """
    with np.errstate(divide="ignore"):
        lw = np.log10(W)
    b = np.clip(np.floor((lw + 60.0) * 10.0), 0, 600).astype(np.intp)
    cum = np.cumsum(np.bincount(b.ravel(), weights=W.ravel(), minlength=601))
    return int(np.searchsorted(cum, mass, side="right")), b


def _halved(rule):
    """The nodes ``u >= 0`` of a symmetric rule, weights of ``u > 0`` doubled."""
    u, w = rule
    tol = 1e-12 * max(1.0, float(np.max(np.abs(u))))
    keep = u >= -tol
    zero = np.abs(u) <= tol
    return np.where(zero, 0.0, u)[keep], np.where(zero, w, 2.0 * w)[keep]


@_byte_cache(_GRID_CACHE_BYTES)
def _outer_grid(codes, even, mass=_PRUNE_MASS):
    """Kept points of the tensor grid of the outer axes (rule ``codes``), level by level.

    Returns a list over the outer axes k = 0 .. d-2 of ``(U, w, starts, W)``:
    ``U`` (P_k, k+1) the kept points' coordinates (parent-major order),
    ``w`` (P_k,) the weight of their last coordinate, ``starts`` (P_(k-1),)
    where each parent's children begin (``None`` at k = 0), ``W`` (P_k,)
    the product of their weights. A point of the last outer level is kept
    unless it is among the lightest points that together weigh at most
    ``_PRUNE_MASS`` (their integrand times that bounds the error: ~1e-14
    of the Cauchy-Schwarz scale for bounded activations); a point of an
    earlier level is kept if one of its children is. ``even``: only
    ``u_0 >= 0``, weights of ``u_0 > 0`` doubled (exact for an integrand
    even under ``u -> -u``, on a symmetric rule).
    """
    rules = [_axis_rule(q) for q in codes]
    if even:
        rules[0] = _halved(rules[0])
    W = functools.reduce(np.multiply.outer, [r[1] for r in rules])
    j, bins = _mass_threshold(W, mass)
    keeps = [bins >= j]                                        # (Q_0, ..., Q_(d-2))
    for _ in range(len(codes) - 1):
        keeps.insert(0, keeps[0].any(axis=-1))
    levels = []
    for k in range(len(codes)):
        pts = np.argwhere(keeps[k])                            # parent-major (C order)
        U = np.stack([rules[i][0][pts[:, i]] for i in range(k + 1)], axis=1)
        Wk = np.prod([rules[i][1][pts[:, i]] for i in range(k + 1)], axis=0)
        starts = None
        if k:
            pid = np.full(keeps[k - 1].shape, -1)
            pid[keeps[k - 1]] = np.arange(int(keeps[k - 1].sum()))
            owner = pid[tuple(pts[:, :k].T)]
            starts = np.searchsorted(owner, np.arange(int(keeps[k - 1].sum())))
        levels.append((U, rules[k][1][pts[:, k]], starts, Wk))
    return levels


@_byte_cache(_GRID_CACHE_BYTES // 8)
def _outer_bins(codes, even, mass):
    """Bins (0.1 in log10, from the lightest) of the last outer level's point weights,
    and the weights' mass per bin."""
    Wp = _outer_grid(codes, even, mass)[-1][3]
    bp = np.floor(10.0 * np.log10(np.maximum(Wp, 1e-300))).astype(np.intp)
    bp -= bp.min()
    return bp, np.bincount(bp, weights=Wp)


@_byte_cache(_GRID_CACHE_BYTES // 4)
def _inner_ranges(codes, even, mass=_PRUNE_MASS):
    """The last axis of rule ``codes``: per kept outer point, the central nodes kept.

    Returns ``(points, u, w, groups)``: the number of grid points evaluated,
    the last axis' nodes and weights, and ``groups``, a list of
    ``(sel, j0, j1)``: the outer points ``sel`` keep nodes ``j0 .. j1 - 1``
    (the rule is symmetric and its weights fall off from the center, so the
    nodes whose product weight exceeds the threshold form a central range).
    The dropped points weigh at most ``_PRUNE_MASS`` together.
    """
    u, w = _axis_rule(codes[-1])
    bp, hist_p = _outer_bins(codes[:-1], even, mass)
    Q = len(u)
    # the mass of the products W_p w_j by the sum of their bins (0.1 in log10):
    # the convolution of the two one-axis histograms; drop the pairs whose bin
    # sum is below the first one where the cumulative mass exceeds _PRUNE_MASS
    bq = np.floor(10.0 * np.log10(np.maximum(w, 1e-300))).astype(np.intp)
    bp0, bq0 = 0, bq.min()
    conv = np.convolve(hist_p, np.bincount(bq - bq0, weights=w))
    jstar = int(np.searchsorted(np.cumsum(conv), mass, side="right"))
    # node j is kept for point p iff (bp_p - bp0) + (bq_j - bq0) >= jstar
    need = jstar - (bp - bp0) + bq0                              # kept iff bq_j >= need_p
    sq = np.sort(bq)
    n = np.maximum(Q - np.searchsorted(sq, need, side="left"), 1)
    # the kept nodes are the heaviest: a central range of Q - 2 half nodes
    half = (Q - n) // 2
    # the outer points of each distinct half, in increasing order (one stable sort,
    # not one scan of all points per distinct half)
    by = np.argsort(half.astype(np.int16), kind="stable")     # radix sort (Q <= 640)
    cnt = np.bincount(half)
    ends = np.cumsum(cnt)
    groups = [(by[ends[h] - cnt[h]:ends[h]], int(h), Q - int(h)) for h in np.flatnonzero(cnt)]
    points = int(sum(len(s) * (j1 - j0) for s, j0, j1 in groups))
    return (points, u, w, groups)


def _trunc_moments(a, b, D):
    """``M_j = int_a^b u^j phi(u) du`` for j = 0..D (a <= b, may be infinite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        pa = np.where(np.isfinite(a), np.exp(-0.5 * np.where(np.isfinite(a), a * a, 0.0)), 0.0)
        pb = np.where(np.isfinite(b), np.exp(-0.5 * np.where(np.isfinite(b), b * b, 0.0)), 0.0)
    pa, pb = pa * _PHI, pb * _PHI
    af = np.where(np.isfinite(a), a, 0.0)
    bf = np.where(np.isfinite(b), b, 0.0)
    m0 = np.where(a >= 0, special.ndtr(-a) - special.ndtr(-b), special.ndtr(b) - special.ndtr(a))
    M = [m0]
    if D >= 1:
        M.append(pa - pb)
    for j in range(2, D + 1):
        M.append((j - 1) * M[j - 2] + af ** (j - 1) * pa - bf ** (j - 1) * pb)
    return M


def _exact_inner(fs_inner, m, l):
    """``int prod_k f_k(m_k + l_k u) phi(u) du`` for piecewise monomials f_k.

    m : (..., nv) means, l : (..., nv) slopes (broadcastable). On each of the
    at most ``nv + 1`` intervals between the sign changes the integrand is a
    polynomial in u (degree ``sum n_k``), integrated by truncated moments.
    """
    nv = len(fs_inner)
    m, l = np.broadcast_arrays(m, l)
    D = sum(f.n for f in fs_inner)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(l != 0, -m / np.where(l != 0, l, 1.0), np.inf)
    t = np.sort(t, axis=-1)
    edges = [np.full(m.shape[:-1], -np.inf)] + [t[..., k] for k in range(nv)] \
        + [np.full(m.shape[:-1], np.inf)]
    total = np.zeros(m.shape[:-1])
    for i in range(nv + 1):
        a, b = edges[i], edges[i + 1]
        fa, fb = np.isfinite(a), np.isfinite(b)
        mid = np.where(fa & fb, 0.5 * (np.where(fa, a, 0) + np.where(fb, b, 0)),
                       np.where(fa, np.where(fa, a, 0) + 1.0, np.where(fb, np.where(fb, b, 0) - 1.0, 0.0)))
        nonempty = b > a
        if not nonempty.any():
            continue
        poly = np.zeros(m.shape[:-1] + (D + 1,))
        poly[..., 0] = 1.0
        deg = 0
        for k, f in enumerate(fs_inner):
            mk, lk = m[..., k], l[..., k]
            sgn = mk + lk * mid
            c = np.where(sgn > 0, f.cp, f.cm)
            poly *= c[..., None]
            for _ in range(f.n):      # multiply by (mk + lk u)
                new = poly * mk[..., None]
                new[..., 1:deg + 2] += poly[..., :deg + 1] * lk[..., None]
                poly = new
                deg += 1
        M = _trunc_moments(np.where(nonempty, a, 0.0), np.where(nonempty, b, 0.0), D)
        val = sum(poly[..., j] * M[j] for j in range(D + 1))
        total += np.where(nonempty, val, 0.0)
    return total


def _phi(x):
    return _PHI * np.exp(-0.5 * x * x)


def _bvn_upper(h, k, rho, s):
    """``P(X > -h, Y > -k)`` for standard bivariate normal with correlation rho (|rho| < 1).

    Owen's T form of the bivariate normal distribution function
    ``Phi_2(h, k; rho)``; absolute error ~1e-16.
    """
    h = np.where(h == 0, 1e-300, h)
    k = np.where(k == 0, 1e-300, k)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ah = (k - rho * h) / (h * s)
        ak = (h - rho * k) / (k * s)
    beta = np.where(np.sign(h) == np.sign(k), 0.0, 0.5)
    return (0.5 * (special.ndtr(h) + special.ndtr(k)) - special.owens_t(h, ah)
            - special.owens_t(k, ak) - beta)


def _exact_inner2(fa, fb, ma, la, mb, lb1, lb2):
    """``E[fa(ma + la u1) fb(mb + lb1 u1 + lb2 u2)]``, u ~ N(0, I_2), in closed form.

    fa, fb : ``PiecewiseMonomial`` of degree 0 or 1; la > 0, lb2 > 0.
    With ``A = sa (h + X)``, ``B = sb (k + Y)`` standardized, each sign
    quadrant is a truncated bivariate-normal moment (Stein's lemma):
    ``E[X; X>-h, Y>-k] = phi(h) Phi((k - rho h)/s) + rho phi(k) Phi((h - rho k)/s)`` and
    ``E[XY; .] = rho P - rho h phi(h) Phi(.) - rho k phi(k) Phi(.) + s phi(h) phi((k - rho h)/s)``.
    """
    sa = np.abs(la)
    sb = np.sqrt(lb1 * lb1 + lb2 * lb2)
    rho0 = lb1 * np.sign(la) / sb
    s = np.abs(lb2) / sb
    h0, k0 = ma / sa, mb / sb
    total = 0.0
    for ea in (1.0, -1.0):
        ca = fa.cp if ea > 0 else fa.cm
        if ca == 0:
            continue
        for eb in (1.0, -1.0):
            cb = fb.cp if eb > 0 else fb.cm
            if cb == 0:
                continue
            h, k, rho = ea * h0, eb * k0, ea * eb * rho0
            P = _bvn_upper(h, k, rho, s)
            g1 = special.ndtr((k - rho * h) / s)
            g2 = special.ndtr((h - rho * k) / s)
            ph, pk = _phi(h), _phi(k)
            EX = ph * g1 + rho * pk * g2
            EY = pk * g2 + rho * ph * g1
            if fa.n == 0 and fb.n == 0:
                val = P
            elif fa.n == 1 and fb.n == 0:
                val = sa * ea * (h * P + EX)
            elif fa.n == 0 and fb.n == 1:
                val = sb * eb * (k * P + EY)
            else:
                EXY = rho * P - rho * h * ph * g1 - rho * k * pk * g2 + s * ph * _phi((k - rho * h) / s)
                val = sa * sb * ea * eb * (h * k * P + h * EY + k * EX + EXY)
            total = total + ca * cb * val
    return total


def _split_axis(m, Lkk, centers, breaks, q):
    """Nodes/weights in u for one axis (n points), split at ``centers`` (n, C).

    Panels: the fixed breakpoints ``_SPLIT_BREAKS`` (truncation at |u| = 8:
    Gaussian mass 1.2e-15) and the centers (the kink of this axis' variable
    and the kinks of the later variables projected onto this axis), ``q``
    Gauss-Legendre nodes each; the standard normal density is folded into w.
    """
    n = len(m)
    piv = Lkk > 0
    star = np.clip(centers, breaks[0], breaks[-1])
    brk = np.sort(np.concatenate([np.broadcast_to(breaks, (n, len(breaks))), star],
                                 axis=1), axis=1)
    x, wq = _gauss_legendre(q)
    a, b = brk[:, :-1, None], brk[:, 1:, None]
    half = 0.5 * (b - a)
    u = (0.5 * (a + b) + half * x).reshape(n, -1)
    w = (half * wq).reshape(n, -1) * np.exp(-0.5 * u * u) * _PHI
    if not piv.all():
        # degenerate axis (L_kk = 0): one node, weight 1
        u[~piv] = 0.0
        w[~piv] = 0.0
        w[~piv, 0] = 1.0
    return u, w


def _kinked_path(fs, K, order, L, kinks, accuracy, return_error):
    """Kinked integrands that no pair / triple form takes: elu's exponential polynomials
    by :func:`_exp_path`, everything else by the split path (all axes by quadrature)."""
    if _exppw._EXP and all(isinstance(f, ExpPiecewise) for f in fs):
        if len(fs) == 4 and _POLAR:
            return _exp_near_quad(fs, K, order, L, kinks, accuracy, return_error)
        return _exp_path(fs, K, order, L, kinks, accuracy, return_error)
    return _split_path(fs, order, L, tuple(float(c) for c in kinks), accuracy, return_error,
                       exact_inner=False)


def _exp_near_quad(fs, K, order, L, kinks, accuracy, return_error):
    """Four elu variables: rows with a pair below ``1 - rho^2 = _EXP_QUAD_NEAR`` (every
    variance >= ``_exppw._EXP_MIN_VAR``, every kink at 0) by ``_near_pair_quad``'s form
    (:func:`_quad_sum_exp`), the rest (and rows it does not take) by :func:`_exp_path`.

    The exp path missed the pair's sliver where sigma'' (a jump at 0) sits on the pair:
    ``<q q p p>`` 8.5e-5 of the Cauchy-Schwarz scale off at ``1 - rho^2 = 1e-6`` (~
    ``sqrt(1 - rho^2)``), estimate 5.5e-11; sigma, sigma' alone 1e-8 .. 1e-10 with
    estimates up to 30x short at 1e-1 .. 1e-3. This form: <= 1.5e-12 of scale on 15 slot
    products x 3 covariances x ``1 - rho^2 = 1e-1 .. 1e-10``, every estimate covering
    (``benchmarks/elu_quad_check.py``, an independent reference). At 0.2 .. 0.6 the exp
    path is within 1.2x of its estimate (1e-11 .. 1e-8): the threshold."""
    out = np.zeros(len(K))
    err = np.zeros(len(K)) if return_error else None
    rest = np.arange(len(K))
    if all(float(c) == 0.0 for c in kinks) and all(t == 0.0 for f in fs for t in f.kinks):
        dg = np.einsum("bii->bi", K)
        rel = np.min(_pair_rel(K, list(itertools.combinations(range(4), 2))), axis=1)
        cand = np.flatnonzero((rel < _EXP_QUAD_NEAR) & (np.min(dg, axis=1) >= _exppw._EXP_MIN_VAR))
        if cand.size:
            took, o, e = _near_pair_quad(fs, K[cand], accuracy, return_error, kinked=True,
                                         near=_EXP_QUAD_NEAR)
            out[cand[took]] = o[took]
            if return_error:
                err[cand[took]] = e[took]
            rest = np.setdiff1d(rest, cand[took])
    if rest.size == len(K):
        return _exp_path(fs, K, order, L, kinks, accuracy, return_error)
    if rest.size:
        o, e = _exp_path(fs, K[rest], order[rest], L[rest], kinks, accuracy, return_error)
        out[rest] = o
        if return_error:
            err[rest] = e
    return out, err


def _exp_path(fs, K, order, L, kinks, accuracy, return_error):
    """Exponential polynomials between kinks (elu): the split path with the innermost
    axis in closed form (:func:`pdlt.gaussian._exppw.exp_inner`) where every variance is
    at least ``_exppw._EXP_MIN_VAR``; below, ``alpha (e^z - 1)`` written as two terms
    loses ~eps absolute against a scale ~var^(p/2), and the all-quadrature split path
    (``fn`` itself, expm1) is kept."""
    kinks = tuple(sorted(set(float(c) for c in kinks) | {t for f in fs for t in f.kinks}))
    ok = np.min(np.diagonal(K, axis1=1, axis2=2), axis=1) >= _exppw._EXP_MIN_VAR
    if ok.all():
        return _split_path(fs, order, L, kinks, accuracy, return_error, exact_inner=True)
    out = np.empty(len(K))
    err = np.empty(len(K)) if return_error else None
    for sel, inner in ((np.flatnonzero(ok), True), (np.flatnonzero(~ok), False)):
        if len(sel):
            o, e = _split_path(fs, order[sel], L[sel], kinks, accuracy, return_error,
                               exact_inner=inner)
            out[sel] = o
            if return_error:
                err[sel] = e
    return out, err


def _split_path(fs, order, L, kinks, accuracy, return_error, exact_inner):
    breaks, q = _SPLIT_RULES[accuracy]
    out = _split_sum(fs, order, L, kinks, breaks, q, exact_inner)
    if not return_error:
        return out, None
    # one node more per panel: its difference is ~ this rule's error (two nodes fewer, the
    # former estimate, overstated it ~1000x: elu, three inputs, 6e-7 against 6e-10)
    return out, np.abs(out - _split_sum(fs, order, L, kinks, breaks, q + 1, exact_inner))


def _split_sum(fs, order, L, kinks, breaks, q, exact_inner):
    B, d, _ = L.shape
    out = np.empty(B)
    diagL = np.diagonal(L, axis1=1, axis2=2)
    rank = np.sum(diagL > 0, axis=1)
    ks = np.array(kinks)
    # group by the ordering and the rank: the functions at each position are then fixed
    # the last two axes in closed form (bivariate normal) when the last two
    # variables are the only ones on them, of degree <= 1, and not collinear
    two = np.zeros(B, dtype=bool)
    if exact_inner and d >= 2 and all(isinstance(f, PiecewiseMonomial) for f in fs):
        sb = np.sqrt(L[:, d - 1, d - 2] ** 2 + L[:, d - 1, d - 1] ** 2)
        two = (rank == d) & (L[:, d - 1, d - 1] > _TWO_MIN_S * np.maximum(sb, 1e-300))
        deg1 = np.array([f.n <= 1 for f in fs])
        two &= deg1[order[:, d - 2]] & deg1[order[:, d - 1]]
    keys, inv = np.unique(np.concatenate([order, rank[:, None], two[:, None]], axis=1), axis=0,
                          return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    for g, key in enumerate(keys):
        idx_g = np.flatnonzero(inv == g)
        fo = [fs[v] for v in key[:d]]
        r = int(key[d])
        use2 = bool(key[d + 1])
        if r == 0:
            out[idx_g] = np.prod([f(np.zeros(1))[0] for f in fo])
            continue
        # outer axes 0..n_outer-1 by split quadrature; with exact_inner the
        # last axis r-1 (or the last two) carries the remaining variables in closed form
        n_outer = (r - 2 if use2 else r - 1) if exact_inner else r
        per_axis = (len(breaks) - 1 + 3 * len(ks) * d) * q
        step = max(1, _CHUNK // (per_axis ** max(n_outer, 1)))
        for start in range(0, len(idx_g), step):
            sel = idx_g[start:start + step]
            b = len(sel)
            out[sel] = _split_block(fo, L[sel], ks, breaks, q, n_outer, per_axis, r, d, use2,
                                    exact_inner, np.zeros((b, 1, 0)), np.ones((b, 1)),
                                    np.ones((b, 1)))
    return out


def _split_block(fo, Lb, ks, breaks, q, n_outer, per_axis, r, d, use2, exact_inner, us, w,
                 val):
    """:func:`_split_sum` from the points ``us`` (b, P, k) of the first k outer axes, their
    weights and products ``w``, ``val`` (b, P): the remaining outer axes by split
    quadrature (in blocks of points: at most ``_CHUNK`` after each axis, so that memory
    stays bounded when ``per_axis ** n_outer`` is large, e.g. four elu variables of tiny
    variance, ~1e8 points), then the inner part. Returns the sums (b,)."""
    b, npts, k = us.shape
    if k < n_outer and b * npts * per_axis > _CHUNK and npts > 1:
        blk = max(1, _CHUNK // (b * per_axis))
        return sum(_split_block(fo, Lb, ks, breaks, q, n_outer, per_axis, r, d, use2,
                                exact_inner, us[:, i:i + blk], w[:, i:i + blk],
                                val[:, i:i + blk])
                   for i in range(0, npts, blk))
    if k < n_outer:
        m_all = np.einsum("bpj,bij->bpi", us, Lb[:, :, :k])     # (b, P, d) means
        lk = Lb[:, :, k]                                      # (b, d) slopes on axis k
        # kinks of variable k on this axis, and of later variables i > k
        # projected (their conditional means cross a kink there)
        with np.errstate(divide="ignore", invalid="ignore"):
            cen = (ks[None, None, None, :] - m_all[:, :, k:, None]) / lk[:, None, k:, None]
        cen = np.where(np.isfinite(cen), cen, 0.0)
        if k + 1 < d:
            # a later variable's kink is smoothed by the later axes over a
            # width (its remaining conditional sd) / |slope on this axis|:
            # panels of that width on both sides resolve the near-kink
            rest = np.sqrt(np.sum(Lb[:, k + 1:, k + 1:] ** 2, axis=2))   # (b, d-k-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                wid = rest / np.abs(lk[:, k + 1:])
            wid = np.where(np.isfinite(wid), np.minimum(wid, 4.0), 0.0)
            later = cen[:, :, 1:, :]
            off = wid[:, None, :, None] * _GRADE
            cen = np.concatenate([cen[:, :, :1, :].reshape(b, npts, -1),
                                  later.reshape(b, npts, -1),
                                  (later[..., None] + off[..., None, :]).reshape(b, npts, -1),
                                  (later[..., None] - off[..., None, :]).reshape(b, npts, -1)],
                                 axis=2)
        cen = cen.reshape(b * npts, -1)
        u, wk = _split_axis(m_all[:, :, k].ravel(), np.repeat(Lb[:, k, k], npts),
                            cen, breaks, q)
        u = u.reshape(b, npts, -1)
        wk = wk.reshape(b, npts, -1)
        z = m_all[:, :, k][:, :, None] + Lb[:, k, k][:, None, None] * u
        val = (val[:, :, None] * fo[k](z)).reshape(b, -1)
        w = (w[:, :, None] * wk).reshape(b, -1)
        us = np.concatenate([np.repeat(us, u.shape[2], axis=1), u.reshape(b, -1, 1)], axis=2)
        return _split_block(fo, Lb, ks, breaks, q, n_outer, per_axis, r, d, use2,
                            exact_inner, us, w, val)
    if use2:
        m = np.einsum("bpj,bij->bpi", us, Lb[:, d - 2:, :d - 2])      # (b, P, 2)
        val = val * _exact_inner2(fo[d - 2], fo[d - 1], m[:, :, 0],
                                  Lb[:, None, d - 2, d - 2], m[:, :, 1],
                                  Lb[:, None, d - 1, d - 2], Lb[:, None, d - 1, d - 1])
    elif exact_inner:
        m = np.einsum("bpj,bij->bpi", us, Lb[:, r - 1:, :r - 1])      # (b, P, d-r+1)
        l = Lb[:, None, r - 1:, r - 1]
        inner = exp_inner if isinstance(fo[r - 1], ExpPiecewise) else _exact_inner
        val = val * inner(fo[r - 1:], m, l)
    else:
        # variables beyond the rank: functions of u_1..u_r
        for j in range(r, d):
            z = np.einsum("bpj,bj->bp", us, Lb[:, j, :r])
            val = val * fo[j](z)
    return np.sum(val * w, axis=1)


# ---------------------------------------------------------------------------
# all quadruples of N inputs
# ---------------------------------------------------------------------------

def _power(f, p):
    if p == 1:
        return f
    if isinstance(f, PiecewiseMonomial):
        return PiecewiseMonomial(f.cp ** p, f.cm ** p, f.n * p)
    if isinstance(f, ExpPiecewise):
        return f ** p

    def fp(z):
        return f(z) ** p
    return fp


def check_psd(K, where=""):
    """Raise :class:`KernelNotPSDError` naming the inputs if K (N, N) is indefinite.

    Indefinite means an eigenvalue below ``-_INDEF_TOL N`` times the largest
    variance (a computed kernel's round-off is ~1e-12 of it); rank-deficient
    kernels (N > n0 + 1 inputs at the first layer) are PSD and pass.
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    if N < 2:
        return
    scale = max(float(np.max(np.diag(K))), 1e-300)
    lam, U = np.linalg.eigh(K)
    if lam[0] < -_INDEF_TOL * N * scale:
        v = np.abs(U[:, 0])
        inputs = np.flatnonzero(v >= 0.25 * v.max())[:8].tolist()
        raise KernelNotPSDError(
            f"kernel{where} is not positive semi-definite: smallest eigenvalue {lam[0]:.3e} "
            f"(largest variance {scale:.3e}), carried mostly by inputs {inputs}; a kernel of "
            "real inputs is PSD up to round-off (~1e-12 relative), so the kernel passed or the "
            "inputs are corrupted")


@functools.lru_cache(maxsize=16)
def _quadruple_groups(N):
    """The sorted quadruples of N inputs grouped by multiplicity pattern:
    pattern -> list of (quadruple, its distinct indices)."""
    groups = {}
    for q in itertools.combinations_with_replacement(range(N), 4):
        distinct = sorted(set(q))
        pattern = tuple(q.count(a) for a in distinct)
        groups.setdefault(pattern, []).append((q, distinct))
    return groups


def quad_expectations(act, K, *, accuracy="default", return_error=False, where=""):
    """``<sigma(z_a1) sigma(z_a2) sigma(z_a3) sigma(z_a4)>_K`` for all quadruples.

    The result is fully symmetric in its four indices; only the
    ``C(N+3, 4)`` sorted quadruples are integrated, each with its coinciding
    indices merged (``<sigma_a^2 sigma_b sigma_c>`` is three-variable, and so
    on), then scattered to all permutations.

    Parameters
    ----------
    act : Activation
    K : ndarray (N, N)
        Kernel; symmetric positive semi-definite of any rank.
    accuracy : {"fast", "default", "high"}
    return_error : bool
        Also return the (N, N, N, N) error estimate of each entry
        (:func:`expect_nd`).
    where : str
        Context for error messages (e.g. " at layer 3").

    Returns
    -------
    ndarray (N, N, N, N), and the error estimate if ``return_error``

    Notes
    -----
    Cost: ``C(N, 4)`` four-variable, ``N C(N-1, 2)`` three-variable and
    ``N(N-1) + C(N, 2)`` two-variable expectations (module doc for each).
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    check_psd(K, where)
    sigma = normal_family(act, "sigma")     # GELU, erf: innermost axis in closed form
    growth = entire_growth(act)             # GELU: the trapezoid rule of entire functions
    kinks = act.kinks
    si = act.scale_invariant if (act.scale_invariant is not None and act.name != "monomial") else None
    if si is not None:
        sigma = PiecewiseMonomial(si[0], si[1], 1)
    # entries by the flat index of their sorted quadruple; scattered to all
    # permutations at the end
    Tq = np.zeros(N ** 4)
    Eq = np.zeros(N ** 4)
    for pattern, items in _quadruple_groups(N).items():
        idx = np.array([it[1] for it in items])          # (B, d)
        d = len(pattern)
        err = np.zeros(len(items))
        if d == 1:
            vals = expect(lambda z: sigma(z) ** 4, K[idx[:, 0], idx[:, 0]], kinks=kinks,
                          period=act.period)      # sin: closed form inside
            err = 1e-14 * np.abs(vals)
        else:
            Ksub = K[idx[:, :, None], idx[:, None, :]]
            fs = _trig.as_trig([_power(sigma, p) for p in pattern], act.period)
            res = expect_nd(fs, Ksub, kinks=kinks, accuracy=accuracy,
                            return_error=return_error, where=where, growth=growth,
                            gh_up=_GH_STEP_UP_SIGMA)
            vals, err = res if return_error else (res, err)
        flat = np.ravel_multi_index(np.array([it[0] for it in items]).T, (N,) * 4)
        Tq[flat] = vals
        Eq[flat] = err
    every = np.sort(np.indices((N,) * 4).reshape(4, -1), axis=0)
    where = np.ravel_multi_index(every, (N,) * 4)
    T = Tq[where].reshape((N,) * 4)
    E = Eq[where].reshape((N,) * 4)
    return (T, E) if return_error else T
