"""Ray plumbing shared by the sharded ensembles and the blocked kernels.

``ray`` is imported only when a Ray backend is asked for; this module imports
neither torch nor ray at import time.
"""

from __future__ import annotations

import logging
import os


class RaySession:
    """``ray.init`` unless Ray is already up; shut down only what it started."""

    def __init__(self, address, workers):
        self.address, self.workers, self.started = address, workers, False

    def __enter__(self):
        try:
            import ray
        except ImportError as exc:
            raise ImportError("backend='ray' needs Ray: pip install 'pdlt[ray]' (ray==2.60.0), "
                              "or use backend='local'") from exc
        self.ray = ray
        if not ray.is_initialized():
            kw = dict(log_to_driver=False, logging_level=logging.WARNING)
            if self.address is None:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                         **kw)
            else:
                ray.init(address=self.address, **kw)
            self.started = True
        return ray

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        return False


def as_completed(ray, refs):
    """Yield ``(refs[ref], result)`` as Ray tasks finish; cancel the rest if interrupted.

    Parameters
    ----------
    ray : module
    refs : dict
        Object reference -> the caller's key for that task.
    """
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield refs[ready[0]], ray.get(ready[0])
    finally:
        for ref in pending:  # interrupted: stop the work still queued or running
            ray.cancel(ref, force=True)
