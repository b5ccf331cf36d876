"""Shared fixtures: free ports, a plumbing checkpoint, synthetic studies, database URLs.

PostgreSQL tests use the server at 127.0.0.1:5432 (database ``test``, trust auth), each test
in a fresh schema-less database created for it and dropped after; set RADTRIAGE_TEST_PG to
another server URL, or to ``skip`` where there is none (CI requires it: ``CI=true`` turns a
missing server into a failure, not a skip).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("RADTRIAGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised DenseNet-169 saved as a checkpoint whose card says untrained."""
    import torch

    from inference.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    save_checkpoint(path, build_model("densenet169"),
                    ModelCard(name="plumbing-test", version="0.0.1", trained=False,
                              description="random weights, for plumbing tests only"))
    return path


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained DenseNet-121 at 64 px (``preprocessing: {size: 64}`` in the daemon's config):
    for tests that push hundreds of studies through the whole pipeline on two CPU cores."""
    import torch

    from dicom_io.pixels import Preprocessing
    from inference.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(4321)
    path = tmp_path_factory.mktemp("model") / "small-untrained.pt"
    save_checkpoint(path, build_model("densenet121"),
                    ModelCard(name="plumbing-small", version="0.0.1", arch="densenet121",
                              trained=False, preprocessing=Preprocessing(size=64).to_card(),
                              description="random weights at 64 px, for load tests only"))
    return path


def write_study(folder: Path, **spec_kwargs) -> list[Path]:  # type: ignore[no-untyped-def]
    """Write a synthetic study (dicom_io.synthetic.StudySpec kwargs) and return the files."""
    from dicom_io.synthetic import StudySpec, make_study

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(make_study(StudySpec(**spec_kwargs))):
        p = folder / f"view{i + 1}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def _pg_available() -> str | None:
    if PG_ADMIN_URL == "skip":
        return "RADTRIAGE_TEST_PG=skip"
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            pass
    except Exception as exc:  # any failure to connect means: no server here
        return f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    why = _pg_available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL: {why}")
        pytest.skip(why)
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"radtriage_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on SQLite (a file, WAL) and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'radtriage.db'}"
    return request.getfixturevalue("pg_url")


# -- every log the suite writes, scanned for patient data at the end ------------------------------
#
# All records logged in this process go to test-artifacts/suite-logs/in-process.log (pytest.ini
# sets log_level = INFO, so INFO records reach the root logger's handlers); daemons started by the
# tests write radtriage.log and stderr.log in their tmp_path. tests/test_phi_in_logs.py runs
# last and scans them all for the patient names and IDs the tests' data sets carry. A test that
# turns logging.phi on is marked ``phi_allowed``: what is logged while it runs is not scanned.

SUITE_LOGS = ROOT / "test-artifacts" / "suite-logs"
IN_PROCESS_LOG = SUITE_LOGS / "in-process.log"
#: the patient names and IDs of every data set the tests make (dicom_io.synthetic, the phantom
#: generator, the SR tests), as they would appear in a log line
PHI_PATTERN = re.compile(r"PHANTOM\^(TEST|\d{4,})|PHANTOM-\d{4,}|Doe\^Jane|PID-0042|PHANTOM TEST")


class _SuiteLogHandler(logging.FileHandler):
    paused = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.paused:
            super().emit(record)


_suite_handler: _SuiteLogHandler | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _suite_handler
    config.addinivalue_line("markers", "phi_allowed: the test enables logging.phi; its records "
                            "are not scanned for patient data")
    config.addinivalue_line("markers", "last: run after every other test")
    SUITE_LOGS.mkdir(parents=True, exist_ok=True)
    _suite_handler = _SuiteLogHandler(IN_PROCESS_LOG, mode="w", encoding="utf-8")
    _suite_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(_suite_handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _suite_handler is not None:
        logging.getLogger().removeHandler(_suite_handler)
        _suite_handler.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    if _suite_handler is not None:
        _suite_handler.paused = item.get_closest_marker("phi_allowed") is not None
    yield
    if _suite_handler is not None:
        _suite_handler.paused = False
        _suite_handler.flush()
