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
