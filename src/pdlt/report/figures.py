"""Matplotlib figures of the report (imported lazily; Agg backend)."""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["depth_figure", "figure_to_base64"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def depth_figure(case_results, statistic, activation, spec):
    """Theory lines over ensemble points with error bars against depth.

    One line and one set of points per width, for one activation.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, res in enumerate(r for r in case_results if r.case.activation == activation
                            and statistic in r.theory):
        c = colors[k % len(colors)]
        L = res.case.depth
        layers = np.arange(1, L + 1)
        if statistic in res.normalized:
            th, mean, err = res.normalized[statistic]
        else:
            th = res.theory[statistic]
            mean, err = res.measured[statistic].mean, res.measured[statistic].stderr
        tag = f"n={res.case.width}" + (f", L={L}" if res.case.stats is not None else "")
        ax.plot(layers, th, "-", color=c, lw=1.4, label=f"theory {tag}")
        ax.errorbar(layers, mean, yerr=err, fmt="o", ms=4, color=c, capsize=2,
                    label=f"ensemble {tag} (M={res.measured[statistic].n_networks})")
    ax.set_xlabel("layer l")
    ax.set_ylabel(spec.ylabel or statistic)
    ax.set_title(f"{statistic}: {activation} at criticality")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig
