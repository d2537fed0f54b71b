"""The theory-versus-experiment report (needs matplotlib and torch)."""

from .suite import STAT_SPECS, Case, Row, SuiteResult, default_cases, run_case, run_suite

__all__ = ["STAT_SPECS", "Case", "Row", "SuiteResult", "default_cases", "run_case", "run_suite",
           "write_report"]


def write_report(*args, **kwargs):
    """See :func:`pdlt.report.html.write_report` (imports matplotlib lazily)."""
    from .html import write_report as _write

    return _write(*args, **kwargs)
