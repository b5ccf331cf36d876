"""Fixtures shared by the unit tests that need a database (on top of tests/conftest.py)."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture
def database(db_url: str) -> Iterator["Database"]:  # type: ignore[name-defined]  # noqa: F821
    """A migrated, empty database on SQLite and on PostgreSQL (see ``db_url``)."""
    from db import Database

    db = Database(db_url)
    try:
        db.migrate()
        yield db
    finally:
        db.dispose()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what daemon.logs.setup_logging changes: root handlers and level, library levels,
    pynetdicom's identifier switches and the warning filters."""
    import logging
    import warnings

    from pynetdicom import _config as pynetdicom_config

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("pydicom", "pynetdicom", "alembic", "highdicom", "apscheduler")
    levels = {n: logging.getLogger(n).level for n in names}
    identifiers = (pynetdicom_config.LOG_REQUEST_IDENTIFIERS, pynetdicom_config.LOG_RESPONSE_IDENTIFIERS)
    with warnings.catch_warnings():
        yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    for n, lvl in levels.items():
        logging.getLogger(n).setLevel(lvl)
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS, pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = identifiers
    logging.captureWarnings(False)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> Iterator[None]:
    """For tests that run ``radtriage`` commands in-process: no RADTRIAGE_* variable leaks in,
    and the logging set-up of the commands is undone afterwards."""
    import os

    for name in list(os.environ):
        if name.startswith("RADTRIAGE_"):
            monkeypatch.delenv(name)
    yield
