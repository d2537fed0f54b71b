"""PyTorch integration: the theory for your own model, in two calls.

>>> import pdlt.torch                                            # doctest: +SKIP
>>> print(pdlt.torch.diagnose(model, x))        # what the theory says  # doctest: +SKIP
>>> pdlt.torch.init_critical_(model)            # critical initialization  # doctest: +SKIP
>>> opt = torch.optim.SGD(pdlt.torch.param_groups(model, lr=0.5))  # doctest: +SKIP

* :func:`diagnose` reads an MLP (``nn.Sequential`` of ``nn.Linear``,
  activations and :class:`Residual` blocks), estimates its ``C_W``, ``C_b``
  per layer from the weights as they are, and returns the theory's per-layer
  diagnosis; ``verify=True`` measures the same statistics on re-initialized
  copies (:mod:`pdlt.experiment.bridge`).
* :func:`init_critical_` puts a model at criticality in place
  (:mod:`pdlt.experiment.init`).
* :func:`param_groups` and :func:`max_stable_learning_rate`: the book's
  learning-rate tensor for ``torch.optim`` and the largest stable rate.

A thin public face, imported lazily so that ``import pdlt.torch`` without
torch fails only when a function is used. (Inside this module ``import
torch`` would still find PyTorch: absolute imports are the default.)
"""

from __future__ import annotations

import importlib

#: public name -> module under pdlt.experiment that defines it
_WHERE = {
    "init_critical_": "init",
    "detect_activation": "init",
    "diagnose": "bridge",
    "Diagnosis": "bridge",
    "Verification": "bridge",
    "param_groups": "bridge",
    "max_stable_learning_rate": "bridge",
    "Residual": "model",
    "UnsupportedModelError": "model",
    "read_architecture": "model",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        try:
            mod = importlib.import_module(f"pdlt.experiment.{_WHERE[name]}")
        except ImportError as exc:
            raise ImportError(
                f"pdlt.torch.{name} needs PyTorch: pip install 'pdlt[torch]' (torch==2.13.0)"
            ) from exc
        return getattr(mod, name)
    raise AttributeError(f"module 'pdlt.torch' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
