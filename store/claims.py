"""Short-lived claims on units of work, so two processes working on one eval run ask each unit once.

A process claims a unit (a key within the run, e.g. "81|2|BA") before asking for it, and drops
the claim once the result is stored or the ask failed. A claim held by someone else is taken
over only when it has lapsed: its lease ran out (holders renew their claims while they work) or
its holder process is gone (same host, pid no longer alive), so a killed run never blocks the
next one for long. The catalog's unique indexes stay the guarantee of one result per unit;
claims only spare the second ask.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any

from store.catalog import Catalog

CLAIM_LEASE_S = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class UnitClaims:
    """This process's claims on the units of one eval run."""

    def __init__(self, cat: Catalog, eval_id: str, lease_s: float = CLAIM_LEASE_S):
        self.cat = cat
        self.eval_id = eval_id
        self.lease_s = lease_s
        self.holder = secrets.token_hex(8)
        self.pid = os.getpid()
        self.host = socket.gethostname()

    def lapsed(self, claim: dict[str, Any]) -> bool:
        """A claim nobody is working on any more."""
        if claim["expires_at"] < time.time():
            return True
        return claim["host"] == self.host and not _alive(int(claim["pid"]))

    def take(self, unit: str) -> bool:
        """Claim `unit`; False when another live process holds it."""
        with self.cat.immediate():
            claim = self.cat.one(
                "select holder, pid, host, expires_at from unit_claims where eval_id = ? and unit = ?",
                [self.eval_id, unit],
            )
            if claim is not None and claim["holder"] != self.holder and not self.lapsed(claim):
                return False
            self.cat.write(
                "insert or replace into unit_claims (eval_id, unit, holder, pid, host, expires_at) "
                "values (?, ?, ?, ?, ?, ?)",
                [self.eval_id, unit, self.holder, self.pid, self.host, time.time() + self.lease_s],
            )
        return True

    def release(self, unit: str) -> None:
        self.cat.write(
            "delete from unit_claims where eval_id = ? and unit = ? and holder = ?", [self.eval_id, unit, self.holder]
        )

    def renew(self) -> None:
        """Push back the expiry of every claim this process holds (call well within the lease)."""
        self.cat.write(
            "update unit_claims set expires_at = ? where holder = ?", [time.time() + self.lease_s, self.holder]
        )

    def release_all(self) -> None:
        self.cat.write("delete from unit_claims where holder = ?", [self.holder])

    def held_elsewhere(self) -> set[str]:
        """Units of the run another live process is working on now."""
        rows = self.cat.query(
            "select unit, holder, pid, host, expires_at from unit_claims where eval_id = ?", [self.eval_id]
        )
        return {r["unit"] for r in rows if r["holder"] != self.holder and not self.lapsed(r)}
