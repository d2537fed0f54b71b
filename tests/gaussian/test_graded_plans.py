"""Plans of the graded rule (:class:`pdlt.gaussian._graded.GradedPlans`): a covariance's
points, rules and table panels built once and shared by the function tuples a fold asks
of it (session 17). One code path with and without plans, so values are compared bit for
bit; the three-variable plan also against the nested rule it replaced (another order of
the same sums: within 1e-15 of scale)."""

import numpy as np
from scipy import special

from pdlt.gaussian import _graded
from pdlt.gaussian._graded import expect_graded


def _directions(seed, K, dims=4, n=4):
    x = np.random.default_rng(seed).standard_normal((n, dims))
    G = x @ x.T / dims
    return K * G / np.max(np.diag(G))


def test_plans_are_shared_by_function_tuples_and_orders():
    # a pdlt.statistics call asks ~35 function tuples of each four-variable covariance, its
    # variables in any order: GradedPlans builds the covariance's points, rules and table
    # panels once per rule and keeps tables by pair of functions. Every value is the
    # unplanned rule's, bit for bit (one code path: the plan of the covariance in pivoted
    # order), whichever order of the variables comes first
    funcs = [np.tanh, lambda z: 1.0 - np.tanh(z) ** 2, lambda z: np.tanh(z) ** 2, special.erf]
    C = _directions(1, 1e3)
    plans, rng = _graded.GradedPlans(), np.random.default_rng(0)
    for _ in range(10):
        fs = [funcs[i] for i in rng.integers(0, 4, 4)]
        p = rng.permutation(4)
        ref = expect_graded(fs, C, return_error=True)
        got = expect_graded([fs[i] for i in p], C[np.ix_(p, p)], return_error=True, plans=plans)
        assert got == ref
    # one covariance, two rules (value, estimate): each built when first asked, and kept
    # from the second time (a fold that asks each covariance once keeps none)
    assert plans.built == 4
    # past max_bytes a plan is built for its call only: the same values
    few = _graded.GradedPlans(max_bytes=0)
    for _ in range(2):
        assert expect_graded(fs, C, return_error=True, plans=few) == ref
    assert few.built == 4


def test_plans_keep_tables_by_name():
    # names identify the functions (the residual folds rebuild theirs per call): equal
    # names share a table, so a name must not be reused for another function
    C = _directions(2, 1e2)
    th, sq = np.tanh, lambda z: np.tanh(z) ** 2
    plans = _graded.GradedPlans()
    a = expect_graded([th] * 4, C, plans=plans, names="tttt")
    assert expect_graded([lambda z: np.tanh(z)] * 4, C, plans=plans, names="tttt") == a
    b = expect_graded([th, th, sq, sq], C)
    assert expect_graded([th, th, sq, sq], C, plans=plans, names="ttss") == b
    assert abs(a - b) > 1e-3 * abs(b)



def test_three_variable_plans():
    # three variables, the last graded (so all three: pivoted conditional standard
    # deviations do not grow): ~47 tuples a covariance in a residual fold. The plan sums
    # the same terms as the nested rule (per point the same table arithmetic) in another
    # order: within 1e-15 of scale, random and nearly dependent directions; shared bit for
    # bit across orders
    funcs = [np.tanh, lambda z: 1.0 - np.tanh(z) ** 2, lambda z: z * special.expit(z)]
    x = np.random.default_rng(6).standard_normal((3, 3))
    x[2] = x[0] + x[1] + 0.03 * x[2]
    covs = [_directions(0, 1e3, 3, 3), _directions(1, 30.0, 3, 3),
            1e4 * x @ x.T / np.max(np.sum(x * x, 1))]
    for C in covs:
        order, L = _graded._factor(C[None])
        assert _graded._planned(L[0])
        plans, rng = _graded.GradedPlans(), np.random.default_rng(1)
        for _ in range(6):
            fs = [funcs[i] for i in rng.integers(0, 3, 3)]
            fo = [fs[i] for i in order[0]]
            rules = ((_graded._NODES, _graded._CHEB, 1.0),
                     (_graded._LOWER_NODES, _graded._LOWER_CHEB, 0.75))
            old = [_graded._nested(fo, L[0], n, c, h) for n, c, h in rules]
            v, e = expect_graded(fs, C, return_error=True)
            scale = np.sqrt(np.prod([np.mean(f(np.sqrt(C[i, i]) * np.linspace(-6, 6, 2001)) ** 2)
                                     for i, f in enumerate(fs)]))
            assert abs(v - old[0]) <= 1e-15 * scale
            assert abs(e - abs(old[0] - old[1])) <= 2e-15 * scale
            p = rng.permutation(3)
            assert expect_graded([fs[i] for i in p], C[np.ix_(p, p)], return_error=True,
                                 plans=plans) == (v, e)
