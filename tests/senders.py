"""Concurrent DICOM senders for the crash, outage and load tests (and benchmarks/load.py).

A :class:`Sender` sends studies the way a PACS forwarding rule does: one association per study
(or, ``one_association=True``, all of them in one), each instance as a C-STORE, the association
released at the end. It records every answer, so a
test knows exactly which instances the daemon acknowledged with Success, and stops quietly when
the daemon goes away (its association aborted or refused), keeping what it could not send.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
)


@dataclass
class SendLog:
    """What one sender saw: SOP Instance UID -> status, what it never got an answer for, and
    associations the daemon refused."""

    statuses: dict[str, int] = field(default_factory=dict)
    unanswered: list[Path] = field(default_factory=list)
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> set[str]:
        return {uid for uid, status in self.statuses.items() if status == 0}


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


class Sender(threading.Thread):
    """Sends ``studies`` (lists of files) one association each to ``port``."""

    def __init__(self, port: int, studies: Sequence[Sequence[Path]], *, calling: str = "PACS",
                 called: str = "RADTRIAGE", on_success: Callable[[], None] | None = None,
                 timeout_s: float = 30, one_association: bool = False) -> None:
        super().__init__(daemon=True, name=f"sender-{calling}")
        self.port, self.calling, self.called = port, calling, called
        self.studies = [[f for s in studies for f in s]] if one_association else list(studies)
        self.on_success = on_success
        self.timeout_s = timeout_s
        self.log = SendLog()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling)
        for sop_class in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation):
            ae.add_requested_context(sop_class)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        return ae

    def run(self) -> None:
        ae = self._ae()
        pending = [list(s) for s in self.studies]
        while pending:
            files = pending.pop(0)
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called)
            if not assoc.is_established:
                self.log.refused += 1
                self.log.unanswered += files + [f for s in pending for f in s]
                return
            for n, path in enumerate(files):
                try:
                    status = assoc.send_c_store(path)
                except (RuntimeError, OSError, ValueError) as exc:  # the daemon went away mid-send
                    self.log.errors.append(f"{type(exc).__name__}: {exc}")
                    status = None
                if not status or "Status" not in status:
                    self.log.unanswered += files[n:] + [f for s in pending for f in s]
                    assoc.abort()
                    return
                self.log.statuses[sop_uid(path)] = int(status.Status)
                if int(status.Status) == 0 and self.on_success is not None:
                    self.on_success()
            assoc.release()


def send_concurrently(port: int, studies: Sequence[Sequence[Path]], senders: int, *,
                      calling: Sequence[str] | None = None,
                      on_success: Callable[[], None] | None = None,
                      one_association: bool = False) -> list[Sender]:
    """Start ``senders`` threads sharing ``studies`` round-robin; return them (running)."""
    names = list(calling or [f"PACS{i + 1}" for i in range(senders)])
    threads = [Sender(port, studies[i::senders], calling=names[i % len(names)],
                      on_success=on_success, one_association=one_association)
               for i in range(senders)]
    for t in threads:
        t.start()
    return threads


def join_all(threads: Sequence[threading.Thread], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        raise AssertionError(f"senders still running after {timeout_s} s: {alive}")


class RecordingPACS:
    """A pynetdicom Storage SCP that records every SOP Instance UID it is sent, in order, with
    the Series Description: the PACS of the outage tests (it counts duplicates too)."""

    def __init__(self, port: int, ae_title: str = "PACS") -> None:
        from pynetdicom import evt
        from pynetdicom.sop_class import (
            ComprehensiveSRStorage,
            Comprehensive3DSRStorage,
            SecondaryCaptureImageStorage,
        )

        self.port, self.ae_title = port, ae_title
        self.received: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        for sop_class in (Comprehensive3DSRStorage, ComprehensiveSRStorage,
                          SecondaryCaptureImageStorage):
            self.ae.add_supported_context(sop_class)
        self._handlers = [(evt.EVT_C_STORE, self._on_store)]
        self._server = None

    def _on_store(self, event) -> int:  # type: ignore[no-untyped-def]
        ds = event.dataset
        with self._lock:
            self.received.append((str(ds.SOPInstanceUID), str(ds.get("SeriesDescription", ""))))
        return 0

    def start(self) -> "RecordingPACS":
        self._server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                            evt_handlers=self._handlers)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def uids(self) -> list[str]:
        with self._lock:
            return [uid for uid, _ in self.received]

    def as_destination(self) -> list[dict]:
        return [{"name": "pacs", "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port,
                 "objects": ["sr"]}]


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process and of its child processes (the preparation workers), MB:
    ``rss`` now (process + children) and ``peak`` (the process's own high-water mark, VmHWM)."""
    def status(p: int) -> dict[str, int]:
        out = {}
        with open(f"/proc/{p}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "PPid"):
                    out[key] = int(value.split()[0])
        return out

    own = status(pid)
    children = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            st = status(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if st.get("PPid") == pid:
            children += st.get("VmRSS", 0)
    return {"rss": (own["VmRSS"] + children) / 1024, "own_rss": own["VmRSS"] / 1024,
            "peak": own["VmHWM"] / 1024}


class PeakMemory(threading.Thread):
    """Samples :func:`memory_mb` of a process every 20 ms while it runs: the highest ``key``
    (``own_rss``: the process alone; ``rss``: with its child processes), MB."""

    def __init__(self, pid: int, key: str = "own_rss") -> None:
        super().__init__(daemon=True)
        self.pid, self.key, self.peak, self._done = pid, key, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, memory_mb(self.pid)[self.key])
            except OSError:  # a child went away between listing and reading
                continue
            self._done.wait(0.02)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak

    def __enter__(self) -> "PeakMemory":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RoundResult:
    """One load round: what was sent and answered, how long it took, memory after it."""

    instances: int
    succeeded: int
    failed: int
    unanswered: int
    refused: int
    receive_s: float
    settle_s: float
    memory: dict[str, float]

    @property
    def per_second(self) -> float:
        return self.succeeded / self.receive_s if self.receive_s else 0.0


def load_round(port: int, pid: int, studies: Sequence[Sequence[Path]], *,
               settled: Callable[[], bool], timeout_s: float = 600) -> RoundResult:
    """Send each study with its own DCMTK ``storescu`` (one association each, all at once),
    wait until ``settled()`` (every result made), and read the daemon's memory."""
    import shutil
    import subprocess

    storescu = shutil.which("storescu")
    if storescu is None:
        raise AssertionError("storescu (Debian package dcmtk) is needed: run `make test-tools`")
    start = time.monotonic()
    procs = [subprocess.Popen([storescu, "-v", "-aec", "RADTRIAGE", "-aet", f"LOAD{n + 1}",
                               "127.0.0.1", str(port), *map(str, files)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, files in enumerate(studies)]
    outputs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    received = time.monotonic()
    deadline = received + timeout_s
    while not settled():
        if time.monotonic() > deadline:
            raise AssertionError(f"the round did not settle within {timeout_s} s")
        time.sleep(0.25)
    done = time.monotonic()
    succeeded = sum(out.count("Received Store Response (Success)") for out in outputs)
    answered = sum(out.count("Received Store Response") for out in outputs)
    return RoundResult(
        instances=sum(len(s) for s in studies), succeeded=succeeded, failed=answered - succeeded,
        unanswered=sum(len(s) for s in studies) - answered,
        refused=sum("Association Rejected" in out for out in outputs),
        receive_s=received - start, settle_s=done - received, memory=memory_mb(pid))
