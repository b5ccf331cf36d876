"""A site with scored studies in a real database, and the dashboard app over it.

:func:`seed` scores synthetic studies through the daemon's own :class:`daemon.worker.StudyScorer`
(with a stand-in model that gives a chosen probability and a heatmap), so the results, heatmaps,
SRs, summary images, deliveries and events are what the daemon writes. Arrivals are ordered so
that the worklist's order (priority first) differs from arrival order.
"""

from __future__ import annotations

import datetime as dt
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

from tests.conftest import write_study

PASSWORD = "correct horse battery staple"
TOKEN = "test-token-0123456789abcdef0123456789"
SECRET_KEY = "k" * 40


@dataclass
class Site:
    config: object
    db: object
    root: Path
    now: dt.datetime
    #: label -> study id: high_early, high_late, elevated, routine (arrival: routine, high_early,
    #: elevated, high_late)
    studies: dict[str, int]
    dead_delivery: int


def cheap_hash(secret: str) -> str:
    from web.auth import hash_secret

    return hash_secret(secret, n=2 ** 10)  # the same scheme, cheap enough for tests


def site_config(root: Path, url: str, **web):  # type: ignore[no-untyped-def]
    from daemon.config import parse_config

    return parse_config({
        "storage": {"path": str(root / "storage"), "min_free_mb": 0},
        "database": {"url": url},
        "decoding": {"workers": 1},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "web": {"enabled": True, "password_hash": cheap_hash(PASSWORD),
                "token_hash": cheap_hash(TOKEN), "secret_key": SECRET_KEY, **web},
    }, base=root, environ={})


def add_study(config, db, root: Path, label: str, probability: float, body_part: str,  # type: ignore[no-untyped-def]
              arrived: dt.datetime, n: int, *, modality: str = "CR") -> int:
    """Receive a synthetic two-view study (``n`` picks its pixels and accession ``ACC{n}``)
    and score it through the daemon's StudyScorer with a stand-in model giving
    ``probability``; return its id. A ``modality`` that ``scoring.modalities`` lacks gives a
    not-analysed result, as the daemon makes it."""
    from daemon.worker import StudyScorer
    from db import Instance, Study, StudyState
    from dicom_io.storage import instance_relpath
    from tests.fakes import HeatmapScorer

    files = write_study(root / "in" / label, views=2, rows=96, columns=80, body_part=body_part,
                        seed=n, accession_number=f"ACC{n}", modality=modality)
    with db.session() as s:
        first = pydicom.dcmread(files[0])
        study = Study(study_instance_uid=first.StudyInstanceUID, state=StudyState.COMPLETE,
                      accession_number=first.AccessionNumber, calling_ae="PACS",
                      first_received_at=arrived, last_received_at=arrived,
                      completed_at=arrived + dt.timedelta(seconds=2), revision=1)
        s.add(study)
        s.flush()
        for f in files:
            ds = pydicom.dcmread(f)
            rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            (config.storage.path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, config.storage.path / rel)
            s.add(Instance(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID,
                           sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                           transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                           modality=ds.Modality, size_bytes=f.stat().st_size, received_at=arrived))
        study_id = study.id
    scorer = StudyScorer(config, db, HeatmapScorer(probability, hot=(2 + n % 3, 1 + n)),
                         clock=lambda: arrived + dt.timedelta(seconds=5))
    try:
        assert scorer.score_study(*scorer.claim_next()) is not None
    finally:
        scorer.close()
    return study_id


def seed(config, db, root: Path) -> Site:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from db import Delivery, DeliveryState, Study, StudyState

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=30)
    plan = [("routine", 0.2, "ELBOW"), ("high_early", 0.93, "WRIST"),
            ("elevated", 0.6, "HAND"), ("high_late", 0.88, "SHOULDER")]
    ids: dict[str, int] = {}
    for n, (label, p, part) in enumerate(plan):
        ids[label] = add_study(config, db, root, label, p, part, now + dt.timedelta(minutes=n), n)
    with db.session() as s:  # the routine study's SR gave up: a dead letter, the study failed
        d = s.scalars(select(Delivery).join(Delivery.result)
                      .where(Delivery.object_kind == "SR")
                      .where(Delivery.result.has(study_id=ids["routine"]))).one()
        d.state, d.attempts, d.last_error = DeliveryState.DEAD, 100, "association rejected"
        st = s.get(Study, ids["routine"])
        st.state, st.state_reason = StudyState.FAILED, "delivery to pacs gave up after 100 attempts"
        dead = d.id
    return Site(config, db, root, now, ids, dead)


def demo_card(**metrics):  # type: ignore[no-untyped-def]
    """The card the seeded results were made with (fixed-test 9.9, untrained), marked demo,
    with validation metrics and held-out metrics that carry an ROC curve and reliability bins."""
    from inference.model import ModelCard

    held_out = {
        "auroc": 0.957, "kappa": 0.81, "accuracy": 0.905, "sensitivity": 0.86, "specificity": 0.95,
        "ece": 0.091, "set": "radtriage phantoms --seed 2, split valid", "studies": 400,
        "views": 946, "threshold": 0.45, "model": "fixed-test 9.9",
        "by_study_type": {"ELBOW": {"studies": 58, "auroc": 0.955, "kappa": 0.783},
                          "WRIST": {"studies": 57, "auroc": 0.995, "kappa": 0.929}},
        "roc": {"fpr": [0.0, 0.0, 0.05, 0.2, 1.0], "tpr": [0.0, 0.6, 0.86, 0.95, 1.0]},
        "reliability": [{"lower": k / 10, "upper": (k + 1) / 10, "count": 40,
                         "mean_probability": k / 10 + 0.05, "fraction_positive": k / 10 + 0.02}
                        for k in range(10)],
    }
    base = {"set": "split valid of var/phantoms-train", "auroc": 0.966, "kappa": 0.838,
            "accuracy": 0.919, "sensitivity": 0.884, "specificity": 0.952, "threshold": 0.5,
            "studies": 397, "train_loss": 0.17,
            "by_study_type": {"HAND": {"studies": 50, "auroc": 0.952, "kappa": 0.597}},
            "held_out": held_out}
    base.update(metrics)
    return ModelCard(name="fixed-test", version="9.9", trained=False, demo=True, threshold=0.45,
                     metrics=base)


def demo_scorer(**metrics):  # type: ignore[no-untyped-def]
    from tests.fakes import HeatmapScorer

    return HeatmapScorer(0.9, card=demo_card(**metrics))


def quarantine_two(storage: Path) -> None:
    """Two files in ``storage``'s quarantine with notes as the receiver writes them (the
    second, newer one with markup in its reason)."""
    folder = storage / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    for stamp, ae, reason in (("20260506T080000-0000aaaa", "MODALITY1", "the data set is truncated"),
                              ("20260506T093000-0000bbbb", "PACS", "no pixel data <b>bold</b>")):
        (folder / f"{stamp}.dcm").write_bytes(b"not a data set")
        (folder / f"{stamp}.txt").write_text(f"calling AE: {ae}\naffected SOP instance: 1.2.3.{ae}\n"
                                             f"reason: {reason}\n")


def make_client(site: Site, **ctx_kwargs):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from tests.fakes import HeatmapScorer
    from web.app import WebContext, create_app

    kwargs = {"scorer": HeatmapScorer(0.9), "clock": lambda: site.now + dt.timedelta(minutes=10)}
    kwargs.update(ctx_kwargs)
    app = create_app(WebContext(config=site.config, db=site.db, **kwargs))
    return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)


def log_in(client) -> str:  # type: ignore[no-untyped-def]
    """Log in through the form; return the session's CSRF token (read from a page)."""
    import re

    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"password": PASSWORD, "csrf_token": token, "next": "/"})
    assert r.status_code == 303, r.text
    page = client.get("/queue")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


@pytest.fixture(scope="module")
def sqlite_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One seeded SQLite site per test module (read-mostly tests share it)."""
    from db import Database

    root = tmp_path_factory.mktemp("site")
    config = site_config(root, f"sqlite:///{root / 'radtriage.db'}")
    db = Database(config.database.url)
    db.migrate()
    try:
        yield seed(config, db, root)
    finally:
        db.dispose()


@pytest.fixture
def fresh_site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    """A seeded site of its own, on SQLite and on PostgreSQL, for tests that change it."""
    from db import Database

    config = site_config(tmp_path, db_url)
    db = Database(config.database.url)
    db.migrate()
    try:
        yield seed(config, db, tmp_path)
    finally:
        db.dispose()


# -- a real uvicorn server, and a client that streams a request body as an attacker would --------


class BodyCounter:
    """An ASGI wrapper that counts the request body bytes the app took from the server."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app, self.received = app, 0

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        async def counted():  # type: ignore[no-untyped-def]
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@contextmanager
def serve(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``app`` served by radtriage's own WebServer (uvicorn) on a free loopback port."""
    from tests.conftest import free_port
    from web.server import WebServer

    server = WebServer(app, "127.0.0.1", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def site_app(site: Site, **ctx_kwargs):  # type: ignore[no-untyped-def]
    from tests.fakes import HeatmapScorer
    from web.app import WebContext, create_app

    kwargs = {"scorer": HeatmapScorer(0.9)}
    kwargs.update(ctx_kwargs)
    return create_app(WebContext(config=site.config, db=site.db, **kwargs))


def with_web(site: Site, **web) -> Site:  # type: ignore[no-untyped-def]
    """The same site with some ``web`` settings changed."""
    config = site.config.model_copy(update={"web": site.config.web.model_copy(update=web)})
    return site.__class__(**{**site.__dict__, "config": config})


@dataclass
class StreamedPost:
    status: int | None  # None: no response came
    head: bytes  # the response's status line and headers
    body: bytes
    sent: int  # body bytes the client managed to send in all
    sent_when_answered: int | None  # body bytes sent when the response arrived
    finished: bool  # the whole body was sent


def multipart_body(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename or None for a field, data) in this order,
    and its Content-Type."""
    boundary = "radtriage-test-boundary"
    body = bytearray()
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def streamed_post(url: str, path: str, *, headers: dict[str, str], total: int,
                  part_headers: bytes, chunk: int = 64 * 1024, boundary: str = "b0undary",
                  keep_sending: bool = False, timeout_s: float = 60.0) -> StreamedPost:
    """POST a multipart body of one file part of ``total`` zero bytes with chunked transfer
    encoding (no Content-Length), reading the response while it sends, as a browser or an
    attacker would. Stops sending once the response has come (``keep_sending``: only once the
    server closed the connection or the body is all sent)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout_s)
    head = [f"POST {path} HTTP/1.1", f"Host: {u.hostname}:{u.port}", "Transfer-Encoding: chunked",
            f"Content-Type: multipart/form-data; boundary={boundary}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    got = bytearray()
    answered = threading.Event()
    state: dict[str, int | None] = {"sent": 0, "at": None}

    def read() -> None:
        try:
            while data := sock.recv(65536):
                got.extend(data)
                end = got.find(b"\r\n\r\n")
                if end >= 0 and state["at"] is None:
                    state["at"] = state["sent"]
                if end >= 0 and _complete(got, end):
                    break
        except OSError:
            pass
        if state["at"] is None and got:
            state["at"] = state["sent"]
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def send(data: bytes) -> bool:
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        except OSError:  # the server closed: that is one way of refusing
            return False
        return True

    preamble = b"--" + boundary.encode() + b"\r\n" + part_headers + b"\r\n\r\n"
    finished = send(preamble)
    zeros = bytes(chunk)
    while finished and state["sent"] < total and (keep_sending or not answered.is_set()):
        n = min(chunk, total - state["sent"])
        if not send(zeros[:n]):
            finished = False
            break
        state["sent"] += n
    else:
        if finished and not answered.is_set():
            finished = send(b"\r\n--" + boundary.encode() + b"--\r\n")
            try:
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                finished = False
    finished = finished and state["sent"] >= total
    answered.wait(timeout_s)
    sock.close()
    reader.join(5)
    end = got.find(b"\r\n\r\n")
    status = int(got.split(b" ", 2)[1]) if end > 0 else None
    return StreamedPost(status, bytes(got[:end]) if end > 0 else b"", bytes(got[end + 4:]) if end > 0 else b"",
                        int(state["sent"] or 0), state["at"], finished)


def _complete(data: bytearray, end: int) -> bool:
    """Whether ``data`` holds a whole response with a Content-Length body."""
    import re

    m = re.search(rb"(?im)^content-length:\s*(\d+)", bytes(data[:end]))
    return m is not None and len(data) - end - 4 >= int(m.group(1))
