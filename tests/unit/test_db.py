"""db: migrations match the models on both backends, SQLite pragmas, UTC datetimes."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError

from db import Association, Base, Database
from db.models import UTCDateTime
from tests.migrations import check_migration_keeps_rows

TABLES = {"association", "study", "instance", "study_result", "image_score", "delivery", "event",
          "output_object", "web_session"}


def _head() -> str:
    """The newest revision; raises if the migrations have more than one head (two revisions
    written at once that both chained to the same parent)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from db.session import MIGRATIONS

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_migrate_fresh_database(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert db.table_names() == []
        db.migrate()
        assert set(db.table_names()) == TABLES | {"alembic_version"}
        assert TABLES == set(Base.metadata.tables)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _head()
        db.migrate()  # at head already: a no-op, not an error
        assert set(db.table_names()) == TABLES | {"alembic_version"}
    finally:
        db.dispose()


def test_migrated_schema_matches_the_models(database: Database) -> None:
    with database.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_sqlite_pragmas(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'deep' / 'er' / 'r.db'}")
    try:
        assert db.is_sqlite
        db.migrate()
        assert (tmp_path / "deep" / "er" / "r.db").is_file()  # the folder was created
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2  # FULL
    finally:
        db.dispose()


def test_session_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError):
        with database.session() as s:
            s.add(Association(calling_ae="A", peer_host="h", peer_port=1,
                              started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)))
            s.flush()
            raise RuntimeError("boom")
    with database.session() as s:
        assert s.scalars(select(Association)).all() == []


# -- UTCDateTime ---------------------------------------------------------------------------------


def test_utc_datetime_rejects_naive_values() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(dt.datetime(2026, 1, 1, 12, 0), None)


def test_utc_datetime_converts_to_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    bound = UTCDateTime().process_bind_param(dt.datetime(2026, 1, 1, 12, 0, tzinfo=plus2), None)
    assert bound == dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
    assert bound.utcoffset() == dt.timedelta(0)
    # what SQLite gives back (no zone) is read as UTC
    read = UTCDateTime().process_result_value(dt.datetime(2026, 1, 1, 10, 0), None)
    assert read == dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
    assert read.tzinfo == dt.timezone.utc
    assert UTCDateTime().process_bind_param(None, None) is None
    assert UTCDateTime().process_result_value(None, None) is None


def test_utc_datetime_round_trip(database: Database) -> None:
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    started = dt.datetime(2026, 7, 1, 23, 45, 12, 345678, tzinfo=ist)
    with database.session() as s:
        a = Association(calling_ae="A", peer_host="h", peer_port=1, started_at=started)
        s.add(a)
        s.flush()
        aid = a.id
    with database.session() as s:
        got = s.get(Association, aid).started_at
        assert got == started
        assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)
        assert got.hour == 18 and got.minute == 15 and got.microsecond == 345678
        # comparisons against aware datetimes work in queries
        later = s.scalars(select(Association).where(
            Association.started_at > dt.datetime(2026, 7, 1, 18, 15, tzinfo=dt.timezone.utc))).all()
        assert [x.id for x in later] == [aid]


def test_naive_datetime_is_refused_by_the_database_layer(database: Database) -> None:
    with pytest.raises(StatementError, match="naive"):
        with database.session() as s:
            s.add(Association(calling_ae="A", peer_host="h", peer_port=1,
                              started_at=dt.datetime(2026, 1, 1, 12, 0)))
            s.flush()
    with database.session() as s:
        assert s.scalars(select(Association)).all() == []


def test_migration_0005_keeps_every_study_and_instance(db_url: str) -> None:
    """Adding study.urgent must not re-create ``study``: on SQLite that would cascade-delete
    every instance (ON DELETE CASCADE with foreign keys on)."""
    from db.models import Instance, Study

    def check(db: Database) -> None:
        with db.session() as s:
            study = s.scalar(select(Study))
            assert study.urgent is False and study.urgent_reason is None
            assert s.scalar(select(Instance)).study_id == study.id

    check_migration_keeps_rows(db_url, "0004", state="complete", path="a/b/c.dcm",
                               received_at=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
                               check=check)
