"""daemon.dispatch: the persisted delivery queue, with a fake destination and an injected clock."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from daemon.config import DispatchConfig
from daemon.dispatch import Dispatcher, backoff_s
from db import (
    Database,
    Delivery,
    DeliveryState,
    Event,
    EventKind,
    Study,
    StudyResult,
    StudyState,
)
from dicom_io.destinations import FakeDestination
from dicom_io.errors import SendError

T0 = dt.datetime(2026, 5, 6, 8, 0, 0, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


_counter = iter(range(1, 10_000))


def add_delivery(db: Database, *, priority: str = "ROUTINE", created: dt.datetime = T0,
                 due: dt.datetime | None = None, destinations: tuple[str, ...] = ("pacs",),
                 superseded: bool = False, study_state: StudyState = StudyState.DISPATCHING,
                 ) -> tuple[int, list[int]]:
    """A study with one result and one pending SR delivery per destination; (study id, delivery ids)."""
    n = next(_counter)
    with db.session() as s:
        study = Study(study_instance_uid=f"1.2.826.0.1.{n}", state=study_state, first_received_at=created,
                      last_received_at=created, completed_at=created, scored_at=created, revision=1)
        s.add(study)
        s.flush()
        result = StudyResult(study_id=study.id, study_revision=1, created_at=created, analysed=True,
                             probability=0.9, abnormal=True, priority=priority, threshold=0.5,
                             model_name="m", model_version="1", superseded=superseded,
                             sr_sop_instance_uid=f"1.2.826.0.2.{n}", sr_path=f"outputs/{n}/sr.dcm")
        s.add(result)
        s.flush()
        ids = []
        for dest in destinations:
            d = Delivery(result_id=result.id, destination=dest, object_kind="SR",
                         sop_instance_uid=f"1.2.826.0.2.{n}", path=f"outputs/{n}/sr.dcm", priority=priority,
                         state=DeliveryState.PENDING, attempts=0, next_attempt_at=due or created,
                         created_at=created)
            s.add(d)
            s.flush()
            ids.append(d.id)
        return study.id, ids


def delivery(db: Database, delivery_id: int) -> Delivery:
    with db.session() as s:
        return s.get(Delivery, delivery_id)


def study(db: Database, study_id: int) -> Study:
    with db.session() as s:
        return s.get(Study, study_id)


def events(db: Database, study_id: int) -> list[Event]:
    with db.session() as s:
        return list(s.scalars(select(Event).where(Event.study_id == study_id).order_by(Event.id)))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> FakeDestination:
    return FakeDestination(name="pacs")


def make_dispatcher(db: Database, root: Path, clock: Clock, *dests: FakeDestination,
                    **config) -> Dispatcher:  # type: ignore[no-untyped-def]
    cfg = DispatchConfig(**{"backoff_initial_s": 5, "backoff_max_s": 60, "max_attempts": 5, **config})
    return Dispatcher(db, {d.name: d for d in dests}, cfg, root, clock=clock)


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(n, 5, 300) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_s(0, 5, 300) == 5
    assert backoff_s(100, 5, 300) == 300
    assert backoff_s(3, 1.5, 4) == 4


# -- sending -------------------------------------------------------------------------------------


def test_pending_delivery_is_sent(database: Database, tmp_path: Path, clock: Clock,
                                  fake: FakeDestination) -> None:
    sid, [did] = add_delivery(database)
    clock.advance(1)
    dispatcher = make_dispatcher(database, tmp_path, clock, fake)

    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert fake.sent == [tmp_path / d.path]
    assert d.state == DeliveryState.DELIVERED
    assert d.attempts == 1 and d.delivered_at == clock.now and d.last_error is None
    st = study(database, sid)
    assert st.state == StudyState.DELIVERED and st.delivered_at == clock.now
    [ev] = events(database, sid)
    assert ev.kind == EventKind.SENT and ev.at == clock.now
    assert "pacs" in ev.detail and "attempt 1" in ev.detail

    assert dispatcher.run_due() == 0          # nothing left
    assert len(fake.sent) == 1


def test_study_is_delivered_only_when_every_destination_got_it(database: Database, tmp_path: Path,
                                                                clock: Clock) -> None:
    pacs, viewer = FakeDestination(name="pacs"), FakeDestination(name="viewer", down=True)
    sid, [d_pacs, d_viewer] = add_delivery(database, destinations=("pacs", "viewer"))
    dispatcher = make_dispatcher(database, tmp_path, clock, pacs, viewer)

    assert dispatcher.run_due() == 2
    assert delivery(database, d_pacs).state == DeliveryState.DELIVERED
    assert delivery(database, d_viewer).state == DeliveryState.PENDING
    assert study(database, sid).state == StudyState.DISPATCHING
    assert study(database, sid).delivered_at is None

    viewer.down = False
    clock.advance(5)
    assert dispatcher.run_due() == 1
    assert study(database, sid).state == StudyState.DELIVERED
    assert len(pacs.sent) == 1 and len(viewer.sent) == 1


def test_down_destination_backs_off_then_delivers_once(database: Database, tmp_path: Path,
                                                      clock: Clock, fake: FakeDestination) -> None:
    sid, [did] = add_delivery(database)
    dispatcher = make_dispatcher(database, tmp_path, clock, fake)
    fake.down = True

    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert d.state == DeliveryState.PENDING and d.attempts == 1
    assert d.next_attempt_at == T0 + dt.timedelta(seconds=backoff_s(1, 5, 60))
    assert "down" in d.last_error
    assert [e.kind for e in events(database, sid)] == [EventKind.SEND_FAILED]
    assert study(database, sid).state == StudyState.DISPATCHING

    clock.advance(4.9)                                  # not due yet
    assert dispatcher.run_due() == 0
    assert delivery(database, did).attempts == 1

    clock.advance(0.1)                                  # due: fails again, waits twice as long
    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert d.attempts == 2
    assert d.next_attempt_at == clock.now + dt.timedelta(seconds=backoff_s(2, 5, 60)) == \
        clock.now + dt.timedelta(seconds=10)

    fake.down = False
    clock.advance(9)
    assert dispatcher.run_due() == 0                    # up, but not due
    assert fake.sent == []
    clock.advance(1)
    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert d.state == DeliveryState.DELIVERED and d.attempts == 3 and d.last_error is None
    assert study(database, sid).state == StudyState.DELIVERED

    clock.advance(3600)
    assert dispatcher.run_due() == 0
    assert fake.sent == [tmp_path / d.path]             # exactly once
    kinds = [e.kind for e in events(database, sid)]
    assert kinds == [EventKind.SEND_FAILED, EventKind.SEND_FAILED, EventKind.SENT]


def test_not_due_delivery_is_not_sent(database: Database, tmp_path: Path, clock: Clock,
                                      fake: FakeDestination) -> None:
    add_delivery(database, due=T0 + dt.timedelta(seconds=30))
    dispatcher = make_dispatcher(database, tmp_path, clock, fake)
    assert dispatcher.run_due() == 0
    clock.advance(30)
    assert dispatcher.run_due() == 1
    assert len(fake.sent) == 1


def test_high_priority_goes_first(database: Database, tmp_path: Path, clock: Clock,
                                  fake: FakeDestination) -> None:
    early = T0 - dt.timedelta(minutes=10)
    _, [routine] = add_delivery(database, priority="ROUTINE", created=early)
    _, [elevated] = add_delivery(database, priority="ELEVATED", created=early + dt.timedelta(minutes=1))
    _, [high] = add_delivery(database, priority="HIGH", created=T0)
    _, [routine2] = add_delivery(database, priority="ROUTINE", created=early + dt.timedelta(minutes=2))
    dispatcher = make_dispatcher(database, tmp_path, clock, fake)

    assert dispatcher.run_due() == 4
    order = [delivery(database, i).path for i in (high, elevated, routine, routine2)]
    assert [str(p.relative_to(tmp_path)) for p in fake.sent] == order


def test_limit_sends_the_most_urgent(database: Database, tmp_path: Path, clock: Clock,
                                     fake: FakeDestination) -> None:
    _, [routine] = add_delivery(database, priority="ROUTINE", created=T0 - dt.timedelta(hours=1))
    _, [high] = add_delivery(database, priority="HIGH", created=T0)
    dispatcher = make_dispatcher(database, tmp_path, clock, fake)
    assert dispatcher.run_due(limit=1) == 1
    assert delivery(database, high).state == DeliveryState.DELIVERED
    assert delivery(database, routine).state == DeliveryState.PENDING


def test_gives_up_after_max_attempts(database: Database, tmp_path: Path, clock: Clock,
                                     fake: FakeDestination) -> None:
    sid, [did] = add_delivery(database)
    fake.down = True
    dispatcher = make_dispatcher(database, tmp_path, clock, fake, max_attempts=3)

    for attempt in (1, 2):
        assert dispatcher.run_due() == 1
        assert delivery(database, did).state == DeliveryState.PENDING
        assert delivery(database, did).attempts == attempt
        clock.advance(3600)
    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert d.state == DeliveryState.DEAD and d.attempts == 3
    st = study(database, sid)
    assert st.state == StudyState.FAILED
    assert "pacs" in st.state_reason and "3 attempts" in st.state_reason and "down" in st.state_reason
    assert [e.kind for e in events(database, sid)] == [EventKind.SEND_FAILED] * 3

    fake.down = False
    clock.advance(3600)
    assert dispatcher.run_due() == 0                    # dead is dead
    assert fake.sent == []


def test_delivery_of_superseded_result_is_never_sent(
        database: Database, tmp_path: Path, clock: Clock, fake: FakeDestination) -> None:
    """A newer result replaced this one: its SR must not reach the PACS after the new one."""
    sid, [did] = add_delivery(database, superseded=True, study_state=StudyState.SCORING)
    dispatcher = make_dispatcher(database, tmp_path, clock, fake, max_attempts=1)
    assert dispatcher.run_due() == 0
    assert fake.sent == []
    st = study(database, sid)
    assert st.state == StudyState.SCORING and st.state_reason is None


def test_failed_send_of_a_result_superseded_meanwhile_is_not_retried(
        database: Database, tmp_path: Path, clock: Clock, fake: FakeDestination) -> None:
    """The worker supersedes a result while its SR is being sent and the send fails."""
    sid, [did] = add_delivery(database)

    class SupersedingDown:
        name = "pacs"

        def send(self, path: Path, *, origin: object = None) -> None:
            with database.session() as s:
                s.get(Delivery, did).result.superseded = True
            raise SendError("pacs: down")

    dispatcher = Dispatcher(database, {"pacs": SupersedingDown()},
                            DispatchConfig(max_attempts=5), tmp_path, clock=clock)
    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert d.state == DeliveryState.SUPERSEDED and d.attempts == 1
    assert study(database, sid).state != StudyState.FAILED


def test_unconfigured_destination_is_a_failed_attempt(database: Database, tmp_path: Path,
                                                      clock: Clock, fake: FakeDestination) -> None:
    sid, [did] = add_delivery(database, destinations=("gone",))
    dispatcher = make_dispatcher(database, tmp_path, clock, fake)
    assert dispatcher.run_due() == 1
    d = delivery(database, did)
    assert d.state == DeliveryState.PENDING and d.attempts == 1
    assert "no longer configured" in d.last_error
    [ev] = events(database, sid)
    assert ev.kind == EventKind.SEND_FAILED and "gone" in ev.detail
    assert fake.sent == []


class ExplodingDestination:
    """A destination that fails with something other than SendError (a bug in a driver, say)."""

    name = "pacs"

    def __init__(self) -> None:
        self.calls = 0

    def send(self, path: Path, *, origin: object = None) -> None:
        self.calls += 1
        raise RuntimeError("unexpected failure inside the destination")


def test_unexpected_destination_error_is_a_failed_attempt(database: Database, tmp_path: Path,
                                                         clock: Clock) -> None:
    """No delivery may stay in 'sending' (never retried until a restart) after an exception."""
    sid, [did] = add_delivery(database)
    dest = ExplodingDestination()
    cfg = DispatchConfig(backoff_initial_s=5, backoff_max_s=60, max_attempts=5)
    dispatcher = Dispatcher(database, {"pacs": dest}, cfg, tmp_path, clock=clock)
    try:
        dispatcher.run_due()
    except RuntimeError:
        pass
    d = delivery(database, did)
    assert d.state == DeliveryState.PENDING, d.state
    assert d.attempts == 1
    assert d.next_attempt_at == T0 + dt.timedelta(seconds=5)
    assert [e.kind for e in events(database, sid)] == [EventKind.SEND_FAILED]


def test_dead_delivery_of_an_old_revision_does_not_fail_the_reopened_study(
        database: Database, tmp_path: Path, clock: Clock, fake: FakeDestination) -> None:
    """A late instance re-opened the study (revision 2) while revision 1's SR was retrying."""
    sid, [did] = add_delivery(database, study_state=StudyState.COMPLETE)
    with database.session() as s:
        s.get(Study, sid).revision = 2
    fake.down = True
    dispatcher = make_dispatcher(database, tmp_path, clock, fake, max_attempts=1)
    assert dispatcher.run_due() == 1
    assert delivery(database, did).state == DeliveryState.DEAD
    st = study(database, sid)
    assert st.state == StudyState.COMPLETE and st.state_reason is None  # revision 2 still gets scored


def test_an_outage_costs_one_attempt_per_run_and_the_queue_drains_high_first(
        database: Database, tmp_path: Path, clock: Clock, fake: FakeDestination) -> None:
    """While the PACS is down each run tries it once, not once per delivery; when a send gets
    through, everything queued for it is due at once and goes out most urgent first, whatever
    order the individual backoffs would have given."""
    other = FakeDestination(name="archive")
    dispatcher = make_dispatcher(database, tmp_path, clock, fake, other)
    fake.down = True
    early = T0 - dt.timedelta(minutes=5)
    _, [r1] = add_delivery(database, priority="ROUTINE", created=early)
    _, [r2] = add_delivery(database, priority="ROUTINE", created=early + dt.timedelta(seconds=1))
    _, [archived] = add_delivery(database, priority="ROUTINE", destinations=("archive",))
    assert dispatcher.run_due() == 2  # r1 fails, r2 is not tried; the archive still gets its own
    assert delivery(database, r2).attempts == 0 and delivery(database, archived).state == \
        DeliveryState.DELIVERED
    clock.advance(1)
    assert dispatcher.run_due() == 1  # r2 now (first try), r1 waits for its backoff
    _, [h1] = add_delivery(database, priority="HIGH", created=clock.now)
    _, [e1] = add_delivery(database, priority="ELEVATED", created=clock.now)
    clock.advance(1)
    assert dispatcher.run_due() == 1  # h1 first; e1 not tried
    assert delivery(database, h1).attempts == 1 and delivery(database, e1).attempts == 0

    fake.down = False
    fake.sent.clear()
    clock.advance(4)  # due: e1 (never tried), r1 and r2 (backoff over); h1 waits until T0 + 7
    assert dispatcher.run_due() == 4
    sent = [str(p.relative_to(tmp_path)) for p in fake.sent]
    # e1 is the most urgent due one; once it got through, h1 no longer waits for its backoff
    assert sent == [delivery(database, i).path for i in (e1, h1, r1, r2)]
    assert all(delivery(database, i).state == DeliveryState.DELIVERED for i in (r1, r2, h1, e1))


# -- a real C-STORE destination that refuses: what the log says (issue 18, item 10) ---------------


@pytest.fixture
def rejecting_scp() -> Iterator[int]:
    """A pynetdicom storage SCP that rejects every association: it is not the AE called."""
    from pynetdicom import AE, AllStoragePresentationContexts

    from tests.conftest import free_port

    ae = AE(ae_title="NOT-PACS")
    ae.require_called_aet = True
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        server.shutdown()


def _real_stores(database: Database, tmp_path: Path, clock: Clock, **ports: int
                 ) -> tuple[Dispatcher, str, dict[str, int]]:
    """A study with an SR (a real file) for each destination ``name=port`` (DicomStore to
    127.0.0.1 as AE 'PACS'); the dispatcher, the study's UID and the delivery ids by name."""
    import shutil

    from dicom_io.destinations import DicomStore
    from tests.conftest import write_study

    sid, ids = add_delivery(database, destinations=tuple(ports))
    uid = study(database, sid).study_instance_uid
    [made] = write_study(tmp_path / "made", views=1, rows=32, columns=32, study_instance_uid=uid)
    sr = tmp_path / delivery(database, ids[0]).path
    sr.parent.mkdir(parents=True)
    shutil.copy(made, sr)
    stores = {name: DicomStore(name, "PACS", "127.0.0.1", port, timeout_s=10)
              for name, port in ports.items()}
    cfg = DispatchConfig(backoff_initial_s=5, backoff_max_s=60, max_attempts=5)
    return Dispatcher(database, stores, cfg, tmp_path, clock=clock), uid, dict(zip(ports, ids))


def test_a_refused_send_logs_one_labelled_line_and_no_bare_pynetdicom_errors(
        database: Database, tmp_path: Path, clock: Clock, rejecting_scp: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """Each failed delivery wrote two pynetdicom ERROR lines naming neither the destination nor
    the study. Now pynetdicom's lines about our association are DEBUG, and what they said is
    in the one WARNING of ours (destination, study) and in the delivery's last error."""
    from tests.conftest import free_port

    dispatcher, uid, ids = _real_stores(database, tmp_path, clock, down=free_port(),
                                        picky=rejecting_scp)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.WARNING, logger="pynetdicom")  # as daemon.logs sets it up
    assert dispatcher.run_due() == 2
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("pynetdicom")] == []
    ours = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in ours] == ["daemon.dispatch", "daemon.dispatch"]
    assert all(getattr(r, "study", None) == uid for r in ours)
    down, picky = sorted((r.getMessage() for r in ours), key=lambda m: "picky" in m)
    assert down.startswith("SR to down failed (attempt 1)") and "Connection refused" in down
    assert picky.startswith("SR to picky failed (attempt 1)") and "Called AE title not recognised" in picky
    assert "Called AE title not recognised" in delivery(database, ids["picky"]).last_error
    assert "Connection refused" in delivery(database, ids["down"]).last_error


def test_pynetdicom_lines_about_a_failed_send_are_labelled_debug(
        database: Database, tmp_path: Path, clock: Clock, rejecting_scp: int,
        caplog: pytest.LogCaptureFixture) -> None:
    dispatcher, uid, _ = _real_stores(database, tmp_path, clock, picky=rejecting_scp)
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    assert dispatcher.run_due() == 1
    label = f"picky (PACS@127.0.0.1:{rejecting_scp}): "
    ours = [r for r in caplog.records if r.name.startswith("pynetdicom")
            and r.getMessage().startswith(label)]
    # what pynetdicom said about our association is still there when debugging, labelled
    assert any(r.getMessage() == label + "Reason: Called AE title not recognised" for r in ours)
    assert all(r.levelno == logging.DEBUG and getattr(r, "study", None) == uid for r in ours)
    # the rest is the peer's side (the SCP runs in this process too): untouched, unlabelled
    assert not [r for r in caplog.records
                if r.name.startswith("pynetdicom") and r.levelno >= logging.WARNING]
