"""One-variable Gaussian averages shared by the NTK, dNTK and ddNTK recursions.

Conventions: ``s = sigma``, ``p = sigma'``, ``q = sigma''`` *pointwise* (the
function ``act.d2``; for the ReLU family it is 0 everywhere, which is what a
network's autodiff sees: the forward equations of the dNTK and ddNTKs
contain sigma'' and sigma''' as pointwise factors). Derivatives of *Gaussian
averages* (which come from the Edgeworth/Stein step of a recursion) are
distributional and are taken by Stein's lemma,
``<f'>_K = <z f>_K / K`` and ``d<f>_K/dK = <f (z^2 - K)>_K / (2 K^2)``, so
kinks are handled exactly by the one-variable rule
(:func:`pdlt.gaussian.expect`, error < 1e-14).

The pointwise third derivative only enters through ``<sigma''' sigma'>`` and
``<sigma''' sigma'^3>``; integrating by parts,
``<q' p> = <z q p>/K - <q^2>`` and ``<q' p^3> = <z q p^3>/K - 3 <q^2 p^2>``,
which is exact for smooth activations and for the ReLU family (where
``q = 0``); for a kinked activation whose sigma'' jumps at a kink (elu) it
would add the jump's delta, so such activations are rejected by
:func:`single_input_terms` with ``need_d3=True``.
"""

from __future__ import annotations

import numpy as np

from .. import gaussian

__all__ = ["single_input_terms"]


def _jumps_in_d2(act) -> bool:
    for c in act.kinks:
        h = 1e-7 * max(1.0, abs(c))
        if abs(float(act.d2(c + h)) - float(act.d2(c - h))) > 1e-6:
            return True
    return False


def single_input_terms(act, K, *, need_d3=True):
    """All one-variable averages of the single-input NTK-family recursions.

    Parameters
    ----------
    act : Activation
    K : float > 0 or ndarray of such
        Kernel K^(l) (an array evaluates every layer at once).
    need_d3 : bool
        Also compute the sigma''' averages (R needs them).

    Returns
    -------
    dict of float (or of ndarray shaped like K)
        ``ss = <s^2>``, ``ssss = <s^4>``, ``pp = <p^2>``, ``pppp = <p^4>``,
        ``sspp = <s^2 p^2>``, ``dss = d<s^2>/dK = <(s p)'>``,
        ``dpp = d<p^2>/dK``, ``qs = <q s>``, ``qspp = <q s p^2>``,
        ``dqp = <(q p)'>``, ``qq = <q^2>``, ``qqpp = <q^2 p^2>``,
        ``q3p = <sigma''' p>``, ``q3ppp = <sigma''' p^3>``.
    """
    K = np.asarray(K, dtype=float)
    if not (np.all(K > 0) and np.all(np.isfinite(K))):
        raise ValueError(f"the kernel must be finite and > 0 for the finite-width NTK "
                         f"recursions; got K={K} (use C_b > 0 or a nonzero input)")
    scalar = K.ndim == 0
    s, p, q = act.sigma, act.d1, act.d2
    kw = dict(kinks=act.kinks, period=act.period)

    def E(f):
        v = gaussian.expect(f, K, **kw)
        return float(v) if scalar else np.asarray(v, dtype=float)

    t = {
        "ss": E(lambda z: s(z) ** 2),
        "ssss": E(lambda z: s(z) ** 4),
        "pp": E(lambda z: p(z) ** 2),
        "pppp": E(lambda z: p(z) ** 4),
        "sspp": E(lambda z: (s(z) * p(z)) ** 2),
        "dss": E(lambda z: z * s(z) * p(z)) / K,
        "dpp": None,
        "qs": E(lambda z: q(z) * s(z)),
        "qspp": E(lambda z: q(z) * s(z) * p(z) ** 2),
        "dqp": E(lambda z: z * q(z) * p(z)) / K,
        "qq": E(lambda z: q(z) ** 2),
        "qqpp": E(lambda z: (q(z) * p(z)) ** 2),
    }
    t["dpp"] = 0.5 * (E(lambda z: (z * p(z)) ** 2) / K - t["pp"]) / K
    if need_d3:
        if _jumps_in_d2(act):
            raise ValueError(
                f"activation {act.name!r} has a sigma'' that jumps at a kink; the ddNTK "
                "statistic R needs <sigma''' ...> and is not implemented for it")
        t["q3p"] = t["dqp"] - t["qq"]
        t["q3ppp"] = E(lambda z: z * q(z) * p(z) ** 3) / K - 3.0 * t["qqpp"]
    return t
