"""One validation layer at the boundary, shared by the API and the ``pdlt`` command.

Everything here is numpy only (the torch device check is
``pdlt.experiment.ensemble.check_device``). The
rules, in one place:

* **Inputs** are ``x`` of shape ``(N, n0)`` (``shared/NOTATION.md``). A 1-D
  array is *one input of n0 features* everywhere -- ``pdlt.flow``,
  ``Ensemble.measure`` and a 1-D ``.npy`` file given to ``--inputs`` (the
  command says so on stderr). The scikit-learn regressors are the exception
  that proves the rule: scikit-learn's convention is that ``X`` is always
  2-D, so they refuse a 1-D ``X`` with the reshape that fixes it.
* **Numbers** that are variances, widths, counts or learning rates are checked
  for type, finiteness and sign, and the message names the parameter, the
  value and what to try.
* **Kernel scale**: the order-1/n statistics scale like ``K^2`` and their
  Gaussian expectations like ``K^2`` times moments of ``z``; float64 holds them
  for ``1e-100 <= K1 <= 1e100`` (:data:`K1_RANGE`). Outside it pdlt refuses
  with an error instead of printing ``Numerical result out of range``.
* **Validity of the 1/n expansion**: :class:`ValidityWarning` (a
  ``UserWarning``) when a correction exceeds :data:`CORRECTION_FRACTION` of
  the leading term, when ``L/n`` exceeds twice the optimal aspect ratio, or
  when a learning rate reaches the stability bound of the finite-width NTK.
* **JSON** (:func:`json_document`): strict JSON, no ``NaN``/``Infinity``
  tokens. A numeric field is a number or ``null``; a ``null`` that stands for
  a non-finite float is listed in the top-level ``"nonfinite"`` object,
  keyed by its path (``"layers/3/V"``, ``"mean/2"``) with value ``"nan"``,
  ``"inf"`` or ``"-inf"``; a ``null`` *not* listed there means "not computed"
  (e.g. ``log_evidence`` of ``--method ntk``).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np

from .theory._averages import KERNEL_RANGE

__all__ = ["ValidityWarning", "CORRECTION_FRACTION", "K1_RANGE", "check_int", "check_float",
           "as_inputs", "load_npy_inputs", "check_checkpoint_path",
           "check_kernel_scale", "check_input_scale", "numeric_guard", "json_document", "check_correction", "correction_ratio", "Interrupted",
           "sigterm_as_interrupt", "describe_interrupt",
           "check_aspect_ratio", "check_learning_rate_fluctuations", "learning_rate_margin"]

#: a 1/n correction larger than this fraction of its leading term makes the
#: truncated expansion unreliable: pdlt warns (|correction| > 0.3 |leading|)
CORRECTION_FRACTION = 0.3
#: first-layer kernel values whose order-1/n statistics float64 holds
K1_RANGE = KERNEL_RANGE
#: the finite-width NTK's largest eigenvalue is taken as its mean plus this
#: many standard deviations over initializations (first-order perturbation)
LAMBDA_SIGMAS = 3.0


class ValidityWarning(UserWarning):
    """A result is outside the regime where the truncated 1/n expansion is reliable."""


# ---------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------

def check_int(value, name, *, minimum=1, fix=None):
    """``value`` as an int >= ``minimum`` (bools and non-integral floats refused)."""
    ok = not isinstance(value, (bool, np.bool_))
    try:
        iv = int(value)
        ok = ok and iv == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or iv < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}" + (f" ({fix})" if fix else ""))
    return iv


def check_float(value, name, *, positive=False, nonnegative=False, fix=None):
    """``value`` as a finite float, optionally > 0 or >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {value!r}") from None
    bad = (not math.isfinite(v) or (positive and v <= 0) or (nonnegative and v < 0))
    if bad:
        what = ("a finite number > 0" if positive else "a finite number >= 0" if nonnegative
                else "a finite number")
        raise ValueError(f"{name} must be {what}; got {value!r}" + (f" ({fix})" if fix else ""))
    return v


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------

def as_inputs(x, n0=None, name="x"):
    """Inputs as float64 ``(N, n0)``; a 1-D array is one input of ``n0`` features.

    Raises ``ValueError`` naming ``name`` for complex, non-numeric, empty,
    non-finite or wrongly shaped arrays.
    """
    from .network import validate_inputs

    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} is complex ({arr.dtype}); pdlt's inputs are real: pass "
                         "x.real if the imaginary part is zero")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array of shape (N, n0); got dtype "
                         f"{arr.dtype}")
    return validate_inputs(arr.astype(float), n0, name)


def load_npy_inputs(path, name="--inputs"):
    """Read inputs ``(N, n0)`` from a ``.npy`` file, with errors that say what is wrong.

    A 1-D array is one input of ``n0`` features (as in the API); a note on
    stderr says so and how to save ``N`` inputs of one feature instead.
    """
    import sys

    p = os.fspath(path)
    if os.path.isdir(p):
        raise ValueError(f"{name} {p!r} is a directory; give a .npy file holding an array of "
                         "shape (N, n0), e.g. saved with numpy.save('x.npy', x)")
    if not os.path.exists(p):
        raise FileNotFoundError(f"{name}: no such file {p!r}")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {p!r} ({exc.strerror})") from None
    if magic != b"\x93NUMPY":
        hint = (" (it looks like text or CSV: convert it with numpy.save('x.npy', "
                "numpy.loadtxt(path, delimiter=',')))" if p.lower().endswith((".csv", ".txt"))
                or _looks_like_text(p) else "")
        raise ValueError(f"{name} {p!r} is not a .npy file{hint}; give an array of shape "
                         "(N, n0) saved with numpy.save")
    try:
        x = np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{name} {p!r} is not a plain numeric .npy array ({exc}); save a float "
                         "array of shape (N, n0) with numpy.save") from None
    if not isinstance(x, np.ndarray):  # pragma: no cover - .npz goes through the magic check
        raise ValueError(f"{name} {p!r} holds no single array")
    if x.ndim == 1:
        print(f"note: {name} {p!r} holds a 1-D array of shape {x.shape}: read as ONE input of "
              f"{x.shape[0]} features (inputs are (N, n0), as in the Python API); save "
              "x.reshape(-1, 1) for N inputs of one feature", file=sys.stderr)
    return as_inputs(x, None, name)


def _looks_like_text(path):
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
        head.decode("ascii")
        return True
    except (OSError, UnicodeDecodeError):
        return False


# ---------------------------------------------------------------------------
# devices and files
# ---------------------------------------------------------------------------

def check_checkpoint_path(path, name="checkpoint"):
    """Refuse, before any work, a checkpoint path that cannot be written.

    The folder must exist and be writable, and the path must not be a
    folder; an existing file is read (and checked) by the caller.
    """
    p = os.fspath(path)
    if not p:
        raise ValueError(f"{name} is empty; give a file name such as run.npz")
    if os.path.isdir(p):
        raise ValueError(f"{name} {p!r} is a directory; give a file inside it, e.g. "
                         f"{os.path.join(p, 'checkpoint.npz')!r}")
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise ValueError(f"{name} {p!r}: the folder {folder!r} does not exist; create it "
                         "(mkdir -p) or choose another path -- checked before measuring, so "
                         "no work is lost")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {p!r}: the folder {folder!r} is not writable; choose a "
                         "writable path")
    if os.path.exists(p) and not os.access(p, os.R_OK | os.W_OK):
        raise ValueError(f"{name} {p!r} exists but is not readable and writable; fix its "
                         "permissions or choose another path")
    return p


# ---------------------------------------------------------------------------
# kernel scale and float64 range
# ---------------------------------------------------------------------------

def check_kernel_scale(K1, name="K1"):
    """``K1`` inside :data:`K1_RANGE` (or 0, the degenerate zero input)."""
    v = check_float(K1, name, nonnegative=True,
                    fix="K1 = C_b + C_W |x|^2 / n0 is a variance")
    lo, hi = K1_RANGE
    if v != 0 and not (lo <= v <= hi):
        raise ValueError(f"{name}={v:g} is outside the range pdlt computes in float64, "
                         f"{lo:g} <= K1 <= {hi:g}: the order-1/n statistics scale like K1^2 (and "
                         "the NTK ones up to K1^3) and overflow or underflow. Rescale the inputs (for a "
                         "scale-invariant activation such as relu every statistic scales "
                         "exactly as a power of K1)")
    return v


def check_input_scale(mlp, x, name="--inputs"):
    """Each input's first-layer kernel ``C_b + C_W |x|^2/n0`` inside :data:`K1_RANGE` (or 0)."""
    x = np.asarray(x, dtype=float)
    m = np.max(np.abs(x), axis=1, keepdims=True)
    safe = np.where(m > 0, m, 1.0)
    # |x|^2 = m^2 sum((x/m)^2), in logs: no overflow for entries near 1e200
    with np.errstate(divide="ignore"):
        log_sq = 2 * np.log(safe[:, 0]) + np.log(np.sum((x / safe) ** 2, axis=1) + (m[:, 0] == 0))
    lo, hi = K1_RANGE
    with np.errstate(over="ignore"):
        K1 = float(mlp.C_b[0]) + float(mlp.C_W[0]) * np.exp(log_sq) / x.shape[1]
    bad = (K1 != 0) & ~((K1 >= lo) & (K1 <= hi))
    if np.any(bad):
        a = int(np.argmax(bad))
        raise ValueError(f"{name}: input row {a} has first-layer kernel K1 = C_b + C_W |x|^2/n0 "
                         f"= {K1[a]:.3g}, outside the range pdlt computes in float64, "
                         f"{lo:g} <= K1 <= {hi:g}; rescale the inputs")
    return K1


@contextlib.contextmanager
def numeric_guard(what, fix):
    """Turn float64 overflow/underflow inside a computation into one clear ``ValueError``."""
    try:
        yield
    except FloatingPointError as exc:
        # pdlt's own: raised where a statistic stops being finite, with its reason and fix
        raise ValueError(f"{what}: {exc}") from None
    except (OverflowError, ZeroDivisionError) as exc:
        raise ValueError(f"{what} left the float64 range ({type(exc).__name__}: {exc}); "
                         f"{fix}") from None


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------

def json_document(obj, warnings_list=None):
    """``obj`` as strict-JSON-ready data plus the ``nonfinite`` map (see module doc).

    Returns a dict: ``obj`` (a dict) with ``"nonfinite"`` (path -> "nan" |
    "inf" | "-inf", always present) and ``"warnings"`` (list of
    ``{"category", "message"}``, always present) added.
    """
    nonfinite = {}

    def clean(v, path):
        if isinstance(v, dict):
            return {str(k): clean(x, f"{path}/{k}" if path else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x, f"{path}/{i}") for i, x in enumerate(v)]
        if isinstance(v, np.ndarray):
            return clean(v.tolist(), path)
        if isinstance(v, (np.bool_,)):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, (np.floating, float)):
            f = float(v)
            if math.isfinite(f):
                return f
            nonfinite[path] = "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
            return None
        if isinstance(v, (complex, np.complexfloating)):  # pragma: no cover - never produced
            raise TypeError(f"complex value at {path}")
        return v

    out = clean(dict(obj), "")
    out["nonfinite"] = nonfinite
    out["warnings"] = list(warnings_list or [])
    return out


# ---------------------------------------------------------------------------
# validity of the 1/n expansion
# ---------------------------------------------------------------------------

def _warn(message, stacklevel=3):
    warnings.warn(message, ValidityWarning, stacklevel=stacklevel)


def correction_ratio(leading, correction):
    """``||correction|| / ||leading||`` over all entries (NaN if either is non-finite)."""
    lead = np.asarray(leading, dtype=float)
    corr = np.asarray(correction, dtype=float)
    if not (np.all(np.isfinite(lead)) and np.all(np.isfinite(corr))):
        return math.nan
    # scaled norms: no overflow of the squares for entries near 1e200
    nl, nc = _norm(lead), _norm(corr)
    return nc / nl if nl > 0 else (math.inf if nc > 0 else 0.0)


def _norm(a):
    m = float(np.max(np.abs(a))) if a.size else 0.0
    return 0.0 if m == 0 else m * float(np.linalg.norm(a / m))


def check_correction(leading, correction, what, *, fraction=CORRECTION_FRACTION):
    """Warn when ``||correction|| > fraction ||leading||`` (Euclidean norms over all entries).

    Norms over the whole array, not entry by entry: a leading term that
    passes through zero at one input does not make its correction "large".
    Returns the ratio (inf for a zero leading term with a non-zero correction).
    """
    ratio = correction_ratio(leading, correction)
    if math.isnan(ratio):
        _warn(f"{what}: non-finite leading term or correction; the 1/n expansion gives no "
              "usable number here")
    elif ratio > fraction:
        _warn(f"{what}: the order-1/n correction is {ratio:.3g} x the leading term (norms over "
              f"all entries), more than the {fraction:g} up to which pdlt trusts the truncated "
              "1/n expansion; the finite-width numbers are not reliable here -- widen the "
              "network (larger n) or add observation noise")
    return ratio


def check_aspect_ratio(mlp, n_out=None):
    """Warn when ``L/n`` exceeds twice the activation's optimal aspect ratio ``r*``.

    ``r* = 4/((20 + 3 n_L) nu)`` (book appendix A; ``nu`` the vertex slope,
    ``V/(n K^2) ~ nu L/n``), so at ``L/n = 2 r*`` with ``n_L = 1`` the
    normalized four-point vertex is ``8/23 = 0.35``, about the
    :data:`CORRECTION_FRACTION` beyond which pdlt distrusts the truncated
    expansion; ``pdlt diagnose`` calls the same factor 2 the edge of the
    optimal regime. ``n`` is the narrowest hidden width. For an activation without a critical
    point (no ``r*``) the bound is ``L/n = 1``. Returns ``(r, bound)``.
    """
    from .theory.information import optimal_aspect_ratio

    hidden = mlp.widths[1:-1]
    if not hidden:
        return 0.0, math.inf
    L, n = mlp.depth, min(hidden)
    r = L / n
    n_out = mlp.widths[-1] if n_out is None else n_out
    try:
        rstar = float(optimal_aspect_ratio(mlp.activation, n_out))
    except (ValueError, NotImplementedError, ArithmeticError):
        rstar = math.nan
    if math.isfinite(rstar) and rstar > 0:
        bound, why = 2 * rstar, f"twice the optimal aspect ratio r* = {rstar:.3g} of " \
                                f"{mlp.activation.name}"
    else:
        bound, why = 1.0, "1 (no optimal aspect ratio: the activation has no critical point)"
    if r > bound:
        _warn(f"L/n = {L}/{n} = {r:.3g} exceeds {why}: the expansion parameter L/n is large "
              "and the order-1/n results are qualitative at best; widen the network or make "
              "it shallower")
    return r, bound


def learning_rate_margin(Theta_train, cov_H, H1, width):
    """Largest eigenvalue of the finite-width training NTK at ``LAMBDA_SIGMAS`` sigma.

    First-order perturbation of the top eigenpair ``(lam, u)`` of the
    infinite-width ``Theta_AA``: over initializations the eigenvalue has
    mean ``lam + u.H1.u / n`` and variance ``sum cov_H[a,b,c,d] u_a u_b u_c
    u_d / n`` (``cov_H = n Cov(DeltaH)``, for one output the A + B + B of
    NOTATION.md). Returns ``(lam, lam_high)`` with ``lam_high`` = mean + 3
    standard deviations.
    """
    w, U = np.linalg.eigh(np.asarray(Theta_train, dtype=float))
    lam, u = float(w[-1]), U[:, -1]
    shift = float(u @ np.asarray(H1, dtype=float) @ u) / width
    var = float(np.einsum("abcd,a,b,c,d->", np.asarray(cov_H, dtype=float), u, u, u, u)) / width
    return lam, lam + shift + LAMBDA_SIGMAS * math.sqrt(max(var, 0.0))


def check_learning_rate_fluctuations(eta, Theta_train, cov_H, H1, width):
    """Warn when ``eta`` reaches ``2 / lambda_high`` of the finite-width NTK; returns that bound."""
    if eta is None:
        return None
    lam, hi = learning_rate_margin(Theta_train, cov_H, H1, width)
    bound = 2.0 / hi if hi > 0 else math.inf
    if eta >= bound:
        _warn(f"learning_rate={eta:.6g} reaches the stability bound of the finite-width NTK at "
              f"n={width}: its largest eigenvalue, lambda_max = {lam:.6g} at infinite width, "
              f"reaches {hi:.6g} ({LAMBDA_SIGMAS:g} standard deviations of its 1/n "
              f"fluctuation, from the NTK variance A + 2B) so gradient descent with eta >= "
              f"2/{hi:.6g} = {bound:.6g} diverges for some networks; use a learning rate below "
              f"{bound:.6g}")
    return bound


# ---------------------------------------------------------------------------
# interrupts
# ---------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM.

    Attributes
    ----------
    signum : int
        ``signal.SIGINT`` or ``signal.SIGTERM``.
    checkpoint : str or None
        The checkpoint file holding the finished shards, when one was asked for.
    done, total : int or None
        Shards in the checkpoint and shards of the whole run.
    """

    def __init__(self, signum, checkpoint=None, done=None, total=None):
        super().__init__(signum)
        self.signum, self.checkpoint, self.done, self.total = signum, checkpoint, done, total


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While active (main thread only), SIGTERM raises :class:`Interrupted` like Ctrl-C would.

    The previous handler is restored on exit; elsewhere than the main thread
    this does nothing (Python delivers signals to the main thread only).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def describe_interrupt(exc):
    """One line and the exit status (130 SIGINT, 143 SIGTERM) for an interrupt."""
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
    code = 128 + int(signum)
    ck = getattr(exc, "checkpoint", None)
    if ck is not None:
        done, total = getattr(exc, "done", None), getattr(exc, "total", None)
        part = f"{done} of {total} shards" if done is not None else "the finished shards"
        msg = (f"interrupted by {name}; checkpoint {ck!r} holds {part}: run the same command "
               "again to resume")
    else:
        msg = f"interrupted by {name}; nothing saved (pass --checkpoint FILE to make a run resumable)"
    return msg, code
