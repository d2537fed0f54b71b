"""The (C_b, C_W) phase diagram figure (matplotlib, imported lazily)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_phase_diagram"]

_PHASE_CODES = {"ordered": 0, "critical": 1, "chaotic": 2, "exploding": 3}


def plot_phase_diagram(diagram, path=None, ax=None):
    """Draw a :class:`~pdlt.theory.phase.PhaseDiagram`.

    Colours the phases (ordered, chaotic, exploding), shades by
    ``log chi_perp(K*)``, draws the critical line ``chi_perp = 1`` and marks
    the critical point.

    Parameters
    ----------
    diagram : PhaseDiagram
        From :func:`pdlt.theory.phase.phase_diagram`.
    path : str or path-like, optional
        Save the figure there (format from the suffix).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install 'pdlt[report]'``).
    """
    try:
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError as exc:
        raise ImportError("the phase-diagram figure needs matplotlib: pip install 'pdlt[report]'") \
            from exc
    d = diagram
    codes = np.vectorize(lambda p: _PHASE_CODES.get(p, np.nan), otypes=[float])(d.phase)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
    else:
        fig = ax.figure
    cmap = ListedColormap(["#9ecae1", "#ffffff", "#fdae6b", "#e6550d"])
    extent = (d.C_W.min(), d.C_W.max(), d.C_b.min(), d.C_b.max())
    ax.imshow(codes, origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=-0.5,
              vmax=3.5, interpolation="nearest")
    with np.errstate(divide="ignore", invalid="ignore"):
        lchi = np.log(d.chi_perp)
    if np.isfinite(lchi).sum() > 3 and len(d.C_W) > 1 and len(d.C_b) > 1:
        ax.contour(d.C_W, d.C_b, np.where(np.isfinite(lchi), lchi, np.nan), levels=9,
                   colors="k", linewidths=0.4, alpha=0.4)
    line = d.critical_line
    if len(line["C_W"]) > 1:
        ax.plot(line["C_W"], line["C_b"], "k-", lw=2, label="critical line chi_perp = 1")
    cp = d.critical_point
    if cp.C_W is not None:
        ax.plot([cp.C_W], [cp.C_b], "r*", ms=14,
                label=f"critical point ({cp.universality_class})")
    ax.set_xlabel("C_W")
    ax.set_ylabel("C_b")
    ax.set_title(f"{d.activation}: ordered (blue), chaotic (orange), exploding (red)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
