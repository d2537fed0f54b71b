"""The graded averages' budget (:class:`pdlt.theory._capped._Budget`)."""

from pdlt.theory._capped import _Budget


def test_the_budget_grants_first_come_and_keeps_its_decisions():
    b = _Budget(1.0)
    assert b.take("a", 0.6) and not b.take("b", 0.6) and b.take("c", 0.4)
    assert b.spent == 1.0 and b.past == {"b"}
    assert b.take("a", 0.6) and not b.take("b", 0.0)       # decided once
    assert b.spent == 1.0


def test_shared_work_is_charged_once():
    # four-variable averages of one covariance share its plan: charged with the first
    # granted one only; a refused key charges nothing
    b = _Budget(1.0)
    assert b.take("f1", 0.1, shared=("K", 0.5))
    assert b.take("f2", 0.1, shared=("K", 0.5))
    assert abs(b.spent - 0.7) < 1e-15
    assert not b.take("g1", 0.1, shared=("L", 0.5))
    assert b.take("g2", 0.1) and abs(b.spent - 0.8) < 1e-15
    assert b.take("g3", 0.1, shared=("K", 0.5)) and abs(b.spent - 0.9) < 1e-15
