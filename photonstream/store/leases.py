"""Leases (table ``pool_leases``): one API process at a time runs the elastic worker pools on a database.

``claim(name, owner, ttl_s, now)`` takes the lease when nobody holds it, renews it when ``owner`` holds it, and
takes it over when its holder let it expire; it returns what was taken (``Claim``: whether it is a takeover, and
from whom) or None while someone else holds it. The decision is one conditional ``UPDATE`` (or the ``INSERT`` of a
lease nobody ever held), so two processes claiming at once never both get it, on SQLite and on PostgreSQL.
Times are the claimers' clocks: hosts sharing a database keep them in step (NTP) well within the lease's length.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError

from photonstream.store.db import Database
from photonstream.store.models import PoolLease


@dataclass(frozen=True)
class Claim:
    owner: str
    expires_at: dt.datetime
    renewed: bool  # the owner held it already (else this claim began its tenure)
    previous_owner: str | None = None  # whom a takeover took it from (None: renewed, or nobody held it before)


class LeaseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(self, name: str, owner: str, ttl_s: float, now: dt.datetime) -> Claim | None:
        expires = now + dt.timedelta(seconds=ttl_s)
        for _ in range(2):  # a second round only when another process inserted the first lease meanwhile
            try:
                with self.db.session() as session:
                    previous = session.scalar(select(PoolLease.owner).where(PoolLease.name == name))
                    if previous is None:
                        session.add(PoolLease(name=name, owner=owner, acquired_at=now, expires_at=expires))
                        session.flush()
                        return Claim(owner, expires, renewed=False)
                    if previous == owner:
                        condition = PoolLease.owner == owner
                        values = {"expires_at": expires}
                    else:
                        condition = and_(PoolLease.owner == previous, PoolLease.expires_at < now)
                        values = {"owner": owner, "acquired_at": now, "expires_at": expires}
                    done = session.execute(update(PoolLease).where(PoolLease.name == name, condition).values(**values))
                    if done.rowcount != 1:  # type: ignore[attr-defined]
                        return None  # held by someone else (or taken by another claimer just now)
                    if previous == owner:
                        return Claim(owner, expires, renewed=True)
                    return Claim(owner, expires, renewed=False, previous_owner=previous)
            except IntegrityError:
                continue
        return None

    def release(self, name: str, owner: str) -> bool:
        """Give the lease up now (the owner stops), so another process takes it on its next claim."""
        with self.db.session() as session:
            done = session.execute(
                update(PoolLease)
                .where(PoolLease.name == name, PoolLease.owner == owner)
                .values(expires_at=dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def holder(self, name: str) -> PoolLease | None:
        with self.db.session() as session:
            return session.scalars(select(PoolLease).where(PoolLease.name == name)).first()
