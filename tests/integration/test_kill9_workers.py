"""Issue 17, finding 18: ``kill -9`` of the daemon orphaned its preparation processes (about
270 MB stayed running). Each worker now watches its parent (dicom_io.prepare.watch_parent) and
exits within a second of the daemon's death."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import write_study
from tests.integration.conftest import storescu, wait_for

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(entry.name))
    return out


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")  # a zombie has exited; only its parent's reaping is left


def test_preparation_workers_exit_when_the_daemon_is_killed(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon(decoding={"workers": 2}).start()
    files = write_study(tmp_path / "in", views=2, rows=64, columns=64)
    storescu(daemon.port, files)
    # the pool starts its processes when the first study is prepared
    wait_for(lambda: len(_children(daemon.proc.pid)) >= 2, 60, "the preparation workers to start")
    workers = _children(daemon.proc.pid)
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    start = time.monotonic()
    wait_for(lambda: not any(_running(p) for p in workers), 15,
             "the preparation workers to exit after the daemon's death")
    print(f"\n{len(workers)} child process(es) gone {time.monotonic() - start:.2f} s after kill -9")
