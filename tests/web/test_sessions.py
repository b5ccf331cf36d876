"""Logging out ends the session on the server (issue 17, finding 15).

A session is a row in the database (``web_session``) named by an id the signed cookie carries;
logging out deletes it, so the cookie is refused afterwards by every radtriage process that
shares the database, and expired rows are purged at each login.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select

from tests.web.conftest import SECRET_KEY, Site, log_in, make_client, site_config


@pytest.fixture
def bare_site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    """A migrated, empty database on SQLite and on PostgreSQL: sessions need no studies."""
    from db import Database

    config = site_config(tmp_path, db_url)
    db = Database(config.database.url)
    db.migrate()
    try:
        yield Site(config, db, tmp_path, dt.datetime.now(dt.timezone.utc), {}, 0)
    finally:
        db.dispose()


def test_logout_revokes_the_session_on_the_server(bare_site):
    client = make_client(bare_site)
    csrf = log_in(client)
    cookie = client.cookies["radtriage_session"]
    other_node = make_client(bare_site)  # another radtriage process on the same database
    other_node.cookies.set("radtriage_session", cookie)
    assert other_node.get("/api/studies").status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    for c in (client, other_node):
        c.cookies.set("radtriage_session", cookie)  # a copy of the cookie, kept by an attacker
        r = c.get("/api/studies")
        assert r.status_code == 401 and "log in again" in r.json()["detail"]
        page = c.get("/queue")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_each_login_is_its_own_session(bare_site):
    from db import WebSession

    first, second = make_client(bare_site), make_client(bare_site)
    csrf = log_in(first)
    log_in(second)
    with bare_site.db.session() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 2
    first.post("/logout", data={"csrf_token": csrf})
    assert first.get("/api/studies").status_code == 401
    assert second.get("/api/studies").status_code == 200
    with bare_site.db.session() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 1


def test_expired_sessions_are_purged(bare_site):
    from db import WebSession

    now = dt.datetime.now(dt.timezone.utc)
    with bare_site.db.session() as s:
        s.add(WebSession(id="0" * 64, created_at=now - dt.timedelta(days=2),
                         expires_at=now - dt.timedelta(days=1)))
    log_in(make_client(bare_site, clock=lambda: now))
    with bare_site.db.session() as s:
        assert s.get(WebSession, "0" * 64) is None
        assert s.scalar(select(func.count()).select_from(WebSession)) == 1


def test_a_signed_cookie_without_a_session_row_is_refused(bare_site):
    """The signing key alone does not make a session: one signed before this change (no session
    id), or one whose row is gone, is refused."""
    from itsdangerous import URLSafeTimedSerializer

    from web.auth import SessionSigner, fingerprint

    signer = URLSafeTimedSerializer(SECRET_KEY, salt=SessionSigner.SALT)
    pw = fingerprint(bare_site.config.web.password_hash)
    client = make_client(bare_site)
    for payload in ({"u": "admin", "c": "x", "pw": pw}, {"u": "admin", "c": "x", "pw": pw, "s": "made-up"}):
        client.cookies.set("radtriage_session", signer.dumps(payload))
        assert client.get("/api/studies").status_code == 401


def test_the_session_id_is_stored_only_as_a_digest(bare_site):
    from db import WebSession

    client = make_client(bare_site)
    log_in(client)
    with bare_site.db.session() as s:
        (row,) = s.scalars(select(WebSession)).all()
    assert len(row.id) == 64 and row.id not in client.cookies["radtriage_session"]
    assert row.expires_at - row.created_at == dt.timedelta(seconds=bare_site.config.web.session_lifetime_s)


def test_migration_0006_adds_the_session_table_and_keeps_every_study(db_url):
    from tests.migrations import check_migration_keeps_rows

    def check(db) -> None:  # type: ignore[no-untyped-def]
        assert "web_session" in db.table_names()

    check_migration_keeps_rows(db_url, "0005", state="complete", path="a/b/c.dcm",
                               received_at=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc),
                               check=check)
