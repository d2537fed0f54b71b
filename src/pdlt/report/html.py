"""A self-contained HTML page (figures embedded as base64 PNG)."""

from __future__ import annotations

import html
import json
import os

from .figures import depth_figure, figure_to_base64
from .suite import DERIVATIVE_STATS, STAT_SPECS, Z_PASS

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f4f4f4}.pass{color:#16700d}.fail{color:#b00020;font-weight:bold}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{width:360px}code{background:#f4f4f4}
"""


def write_report(suite, out_dir, *, write_json=False, title="pdlt: theory versus experiment"):
    """Write ``out_dir/index.html`` (and ``report.json`` if asked); return the path."""
    os.makedirs(out_dir, exist_ok=True)
    stats = list(suite.cases[0].theory) if suite.cases else []
    acts = list(dict.fromkeys(r.case.activation for r in suite.cases))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    n_fail = sum(not r.passed for r in suite.rows)
    verdict = ("<span class='pass'>all rows pass</span>" if not n_fail
               else f"<span class='fail'>{n_fail} of {len(suite.rows)} rows fail</span>")
    parts.append(f"<p>{len(suite.rows)} comparisons, {verdict}; {suite.seconds:.0f} s. "
                 f"A row passes when |measured - theory| &le; {Z_PASS:g} stderr + allowance. "
                 "Every network is initialized at the critical (C_b, C_W) of its activation "
                 "(<code>pdlt.theory.criticality</code>) and fed one input with K<sup>(1)</sup> = "
                 f"{suite.cases[0].case.K1 if suite.cases else 1:g}.</p>")
    parts.append("<h2>Allowances</h2><ul>")
    for s in stats:
        parts.append(f"<li><b>{s}</b>: {html.escape(STAT_SPECS[s].note)}</li>")
    parts.append("</ul><h2>Table (last layer)</h2><table><tr>"
                 + "".join(f"<th>{h}</th>" for h in
                           ("statistic", "activation", "C_b", "C_W", "width", "layer", "networks",
                            "theory", "measured", "stderr", "allowance", "sigmas", "result"))
                 + "</tr>")
    by_case = {(r.case.activation, r.case.width): r for r in suite.cases}
    for row in suite.rows:
        res = by_case.get((row.activation, row.width))
        base = row.statistic.split(" ")[0]
        nets = ""
        if res is not None and base in res.theory:
            nets = (res.case.derivative_networks if base in DERIVATIVE_STATS
                    and getattr(res.case, "derivative_networks", None) else res.case.networks)
        cb, cw = ((f"{res.C_b:.6g}", f"{res.C_W:.6g}") if res is not None
                  and base in res.theory else ("", ""))
        cls = "pass" if row.passed else "fail"
        parts.append(
            f"<tr><td>{html.escape(row.statistic)}</td><td>{row.activation}</td><td>{cb}</td>"
            f"<td>{cw}</td><td>{row.width}</td><td>{row.layer}</td>"
            f"<td>{nets}</td><td>{row.theory:.6g}</td><td>{row.measured:.6g}</td>"
            f"<td>{row.stderr:.3g}</td><td>{row.allowance:.3g}</td><td>{row.sigmas:.2f}</td>"
            f"<td class='{cls}'>{'pass' if row.passed else 'FAIL'}</td></tr>")
    parts.append("</table>")
    for s in stats:
        parts.append(f"<h2>{s} against depth</h2><div class='figs'>")
        for a in acts:
            fig = depth_figure(suite.cases, s, a, STAT_SPECS[s])
            parts.append(f"<img alt='{s} {a}' src='data:image/png;base64,{figure_to_base64(fig)}'>")
        parts.append("</div>")
    for study in suite.studies:
        figs = study.figure()
        figs = figs if isinstance(figs, dict) else {study.title: figs}
        parts.append(f"<h2>{html.escape(study.title)}</h2><p>{html.escape(study.note)}</p>"
                     "<div class='figs'>")
        for name, fig in figs.items():
            parts.append(f"<img alt='{html.escape(name)}' "
                         f"src='data:image/png;base64,{figure_to_base64(fig)}'>")
        parts.append("</div>")
    parts.append("</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    if write_json:
        with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as fh:
            json.dump(suite.to_dict(), fh, sort_keys=True, indent=1)
    return path
