"""Ray plumbing and the driver loop shared by the sharded ensembles and the blocked kernels.

``ray`` is imported only when a Ray backend is asked for; this module imports
neither torch nor ray at import time.
"""

from __future__ import annotations

import logging
import os
import time


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


def drain(results, merge, *, save=None, interval, interrupt_after=None, bar=None) -> int:
    """Merge finished tasks as they arrive; checkpoint periodically and on the way out.

    Parameters
    ----------
    results : iterator of (key, result)
        Finished tasks (an executor); closed at the end, so Ray cancels what is
        still queued when the loop is left early.
    merge : callable
        ``merge(key, result)``: add one finished task to the driver's state.
    save : callable, optional
        ``save()``: write that state to disk; called at most every ``interval``
        seconds while tasks finish, and once more on the way out (normal end,
        Ctrl-C, SIGTERM turned into an exception, any error) when some task was
        merged. None: no checkpoint.
    interval : float
        Seconds between checkpoint writes. The caller passes its module's
        ``CHECKPOINT_INTERVAL`` as read at call time.
    interrupt_after : int, optional
        Test hook: raise KeyboardInterrupt, as a user pressing Ctrl-C would,
        once this many tasks have been merged (the caller's ``_INTERRUPT_AFTER``).
    bar : tqdm, optional
        Advanced by one per task and closed at the end.

    Returns
    -------
    int
        The number of tasks merged.
    """
    merged = 0
    last = time.monotonic()
    try:
        for key, result in results:
            merge(key, result)
            merged += 1
            if bar is not None:
                bar.update(1)
            if save is not None and time.monotonic() - last >= interval:
                save()
                last = time.monotonic()
            if interrupt_after is not None and merged >= interrupt_after:
                raise KeyboardInterrupt("pdlt test hook: driver interrupted")
    finally:
        if hasattr(results, "close"):
            results.close()
        if bar is not None:
            bar.close()
        if save is not None and merged:
            save()
    return merged
