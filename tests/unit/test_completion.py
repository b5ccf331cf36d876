"""daemon.completion: the pure completion rule and the sweep on a real database."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from daemon.completion import is_complete, sweep
from db import Association, Database, Event, EventKind, Study, StudyState

T0 = dt.datetime(2026, 3, 4, 10, 0, 0, tzinfo=dt.timezone.utc)
GRACE, STABLE = 2.0, 30.0


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def complete(now: float, last: float, released: float | None) -> bool:
    return is_complete(at(now), last_received_at=at(last),
                       released_at=None if released is None else at(released),
                       release_grace_s=GRACE, stable_s=STABLE)


# -- the pure rule -------------------------------------------------------------------------------


def test_released_and_grace_elapsed() -> None:
    assert complete(now=12, last=10, released=10)
    assert complete(now=100, last=10, released=11)


def test_released_grace_boundary_is_inclusive() -> None:
    assert complete(now=12.0, last=10, released=10)
    assert not complete(now=11.999, last=10, released=10)


def test_released_but_grace_not_elapsed() -> None:
    assert not complete(now=11, last=10, released=10.5)
    # the instance came before the release, but the release itself is recent
    assert not complete(now=13, last=5, released=12)


def test_open_association_completes_only_after_stable() -> None:
    assert not complete(now=10 + GRACE, last=10, released=None)
    assert not complete(now=10 + STABLE - 0.001, last=10, released=None)
    assert complete(now=10 + STABLE, last=10, released=None)


def test_later_instance_resets_the_clock() -> None:
    # a new association (still open) brought an instance at t=25: the old release no longer counts
    assert complete(now=26, last=10, released=11)          # before the late instance: complete
    assert not complete(now=26, last=25, released=None)    # after it: wait stable_s
    assert not complete(now=25 + STABLE - 1, last=25, released=None)
    assert complete(now=25 + STABLE, last=25, released=None)


def test_zero_grace_completes_at_release() -> None:
    assert is_complete(at(10), last_received_at=at(10), released_at=at(10),
                       release_grace_s=0, stable_s=STABLE)


# -- the sweep on a database ---------------------------------------------------------------------


def add_association(db: Database, *, started: float, ended: float | None = None,
                    reason: str | None = None) -> int:
    with db.session() as s:
        a = Association(calling_ae="PACS", peer_host="10.0.0.1", peer_port=4000, started_at=at(started),
                        ended_at=None if ended is None else at(ended), end_reason=reason)
        s.add(a)
        s.flush()
        return a.id


def add_study(db: Database, uid: str, *, last: float, association_id: int | None,
              state: StudyState = StudyState.RECEIVING) -> int:
    with db.session() as s:
        st = Study(study_instance_uid=uid, state=state, first_received_at=at(0), last_received_at=at(last),
                   last_association_id=association_id, revision=1)
        s.add(st)
        s.flush()
        return st.id


def run_sweep(db: Database, now: float) -> list[int]:
    return sweep(db, at(now), release_grace_s=GRACE, stable_s=STABLE)


def state_of(db: Database, study_id: int) -> StudyState:
    with db.session() as s:
        return s.get(Study, study_id).state


def events(db: Database, study_id: int) -> list[Event]:
    with db.session() as s:
        return list(s.scalars(select(Event).where(Event.study_id == study_id).order_by(Event.id)))


def test_sweep_released_association(database: Database) -> None:
    a = add_association(database, started=0, ended=10, reason="released")
    sid = add_study(database, "1.2.3.1", last=9, association_id=a)

    assert run_sweep(database, 11.9) == []
    assert state_of(database, sid) == StudyState.RECEIVING

    assert run_sweep(database, 12) == [sid]
    with database.session() as s:
        study = s.get(Study, sid)
        assert study.state == StudyState.COMPLETE
        assert study.completed_at == at(12)
    [ev] = events(database, sid)
    assert ev.kind == EventKind.COMPLETED
    assert ev.at == at(12)
    assert "association released" in ev.detail and "revision 1" in ev.detail


def test_sweep_open_association_waits_for_stable(database: Database) -> None:
    a = add_association(database, started=0)
    sid = add_study(database, "1.2.3.2", last=10, association_id=a)
    assert run_sweep(database, 20) == []
    assert run_sweep(database, 10 + STABLE - 0.5) == []
    assert state_of(database, sid) == StudyState.RECEIVING
    assert run_sweep(database, 10 + STABLE) == [sid]
    assert state_of(database, sid) == StudyState.COMPLETE
    [ev] = events(database, sid)
    assert "stable" in ev.detail


@pytest.mark.parametrize("reason", ["aborted", "closed", "interrupted"])
def test_sweep_association_ended_otherwise_waits_for_stable(database: Database, reason: str) -> None:
    a = add_association(database, started=0, ended=10, reason=reason)
    sid = add_study(database, "1.2.3.3", last=10, association_id=a)
    assert run_sweep(database, 10 + GRACE + 5) == []
    assert state_of(database, sid) == StudyState.RECEIVING
    assert run_sweep(database, 10 + STABLE) == [sid]


def test_sweep_study_without_association_waits_for_stable(database: Database) -> None:
    sid = add_study(database, "1.2.3.4", last=10, association_id=None)
    assert run_sweep(database, 10 + GRACE) == []
    assert run_sweep(database, 10 + STABLE) == [sid]


def test_sweep_later_instance_from_new_association_resets(database: Database) -> None:
    old = add_association(database, started=0, ended=5, reason="released")
    new = add_association(database, started=20)  # still open
    sid = add_study(database, "1.2.3.5", last=21, association_id=new)
    assert run_sweep(database, 25) == []             # the old release does not count any more
    assert run_sweep(database, 21 + STABLE - 1) == []
    assert state_of(database, sid) == StudyState.RECEIVING
    assert run_sweep(database, 21 + STABLE) == [sid]
    assert old != new


def test_sweep_leaves_other_studies_alone(database: Database) -> None:
    released = add_association(database, started=0, ended=10, reason="released")
    open_ = add_association(database, started=0)
    done = add_study(database, "1.2.3.6", last=10, association_id=released)
    waiting = add_study(database, "1.2.3.7", last=10, association_id=open_)
    scored = add_study(database, "1.2.3.8", last=0, association_id=released, state=StudyState.SCORED)
    failed = add_study(database, "1.2.3.9", last=0, association_id=None, state=StudyState.FAILED)

    assert run_sweep(database, 15) == [done]
    assert state_of(database, done) == StudyState.COMPLETE
    assert state_of(database, waiting) == StudyState.RECEIVING
    assert state_of(database, scored) == StudyState.SCORED
    assert state_of(database, failed) == StudyState.FAILED
    for sid in (waiting, scored, failed):
        assert events(database, sid) == []
    with database.session() as s:
        assert s.get(Study, scored).completed_at is None


def test_sweep_twice_marks_once(database: Database) -> None:
    a = add_association(database, started=0, ended=10, reason="released")
    sid = add_study(database, "1.2.3.10", last=10, association_id=a)
    assert run_sweep(database, 20) == [sid]
    assert run_sweep(database, 100) == []
    assert [e.kind for e in events(database, sid)] == [EventKind.COMPLETED]
    with database.session() as s:
        assert s.get(Study, sid).completed_at == at(20)
