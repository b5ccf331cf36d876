"""Dashboard sessions kept in the database, so that logging out ends them everywhere.

A signed cookie alone cannot be taken back: until it expires it is valid wherever the key is.
So every login is also a row (:class:`db.models.WebSession`) named by the SHA-256 digest of a
random id the cookie carries (the database never holds a usable id); a request's session must
still have its row, and logging out deletes it. The rows live in the database, not in the
process, because radtriage's nodes share only the database (a logout on one node ends the
session on all of them). Rows past their expiry are deleted at each login, so the table holds
about as many rows as there are open sessions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Callable

from sqlalchemy import delete

from db import Database, WebSession, utcnow


def digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()


class SessionStore:
    """Opens, checks and closes sessions in ``db``; ``lifetime_s`` as ``web.session_lifetime_s``."""

    def __init__(self, db: Database, lifetime_s: float,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db, self.lifetime, self.clock = db, dt.timedelta(seconds=lifetime_s), clock

    def open(self) -> str:
        """A new session's id (for the cookie); expired sessions are deleted on the way."""
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.session() as s:
            s.execute(delete(WebSession).where(WebSession.expires_at <= now))
            s.add(WebSession(id=digest(sid), created_at=now, expires_at=now + self.lifetime))
        return sid

    def is_open(self, sid: str) -> bool:
        with self.db.session() as s:
            row = s.get(WebSession, digest(sid))
            return row is not None and row.expires_at > self.clock()

    def close(self, sid: str) -> None:
        with self.db.session() as s:
            s.execute(delete(WebSession).where(WebSession.id == digest(sid)))
