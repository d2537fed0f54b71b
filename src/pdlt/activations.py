"""Activation functions with the structure the effective theory uses.

An :class:`Activation` carries a vectorized numpy ``sigma`` with its first and
second derivatives, and the facts the theory and the integration engine rely
on: where it is not smooth (``kinks``), whether it is scale invariant
(``sigma(z) = a_plus z`` for z > 0 and ``a_minus z`` for z < 0, book §5.2),
and its Taylor coefficients at the origin (book §5.3, the K* = 0 class).

Named activations are looked up with :func:`activation`; a user's own callable
is wrapped by :func:`activation` or :meth:`Activation.from_callable`.

Examples
--------
>>> import pdlt
>>> act = pdlt.activation("gelu")
>>> float(act.sigma(1.0))  # doctest: +ELLIPSIS
0.841344746...
>>> pdlt.activation(lambda z: z**3).name
'<lambda>'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import special

__all__ = [
    "Activation",
    "activation",
    "available_activations",
    "ActivationError",
    "leaky_relu",
    "monomial",
]

ArrayFn = Callable[[np.ndarray], np.ndarray]


class ActivationError(ValueError):
    """An activation is unknown, not callable, or returns non-finite values."""


@dataclass(frozen=True)
class Activation:
    """A pointwise nonlinearity sigma(z) and its theory-relevant structure.

    Parameters
    ----------
    name : str
        Name shown in reports and used to find torch equivalents.
    sigma, d1, d2 : callable
        Vectorized numpy functions z -> sigma(z), sigma'(z), sigma''(z).
    kinks : tuple of float
        Points where sigma or one of its first two derivatives is not smooth
        (the integration engine splits integrals there). Named activations
        list theirs; ``0.0`` is always treated as a split point anyway.
    scale_invariant : tuple (a_plus, a_minus) or None
        Slopes of a piecewise-linear, positively homogeneous activation
        (book eq. 5.59 family): ReLU (1, 0), leaky ReLU (1, a), linear (1, 1).
    taylor : tuple of float or None
        Taylor coefficients ``(sigma_0, sigma_1, sigma_2, sigma_3, ...)`` of
        sigma at 0, with ``sigma(z) = sum_p sigma_p z^p / p!`` (book eq. 5.84
        writes them this way). ``None`` where sigma is not analytic at 0.
    parameters : dict
        Parameters of a parametrized family (e.g. ``{"slope": 0.1}``).
    spec : tuple or None
        ``(name, parameters)`` for activations made by :func:`activation`;
        they pickle by it.
    derivatives : {"exact", "numerical"}
        Whether ``d1``, ``d2`` are exact or finite differences.
    period : float or None
        Period of an oscillatory activation (sin: 2 pi); the integration
        engine then refines its panels for large variances.
    torch_fn : callable or None
        Elementwise torch twin of sigma for a user activation, used by the
        ensemble engine (``pdlt.experiment``); named activations need none.
    joint : callable or None
        ``z -> (sigma(z), sigma'(z), sigma''(z))`` in one pass, sharing what the
        three have in common (one ``expit`` for swish, one ``tanh`` for tanh);
        equal to the three separate calls to the bit (``tests/test_activations.py``).
        Read through :meth:`values`; None: the three calls.
    """

    name: str
    sigma: ArrayFn
    d1: ArrayFn
    d2: ArrayFn
    kinks: tuple = ()
    scale_invariant: tuple | None = None
    taylor: tuple | None = None
    parameters: dict = field(default_factory=dict, compare=False, hash=False)
    derivatives: str = "exact"
    period: float | None = None
    torch_fn: Callable | None = field(default=None, compare=False, hash=False, repr=False)
    spec: tuple | None = field(default=None, compare=False, hash=False, repr=False)
    joint: Callable | None = field(default=None, compare=False, hash=False, repr=False)

    def values(self, z):
        """``(sigma(z), sigma'(z), sigma''(z))`` on the same nodes: the ``joint`` field, or
        three calls."""
        if self.joint is not None:
            return self.joint(z)
        return self.sigma(z), self.d1(z), self.d2(z)

    def _key(self):
        if self.spec is not None:
            return ("named", self.spec)
        return ("callables", self.name, self.sigma, self.d1, self.d2, tuple(self.kinks))

    def __eq__(self, other):
        # named activations are equal by name and parameters; others by their callables
        if not isinstance(other, Activation):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        # named activations pickle by name and parameters (their functions are
        # closures); a user's activation pickles only if its callables do
        if self.spec is not None:
            return (_from_spec, self.spec)
        return super().__reduce__()

    def __call__(self, z):
        return self.sigma(np.asarray(z, dtype=float))

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.parameters.items())
        return f"Activation({self.name!r}{params})"

    @property
    def is_smooth(self) -> bool:
        """True if sigma has no kinks (it is at least C^2 everywhere)."""
        return len(self.kinks) == 0

    @classmethod
    def from_callable(cls, fn, d1=None, d2=None, *, name=None, kinks=(),
                      step=None, torch_fn=None) -> "Activation":
        """Wrap a user's vectorized numpy callable as an :class:`Activation`.

        Parameters
        ----------
        fn : callable
            ``fn(z)`` for a float ndarray ``z``; must return an array of the
            same shape with finite values.
        d1, d2 : callable, optional
            Exact first and second derivatives. If omitted they are computed
            by central finite differences with Richardson extrapolation: a
            six-point stencil whose truncation error is O(h^6); with the
            default step ``h = 1e-2 * max(1, |z|)`` the error for analytic
            ``fn`` is about 1e-11 relative for sigma' and 1e-9 relative for
            sigma'' (rounding, not truncation, dominates). Near a kink the
            finite difference smears over a width ~3h; list kinks in
            ``kinks`` so the integration engine splits there.
        name : str, optional
            Defaults to ``fn.__name__``.
        kinks : sequence of float
            Points where fn or its first two derivatives jump.
        step : float, optional
            Finite-difference step scale (default 1e-2).
        torch_fn : callable, optional
            Elementwise torch version of ``fn`` so that ensembles of real
            networks (``pdlt.experiment``) can use this activation.

        Raises
        ------
        ActivationError
            If ``fn`` is not callable, or returns NaN/inf or a wrong shape on
            a probe grid.
        """
        if not callable(fn):
            raise ActivationError(
                f"activation must be a name or a callable z -> sigma(z); got "
                f"{type(fn).__name__}. Named activations: {', '.join(available_activations())}")
        name = name or getattr(fn, "__name__", "custom")
        _probe(fn, name)
        kinks = tuple(float(k) for k in kinks)
        if d1 is None and d2 is None:
            slopes = _scale_invariant_slopes(fn)
            if slopes is not None:
                # max(z, 0), abs, leaky ReLU written by hand: the exact piecewise-linear
                # activation (exact derivatives, closed forms, criticality) under the user's name
                import dataclasses
                act = _piecewise_linear(name, *slopes)
                return dataclasses.replace(act, torch_fn=torch_fn)
        numerical = d1 is None or d2 is None
        if numerical:
            _check_kinks(fn, name, kinks)
        h = 1e-2 if step is None else float(step)
        if d1 is None:
            d1 = _fd_derivative(fn, 1, h, kinks)
        if d2 is None:
            d2 = _fd_derivative(fn, 2, h, kinks)
        for f, what in ((d1, "first derivative"), (d2, "second derivative")):
            if not callable(f):
                raise ActivationError(f"{what} of activation {name!r} must be callable")
        _probe(d1, name + "'", derivative=True)
        _probe(d2, name + "''", derivative=True)
        taylor = _numerical_taylor(fn, kinks)
        return cls(name=name, sigma=_vectorized(fn), d1=_vectorized(d1),
                   d2=_vectorized(d2), kinks=kinks,
                   taylor=taylor,
                   derivatives="numerical" if numerical else "exact",
                   torch_fn=torch_fn)


def _vectorized(fn):
    def wrapped(z):
        z = np.asarray(z, dtype=float)
        raw = np.asarray(fn(z))
        if np.iscomplexobj(raw):
            raise ActivationError(_complex_message(getattr(fn, "__name__", "fn"), raw))
        out = raw.astype(float, copy=False)
        if out.shape != z.shape:
            out = np.broadcast_to(out, z.shape).copy()
        return out
    wrapped.__name__ = getattr(fn, "__name__", "fn")
    return wrapped


def _complex_message(name, raw):
    return (f"activation {name!r} returned complex values (dtype {raw.dtype}); pdlt needs a "
            "real function of a real z: return np.real(...) if the imaginary part is zero, "
            "or rewrite it with real numpy functions")


def _probe(fn, name, derivative=False):
    """Call a user's callable on a float array and refuse what pdlt cannot use.

    Complex or non-numeric results and (for sigma itself) a single number
    instead of an elementwise array raise :class:`ActivationError`; a
    derivative may be a constant number (broadcast).
    """
    z = np.linspace(-8.0, 8.0, 33)
    try:
        raw = np.asarray(fn(z))
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ActivationError(
            f"activation {name!r} failed on a numpy array of shape {z.shape}: "
            f"{exc!r}. It must be a vectorized numpy function z -> sigma(z)") from exc
    if np.iscomplexobj(raw):
        raise ActivationError(_complex_message(name, raw))
    if raw.dtype.kind not in "biuf":
        raise ActivationError(
            f"activation {name!r} returned {raw.dtype} values for a float array; it must "
            "return real numbers")
    out = raw.astype(float)
    if out.shape == () and not derivative:
        raise ActivationError(
            f"activation {name!r} returned a single number ({float(out):g}) for an array of "
            f"shape {z.shape}; it must act elementwise and return an array of the input's "
            "shape (use numpy functions such as np.tanh, not math.tanh; a constant c is "
            "lambda z: np.full_like(z, c))")
    if out.shape not in (z.shape, ()):
        raise ActivationError(
            f"activation {name!r} returned shape {out.shape} for input shape "
            f"{z.shape}; it must act elementwise")
    if not np.all(np.isfinite(out)):
        bad = z[~np.isfinite(np.broadcast_to(out, z.shape))][0]
        raise ActivationError(
            f"activation {name!r} returned a non-finite value at z = {bad:g}; "
            "it must be finite for all real z")


def _scale_invariant_slopes(fn):
    """(a_plus, a_minus) if fn(z) = a_+ z (z > 0), a_- z (z < 0) to 1e-12 relative, else None.

    Tested on 80 points spanning 1e-6 <= |z| <= 1e3 and at z = 0.
    """
    z = np.logspace(-6, 3, 40)
    with np.errstate(all="ignore"):
        ap = float(np.asarray(fn(np.array([1.0])), float).reshape(-1)[0])
        am = -float(np.asarray(fn(np.array([-1.0])), float).reshape(-1)[0])
        plus = np.broadcast_to(np.asarray(fn(z), float), z.shape)
        minus = np.broadcast_to(np.asarray(fn(-z), float), z.shape)
        zero = float(np.asarray(fn(np.array([0.0])), float).reshape(-1)[0])
    tol = 1e-12 * max(abs(ap), abs(am), 1.0)
    if (abs(zero) <= tol and np.all(np.abs(plus - ap * z) <= tol * np.maximum(z, 1.0))
            and np.all(np.abs(minus + am * z) <= tol * np.maximum(z, 1.0))
            and not (ap == 0 and am == 0)):
        return ap + 0.0, am + 0.0
    return None


_KINK_GRID = (-12.0, 12.0, 2 ** -9)   # range and spacing of the kink scan


def _check_kinks(fn, name, declared):
    """Refuse a callable with undeclared kinks (jumps of sigma') or jumps of sigma.

    On a grid of spacing ``h = 2^-9`` over ``[-12, 12]`` the second
    difference of a smooth fn is ``h^2 sigma''``, while a jump ``J`` of
    sigma' gives ``h J`` and a jump of sigma gives ``J``. Cells whose second
    difference stands out are re-tested with ``h/64``: a kink keeps
    ``|d2| / h`` (ratio ~1), a smooth bump shrinks it 64-fold, a jump of
    sigma keeps ``|d2|`` itself. Kinks within ``4 h`` of a declared one are
    accepted; the finite-difference derivatives then stay on one side of
    every declared kink.
    """
    lo, hi, h = _KINK_GRID
    z = np.arange(lo, hi + h / 2, h)
    with np.errstate(all="ignore"):
        f = np.asarray(fn(z), dtype=float)
    d2 = np.abs(f[2:] - 2 * f[1:-1] + f[:-2])
    zc = z[1:-1]
    scale = max(float(np.max(np.abs(np.diff(f)))) / h, 1.0)
    cand = np.flatnonzero(d2 > 1e-6 * h * scale)
    if len(cand) == 0:
        return
    # local maxima only, at most a few dozen
    cand = [i for i in cand if d2[i] >= d2[max(i - 1, 0)] and d2[i] >= d2[min(i + 1, len(d2) - 1)]]
    kinks, jumps = [], []
    hs = h / 64
    for i in cand[:64]:
        c = zc[i]
        zz = c + hs * np.arange(-96, 97)
        with np.errstate(all="ignore"):
            ff = np.asarray(fn(zz), dtype=float)
        dd = np.abs(ff[2:] - 2 * ff[1:-1] + ff[:-2])
        j = int(np.argmax(dd))
        loc, peak = float(zz[j + 1]), float(dd[j])
        if peak >= 0.25 * d2[i] and d2[i] > 1e-6 * scale:
            jumps.append(loc)
        elif peak / hs >= 0.25 * d2[i] / h:
            kinks.append(loc)
    jumps = sorted({round(k, 3) for k in jumps})
    if jumps:
        raise ActivationError(
            f"activation {name!r} jumps near z = {', '.join(f'{k:.4g}' for k in jumps[:4])}: "
            "sigma must be continuous (its derivative would be a delta function, and the "
            "NTK and the finite-width statistics would be infinite); use a continuous "
            "activation")
    kinks = sorted({round(k, 3) for k in kinks})
    missing = [k for k in kinks if not any(abs(k - c) <= 4 * h for c in declared)]
    if missing:
        where = ", ".join(f"{round(k, 3):g}" for k in missing[:4])
        raise ActivationError(
            f"activation {name!r} has a kink (a jump of sigma') near z = {where} that is not "
            "declared: the integration rules and the finite-difference derivatives would be "
            f"off by ~1e-2 there. Declare it: pdlt.activation(f, kinks=[{where}]) (or pass "
            "exact derivatives d1=, d2=)")


def _fd_derivative(fn, order, h0, kinks=()):
    """Richardson-extrapolated central differences (error O(h^6)).

    With declared ``kinks`` the step shrinks so that no stencil crosses one
    (one side of the kink only; down to ``1e-7``, below which rounding
    would dominate: a set of measure ~1e-7 around each kink).
    """
    ks = np.asarray(kinks, dtype=float)

    def d(z):
        z = np.asarray(z, dtype=float)
        h = h0 * np.maximum(1.0, np.abs(z))
        if ks.size:
            dist = np.min(np.abs(z[..., None] - ks), axis=-1)
            h = np.minimum(h, np.maximum(0.99 * dist, 1e-7))

        def central(hh):
            if order == 1:
                return (fn(z + hh) - fn(z - hh)) / (2 * hh)
            return (fn(z + hh) - 2 * fn(z) + fn(z - hh)) / hh**2

        d1, d2, d4 = central(h), central(h / 2), central(h / 4)
        r1 = (4 * d2 - d1) / 3
        r2 = (4 * d4 - d2) / 3
        return (16 * r2 - r1) / 15
    return d


def _numerical_taylor(fn, kinks, order=4):
    """Taylor coefficients sigma_p = sigma^(p)(0) by a Chebyshev fit, or None.

    Returns None if a kink is within 0.1 of the origin (not analytic there).
    """
    if any(abs(k) < 0.1 for k in kinks):
        return None
    r = 0.05
    m = 24
    t = np.cos(np.pi * (np.arange(m) + 0.5) / m)
    cheb = np.polynomial.chebyshev.Chebyshev.fit(r * t, np.asarray(fn(r * t), float), m - 1,
                                                 domain=[-r, r])
    poly = cheb.convert(kind=np.polynomial.Polynomial, domain=[-r, r], window=[-r, r])
    coef = np.zeros(order + 1)
    c = poly.coef[: order + 1]
    coef[: len(c)] = c
    return tuple(float(coef[p] * math.factorial(p)) for p in range(order + 1))


# ---------------------------------------------------------------------------
# Named activations
# ---------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _piecewise_linear(name, a_plus, a_minus, parameters=None):
    ap, am = float(a_plus), float(a_minus)

    def sigma(z):
        z = np.asarray(z, dtype=float)
        return np.where(z > 0, ap * z, am * z)

    def d1(z):
        z = np.asarray(z, dtype=float)
        return np.where(z > 0, ap, am) + 0.0 * z

    def d2(z):
        return np.zeros_like(np.asarray(z, dtype=float))

    kinks = () if ap == am else (0.0,)
    taylor = (0.0, ap, 0.0, 0.0, 0.0) if ap == am else None
    return Activation(name=name, sigma=sigma, d1=d1, d2=d2, kinks=kinks,
                      scale_invariant=(ap, am), taylor=taylor,
                      parameters=parameters or {})


def leaky_relu(slope: float = 0.01) -> Activation:
    """Leaky ReLU ``max(z, slope z)``: scale invariant with ``(a_+, a_-) = (1, slope)``."""
    slope = float(slope)
    if not math.isfinite(slope):
        raise ActivationError(f"leaky_relu slope must be finite; got {slope}")
    return _piecewise_linear("leaky_relu", 1.0, slope, {"slope": slope})


def monomial(p: int) -> Activation:
    """Monomial ``z**p`` for an integer power p >= 1."""
    if int(p) != p or p < 1:
        raise ActivationError(f"monomial power p must be an integer >= 1; got {p!r}")
    p = int(p)
    taylor = tuple(float(math.factorial(p)) if q == p else 0.0 for q in range(max(5, p + 1)))
    return Activation(
        name="monomial", sigma=lambda z: np.asarray(z, float) ** p,
        d1=lambda z: p * np.asarray(z, float) ** (p - 1),
        d2=lambda z: (p * (p - 1) * np.asarray(z, float) ** (p - 2)) if p >= 2
        else np.zeros_like(np.asarray(z, float)),
        taylor=taylor, parameters={"p": p},
        scale_invariant=(1.0, 1.0) if p == 1 else None)


def _tanh():
    def d1(z):
        t = np.tanh(z)
        return 1.0 - t * t  # not 1/cosh^2, which overflows for |z| > 710

    def d2(z):
        t = np.tanh(z)
        return -2.0 * t * (1.0 - t * t)

    def joint(z):
        t = np.tanh(z)
        p = 1.0 - t * t
        return t, p, -2.0 * t * p
    return Activation("tanh", np.tanh, d1, d2, taylor=(0.0, 1.0, 0.0, -2.0, 0.0), joint=joint)


def _sin():
    return Activation("sin", np.sin, np.cos, lambda z: -np.sin(z),
                      taylor=(0.0, 1.0, 0.0, -1.0, 0.0), period=2.0 * math.pi)


def _erf():
    c = 2.0 / math.sqrt(math.pi)

    def joint(z):
        z = np.asarray(z, float)
        g = np.exp(-z ** 2)
        return special.erf(z), c * g, -2.0 * c * z * g
    return Activation(
        "erf", special.erf, lambda z: c * np.exp(-np.asarray(z, float) ** 2),
        lambda z: -2.0 * c * np.asarray(z, float) * np.exp(-np.asarray(z, float) ** 2),
        taylor=(0.0, c, 0.0, -2.0 * c, 0.0), joint=joint)


def _sigmoid():
    def s(z):
        return special.expit(z)

    def d1(z):
        e = special.expit(z)
        return e * (1.0 - e)

    def d2(z):
        e = special.expit(z)
        return e * (1.0 - e) * (1.0 - 2.0 * e)

    def joint(z):
        e = special.expit(z)
        p = e * (1.0 - e)
        return e, p, p * (1.0 - 2.0 * e)
    return Activation("sigmoid", s, d1, d2, taylor=(0.5, 0.25, 0.0, -0.125, 0.0), joint=joint)


def _softplus():
    def s(z):
        z = np.asarray(z, float)
        return np.logaddexp(0.0, z)
    def joint(z):
        e = special.expit(z)
        return s(z), e, e * (1.0 - e)
    return Activation("softplus", s, special.expit,
                      lambda z: special.expit(z) * (1.0 - special.expit(z)),
                      taylor=(math.log(2.0), 0.5, 0.25, 0.0, -0.125), joint=joint)


def _swish():
    # SiLU: z * expit(z)
    def s(z):
        z = np.asarray(z, float)
        return z * special.expit(z)

    def d1(z):
        z = np.asarray(z, float)
        e = special.expit(z)
        return e + z * e * (1.0 - e)

    def d2(z):
        z = np.asarray(z, float)
        e = special.expit(z)
        de = e * (1.0 - e)
        return 2.0 * de + z * de * (1.0 - 2.0 * e)

    def joint(z):
        # the three above with one expit (z * e is sigma itself; the same operations)
        z = np.asarray(z, float)
        e = special.expit(z)
        s_ = z * e
        one_e = 1.0 - e
        de = e * one_e
        return s_, e + s_ * one_e, 2.0 * de + z * de * (1.0 - 2.0 * e)
    return Activation("swish", s, d1, d2, taylor=(0.0, 0.5, 0.5, 0.0, -0.5), joint=joint)


def _gelu():
    # z Phi(z) with Phi the standard normal CDF (the erf form)
    def s(z):
        z = np.asarray(z, float)
        return z * special.ndtr(z)

    def d1(z):
        z = np.asarray(z, float)
        return special.ndtr(z) + z * np.exp(-0.5 * z * z) / _SQRT2PI

    def d2(z):
        z = np.asarray(z, float)
        return (2.0 - z * z) * np.exp(-0.5 * z * z) / _SQRT2PI

    def joint(z):
        z = np.asarray(z, float)
        Phi, g = special.ndtr(z), np.exp(-0.5 * z * z)
        return z * Phi, Phi + z * g / _SQRT2PI, (2.0 - z * z) * g / _SQRT2PI
    c = 1.0 / _SQRT2PI
    return Activation("gelu", s, d1, d2, taylor=(0.0, 0.5, 2.0 * c, 0.0, -4.0 * c),
                      joint=joint)


def _elu(alpha=1.0):
    alpha = float(alpha)

    def s(z):
        z = np.asarray(z, float)
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))

    def d1(z):
        z = np.asarray(z, float)
        return np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0.0)))

    def d2(z):
        z = np.asarray(z, float)
        return np.where(z > 0, 0.0, alpha * np.exp(np.minimum(z, 0.0)))
    return Activation("elu", s, d1, d2, kinks=(0.0,), parameters={"alpha": alpha})


def _linear():
    return _piecewise_linear("linear", 1.0, 1.0)


_NAMED = {
    "linear": _linear,
    "relu": lambda: _piecewise_linear("relu", 1.0, 0.0),
    "leaky_relu": leaky_relu,
    "tanh": _tanh,
    "sin": _sin,
    "erf": _erf,
    "sigmoid": _sigmoid,
    "softplus": _softplus,
    "swish": _swish,
    "silu": _swish,
    "gelu": _gelu,
    "elu": _elu,
    "monomial": monomial,
}


def _from_spec(name, items):
    """The named activation ``name`` with family parameters ``items``, tagged for pickling."""
    import dataclasses

    act = _NAMED[name](**dict(items))
    return dataclasses.replace(act, spec=(name, tuple(items)))


def available_activations() -> list[str]:
    """Names accepted by :func:`activation` (``silu`` is an alias of ``swish``)."""
    return sorted(_NAMED)


def activation(spec, **parameters) -> Activation:
    """Look up a named activation, or wrap a callable.

    Parameters
    ----------
    spec : str, Activation or callable
        A name from :func:`available_activations` (``"leaky_relu"``,
        ``"monomial"`` and ``"elu"`` take parameters: ``slope``, ``p``,
        ``alpha``; the forms ``"leaky_relu(0.1)"`` and ``"monomial(3)"`` also
        work), an :class:`Activation` (returned as is), or a vectorized numpy
        callable (wrapped by :meth:`Activation.from_callable`).
    **parameters
        Family parameters for a named activation.

    Raises
    ------
    ActivationError
        Unknown name, bad parameters, or a callable that fails the probe.
    """
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        name = spec.strip().lower()
        if "(" in name and name.endswith(")"):
            base, arg = name[:-1].split("(", 1)
            try:
                value = float(arg)
            except ValueError as exc:
                raise ActivationError(f"could not parse the parameter in {spec!r}") from exc
            key = {"leaky_relu": "slope", "monomial": "p", "elu": "alpha"}.get(base)
            if key is None:
                raise ActivationError(f"activation {base!r} takes no parameter (in {spec!r})")
            parameters = {key: int(value) if key == "p" else value, **parameters}
            name = base
        if name not in _NAMED:
            raise ActivationError(
                f"unknown activation {spec!r}; choose one of "
                f"{', '.join(available_activations())}, or pass a callable")
        try:
            return _from_spec(name, tuple(sorted(parameters.items())))
        except TypeError as exc:
            raise ActivationError(f"bad parameters {parameters} for activation {name!r}: {exc}") from exc
    if callable(spec):
        return Activation.from_callable(spec, **parameters)
    raise ActivationError(
        f"activation must be a name, an Activation or a callable; got {type(spec).__name__}")
