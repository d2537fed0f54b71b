"""Progress bars on stderr for the layer loops of long theory flows.

The bar is tqdm's (when tqdm is installed; nothing otherwise), written to
stderr, shown only on a terminal and only once the loop has run for 5 s, so
short flows, tests and piped output see nothing.
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
