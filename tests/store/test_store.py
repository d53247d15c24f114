"""The store on SQLite and PostgreSQL: migrations match the models, the state machine, concurrent writers, policy."""

from __future__ import annotations

import threading
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from photonstream.store.db import Database
from photonstream.store.models import Base, Stream, utcnow
from photonstream.store.policy import PolicyStore
from photonstream.store.streams import IllegalTransitionError, StreamNotFoundError, StreamState, StreamStore
from tests.store.databases import DatabaseSpec


def new_stream(owner: str = "alice", experiment: str = "xpp00001") -> Stream:
    return Stream(
        id=str(uuid.uuid4()),
        owner=owner,
        experiment=experiment,
        runs=[1],
        detectors=["epix"],
        spec={"pipeline": {}},
        data_endpoint={},
        consumer_public_key="k" * 40,
        job_backend="local",
        credential_kind="token",
        credential_id="jti",
        credential_expires_at=None,
        estimated_end_at=utcnow(),
    )


def test_migrations_reach_head_and_match_the_models(database: Database) -> None:
    assert database.current_revision() == database.head_revision() is not None
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    database.upgrade()  # a second upgrade is a no-op


def test_a_stream_walks_the_legal_path_with_timestamps(database: Database) -> None:
    store = StreamStore(database)
    stream = store.create(new_stream(), actor="alice")
    assert stream.state == StreamState.QUEUED and stream.starting_at is None
    for state in (StreamState.STARTING, StreamState.STREAMING, StreamState.COMPLETED):
        stream = store.transition(stream.id, state, reason=f"to {state}", actor="launcher")
    assert stream.state == "completed" and stream.reason == "to completed"
    assert stream.created_at <= stream.starting_at <= stream.streaming_at <= stream.finished_at  # type: ignore[operator]
    assert stream.finished_at.tzinfo is not None  # type: ignore[union-attr]
    history = [(t.from_state, t.to_state) for t in store.transitions(stream.id)]
    assert history == [(None, "queued"), ("queued", "starting"), ("starting", "streaming"), ("streaming", "completed")]
    assert [t.to_state for t in store.transitions(stream.id, after_id=store.transitions(stream.id)[1].id)] == [
        "streaming",
        "completed",
    ]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], StreamState.STREAMING),
        ([], StreamState.COMPLETED),
        ([StreamState.STARTING], StreamState.QUEUED),
        ([StreamState.STARTING, StreamState.STREAMING], StreamState.STARTING),
        ([StreamState.CANCELLED], StreamState.STARTING),
        ([StreamState.FAILED], StreamState.CANCELLED),
    ],
)
def test_illegal_transitions_are_refused_and_change_nothing(
    database: Database, path: list[StreamState], illegal: StreamState
) -> None:
    store = StreamStore(database)
    stream = store.create(new_stream(), actor="alice")
    for state in path:
        store.transition(stream.id, state)
    before = store.get(stream.id)
    with pytest.raises(IllegalTransitionError, match=f"cannot go from {before.state} to {illegal}"):
        store.transition(stream.id, illegal)
    after = store.get(stream.id)
    assert (after.state, after.updated_at) == (before.state, before.updated_at)
    assert len(store.transitions(stream.id)) == len(path) + 1


def test_unknown_streams_are_not_found(database: Database) -> None:
    store = StreamStore(database)
    with pytest.raises(StreamNotFoundError):
        store.get(str(uuid.uuid4()))
    with pytest.raises(StreamNotFoundError):
        store.transition(str(uuid.uuid4()), StreamState.CANCELLED)


def _claim(store: StreamStore, stream_id: str, barrier: threading.Barrier, outcomes: list[str]) -> None:
    barrier.wait()
    try:
        store.transition(stream_id, StreamState.STARTING, actor="launcher")
        outcomes.append("won")
    except IllegalTransitionError:
        outcomes.append("refused")


def test_two_launchers_racing_for_one_stream_make_exactly_one_claim(database_spec: DatabaseSpec) -> None:
    """Two processes both try queued → starting on the same stream: one wins, the other is refused."""
    first, second = database_spec.open(), database_spec.open()
    first.upgrade()
    stores = [StreamStore(first), StreamStore(second)]
    for _ in range(8):
        stream = stores[0].create(new_stream(), actor="alice")
        outcomes: list[str] = []
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=_claim, args=(store, stream.id, barrier, outcomes)) for store in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes) == ["refused", "won"]
        for store in stores:  # both processes see the same state and one transition after queued
            assert store.get(stream.id).state == "starting"
            assert [t.to_state for t in store.transitions(stream.id)] == ["queued", "starting"]


def test_state_survives_a_new_database_object(database_spec: DatabaseSpec) -> None:
    db = database_spec.open()
    db.upgrade()
    store = StreamStore(db)
    ids = [store.create(new_stream(owner=o), actor=o).id for o in ("alice", "bob", "alice")]
    store.transition(ids[0], StreamState.CANCELLED, reason="changed my mind")
    db.dispose()
    reopened = database_spec.open()
    reopened.upgrade()
    again = StreamStore(reopened)
    assert again.get(ids[0]).state == "cancelled" and again.get(ids[0]).reason == "changed my mind"
    page = again.find(owner="alice")
    assert page.total == 2 and {s.id for s in page.items} == {ids[0], ids[2]}
    assert again.find(states=["queued"]).total == 2
    assert again.count_by_state() == {"queued": 2, "cancelled": 1}
    assert [s.id for s in again.find(limit=1, offset=1).items] == [ids[1]]  # newest first


def test_policy_grants_roles_members_revocations_audit(database: Database) -> None:
    policy = PolicyStore(database)
    assert policy.grant("identity", "alice", "xpp00001") is True
    assert policy.grant("identity", "alice", "xpp00001") is False
    policy.grant("group", "sfx", "mfx00002")
    policy.grant("group", "others", "cxi00003")
    policy.add_member("sfx", "alice")
    assert policy.groups_of("alice") == {"sfx"}
    assert policy.experiments_of("alice", policy.groups_of("alice")) == {"xpp00001", "mfx00002"}
    assert policy.experiments_of("bob", []) == set()
    policy.bind_role("group", "sfx", "operator")
    assert policy.roles_of("alice", {"sfx"}) == {"operator"} and policy.roles_of("bob", []) == set()
    assert policy.ungrant("identity", "alice", "xpp00001") is True
    assert policy.experiments_of("alice", {"sfx"}) == {"mfx00002"}
    with pytest.raises(Exception, match="role: 'root' is not one of user, operator, admin"):
        policy.bind_role("identity", "alice", "root")

    assert policy.seen("carol") is True
    policy.set_disabled("carol", True)
    assert policy.seen("carol") is False

    assert policy.revoke("token", "jti-1", by="admin") is True
    assert policy.revoke("token", "jti-1", by="admin") is False
    assert policy.is_revoked("token", "jti-1") and not policy.is_revoked("certificate", "jti-1")

    policy.audit("alice", "stream.create", "experiment:xpp00001", "allow")
    policy.audit("bob", "stream.read", "stream:123", "deny", detail="not owner")
    entries = policy.audit_entries()
    assert [(e.identity, e.action, e.outcome) for e in entries] == [
        ("bob", "stream.read", "deny"),
        ("alice", "stream.create", "allow"),
    ]
    assert [e.identity for e in policy.audit_entries(identity="alice")] == ["alice"]

    policy.put_dataset("xpp00001", 3, ["epix"], 10, 5)
    policy.put_dataset("xpp00001", 3, ["epix", "jungfrau"], 20, 6)
    policy.put_dataset("mfx00002", 1, ["cspad"], 30, None)
    assert [(d.experiment, d.run, d.detectors) for d in policy.datasets(["xpp00001"])] == [
        ("xpp00001", 3, ["epix", "jungfrau"])
    ]
    assert len(policy.datasets(None)) == 2
