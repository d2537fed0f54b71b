"""PyTorch integration: put a model at criticality in one line.

>>> from pdlt.torch import init_critical_          # doctest: +SKIP
>>> init_critical_(model)                           # doctest: +SKIP

A thin public face over :mod:`pdlt.experiment.init`, imported lazily so that
``import pdlt.torch`` without torch fails only when a function is used.
(Inside this module ``import torch`` would still find PyTorch: absolute
imports are the default.)
"""

from __future__ import annotations

__all__ = ["init_critical_", "detect_activation"]


def __getattr__(name):
    if name in __all__:
        try:
            from .experiment import init as _init
        except ImportError as exc:
            raise ImportError(
                f"pdlt.torch.{name} needs PyTorch: pip install 'pdlt[torch]' (torch==2.13.0)"
            ) from exc
        return getattr(_init, name)
    raise AttributeError(f"module 'pdlt.torch' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
