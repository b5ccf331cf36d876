"""One shape for testing a migration that must keep what is stored: one study and one instance
written at the revision before it, then upgraded to head, checked, and downgraded again."""
from __future__ import annotations

import datetime as dt
from typing import Callable

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text

from db import Database
from db.session import MIGRATIONS


def check_migration_keeps_rows(db_url: str, before: str, *, state: str, path: str,
                               received_at: dt.datetime, check: Callable[[Database], None]) -> None:
    """Upgrade a fresh database to ``before``, insert study 1 (``state``) and its instance at
    ``path``, migrate to head, run ``check(db)``, downgrade to ``before`` and assert the
    instance survived both ways."""
    db = Database(db_url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, before)
        with db.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO study (id, study_instance_uid, state, first_received_at, "
                "last_received_at, revision) VALUES (1, '1.2.3', :state, :t, :t, 1)"),
                {"state": state, "t": received_at})
            conn.execute(text(
                "INSERT INTO instance (id, study_id, series_instance_uid, sop_instance_uid, "
                "sop_class_uid, transfer_syntax_uid, path, size_bytes, received_at) VALUES "
                "(1, 1, '1.2.3.1', '1.2.3.1.1', '1.2', '1.2', :path, 5, :t)"),
                {"path": path, "t": received_at})
        db.migrate()
        check(db)
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, before)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM instance")).scalar_one() == 1
    finally:
        db.dispose()
