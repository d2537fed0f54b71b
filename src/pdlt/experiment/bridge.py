r"""The theory for a user's own PyTorch model (``pdlt.torch``).

Three calls:

* :func:`diagnose` reads the model (:mod:`pdlt.experiment.model`), estimates
  its initialization ``C_W^(l)``, ``C_b^(l)`` from the weights as they are,
  and returns the theory's per-layer diagnosis
  (:func:`pdlt.theory.diagnosis.diagnose_mlp`); ``verify=True`` re-initializes
  copies of the model and measures the same statistics on them.
* :func:`param_groups` gives optimizer parameter groups that implement the
  learning-rate tensor of ``shared/NOTATION.md``.
* :func:`max_stable_learning_rate` is ``2 / lambda_max(Theta)`` on the
  user's inputs.
"""

from __future__ import annotations

import base64
import copy
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._pass_rule import compare
from ..network import MLP, validate_inputs
from ..theory.diagnosis import MLPDiagnosis, diagnose_mlp, input_kernels
from .ensemble import Ensemble
from .model import (Architecture, check_forward, estimate_init, estimate_layer,
                    read_architecture)

__all__ = ["Diagnosis", "Verification", "VerifiedStatistic", "diagnose", "verify_model",
           "param_groups", "max_stable_learning_rate", "reinitialized_parameters"]


# ---------------------------------------------------------------------------
# verification against re-initialized copies
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifiedStatistic:
    """One statistic at one layer: theory next to its measurement.

    ``agrees`` is ``|measured - theory| <= 4 stderr + allowance``, where the
    allowance is the size of the terms the theory neglects (see
    :func:`verify_model`); ``resolution = (4 stderr + allowance) / |theory|`` is
    the smallest relative error the comparison can detect.
    """

    layer: int
    name: str
    theory: float
    measured: float
    stderr: float
    allowance: float

    @property
    def z(self) -> float:
        return (self.measured - self.theory) / self.stderr if self.stderr > 0 else math.nan

    def _comparison(self):
        # the report's pass rule (pdlt.report.rows.Comparison), written once in pdlt._pass_rule
        return compare(self.theory, self.measured, self.stderr, self.allowance)

    @property
    def resolution(self) -> float:
        return float(self._comparison().tolerance) / abs(self.theory) if self.theory else math.inf

    @property
    def agrees(self) -> bool:
        return self._comparison().passed

    def to_dict(self) -> dict:
        return dict(layer=self.layer, name=self.name, theory=self.theory,
                    measured=self.measured, stderr=self.stderr, allowance=self.allowance,
                    z=self.z, resolution=self.resolution, agrees=self.agrees)


@dataclass(frozen=True)
class Verification:
    """Theory versus M re-initialized copies of the model.

    Attributes
    ----------
    rows : tuple of VerifiedStatistic
        K, Theta, V, A at every layer where they are measurable (V and A
        need two neurons, so not at a width-1 output unless ``V`` falls back
        to the single-neuron estimator).
    networks, seed : int
    init : str
        ``"init_critical_"``, ``"pytorch"`` or the user's function's name.
    mlp : MLP
        The MLP of the theory: the init's ``C_b``, ``C_W`` (exact for
        ``init_critical_``; pooled estimates over all copies otherwise).
    K1 : float
        First-layer kernel of the probe input.
    theory : MLPDiagnosis
    """

    rows: tuple
    networks: int
    seed: int
    init: str
    mlp: MLP
    K1: float
    theory: MLPDiagnosis

    @property
    def agrees(self) -> bool:
        """Every finite row agrees within ``4 stderr + allowance``."""
        return all(r.agrees for r in self.rows)

    def compare(self, theory: dict) -> tuple:
        """The same measurement against other theory values (negative controls).

        ``theory`` maps a statistic name to an array (L,) of alternative
        predictions; the allowances stay those of the original theory.
        Returns the new tuple of :class:`VerifiedStatistic`.
        """
        out = []
        for r in self.rows:
            if r.name in theory:
                out.append(VerifiedStatistic(r.layer, r.name,
                                             float(np.asarray(theory[r.name])[r.layer - 1]),
                                             r.measured, r.stderr, r.allowance))
        return tuple(out)

    def to_dict(self) -> dict:
        return dict(networks=self.networks, seed=self.seed, init=self.init, K1=self.K1,
                    C_b=list(self.mlp.C_b), C_W=list(self.mlp.C_W), agrees=self.agrees,
                    rows=[r.to_dict() for r in self.rows])

    def __str__(self):
        from .._commands.common import format_table
        head = ["layer", "stat", "theory", "measured", "stderr", "allowance", "z", "agrees"]
        rows = [[r.layer, r.name, r.theory, r.measured, r.stderr, r.allowance, r.z,
                 "yes" if r.agrees else "NO"] for r in self.rows]
        return (f"verification on {self.networks} copies re-initialized by {self.init} "
                f"(seed {self.seed}): {'agrees' if self.agrees else 'DISAGREES'}\n"
                + format_table(head, rows))


def _init_seed(seed, m):
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(m),)).generate_state(
        1, np.uint64)[0] >> np.uint64(1))


def reinitialized_parameters(model, arch, networks, init=None, seed=0):
    """Weights and biases of ``networks`` copies of ``model``, each re-initialized.

    Network m is a deep copy of ``model`` (float64, CPU) to which ``init``
    is applied with torch's global generator seeded from ``(seed, m)``
    (inside :func:`torch.random.fork_rng`, so the caller's RNG state is
    untouched).

    Parameters
    ----------
    init : None, "pytorch" or callable
        None: :func:`pdlt.torch.init_critical_`; ``"pytorch"``: each Linear's
        own ``reset_parameters()`` (PyTorch's default); a callable
        ``init(model)`` that initializes the model in place.

    Returns
    -------
    weights : list of tensors (M, n_l, n_{l-1}); biases : list of tensors (M, n_l)
        float64; zeros for a layer without bias.
    """
    from .init import init_critical_

    M = int(networks)
    P = sum(l.n_in * l.n_out + l.n_out for l in arch.layers)
    if M * P * 8 > (2 << 30):
        raise ValueError(f"networks={M} copies of {P} parameters need {M * P * 8 / 2**30:.1f} "
                         "GiB; use fewer networks")
    template = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    paths = [l.path for l in arch.layers]
    Ws = [torch.empty((M, l.n_out, l.n_in), dtype=torch.float64) for l in arch.layers]
    bs = [torch.zeros((M, l.n_out), dtype=torch.float64) for l in arch.layers]
    for m in range(M):
        net = copy.deepcopy(template)
        s = _init_seed(seed, m)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            if init is None:
                init_critical_(net, activation=arch.activation, seed=s)
            elif isinstance(init, str) and init == "pytorch":
                for p in paths:
                    net.get_submodule(p).reset_parameters()
            else:
                init(net)
        with torch.no_grad():
            for i, p in enumerate(paths):
                lin = net.get_submodule(p)
                Ws[i][m] = lin.weight.to(torch.float64)
                if lin.bias is not None:
                    bs[i][m] = lin.bias.to(torch.float64)
    return Ws, bs


class _CopiesEnsemble(Ensemble):
    """An :class:`Ensemble` whose networks are given parameters, not Gaussian draws."""

    def __init__(self, mlp, weights, biases, seed):
        super().__init__(mlp, networks=weights[0].shape[0], seed=seed)
        self._weights, self._biases = weights, biases

    def parameters(self, start=0, stop=None):
        stop = self.networks if stop is None else stop
        return ([w[start:stop] for w in self._weights], [b[start:stop] for b in self._biases])


def _typical_input(n0, G0):
    return np.full((1, n0), math.sqrt(G0))


def verify_model(model, arch, *, G0=1.0, networks=500, init=None, seed=0, lambda_b=1.0,
                 lambda_W=1.0) -> Verification:
    r"""Measure K, Theta, V, A on re-initialized copies and compare with the theory.

    The probe is one input with ``|x|^2 / n_0 = G0``. The theory is the MLP
    with the init's variances: exact critical ``(C_b, C_W)`` for
    ``init_critical_`` (``C_b = 0`` where a layer has no bias), otherwise
    the pooled estimates over all copies (their relative stderr is about
    ``sqrt(2 / (M n_l n_{l-1}))``, far below the measurement's).

    Compared, with the allowance for the terms the theory neglects
    (``s_l = sum_{l' < l} 1 / n_{l'}``, the accumulated 1/n up to layer l):

    * ``K`` against ``K + G1/n`` and ``Theta`` against ``Theta + H1/n``
      (order 1/n included), allowance ``|theory| s_l^2`` (the O(1/n^2) rest);
      where the NLO NTK is not finite (``H1`` unavailable) ``Theta`` gets
      ``|Theta| s_l``;
    * ``V`` and ``A`` at leading order, allowance ``|theory| s_l`` (their
      relative O(1/n) corrections);
    * plus float64 round-off, ``64 L eps |theory|``, everywhere (``Theta^(1)``
      is deterministic: stderr 0).

    The allowances are fixed here, from this theory; :meth:`Verification.compare`
    keeps them when the same measurement is compared with other predictions.

    ``V`` is the pair estimator ``n Cov(z_i^2, z_j^2)`` (``i != j``) except for
    ``init_critical_``, where the single-neuron one may be used too (the
    measurement's ``"V"``): for non-Gaussian weights (PyTorch's uniform ones)
    the single-neuron fourth cumulant has an extra term proportional to the
    weights' excess kurtosis that the pair estimator does not see.
    """
    from ..theory.criticality import criticality

    if int(networks) != networks or networks < 2:
        raise ValueError(f"networks must be an integer >= 2; got {networks!r}")
    if not (init is None or callable(init) or init == "pytorch"):
        raise ValueError(f"init must be None (init_critical_), 'pytorch' or a callable "
                         f"init(model) that initializes in place; got {init!r}")
    Ws, bs = reinitialized_parameters(model, arch, networks, init, seed)
    if init is None:
        crit = criticality(arch.activation)
        C_W = [crit.C_W] * arch.depth
        C_b = [crit.C_b if l.bias else 0.0 for l in arch.layers]
        name = "init_critical_"
    else:
        est = [estimate_layer(W.numpy(), b.numpy() if l.bias else None, l.layer)
               for W, b, l in zip(Ws, bs, arch.layers)]
        C_W = [e.C_W for e in est]
        C_b = [e.C_b for e in est]
        name = "pytorch" if init == "pytorch" else getattr(init, "__name__", repr(init))
    mlp = arch.to_mlp(C_b=C_b, C_W=C_W, lambda_b=lambda_b, lambda_W=lambda_W)
    K1 = mlp.C_b[0] + mlp.C_W[0] * G0
    th = diagnose_mlp(mlp, K1, learning=False)
    v_name = "V" if init is None else "V_pair"
    ens = _CopiesEnsemble(mlp, Ws, bs, seed)
    meas = ens.measure(x=_typical_input(arch.widths[0], G0),
                       stats=["K", "Theta", v_name, "A"], progress=False)
    fans = np.array(mlp.widths[:-1], dtype=float)
    s = np.concatenate([[0.0], np.cumsum(1.0 / fans[1:])])  # s_l = sum_{l'<l} 1/n_{l'}
    theta_nlo = th.Theta_nlo if np.all(np.isfinite(th.Theta_nlo)) else None
    plan = {
        "K": (th.K_nlo, np.abs(th.K_nlo) * s ** 2),
        "Theta": (theta_nlo, np.abs(theta_nlo) * s ** 2) if theta_nlo is not None
        else (th.Theta, np.abs(th.Theta) * s),
        "V": (th.V, np.abs(th.V) * s),
        "A": (th.A, np.abs(th.A) * s),
    }
    # float64 round-off of a statistic computed through L layers (generous: 64 eps per layer)
    roundoff = 64 * np.finfo(float).eps * mlp.depth
    rows = []
    for i, l in enumerate(meas.layers):
        lm = meas.layer(l)
        for stat, key in (("K", "K"), ("Theta", "Theta"), ("V", v_name), ("A", "A")):
            est = lm[key]
            mean = float(np.asarray(est.mean).reshape(-1)[0])
            se = float(np.asarray(est.stderr).reshape(-1)[0])
            t = float(plan[stat][0][l - 1])
            if not (math.isfinite(mean) and math.isfinite(se) and math.isfinite(t)):
                continue
            if stat in ("V", "A") and l == 1:
                continue  # exactly 0 in theory and measurement: nothing to compare
            allow = float(plan[stat][1][l - 1]) + roundoff * abs(t)
            rows.append(VerifiedStatistic(l, stat, t, mean, se, allow))
    return Verification(tuple(rows), int(networks), int(seed), name, mlp, float(K1), th)


# ---------------------------------------------------------------------------
# the diagnosis
# ---------------------------------------------------------------------------

_PYTORCH_DEFAULT_CW = 1.0 / 3.0


def _is_pytorch_default(arch, estimates):
    """Every layer's C_W within 4 stderr of 1/3 and C_b of 1/(3 n_{l-1})."""
    for l, e in zip(arch.layers, estimates):
        if not abs(e.C_W - _PYTORCH_DEFAULT_CW) <= 4 * e.C_W_stderr:
            return False
        if l.bias and math.isfinite(e.C_b_stderr) and not (
                abs(e.C_b - 1.0 / (3 * l.n_in)) <= 4 * e.C_b_stderr):
            return False
    return True


@dataclass(frozen=True)
class Diagnosis:
    """What the effective theory says about a PyTorch model (:func:`diagnose`).

    Attributes
    ----------
    architecture : Architecture
    estimates : tuple of InitEstimate
        Per-layer ``C_W``, ``C_b`` of the model's parameters as they are.
    theory : MLPDiagnosis
        The per-layer theory for the MLP with those variances, at the
        typical input (``|x|^2/n0 = G0``).
    G0 : float
        ``mean_a |x_a|^2 / n0`` of the inputs given, or 1 (standardized
        features) without inputs.
    K_inputs : ndarray (L, N) or None
        Each given input's own kernel ``K^(l)_{aa}``.
    verification : Verification or None
    notes : tuple of str
    """

    architecture: Architecture
    estimates: tuple
    theory: MLPDiagnosis
    G0: float
    K_inputs: np.ndarray | None
    verification: Verification | None
    notes: tuple

    @property
    def mlp(self) -> MLP:
        """The :class:`pdlt.MLP` with the model's widths and estimated variances."""
        return self.theory.mlp

    def rows(self) -> list:
        """One dict per layer: module, widths, estimates and theory."""
        th = self.theory
        out = []
        for i, (l, e) in enumerate(zip(self.architecture.layers, self.estimates)):
            r = dict(layer=l.layer, module=l.path, n_in=l.n_in, n_out=l.n_out, bias=l.bias,
                     gamma=l.gamma, xi=l.xi, C_W=e.C_W, C_W_stderr=e.C_W_stderr, C_b=e.C_b,
                     C_b_stderr=e.C_b_stderr, W_excess_kurtosis=e.W_excess_kurtosis,
                     K=float(th.K[i]), Theta=float(th.Theta[i]),
                     chi_parallel=float(th.chi_parallel[i]), chi_perp=float(th.chi_perp[i]),
                     criticality_distance=float(th.criticality_distance[i]),
                     xi_parallel=float(th.xi_parallel[i]), xi_perp=float(th.xi_perp[i]),
                     V_over_nK2=float(th.V_over_nK2[i]),
                     A_over_nTheta2=float(th.A_over_nTheta2[i]))
            if self.K_inputs is not None:
                r.update(K_inputs_min=float(self.K_inputs[i].min()),
                         K_inputs_max=float(self.K_inputs[i].max()))
            out.append(r)
        return out

    def to_dict(self) -> dict:
        th = self.theory
        d = dict(architecture=self.architecture.to_dict(), layers=self.rows(),
                 activation=self.architecture.activation_name,
                 universality_class=th.universality_class, critical_C_b=th.critical_C_b,
                 critical_C_W=th.critical_C_W,
                 at_criticality=[bool(v) for v in th.at_criticality],
                 depth=self.architecture.depth, K1=th.K1,
                 G0=self.G0, L_over_n=th.L_over_n, n_eff=th.n_eff,
                 optimal_aspect_ratio=th.optimal_aspect_ratio,
                 optimal_vertex=th.optimal_vertex, vertex_slope=th.vertex_slope,
                 signal_depth=th.signal_depth,
                 representation_learning=th.representation_learning,
                 notes=list(self.notes),
                 verification=None if self.verification is None else self.verification.to_dict())
        return d

    def __str__(self):
        from .._commands.common import format_table
        head = ["layer", "module", "n_in", "n_out", "C_W", "+-", "C_b", "+-", "K", "chi_par",
                "chi_perp", "xi_perp", "V/nK^2", "A/nTh^2"]
        rows = [[r["layer"], r["module"] + ("" if r["gamma"] == 0 else f" (res {r['gamma']:g})"),
                 r["n_in"], r["n_out"], r["C_W"], r["C_W_stderr"], r["C_b"], r["C_b_stderr"],
                 r["K"], r["chi_parallel"], r["chi_perp"], r["xi_perp"], r["V_over_nK2"],
                 r["A_over_nTheta2"]] for r in self.rows()]
        th = self.theory
        crit = ("no critical point" if th.critical_C_W is None else
                f"critical C_b = {th.critical_C_b:.6g}, C_W = {th.critical_C_W:.6g}")
        text = [f"model: {self.architecture.activation_name} MLP, widths "
                f"{self.architecture.widths} ({th.universality_class} class; {crit})",
                f"statistics at the typical input: K^(1) = {th.K1:.6g} (|x|^2/n0 = "
                f"{self.G0:.6g})", "", format_table(head, rows), "", "what the theory says:"]
        text += [f"- {n}" for n in self.notes]
        if self.verification is not None:
            text += ["", str(self.verification)]
        return "\n".join(text)

    def figure(self):
        """Depth profiles of K, chi and the 1/n statistics (matplotlib Figure).

        With a verification, the measured K, V/(n K^2), A/(n Theta^2) are
        drawn with 2-stderr error bars next to the theory.
        """
        import matplotlib
        if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
            try:
                matplotlib.use("Agg")
            except Exception:  # noqa: BLE001 - an interactive backend already in use
                pass
        import matplotlib.pyplot as plt

        th = self.theory
        l = np.arange(1, self.architecture.depth + 1)
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
        ax[0].semilogy(l, th.K, "o-", label="theory K (typical input)")
        if self.K_inputs is not None:
            ax[0].fill_between(l, self.K_inputs.min(1), self.K_inputs.max(1), alpha=0.2,
                               label="theory K, range over inputs")
        ax[0].set(xlabel="layer l", ylabel="K^(l)", title="kernel")
        ax[1].plot(l, th.chi_parallel, "o-", label="chi_parallel")
        ax[1].plot(l, th.chi_perp, "s--", label="chi_perp")
        ax[1].axhline(1.0, color="k", lw=0.8)
        ax[1].set(xlabel="layer l", ylabel="chi", title="susceptibilities (1 = critical)")
        ax[2].plot(l, th.V_over_nK2, "o-", label="theory V/(n K^2)")
        ax[2].plot(l, th.A_over_nTheta2, "s--", label="theory A/(n Theta^2)")
        ax[2].set(xlabel="layer l", title="order 1/n: kurtosis, NTK fluctuations")
        v = self.verification
        if v is not None:
            vt = v.theory
            norms = {"K": lambda i: 1.0,
                     "V": lambda i: vt.mlp.fan_in(i) * vt.K[i - 1] ** 2,
                     "A": lambda i: vt.mlp.fan_in(i) * vt.Theta[i - 1] ** 2}
            for name, axis in (("K", ax[0]), ("V", ax[2]), ("A", ax[2])):
                rs = [r for r in v.rows if r.name == name]
                if not rs:
                    continue
                ls = np.array([r.layer for r in rs])
                f = np.array([norms[name](i) for i in ls])
                axis.plot(ls, [r.theory / c for r, c in zip(rs, f)], "k:", lw=1)
                axis.errorbar(ls, [r.measured / c for r, c in zip(rs, f)],
                              yerr=[2 * r.stderr / c for r, c in zip(rs, f)], fmt="x",
                              capsize=3, label=f"measured {name} +- 2 se ({v.init}, M={v.networks}"
                                                "; dotted: its theory)")
        for a in ax:
            a.legend(fontsize=7)
            a.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        return fig

    def plot(self, path=None):
        """:meth:`figure`, or, with ``path``, :meth:`save_figure` (returns the path)."""
        return self.figure() if path is None else self.save_figure(path)

    def save_figure(self, path):
        """Write :meth:`figure` to ``path``: ``.png``, or ``.html`` (image and the table)."""
        import html as _html
        import pathlib

        import matplotlib.pyplot as plt

        path = pathlib.Path(path)
        if path.suffix.lower() not in (".png", ".html", ".htm"):
            raise ValueError(f"figure path must end in .png or .html; got {str(path)!r}")
        fig = self.figure()
        try:
            if path.suffix.lower() == ".png":
                fig.savefig(path, dpi=110)
            else:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=110)
                img = base64.b64encode(buf.getvalue()).decode("ascii")
                path.write_text(
                    "<!doctype html><meta charset='utf-8'><title>pdlt diagnosis</title>"
                    f"<h1>pdlt diagnosis</h1><img src='data:image/png;base64,{img}'>"
                    f"<pre>{_html.escape(str(self))}</pre>\n", encoding="utf-8")
        finally:
            plt.close(fig)
        return path


def _as_inputs(x, n0):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return validate_inputs(x, n0)


def diagnose(model: nn.Module, x=None, *, verify: bool = False, networks: int = 500,
             init=None, seed: int = 0, lambda_b=1.0, lambda_W=1.0,
             learning: bool = True) -> Diagnosis:
    """What the effective theory says about ``model`` as it is initialized now.

    Parameters
    ----------
    model : torch.nn.Module
        An MLP: ``nn.Sequential`` (or a custom module whose forward is a
        chain) of ``nn.Linear``, one kind of activation, and residual blocks
        (:mod:`pdlt.experiment.model` lists what is covered; anything else
        is refused with :class:`~pdlt.experiment.model.UnsupportedModelError`).
    x : array_like or tensor (N, n0), optional
        The user's inputs. The per-layer statistics refer to the typical
        input ``|x|^2/n0 = mean_a |x_a|^2/n0``; each input's own kernel is
        in ``K_inputs``. Default: standardized features, ``|x|^2/n0 = 1``.
    verify : bool, default False
        Also re-initialize ``networks`` copies of the model with ``init``
        and measure K, Theta, V, A on them (:func:`verify_model`).
    networks : int, default 500
    init : None, "pytorch" or callable, optional
        How the copies are re-initialized: None for
        :func:`pdlt.torch.init_critical_`, ``"pytorch"`` for PyTorch's
        default, or the user's ``init(model)``.
    seed : int, default 0
    lambda_b, lambda_W : float or sequence of L floats
        NTK learning-rate hyperparameters for Theta and A.
    learning : bool, default True
        Predict the size of representation learning (plain MLPs).

    Returns
    -------
    Diagnosis
        ``print(d)`` shows the table; ``d.to_dict()`` the JSON;
        ``d.save_figure("d.png")`` the depth profiles.

    Examples
    --------
    >>> import torch.nn as nn, pdlt.torch
    >>> net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
    ...                     nn.Linear(64, 1))
    >>> d = pdlt.torch.diagnose(net)
    >>> round(d.estimates[1].C_W, 1)      # PyTorch's default: C_W = 1/3
    0.3
    """
    arch = read_architecture(model)
    check_forward(model, arch)
    estimates = estimate_init(arch)
    xs = _as_inputs(x, arch.widths[0])
    G0 = 1.0 if xs is None else float(np.mean(np.einsum("ai,ai->a", xs, xs)) / arch.widths[0])
    mlp = arch.to_mlp(C_b=[e.C_b for e in estimates], C_W=[e.C_W for e in estimates],
                      lambda_b=lambda_b, lambda_W=lambda_W)
    K1 = mlp.C_b[0] + mlp.C_W[0] * G0
    if not K1 > 0:
        raise ValueError("the inputs are all zero and the first layer has no bias: K^(1) = 0, "
                         "the theory has nothing to propagate; pass nonzero inputs x")
    tol = ([4 * e.C_b_stderr for e in estimates], [4 * e.C_W_stderr for e in estimates])
    th = diagnose_mlp(mlp, K1, learning=learning, critical_tolerance=tol)
    K_in = None if xs is None else input_kernels(mlp, xs)
    notes = []
    if xs is None:
        notes.append("no inputs given: statistics for standardized features, |x|^2/n0 = 1 "
                     "(pass x for your data's scale)")
    if _is_pytorch_default(arch, estimates):
        notes.append("this is PyTorch's default initialization (kaiming_uniform with a = sqrt(5)"
                     "): C_W = 1/3 and C_b = 1/(3 n_{l-1}) per layer, weights uniform")
    kurt = [e.W_excess_kurtosis for e in estimates]
    if any(abs(e.W_excess_kurtosis) > 4 * e.W_excess_kurtosis_stderr for e in estimates):
        notes.append(f"weights are not Gaussian (excess kurtosis {min(kurt):.2g} .. "
                     f"{max(kurt):.2g}; uniform gives -1.2): the theory uses their variances; "
                     "the single-neuron fourth cumulant, and with few input features n0 = "
                     f"{arch.widths[0]} the first layer's distribution, are not Gaussian")
    for e in estimates:
        if abs(e.W_mean_z) > 4:
            notes.append(f"layer {e.layer}: the weights' mean is {e.W_mean_z:.1f} stderr from 0; "
                         "the theory assumes zero-mean weights")
    if th.critical_C_W is not None and not th.at_criticality.all():
        off = [e.layer for e, ok in zip(estimates, th.at_criticality) if not ok]
        notes.append(f"layers {off} are not at the critical (C_b, C_W) within 4 stderr; "
                     "pdlt.torch.init_critical_(model) re-initializes every layer at C_b = "
                     f"{th.critical_C_b:.6g}, C_W = {th.critical_C_W:.6g}")
    notes += list(th.notes)
    ver = None
    if verify:
        ver = verify_model(model, arch, G0=G0, networks=networks, init=init, seed=seed,
                           lambda_b=lambda_b, lambda_W=lambda_W)
        notes.append(f"verification ({ver.init}, {ver.networks} copies): "
                     + ("theory and measurement agree within 4 stderr + the neglected "
                        "higher-order terms" if ver.agrees else
                        "theory and measurement DISAGREE somewhere (see the table)"))
        if init is None and not th.at_criticality.all():
            notes.append("the verification re-initialized the copies with init_critical_, not "
                         "as this model is initialized now; pass init='pytorch' or your own "
                         "init function to check the theory for that initialization")
    return Diagnosis(arch, estimates, th, G0, K_in, ver, tuple(notes))


# ---------------------------------------------------------------------------
# learning rates
# ---------------------------------------------------------------------------

def _per_layer(value, L, name):
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1 or arr.size not in (1, L):
        raise ValueError(f"{name} must be a scalar or one value per layer ({L}); got "
                         f"{arr.size} values")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0; got {value!r}")
    return np.broadcast_to(arr, (L,)).astype(float)


def _learning_rates(arch, lambda_b, lambda_W, critical_depth_scaling):
    L = arch.depth
    if critical_depth_scaling:
        from ..theory.ntk_criticality import critical_learning_rates
        for name, v in (("lambda_b", lambda_b), ("lambda_W", lambda_W)):
            if np.ndim(v) != 0:
                raise ValueError(f"with critical_depth_scaling=True, {name} is the "
                                 f"depth-independent scalar; got {v!r}")
        r = critical_learning_rates(arch.activation, L, lambda_b=float(lambda_b),
                                    lambda_W=float(lambda_W))
        return np.asarray(r["lambda_b"], dtype=float), np.asarray(r["lambda_W"], dtype=float)
    return _per_layer(lambda_b, L, "lambda_b"), _per_layer(lambda_W, L, "lambda_W")


def param_groups(model: nn.Module, lr: float, lambda_b=1.0, lambda_W=1.0, *,
                 critical_depth_scaling: bool = False, **options) -> list:
    r"""Optimizer parameter groups implementing NOTATION.md's learning-rate tensor.

    Gradient descent with the NTK's hyperparameters is ``theta_mu <- theta_mu -
    eta lambda_mu dLoss/dtheta_mu`` with ``lambda_mu = lambda_b^(l)`` for a
    bias of layer l and ``lambda_W^(l) / n_{l-1}`` for a weight of layer l
    (``shared/NOTATION.md``). Each Linear's weight and bias get one group
    with ``lr = eta * (lambda_W^(l) / n_{l-1})`` and ``lr = eta *
    lambda_b^(l)``, so ``torch.optim.SGD(param_groups(model, eta))`` takes
    exactly these steps; the NTK those steps see is the model's ``H`` with
    the same ``lambda_b``, ``lambda_W`` (:func:`pdlt.flow`'s ``Theta``).
    With Adam the group rates scale the steps, but Adam's normalization of
    the gradient is outside the NTK description.

    Parameters
    ----------
    model : torch.nn.Module
        Read by :func:`pdlt.experiment.model.read_architecture`.
    lr : float
        The global learning rate eta, > 0.
    lambda_b, lambda_W : float or sequence of L floats, default 1
        Per-layer rates; with ``critical_depth_scaling`` the scalar
        depth-independent rates of
        :func:`pdlt.theory.ntk_criticality.critical_learning_rates`, which
        divides them by depth so that Theta stays finite at criticality.
    critical_depth_scaling : bool, default False
    **options
        Extra per-group options (``momentum=``, ``weight_decay=``, ...).

    Returns
    -------
    list of dict
        ``{"params": [tensor], "lr": float, "name": "<module>.weight", ...}``.

    Examples
    --------
    >>> import torch, torch.nn as nn, pdlt.torch
    >>> net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    >>> opt = torch.optim.SGD(pdlt.torch.param_groups(net, lr=0.1))
    >>> [g["lr"] for g in opt.param_groups]   # 0.1/4, 0.1, 0.1/32, 0.1
    [0.025, 0.1, 0.003125, 0.1]
    """
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    arch = read_architecture(model)
    lb, lw = _learning_rates(arch, lambda_b, lambda_W, critical_depth_scaling)
    groups = []
    for i, (l, lin) in enumerate(zip(arch.layers, arch.linears)):
        groups.append({"params": [lin.weight], "lr": lr * (float(lw[i]) / l.n_in),
                       "name": f"{l.path}.weight", **options})
        if lin.bias is not None:
            groups.append({"params": [lin.bias], "lr": lr * float(lb[i]),
                           "name": f"{l.path}.bias", **options})
    return groups


_REDUCTIONS = ("half_sum", "sum", "mean")


def max_stable_learning_rate(model, x, *, lambda_b=1.0, lambda_W=1.0,
                             critical_depth_scaling=False, reduction="half_sum") -> float:
    r"""The largest stable gradient-descent rate ``eta`` for MSE: ``2 / lambda_max(Theta)``.

    In the NTK (kernel) regime gradient descent on ``Loss = (1/2) sum_{a,i}
    (z_{i;a} - y_{i;a})^2`` moves the residuals by ``(1 - eta Theta)``,
    which converges iff ``eta < 2 / lambda_max(Theta)`` (``Theta`` the
    infinite-width NTK on the inputs ``x``, N x N). ``eta`` is the ``lr`` of
    :func:`param_groups` with the same ``lambda_b``, ``lambda_W``.

    Parameters
    ----------
    model : torch.nn.Module or pdlt.MLP
        A model is read with its initialization as it is (estimated
        ``C_b``, ``C_W``); an MLP is used as given (its own lambdas, ignoring
        ``lambda_b``, ``lambda_W``).
    x : array_like or tensor (N, n0)
    reduction : {"half_sum", "sum", "mean"}
        The loss the rate is for: the book's ``(1/2) sum``, ``sum`` (torch
        ``MSELoss(reduction="sum")``: half the rate), or ``mean`` (torch's
        default ``MSELoss()``: ``N n_L / 2`` times the rate).

    Returns
    -------
    float

    Notes
    -----
    A network of finite width has ``H = Theta + O(1/sqrt(n))``, so stay a
    margin below the bound (a factor 0.5-0.9). Above it the loss first grows
    (the top kernel mode by ``|1 - eta lambda_max|`` per step) until the
    network leaves the kernel regime: it then diverges or, for wide networks
    somewhat above the bound, "catapults" into a region of smaller NTK and
    converges there, which the kernel description does not cover.
    """
    from ..theory.statistics import flow

    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    if isinstance(model, MLP):
        mlp = model
    elif isinstance(model, nn.Module):
        arch = read_architecture(model)
        est = estimate_init(arch)
        lb, lw = _learning_rates(arch, lambda_b, lambda_W, critical_depth_scaling)
        mlp = arch.to_mlp(C_b=[e.C_b for e in est], C_W=[e.C_W for e in est], lambda_b=lb,
                          lambda_W=lw)
    else:
        raise TypeError(f"model must be a torch.nn.Module or a pdlt.MLP; got "
                        f"{type(model).__name__}")
    xs = _as_inputs(x, mlp.n0)
    Theta = np.asarray(flow(mlp, xs, susceptibilities=False).Theta[-1], dtype=float)
    lam = float(np.linalg.eigvalsh(0.5 * (Theta + Theta.T))[-1])
    if not lam > 0:
        raise ValueError(f"the NTK on these inputs has lambda_max = {lam:.3g} <= 0; "
                         "check lambda_b, lambda_W (all zero?)")
    eta = 2.0 / lam
    if reduction == "sum":
        return eta / 2.0
    if reduction == "mean":
        return eta * xs.shape[0] * mlp.n_out / 2.0
    return eta

