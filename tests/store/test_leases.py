"""The pool-owner lease on SQLite and PostgreSQL: one holder at a time, renewed by its holder, taken over only once
expired (with the previous holder named), given up at once by ``release``; racing claimers never both get it."""

from __future__ import annotations

import datetime as dt
import threading

from photonstream.store.db import Database
from photonstream.store.leases import LeaseStore
from photonstream.store.models import utcnow

TTL_S = 10.0


def test_one_holder_renews_and_another_takes_over_only_once_it_expired(database: Database) -> None:
    leases = LeaseStore(database)
    now = utcnow()
    first = leases.claim("pools", "api-a", TTL_S, now)
    assert first is not None and not first.renewed and first.previous_owner is None
    assert leases.claim("pools", "api-b", TTL_S, now + dt.timedelta(seconds=9)) is None  # a holds it

    renewed = leases.claim("pools", "api-a", TTL_S, now + dt.timedelta(seconds=9))  # a's next pass
    assert renewed is not None and renewed.renewed and renewed.expires_at == now + dt.timedelta(seconds=19)
    assert leases.claim("pools", "api-b", TTL_S, now + dt.timedelta(seconds=18)) is None  # renewed: still a's

    taken = leases.claim("pools", "api-b", TTL_S, now + dt.timedelta(seconds=20))  # a stopped renewing
    assert taken is not None and not taken.renewed and taken.previous_owner == "api-a"
    holder = leases.holder("pools")
    assert holder is not None and (holder.owner, holder.acquired_at) == ("api-b", now + dt.timedelta(seconds=20))
    assert leases.claim("pools", "api-a", TTL_S, now + dt.timedelta(seconds=21)) is None  # a came back: b's now

    assert not leases.release("pools", "api-a")  # only the holder gives it up
    assert leases.release("pools", "api-b")
    back = leases.claim("pools", "api-a", TTL_S, now + dt.timedelta(seconds=22))
    assert back is not None and back.previous_owner == "api-b"


def race(leases: LeaseStore, owners: list[str], at: dt.datetime) -> list[str]:
    """Claim the lease from one thread per owner, all at once; the owners that got it."""
    winners: list[str] = []
    barrier = threading.Barrier(len(owners))

    def claim(owner: str) -> None:
        barrier.wait()
        if leases.claim("pools", owner, TTL_S, at) is not None:
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return winners


def test_racing_claimers_never_both_get_it(database: Database) -> None:
    leases = LeaseStore(database)
    now = utcnow()
    for round_ in range(3):  # the first lease (an insert), then takeovers of an expired one (updates)
        at = now + dt.timedelta(seconds=round_ * 2 * TTL_S)
        winners = race(leases, [f"api-{round_}-{i}" for i in range(4)], at)
        assert len(winners) == 1, winners
        holder = leases.holder("pools")
        assert holder is not None and holder.owner == winners[0]
