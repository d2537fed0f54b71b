"""Progress bars on stderr: the layer loops of long theory flows, and the
drivers of ensembles and blocked kernels.

The bar is tqdm's (when tqdm is installed; nothing otherwise), written to
stderr. :func:`layers` shows only on a terminal and only once the loop has
run for 5 s, so short flows, tests and piped output see nothing;
:func:`counter` follows the drivers' ``progress`` argument.
"""

from __future__ import annotations

import contextlib
import sys

_DELAY_S = 5.0
#: None: layer bars on a terminal only (after _DELAY_S); True: always, at once; False: never
_SHOW = None


@contextlib.contextmanager
def shown(show):
    """Within the block, layer bars are shown always (True), never (False) or on a terminal (None).

    The CLI's ``--progress`` (True) and ``--json`` (False) set it around a command.
    """
    global _SHOW
    before, _SHOW = _SHOW, show
    try:
        yield
    finally:
        _SHOW = before


def layers(iterable, desc):
    """``iterable`` wrapped in a tqdm bar over layers (or returned as is without tqdm).

    Parameters
    ----------
    iterable : iterable
        The layer indices of the loop.
    desc : str
        What the loop computes, shown before the bar.
    """
    if _SHOW is False:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return iterable
    return tqdm(iterable, desc=desc, unit="layer", file=sys.stderr,
                delay=0.0 if _SHOW else _DELAY_S, leave=False,
                disable=False if _SHOW else None)


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
