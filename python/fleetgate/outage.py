"""A store's outage, as the code that depends on the store sees it, said once.

1. The first failure starts an outage: one WARNING names the store, the error and what
   the caller does meanwhile (the traceback goes to DEBUG, once).
2. Later failures of the same outage say nothing: a background loop that ticks every half
   second, or a request path under load, does not fill the log.
3. The first success ends it: one INFO says the store answers again, and after how long.

The request path also asks :meth:`Outage.suspended` before asking the store: within
``recheck_after`` of the last failure the store is not asked at all, so that an outage
costs each call nothing, not a timeout; after that one caller asks it again while the
others still go without (the Rust limiter does the same for quotas).
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["Outage"]

log = logging.getLogger("fleetgate")


class Outage:
    """The outages of one store, for one user of it (budgets, modes, rollouts, ...)."""

    def __init__(self, store: str, *, recheck_after: float = 0.5) -> None:
        #: What to call the store in the log: "the budgets' Redis at redis://…".
        self.store = store
        self.recheck_after = recheck_after
        self._lock = threading.Lock()
        self._since: float | None = None
        self._retry_at = 0.0
        #: Outages seen since this was made.
        self.count = 0

    @property
    def down(self) -> bool:
        """Whether an outage is going on (no success since the last failure)."""
        return self._since is not None

    def failed(self, error: object, meanwhile: str) -> bool:
        """A call to the store failed with `error`; `meanwhile` says what is done instead.
        True when this started an outage (and was logged)."""
        now = time.monotonic()
        with self._lock:
            self._retry_at = now + self.recheck_after
            if self._since is not None:
                return False
            self._since = now
            self.count += 1
        log.warning("fleetgate: %s is unavailable (%s); %s", self.store, error, meanwhile)
        if isinstance(error, BaseException) and log.isEnabledFor(logging.DEBUG):
            log.debug("fleetgate: the failure that started the outage of %s", self.store, exc_info=error)
        return True

    def answered(self, after: str = "") -> bool:
        """A call to the store succeeded; `after` says what goes back to normal. True when
        this ended an outage (and was logged)."""
        if self._since is None:  # the common case, without the lock
            return False
        with self._lock:
            since, self._since = self._since, None
        if since is None:
            return False
        log.info("fleetgate: %s answers again after %.1fs%s", self.store, time.monotonic() - since,
                 f"; {after}" if after else "")
        return True

    def suspended(self) -> bool:
        """Whether to go without the store now: True within ``recheck_after`` of its last
        failure. Past that, one caller gets False (to ask the store again) and the others
        True until that caller's answer is in or ``recheck_after`` passes again."""
        if self._since is None:
            return False
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                return False
            if now < self._retry_at:
                return True
            self._retry_at = now + self.recheck_after
            return False
