"""Outages (docs/reliability.md, promise 2), each with the real receiver, queue and network:

* the PACS down for a while: results queue and go out when it is back, HIGH first;
* PostgreSQL unreachable when instances arrive (a TCP proxy in front of it is cut): each C-STORE
  is answered with a failure status, never Success, nothing half-written is left, and once the
  database is back the same instances are stored;
* the storage volume below ``storage.min_free_mb``: new C-STOREs are refused with 0xA700 while the
  study already received is scored and sent.
"""

from __future__ import annotations

import itertools
import socket
import threading
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from sqlalchemy import func, select

from daemon.config import parse_config
from daemon.receiver import Receiver
from daemon.service import Service
from db import Database, Delivery, DeliveryState, Instance, StudyResult
from dicom_io.destinations import FakeDestination
from tests.conftest import free_port, write_study
from tests.fakes import FixedScorer
from tests.integration.conftest import wait_for
from tests.senders import RecordingPACS, Sender

pytestmark = pytest.mark.integration

RANK = {"HIGH": 0, "ELEVATED": 1, "ROUTINE": 2}


class SequenceScorer(FixedScorer):
    """Each call (one study: all its views in one batch) gets the next probability in turn."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__(probabilities[0])
        self._next = itertools.cycle(probabilities)
        self._lock = threading.Lock()

    def score(self, views):  # type: ignore[no-untyped-def]
        with self._lock:
            p = next(self._next)
        return [p] * len(views)


def _service_config(tmp_path: Path, port: int, destinations: list[dict], **sections) -> dict:  # type: ignore[no-untyped-def]
    data = {
        "node": {"host": "127.0.0.1", "port": port},
        "storage": {"path": str(tmp_path / "storage"), "min_free_mb": 0},
        "database": {"url": f"sqlite:///{tmp_path / 'radtriage.db'}"},
        "completion": {"release_grace_s": 0.2, "stable_s": 30, "sweep_interval_s": 0.1},
        "decoding": {"workers": 1},
        "report": {"summary": "off"},
        "dispatch": {"interval_s": 0.2, "backoff_initial_s": 0.5, "backoff_max_s": 1},
        "destinations": destinations,
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


@pytest.fixture
def service(tmp_path: Path) -> Iterator:
    started: list[Service] = []

    def start(data: dict, **kwargs) -> Service:  # type: ignore[no-untyped-def]
        svc = Service(parse_config(data, base=tmp_path, environ={}), **kwargs)
        svc.start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def _send(port: int, studies: list[list[Path]]) -> Sender:
    sender = Sender(port, studies)
    sender.run()
    return sender


def test_pacs_down_then_back_gets_everything_most_urgent_first(service, tmp_path: Path) -> None:
    pacs_port, port = free_port(), free_port()
    pacs = RecordingPACS(pacs_port)
    probabilities = [0.1, 0.95, 0.3, 0.9, 0.6, 0.2]  # ROUTINE HIGH ROUTINE HIGH ELEVATED ROUTINE
    svc = service(_service_config(tmp_path, port, pacs.as_destination()),
                  scorer=SequenceScorer(probabilities))
    studies = [write_study(tmp_path / "in" / str(n), views=2, rows=64, columns=64, seed=n)
               for n in range(len(probabilities))]
    for study in studies:  # one after another, so they are scored in this order
        assert not _send(port, [study]).log.unanswered
    db = svc.db

    def all_tried() -> bool:
        with db.session() as s:
            return s.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.attempts >= 1)) == len(studies)

    wait_for(all_tried, 60, "a failed attempt for every study while the PACS is down")
    with db.session() as s:
        priority_of = {d.sop_instance_uid: d.priority for d in s.scalars(select(Delivery))}
        assert sorted(priority_of.values()) == sorted(
            ["ROUTINE", "HIGH", "ROUTINE", "HIGH", "ELEVATED", "ROUTINE"])
        assert all(d.state in (DeliveryState.PENDING, DeliveryState.SENDING)
                   and "cannot connect" in (d.last_error or "") for d in s.scalars(select(Delivery)))
    pacs.start()
    try:
        wait_for(lambda: len(pacs.uids()) >= len(studies), 60, "every SR once the PACS is back")
        ranks = [RANK[priority_of[uid]] for uid in pacs.uids()]
    finally:
        pacs.stop()
    assert sorted(pacs.uids()) == sorted(priority_of)  # each once
    # the first send is whichever retry fell due first; it found the PACS back, and the rest
    # went out most urgent first
    assert ranks[1:] == sorted(ranks[1:]), [priority_of[u] for u in pacs.uids()]
    with db.session() as s:
        assert all(d.state == DeliveryState.DELIVERED for d in s.scalars(select(Delivery)))


class Proxy:
    """A TCP proxy to PostgreSQL that can be cut (every connection closed, nothing listening)
    and restored on the same port: the database as the network sees it during an outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> "Proxy":
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the other direction was cut: this one ends too
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already shut down by the other direction

    def cut(self) -> None:
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would leave it listening
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected: Linux still stops listening
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the pipe thread got there first
            sock.close()


@pytest.mark.postgres
def test_database_unreachable_answers_failure_and_leaves_nothing(tmp_path: Path, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432)).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    Database(pg_url).migrate()
    config = parse_config({"node": {"host": "127.0.0.1", "port": free_port()},
                           "storage": {"path": str(tmp_path / "storage"), "min_free_mb": 0},
                           "database": {"url": proxied}}, base=tmp_path, environ={})
    db = Database(config.database.url)
    receiver = Receiver(config, db)
    receiver.start()
    first, *rest = write_study(tmp_path / "in", views=3, rows=64, columns=64)
    try:
        assert _send(receiver.port, [[first]]).log.statuses == {
            str(pydicom.dcmread(first).SOPInstanceUID): 0}
        proxy.cut()  # the database goes away
        sender = _send(receiver.port, [rest])
        assert not sender.log.unanswered
        assert sorted(sender.log.statuses.values()) == [0x0110, 0x0110]  # Processing failure
        stored = [p for p in (tmp_path / "storage").rglob("*.dcm")]
        assert len(stored) == 1  # only the first: nothing half-written, no row-less file
        assert not list((tmp_path / "storage" / ".tmp").iterdir())
        assert not (tmp_path / "storage" / "quarantine").exists()

        proxy.start()  # the database is back
        sender = _send(receiver.port, [rest])
        assert sorted(sender.log.statuses.values()) == [0, 0]
        with Database(pg_url).session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 3
    finally:
        receiver.stop()
        db.dispose()
        proxy.cut()


def test_full_disk_refuses_new_studies_while_scoring_and_sending_go_on(service, tmp_path: Path,
                                                                      monkeypatch) -> None:
    port = free_port()
    fake = FakeDestination(name="pacs")
    free = {"bytes": 10 << 30}
    monkeypatch.setattr("daemon.receiver.free_bytes", lambda root: free["bytes"])
    data = _service_config(tmp_path, port, [{"name": "pacs", "ae_title": "PACS",
                                             "host": "127.0.0.1", "port": 104}],
                           storage={"min_free_mb": 100},
                           completion={"release_grace_s": 1.5})
    svc = service(data, scorer=FixedScorer(0.9), destinations={"pacs": fake})
    first = write_study(tmp_path / "in" / "1", views=2, rows=64, columns=64, seed=1)
    second = write_study(tmp_path / "in" / "2", views=2, rows=64, columns=64, seed=2)
    assert set(_send(port, [first]).log.statuses.values()) == {0}
    free["bytes"] = 50 << 20  # the volume fills up before the first study is even complete
    refused = _send(port, [second]).log.statuses
    assert sorted(refused.values()) == [0xA700, 0xA700]  # Out of Resources

    wait_for(lambda: fake.sent, 30, "the first study's SR while new studies are refused")
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 2
        [result] = s.scalars(select(StudyResult)).all()
        assert result.analysed and result.priority == "HIGH"
    free["bytes"] = 10 << 30  # room again: the PACS retries and the second study goes in
    assert set(_send(port, [second]).log.statuses.values()) == {0}


@pytest.mark.postgres
def test_a_database_outage_does_not_flood_the_log(tmp_path: Path, pg_url: str) -> None:
    """Issue 17, finding 17: with the database down for 30 s the log got about four tracebacks a
    second (958 KB). Each repeated error is now written once with its traceback, then as a
    count at a back-off rate, while the C-STOREs still get 0x0110."""
    import logging
    import time

    from sqlalchemy.engine import make_url

    from daemon.logs import setup_logging

    url = make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432)).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    log_file = tmp_path / "radtriage.log"
    root = logging.getLogger()
    before = list(root.handlers)
    setup_logging("INFO", file=log_file)
    svc = Service(parse_config(_service_config(
        tmp_path, free_port(), [], database={"url": proxied},
        completion={"release_grace_s": 0.2, "stable_s": 30, "sweep_interval_s": 0.1},
        dispatch={"interval_s": 0.1}), base=tmp_path, environ={}), scorer=FixedScorer(0.3))
    files = write_study(tmp_path / "in", views=12, rows=32, columns=32)
    try:
        svc.start()
        proxy.cut()
        outage_s, sent, statuses = 6.0, 0, []
        start = time.monotonic()
        while time.monotonic() - start < outage_s:
            sender = _send(svc.receiver.port, [[files[sent % len(files)]]])
            statuses += list(sender.log.statuses.values())
            sent += 1
            time.sleep(0.2)
        assert statuses and set(statuses) == {0x0110}
        proxy.start()
        wait_for(lambda: _send(svc.receiver.port, [[files[0]]]).log.statuses
                 and True, 30, "the database to be back")
    finally:
        svc.stop()
        proxy.cut()
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()
        logging.captureWarnings(False)
    text = log_file.read_text()
    failures = [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line]
    print(f"\n{sent} C-STOREs in a {outage_s:g} s outage: {text.count('Traceback')} traceback(s), "
          f"{len(failures)} warning/error line(s), {len(text.encode())} bytes of log")
    # a handful of kinds (C-STORE refused, sweep, dispatch, scoring claim), each written at
    # 0, ~1, ~3 s and with its traceback only the first time
    assert text.count("Traceback") <= 6
    assert len(failures) <= 30
    assert "repeated" in text
