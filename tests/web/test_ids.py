"""A bad ID in a path is a 404, never a 500 (issue 17, finding 16).

IDs are database keys (INTEGER: 32 bits on PostgreSQL, 64 on SQLite): zero, negative, too large
for the column, or not a number at all, the page or object does not exist.
"""

from __future__ import annotations

import pytest

from tests.web.conftest import TOKEN, make_client

BEARER = {"Authorization": f"Bearer {TOKEN}"}
BAD = ["0", "-1", "2147483648", "9223372036854775808", "99999999999999999999", "abc", "1.5", "1e3"]
GETS = ["/studies/{id}", "/api/studies/{id}", "/studies/{id}/summary.png",
        "/studies/{id}/views/1.png", "/studies/1/views/{id}.png"]
POSTS = ["/queue/{id}/retry", "/api/queue/{id}/retry"]


def _check(client) -> None:  # type: ignore[no-untyped-def]
    for bad in BAD:
        for path in GETS:
            r = client.get(path.format(id=bad), headers=BEARER)
            assert r.status_code == 404, (path, bad, r.status_code, r.text[:200])
        for path in POSTS:
            r = client.post(path.format(id=bad), headers=BEARER)
            assert r.status_code == 404, (path, bad, r.status_code, r.text[:200])
    r = client.get("/api/studies/99999999999999999999", headers=BEARER)
    assert "study" in r.json()["detail"]
    page = client.get("/studies/99999999999999999999", headers=BEARER)
    assert "text/html" in page.headers["content-type"] and "404" in page.text


def test_bad_ids_are_404_on_sqlite(sqlite_site):
    _check(make_client(sqlite_site))


@pytest.mark.postgres
def test_bad_ids_are_404_on_postgresql(pg_url, tmp_path):
    from db import Database
    from tests.web.conftest import Site, site_config

    config = site_config(tmp_path, pg_url)
    db = Database(config.database.url)
    db.migrate()
    try:
        import datetime as dt

        _check(make_client(Site(config, db, tmp_path, dt.datetime.now(dt.timezone.utc), {}, 0)))
        # a number in range that names nothing is a 404 as before
        client = make_client(Site(config, db, tmp_path, dt.datetime.now(dt.timezone.utc), {}, 0))
        assert client.get("/api/studies/2147483647", headers=BEARER).status_code == 404
    finally:
        db.dispose()


def test_a_bad_id_still_needs_a_login_first(sqlite_site):
    client = make_client(sqlite_site)
    assert client.get("/api/studies/99999999999999999999").status_code == 401
    r = client.get("/studies/-1")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
