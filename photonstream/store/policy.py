"""The policy tables (identities, groups, experiment grants, roles), revocations, the dataset catalogue and the
audit log, behind one small store the API, the CLI and the tests share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from photonstream.errors import ConfigError
from photonstream.store.db import Database
from photonstream.store.models import (
    AuditEntry,
    Dataset,
    ExperimentGrant,
    GroupMember,
    Identity,
    RevokedCredential,
    RoleBinding,
    utcnow,
)

ROLES = ("user", "operator", "admin")
SUBJECT_KINDS = ("identity", "group")
CREDENTIAL_KINDS = ("certificate", "token")
ALL_EXPERIMENTS = "*"
SEEN_EVERY = dt.timedelta(minutes=1)  # last_seen_at is refreshed at most this often per identity

SubjectKind = Literal["identity", "group"]


def _check(kind: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{kind}: {value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Subject:
    kind: str
    name: str


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- identities and groups ------------------------------------------------------------------------------

    def seen(self, name: str) -> bool:
        """Record that ``name`` authenticated; return False when an admin disabled it."""
        now = utcnow()
        try:
            with self.db.session() as session:
                identity = session.get(Identity, name)
                if identity is None:
                    session.add(Identity(name=name, created_at=now, last_seen_at=now, disabled=False))
                    return True
                if identity.last_seen_at is None or now - identity.last_seen_at > SEEN_EVERY:
                    identity.last_seen_at = now
                return not identity.disabled
        except IntegrityError:  # another request created it first
            with self.db.session() as session:
                identity = session.get(Identity, name)
                return identity is not None and not identity.disabled

    def set_disabled(self, name: str, disabled: bool) -> None:
        now = utcnow()
        with self.db.session() as session:
            identity = session.get(Identity, name)
            if identity is None:
                session.add(Identity(name=name, created_at=now, last_seen_at=None, disabled=disabled))
            else:
                identity.disabled = disabled

    def groups_of(self, identity: str) -> set[str]:
        with self.db.session() as session:
            return set(session.scalars(select(GroupMember.group_name).where(GroupMember.identity == identity)))

    def add_member(self, group: str, identity: str) -> bool:
        with self.db.session() as session:
            if session.get(GroupMember, (group, identity)) is not None:
                return False
            session.add(GroupMember(group_name=group, identity=identity))
            return True

    def remove_member(self, group: str, identity: str) -> bool:
        with self.db.session() as session:
            result = session.execute(
                delete(GroupMember).where(GroupMember.group_name == group, GroupMember.identity == identity)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- grants and roles -----------------------------------------------------------------------------------

    @staticmethod
    def _subjects(model: type[ExperimentGrant] | type[RoleBinding], identity: str, groups: Iterable[str]) -> object:
        groups = list(groups)
        clause = (model.subject_kind == "identity") & (model.subject == identity)
        if groups:
            clause = or_(clause, (model.subject_kind == "group") & (model.subject.in_(groups)))
        return clause

    def experiments_of(self, identity: str, groups: Iterable[str]) -> set[str]:
        """Experiments granted to the identity or any of its groups ('*' means every one)."""
        with self.db.session() as session:
            clause = self._subjects(ExperimentGrant, identity, groups)
            return set(session.scalars(select(ExperimentGrant.experiment).where(clause)))  # type: ignore[arg-type]

    def roles_of(self, identity: str, groups: Iterable[str]) -> set[str]:
        with self.db.session() as session:
            clause = self._subjects(RoleBinding, identity, groups)
            return set(session.scalars(select(RoleBinding.role).where(clause)))  # type: ignore[arg-type]

    def grant(self, kind: str, subject: str, experiment: str) -> bool:
        _check("subject kind", kind, SUBJECT_KINDS)
        with self.db.session() as session:
            exists = session.scalar(
                select(ExperimentGrant.id).where(
                    ExperimentGrant.subject_kind == kind,
                    ExperimentGrant.subject == subject,
                    ExperimentGrant.experiment == experiment,
                )
            )
            if exists is not None:
                return False
            session.add(ExperimentGrant(subject_kind=kind, subject=subject, experiment=experiment))
            return True

    def ungrant(self, kind: str, subject: str, experiment: str) -> bool:
        with self.db.session() as session:
            result = session.execute(
                delete(ExperimentGrant).where(
                    ExperimentGrant.subject_kind == kind,
                    ExperimentGrant.subject == subject,
                    ExperimentGrant.experiment == experiment,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def bind_role(self, kind: str, subject: str, role: str) -> bool:
        _check("subject kind", kind, SUBJECT_KINDS)
        _check("role", role, ROLES)
        with self.db.session() as session:
            exists = session.scalar(
                select(RoleBinding.id).where(
                    RoleBinding.subject_kind == kind, RoleBinding.subject == subject, RoleBinding.role == role
                )
            )
            if exists is not None:
                return False
            session.add(RoleBinding(subject_kind=kind, subject=subject, role=role))
            return True

    def unbind_role(self, kind: str, subject: str, role: str) -> bool:
        with self.db.session() as session:
            result = session.execute(
                delete(RoleBinding).where(
                    RoleBinding.subject_kind == kind, RoleBinding.subject == subject, RoleBinding.role == role
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def snapshot(self) -> dict[str, list[dict[str, object]]]:
        """The whole policy as plain data (admin listing, CLI)."""
        with self.db.session() as session:
            return {
                "grants": [
                    {"subject_kind": g.subject_kind, "subject": g.subject, "experiment": g.experiment}
                    for g in session.scalars(select(ExperimentGrant).order_by(ExperimentGrant.id))
                ],
                "roles": [
                    {"subject_kind": r.subject_kind, "subject": r.subject, "role": r.role}
                    for r in session.scalars(select(RoleBinding).order_by(RoleBinding.id))
                ],
                "members": [
                    {"group": m.group_name, "identity": m.identity}
                    for m in session.scalars(select(GroupMember).order_by(GroupMember.group_name, GroupMember.identity))
                ],
                "identities": [
                    {
                        "name": i.name,
                        "disabled": i.disabled,
                        "last_seen_at": i.last_seen_at.isoformat() if i.last_seen_at else None,
                    }
                    for i in session.scalars(select(Identity).order_by(Identity.name))
                ],
            }

    # --- revocation -----------------------------------------------------------------------------------------

    def revoke(self, kind: str, credential_id: str, by: str, reason: str = "") -> bool:
        _check("credential kind", kind, CREDENTIAL_KINDS)
        with self.db.session() as session:
            if session.get(RevokedCredential, (kind, credential_id)) is not None:
                return False
            session.add(
                RevokedCredential(
                    kind=kind, credential_id=credential_id, revoked_at=utcnow(), revoked_by=by, reason=reason
                )
            )
            return True

    def is_revoked(self, kind: str, credential_id: str) -> bool:
        with self.db.session() as session:
            return session.get(RevokedCredential, (kind, credential_id)) is not None

    def revocations(self) -> list[RevokedCredential]:
        with self.db.session() as session:
            return list(session.scalars(select(RevokedCredential).order_by(RevokedCredential.revoked_at)))

    # --- datasets -------------------------------------------------------------------------------------------

    def put_dataset(
        self, experiment: str, run: int, detectors: Sequence[str], size_bytes: int, events: int | None
    ) -> None:
        now = utcnow()
        with self.db.session() as session:
            row = session.get(Dataset, (experiment, run))
            if row is None:
                session.add(
                    Dataset(
                        experiment=experiment,
                        run=run,
                        detectors=list(detectors),
                        size_bytes=size_bytes,
                        events=events,
                        updated_at=now,
                    )
                )
            else:
                session.execute(
                    update(Dataset)
                    .where(Dataset.experiment == experiment, Dataset.run == run)
                    .values(detectors=list(detectors), size_bytes=size_bytes, events=events, updated_at=now)
                    .execution_options(synchronize_session=False)
                )

    def datasets(self, experiments: Iterable[str] | None) -> list[Dataset]:
        """Catalogue rows, limited to ``experiments`` unless None (everything)."""
        query = select(Dataset).order_by(Dataset.experiment, Dataset.run)
        if experiments is not None:
            query = query.where(Dataset.experiment.in_(list(experiments)))
        with self.db.session() as session:
            return list(session.scalars(query))

    # --- audit ----------------------------------------------------------------------------------------------

    def audit(self, identity: str, action: str, obj: str, outcome: str, detail: str = "", request_id: str = "") -> None:
        with self.db.session() as session:
            session.add(
                AuditEntry(
                    at=utcnow(),
                    request_id=request_id[:64],
                    identity=identity[:128],
                    action=action[:64],
                    object=obj[:256],
                    outcome=outcome[:16],
                    detail=detail,
                )
            )

    def audit_entries(
        self, *, identity: str | None = None, action: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[AuditEntry]:
        query = select(AuditEntry).where(AuditEntry.id > after_id)
        if identity is not None:
            query = query.where(AuditEntry.identity == identity)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        with self.db.session() as session:
            return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))
