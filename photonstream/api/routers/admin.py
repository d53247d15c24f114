"""/v1/admin: the policy (grants, roles, group members, disabled identities), revocations, datasets, audit log.

Admins only; every change is audited like any other decision.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import zmq
from fastapi import APIRouter, Depends, Query

from photonstream.api.deps import Context, admin_context
from photonstream.api.routers.streams import AUTH_ERRORS
from photonstream.api.schemas import (
    IDENTITY,
    NAME,
    AuditEntryInfo,
    Changed,
    DatasetBody,
    Grant,
    IdentityState,
    Membership,
    PolicySnapshot,
    Revocation,
    RevocationInfo,
    RoleBindingBody,
)
from photonstream.api.strict import request_body, strict_body
from photonstream.errors import PhotonstreamError

log = logging.getLogger("photonstream.api")
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=AUTH_ERRORS)
# each route names admin_context before its body: a caller who is not an admin is refused before the body is parsed

SubjectKind = Annotated[Literal["identity", "group"], Query()]
Subject = Annotated[str, Query(pattern=IDENTITY)]


@router.get("/policy", response_model=PolicySnapshot, summary="The whole policy")
def get_policy(ctx: Context = Depends(admin_context)) -> PolicySnapshot:
    ctx.audit.allow("policy.read", "policy")
    return PolicySnapshot(**ctx.svc.policy.snapshot())


@router.post(
    "/grants",
    response_model=Changed,
    summary="Grant an experiment to an identity or group",
    openapi_extra=request_body(Grant),
)
def add_grant(ctx: Context = Depends(admin_context), body: Grant = Depends(strict_body(Grant))) -> Changed:
    changed = ctx.svc.policy.grant(body.subject_kind, body.subject, body.experiment)
    ctx.audit.allow("policy.grant", f"{body.subject_kind}:{body.subject}", f"experiment {body.experiment}")
    return Changed(changed=changed)


@router.delete("/grants", response_model=Changed, summary="Withdraw an experiment grant")
def remove_grant(
    subject_kind: SubjectKind,
    subject: Subject,
    experiment: Annotated[str, Query(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")],
    ctx: Context = Depends(admin_context),
) -> Changed:
    changed = ctx.svc.policy.ungrant(subject_kind, subject, experiment)
    ctx.audit.allow("policy.ungrant", f"{subject_kind}:{subject}", f"experiment {experiment}")
    return Changed(changed=changed)


@router.post(
    "/roles",
    response_model=Changed,
    summary="Give an identity or group a role",
    openapi_extra=request_body(RoleBindingBody),
)
def add_role(
    ctx: Context = Depends(admin_context), body: RoleBindingBody = Depends(strict_body(RoleBindingBody))
) -> Changed:
    changed = ctx.svc.policy.bind_role(body.subject_kind, body.subject, body.role)
    ctx.audit.allow("policy.role", f"{body.subject_kind}:{body.subject}", f"role {body.role}")
    return Changed(changed=changed)


@router.delete("/roles", response_model=Changed, summary="Take a role away")
def remove_role(
    subject_kind: SubjectKind,
    subject: Subject,
    role: Annotated[Literal["user", "operator", "admin"], Query()],
    ctx: Context = Depends(admin_context),
) -> Changed:
    changed = ctx.svc.policy.unbind_role(subject_kind, subject, role)
    ctx.audit.allow("policy.unrole", f"{subject_kind}:{subject}", f"role {role}")
    return Changed(changed=changed)


@router.post(
    "/members", response_model=Changed, summary="Add an identity to a group", openapi_extra=request_body(Membership)
)
def add_member(ctx: Context = Depends(admin_context), body: Membership = Depends(strict_body(Membership))) -> Changed:
    changed = ctx.svc.policy.add_member(body.group, body.identity)
    ctx.audit.allow("policy.member", f"group:{body.group}", f"add {body.identity}")
    return Changed(changed=changed)


@router.delete("/members", response_model=Changed, summary="Remove an identity from a group")
def remove_member(
    group: Annotated[str, Query(pattern=NAME)],
    identity: Subject,
    ctx: Context = Depends(admin_context),
) -> Changed:
    changed = ctx.svc.policy.remove_member(group, identity)
    ctx.audit.allow("policy.member", f"group:{group}", f"remove {identity}")
    return Changed(changed=changed)


@router.put(
    "/identities",
    response_model=Changed,
    summary="Disable or re-enable an identity",
    openapi_extra=request_body(IdentityState),
)
def set_identity(
    ctx: Context = Depends(admin_context), body: IdentityState = Depends(strict_body(IdentityState))
) -> Changed:
    ctx.svc.policy.set_disabled(body.identity, body.disabled)
    ctx.audit.allow("policy.identity", f"identity:{body.identity}", "disabled" if body.disabled else "enabled")
    resync_buffer_grants(ctx)
    return Changed(changed=True)


@router.post(
    "/revocations",
    response_model=Changed,
    summary="Revoke a certificate serial or token id",
    openapi_extra=request_body(Revocation),
)
def revoke(ctx: Context = Depends(admin_context), body: Revocation = Depends(strict_body(Revocation))) -> Changed:
    credential_id = body.credential_id
    if body.kind == "certificate":  # serials are kept as lower-case hex without separators, as the CA shows them
        from photonstream.api.auth.ca import format_serial, parse_serial

        credential_id = format_serial(parse_serial(credential_id))
    changed = ctx.svc.policy.revoke(body.kind, credential_id, ctx.principal.identity, body.reason)
    ctx.audit.allow("credential.revoke", f"{body.kind}:{credential_id}", body.reason)
    resync_buffer_grants(ctx)
    return Changed(changed=changed)


@router.get("/revocations", response_model=list[RevocationInfo], summary="Revoked credentials")
def list_revocations(ctx: Context = Depends(admin_context)) -> list[RevocationInfo]:
    ctx.audit.allow("credential.list", "revocations")
    return [
        RevocationInfo(
            kind=r.kind,
            credential_id=r.credential_id,
            revoked_at=r.revoked_at,
            revoked_by=r.revoked_by,
            reason=r.reason,
        )
        for r in ctx.svc.policy.revocations()
    ]


@router.put(
    "/datasets",
    response_model=Changed,
    summary="Add or update a run in the dataset catalogue",
    openapi_extra=request_body(DatasetBody),
)
def put_dataset(
    ctx: Context = Depends(admin_context), body: DatasetBody = Depends(strict_body(DatasetBody))
) -> Changed:
    ctx.svc.policy.put_dataset(body.experiment, body.run, body.detectors, body.size_bytes, body.events)
    ctx.audit.allow("dataset.put", f"dataset:{body.experiment}/{body.run}")
    return Changed(changed=True)


@router.get("/audit", response_model=list[AuditEntryInfo], summary="The audit log, newest first")
def audit_log(
    ctx: Context = Depends(admin_context),
    identity: Annotated[str | None, Query(pattern=IDENTITY)] = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z.]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryInfo]:
    entries = ctx.svc.policy.audit_entries(identity=identity, action=action, limit=limit)
    ctx.audit.allow("audit.read", "audit")
    return [
        AuditEntryInfo(
            id=e.id,
            at=e.at,
            request_id=e.request_id,
            identity=e.identity,
            action=e.action,
            object=e.object,
            outcome=e.outcome,
            detail=e.detail,
        )
        for e in entries
    ]


def resync_buffer_grants(ctx: Context) -> None:
    """Send the buffer its grants now: the streams of a revoked credential or a disabled identity lose theirs, so
    their consumers read nothing more (the periodic sync would do it within ``buffer_sync_s``)."""
    link = getattr(ctx.svc.launcher, "link", None)
    if link is None:
        return
    try:
        link.sync()
    except (PhotonstreamError, zmq.ZMQError) as exc:
        log.warning("buffer grants not re-sent after a revocation (the next sync will): %s", exc)
