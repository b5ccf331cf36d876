"""Real peers for integration tests: the daemon as a subprocess, DCMTK's storescp as the PACS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RADTRIAGE = [sys.executable, "-m", "daemon.cli"]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed (make test installs dcmtk and dicom3tools)")
        pytest.skip(f"{tool} is not installed")
    return path


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def echo(port: int, ae_title: str = "RADTRIAGE", calling: str = "ECHOSCU") -> bool:
    # probe with a plain socket first: pynetdicom leaks its socket when the connect is refused
    if not listening(port):
        return False
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


class StoreSCP:
    """DCMTK storescp acting as the PACS; ``-uf`` keeps one file per C-STORE received."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        self.folder, self.port, self.ae_title = folder, port, ae_title
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> "StoreSCP":
        self.log = open(self.folder.parent / f"storescp-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [need("storescp"), "-aet", self.ae_title, "-od", str(self.folder), "-uf", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: echo(self.port, self.ae_title), 10, "storescp to listen")
        return self

    def as_destination(self, objects: list[str] | None = ["sr"]) -> list[dict]:  # noqa: B006
        """radtriage's ``destinations`` config pointing at this storescp; it is sent the SRs only
        unless ``objects`` says otherwise (None: everything)."""
        return [{"name": "pacs", "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port,
                 "objects": objects}]

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None


class Daemon:
    """``radtriage serve`` in a subprocess with a temporary config."""

    def __init__(self, workdir: Path, checkpoint: Path, port: int, **overrides: dict) -> None:
        self.workdir = workdir
        self.port = port
        self.config = {
            "node": {"ae_title": "RADTRIAGE", "host": "127.0.0.1", "port": port},
            "storage": {"path": "storage", "min_free_mb": 0},
            "database": {"url": "sqlite:///radtriage.db"},
            "completion": {"release_grace_s": 0.5, "stable_s": 30, "sweep_interval_s": 0.2},
            "model": {"checkpoint": str(checkpoint), "device": "cpu", "allow_untrained": True,
                      "batch_size": 4},
            "destinations": [],
            "dispatch": {"interval_s": 0.3, "backoff_initial_s": 0.5, "backoff_max_s": 1},
            "logging": {"level": "DEBUG", "file": "radtriage.log"},
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values
        self.proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "radtriage.log"

    def start(self, timeout: float = 90) -> "Daemon":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADTRIAGE_")}
        env["PYTHONPATH"] = str(ROOT)
        self.stderr = open(self.workdir / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            RADTRIAGE + ["serve", "--config", str(self.config_path)],
            cwd=self.workdir, env=env, stdout=self.stderr, stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")
            allowed = self.config["node"].get("allowed_calling_aes") or ["ECHOSCU"]
            return echo(self.port, calling=allowed[0])

        wait_for(up, timeout, "the daemon to answer C-ECHO", interval=0.5)
        return self

    def output(self) -> str:
        text = (self.workdir / "stderr.log").read_text(errors="replace")
        if self.log_path.exists():
            text += self.log_path.read_text(errors="replace")
        return text[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon did not stop within {timeout} s after {sig!r}")
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if getattr(self, "stderr", None) is not None:
            self.stderr.close()
            self.stderr = None

    @property
    def db_url(self) -> str:
        url = self.config["database"]["url"]
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            return "sqlite:///" + str(self.workdir / url[len("sqlite:///"):])
        return url


def storescu(port: int, files: list[Path], *, aec: str = "RADTRIAGE", aet: str = "STORESCU",
             check: bool = True, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [need("storescu"), "-v", "-aec", aec, "-aet", aet, *(extra or []), "127.0.0.1", str(port),
           *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs", free_port()).start()
    yield scp
    scp.stop()


@pytest.fixture
def make_daemon(tmp_path: Path, untrained_checkpoint: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def factory(name: str = "daemon", checkpoint: Path | None = None, **overrides: dict) -> Daemon:
        d = Daemon(tmp_path / name, checkpoint or untrained_checkpoint, free_port(), **overrides)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.kill()


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Callable[..., tuple]]:
    """Start radtriage's Storage SCP in-process on a free port: ``receivers(**sections)`` merges
    each section into a config with storage in tmp_path, no free-space floor and an SQLite
    database (``db_url=`` for another); returns (receiver, database), stopped at the end."""
    from daemon.config import parse_config
    from daemon.receiver import Receiver
    from db import Database

    started: list[tuple] = []

    def start(*, db_url: str | None = None, migrate: bool = True, **sections: dict) -> tuple:
        data: dict = {"node": {"host": "127.0.0.1", "port": free_port()},
                      "storage": {"path": str(tmp_path / "storage"), "min_free_mb": 0},
                      "database": {"url": db_url or f"sqlite:///{tmp_path / 'radtriage.db'}"}}
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        config = parse_config(data, base=tmp_path, environ={})
        db = Database(config.database.url)
        if migrate:
            db.migrate()
        receiver = Receiver(config, db)
        receiver.start()
        started.append((receiver, db))
        return receiver, db

    yield start
    for receiver, db in started:
        receiver.stop()
        db.dispose()
