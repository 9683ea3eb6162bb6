"""The loop's lock: NAME's lease in the store (tunery.store.loop_leases), held for one pass and renewed
by a thread while it runs. A second loop for NAME, on this machine or any other sharing the store, is
refused with who holds it; a holder that died frees NAME when its lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

from tunery.errors import ConfigError, TuneryError
from tunery.store.db import Store
from tunery.store.loop_leases import release_lease, renew_lease, take_lease

log = logging.getLogger("tunery.loop")
LEASE_S = 60.0  # a dead holder blocks NAME at most this long


class LoopLease:
    """A held lease; `lost` is set if it ran out before a renewal (another loop may hold NAME now)."""

    def __init__(self, store: Store, name: str, holder: str, lease_s: float):
        self.store, self.name, self.holder, self.lease_s = store, name, holder, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()

    def check(self) -> None:
        """Raise if the lease was lost: nothing may be promoted by a loop that no longer holds NAME."""
        if self.lost.is_set():
            raise ConfigError(f"the loop lost its lease on {self.name} (renewals failed for {self.lease_s:g} s)",
                              code="loop_lease_lost", hint="run the loop again")

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not renew_lease(self.store, self.name, self.holder, self.lease_s):
                    self.lost.set()
                    return
            except TuneryError as exc:  # the database is away: try again at the next tick
                log.warning("loop %s: could not renew its lease: %s", self.name, exc.message)


@contextlib.contextmanager
def loop_lock(store: Store, name: str, *, lease_s: float = LEASE_S) -> Iterator[LoopLease]:
    """Hold NAME's loop lease for the block; refused (loop_running) while another holder's lease is live."""
    holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    row = take_lease(store, name, holder, host=socket.gethostname(), pid=os.getpid(), lease_s=lease_s)
    if row["holder"] != holder:
        raise ConfigError(f"a loop for {name} is already running: {row['holder']} (host {row['host']}, pid "
                          f"{row['pid']}) holds it since {_clock(row['acquired_at'])}", code="loop_running",
                          hint=f"wait for it to finish; if it died, its lease runs out at {_clock(row['expires_at'])}")
    lease = LoopLease(store, name, holder, lease_s)
    renewer = threading.Thread(target=lease._renew_until_stopped, name=f"loop-lease-{name}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        renewer.join()
        release_lease(store, name, holder)


def _clock(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))
