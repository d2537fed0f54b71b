"""Progress bars on stderr: the layer loops of long theory flows, and the
drivers of ensembles and blocked kernels.

The bar is tqdm's (when tqdm is installed; nothing otherwise), written to
stderr. :func:`layers` shows only on a terminal and only once the loop has
run for 5 s, so short flows, tests and piped output see nothing;
:func:`counter` follows the drivers' ``progress`` argument.
"""

from __future__ import annotations

import sys

_DELAY_S = 5.0


def layers(iterable, desc):
    """``iterable`` wrapped in a tqdm bar over layers (or returned as is without tqdm).

    Parameters
    ----------
    iterable : iterable
        The layer indices of the loop.
    desc : str
        What the loop computes, shown before the bar.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return iterable
    return tqdm(iterable, desc=desc, unit="layer", file=sys.stderr, delay=_DELAY_S,
                leave=False, disable=None)


def counter(total, progress, *, unit, desc, initial=0):
    """A tqdm bar on stderr counting ``total`` units of a driver loop, or None.

    Parameters
    ----------
    total, initial : int
        Units in all, and already done (a resumed run).
    progress : bool or None
        False: no bar; True: shown at once; None: shown once the loop has run 2 s.
    unit, desc : str
        The bar's unit and label.

    Returns
    -------
    tqdm or None
        None also when tqdm is not installed.
    """
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the torch extra
        return None
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr,
                delay=0 if progress else 2.0, leave=False)
