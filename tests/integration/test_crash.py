"""Crash safety: 500 instances over 4 concurrent senders, the daemon killed with SIGKILL half-way,
then restarted; the senders send again what they got no answer for, as a PACS retries.

What must hold (docs/reliability.md, promise 1):

* every instance answered Success before the kill is on disk, byte for byte, and in the
  database, read by a fresh process right after the kill;
* after the restart every study is complete and scored exactly once (one result, none
  superseded) over all of its views, and every object of that result is delivered;
* the PACS (DCMTK storescp, one file per C-STORE) holds each object once; the only duplicates
  allowed are the deliveries the kill caught mid-send (found in state ``sending`` right after
  the kill): they go again with the same SOP Instance UID and bytes, which a PACS stores once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from db import Database, Delivery, DeliveryState, Instance, OutputObject, Study, StudyResult
from tests.conftest import write_study
from tests.integration.conftest import wait_for
from tests.senders import join_all, send_concurrently, sop_uid

pytestmark = pytest.mark.integration

STUDIES, VIEWS, SENDERS = 125, 4, 4  # 500 instances


def _digest(path: Path) -> str:
    """Of the data set as sent: the file meta before it is the receiver's own (PS3.10)."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) UL
    start = 132 + 12 + int.from_bytes(raw[140:144], "little")
    return hashlib.sha256(raw[start:]).hexdigest()


def test_sigkill_mid_stream_loses_nothing_and_scores_each_study_once(make_daemon, pacs, tmp_path,
                                                                      small_checkpoint,
                                                                      record_property):
    studies = [write_study(tmp_path / "in" / f"s{n:03d}", views=VIEWS, rows=64, columns=64,
                           seed=n, accession_number=f"ACC{n:04d}") for n in range(STUDIES)]
    digests = {sop_uid(f): _digest(f) for s in studies for f in s}
    daemon = make_daemon(
        checkpoint=small_checkpoint, preprocessing={"size": 64},
        completion={"release_grace_s": 0.5, "stable_s": 25, "sweep_interval_s": 0.2},
        destinations=pacs.as_destination(objects=["sr"]), report={"summary": "off"},
        logging={"level": "INFO", "file": "radtriage.log"},
    ).start()

    acked = 0
    lock = threading.Lock()
    half = threading.Event()

    def on_success() -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked >= STUDIES * VIEWS // 2:
                half.set()

    senders = send_concurrently(daemon.port, studies, SENDERS, on_success=on_success)
    assert half.wait(240), "half of the instances were not acknowledged in time"
    daemon.kill()  # SIGKILL, mid-stream: associations open, studies being scored and sent
    join_all(senders, 60)
    logs = [s.log for s in senders]
    succeeded = set().union(*(lg.succeeded for lg in logs))
    unanswered = [f for lg in logs for f in lg.unanswered]
    assert not any(st for lg in logs for st in lg.statuses.values() if st != 0)  # no failure status
    assert unanswered, "the kill came after the last instance: the test proved nothing"

    db = Database(daemon.db_url)
    try:
        with db.session() as s:  # a fresh process's view of the database after the kill
            rows = {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}
            mid_send = s.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.state == DeliveryState.SENDING)) or 0
            scored_before = s.scalar(select(func.count()).select_from(StudyResult)) or 0
        missing = succeeded - set(rows)
        assert not missing, f"{len(missing)} instance(s) answered Success are not in the database"
        for uid in succeeded:
            assert _digest(daemon.workdir / "storage" / rows[uid]) == digests[uid]

        # restart; each sender sends again what it had no answer for (one association per study)
        daemon.start()
        by_study: dict[str, list[Path]] = {}
        for f in unanswered:
            by_study.setdefault(str(f.parent), []).append(f)
        resenders = send_concurrently(daemon.port, list(by_study.values()), SENDERS)
        join_all(resenders, 240)
        assert all(not r.log.unanswered and not r.log.refused for r in resenders)
        assert all(st == 0 for r in resenders for st in r.log.statuses.values())

        def settled() -> bool:
            with db.session() as s:
                results = s.scalar(select(func.count()).select_from(StudyResult)) or 0
                open_ = s.scalar(select(func.count()).select_from(Delivery).where(
                    Delivery.state != DeliveryState.DELIVERED)) or 0
            return results >= STUDIES and open_ == 0

        wait_for(settled, 420, "every study scored and delivered after the restart", interval=1)
        time.sleep(2)  # a few more dispatch cycles: nothing may go out again

        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == STUDIES * VIEWS
            per_study = Counter(s.scalars(select(StudyResult.study_id)))
            assert len(per_study) == STUDIES and set(per_study.values()) == {1}, "scored more than once"
            assert not s.scalar(select(func.count()).select_from(StudyResult).where(
                StudyResult.superseded.is_(True)))
            for result in s.scalars(select(StudyResult)):
                assert len(result.scores) == VIEWS
            objects = set(s.scalars(select(OutputObject.uid)))
            assert len(objects) == STUDIES  # an SR per study
            states = Counter(st.value for st in s.scalars(select(Study.state)))
            assert states == {"delivered": STUDIES}, states
    finally:
        db.dispose()

    received = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                       for p in pacs.files())
    assert set(received) == objects
    duplicates = sum(n - 1 for n in received.values())
    record_property("crash_safety", {"acknowledged_before_kill": len(succeeded),
                                     "unanswered_at_kill": len(unanswered),
                                     "results_before_kill": scored_before,
                                     "deliveries_mid_send": mid_send,
                                     "pacs_duplicates": duplicates, "study_states": dict(states)})
    print(f"crash safety: {len(succeeded)} acknowledged before SIGKILL, {len(unanswered)} "
          f"unanswered and re-sent, {scored_before} result(s) committed before the kill, "
          f"{mid_send} delivery(ies) caught mid-send, {duplicates} duplicate(s) at the PACS")
    assert duplicates <= mid_send, received.most_common(3)
    assert daemon.stop() == 0
