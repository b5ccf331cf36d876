"""Who may use the dashboard: the admin password, API tokens, signed sessions, CSRF tokens.

* Secrets are stored only as scrypt hashes (``scrypt$N$r$p$salt$key``, salt and key base64):
  :func:`hash_secret` makes one (``radtriage web-password``), :func:`verify_secret` checks a
  candidate in constant time.
* A browser logs in with the password and gets a session cookie: a payload signed with
  ``web.secret_key`` (itsdangerous) holding the session's id, its CSRF token, the time it was
  issued and a fingerprint of the password hash. It is refused after
  ``web.session_lifetime_s`` (absolute, not sliding), as soon as the password hash changes,
  and once the session's row in the database is gone (logged out: :mod:`web.sessions`). The
  cookie is HttpOnly and SameSite=Strict; every POST must also carry the session's CSRF token
  (header ``X-CSRF-Token``, or form field ``csrf_token``; an upload's in the query, so it is
  checked before the body is read).
* Scripts and Prometheus send ``Authorization: Bearer TOKEN`` (``web.token_hash``); a request
  that carries no cookie cannot be forged cross-site, so it needs no CSRF token.
* Repeated failed logins from one address are refused for a while (:class:`LoginThrottle`).

Pure apart from the clock it is given: nothing here knows about HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

#: scrypt cost for new hashes: N = 2**15, r = 8, p = 1 (32 MiB, about 0.1 s a check)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
_KEY_BYTES = 32


class AuthError(Exception):
    """A credential that is not accepted; the message says why (never the secret)."""


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``secret`` -> ``scrypt$N$r$p$salt$key`` (a fresh 16-byte salt each time)."""
    if not secret:
        raise ValueError("an empty password or token cannot be used")
    salt = secrets.token_bytes(16)
    key = _scrypt(secret, salt, n, r, p)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(key).decode()}"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + 1024 * 1024, dklen=_KEY_BYTES)


def verify_secret(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` is what ``stored`` (a :func:`hash_secret` line) was made from."""
    if not stored or not secret:
        return False
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(key, validate=True)
        got = _scrypt(secret, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:  # a malformed hash (the config checks the format; not its numbers)
        return False
    return hmac.compare_digest(got, want)


def fingerprint(stored: str | None) -> str:
    """A short digest of a stored hash: a session names the password it was opened with."""
    return hashlib.sha256((stored or "").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    issued_at: float
    #: the id the server's session row is named by (:mod:`web.sessions`)
    sid: str


class SessionSigner:
    """Issues and checks session cookies (itsdangerous, HMAC-SHA1 over the payload and time)."""

    SALT = "radtriage-session"

    def __init__(self, secret_key: str | bytes, lifetime_s: float, password_hash: str | None) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt=self.SALT)
        self.lifetime_s = lifetime_s
        self._pw = fingerprint(password_hash)

    def issue(self, sid: str, user: str = "admin") -> tuple[str, Session]:
        """A cookie for the session ``sid`` (opened on the server by the caller)."""
        session = Session(user=user, csrf=secrets.token_urlsafe(32), issued_at=time.time(), sid=sid)
        cookie = self._serializer.dumps({"u": session.user, "c": session.csrf, "pw": self._pw,
                                         "s": sid})
        return cookie, session

    def check(self, cookie: str | None) -> Session:
        """The session a cookie holds; AuthError when it is missing, forged, expired or stale."""
        if not cookie:
            raise AuthError("not logged in")
        try:
            data, issued = self._serializer.loads(cookie, max_age=self.lifetime_s, return_timestamp=True)
        except SignatureExpired as exc:
            raise AuthError("the session expired: log in again") from exc
        except BadSignature as exc:
            raise AuthError("the session is not valid: log in again") from exc
        if not isinstance(data, dict) or data.get("pw") != self._pw:
            raise AuthError("the password changed since this login: log in again")
        if not isinstance(data.get("s"), str) or not data["s"]:  # signed before sessions had ids
            raise AuthError("the session is not valid: log in again")
        return Session(user=str(data.get("u")), csrf=str(data.get("c")), issued_at=issued.timestamp(),
                       sid=data["s"])


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


class TokenChecker:
    """Checks bearer tokens against ``web.token_hash``; remembers the digests of good ones so
    a scrape every few seconds does not pay scrypt each time."""

    def __init__(self, token_hash: str | None) -> None:
        self.token_hash = token_hash
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, token: str) -> bool:
        if self.token_hash is None or not token:
            return False
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        with self._lock:
            if digest in self._good:
                return True
        if not verify_secret(token, self.token_hash):
            return False
        with self._lock:
            if len(self._good) < 64:
                self._good.add(digest)
        return True


class LoginThrottle:
    """At most ``limit`` failed logins per address within ``window_s``; then refused until the
    oldest failure leaves the window."""

    def __init__(self, limit: int = 10, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, who: str) -> list[float]:
        now = self.clock()
        kept = [t for t in self._failures.get(who, []) if now - t < self.window_s]
        if kept:
            self._failures[who] = kept
        else:
            self._failures.pop(who, None)
        return kept

    def blocked_for(self, who: str) -> float:
        """Seconds until ``who`` may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(who)
            if len(recent) < self.limit:
                return 0.0
            return max(0.0, self.window_s - (self.clock() - recent[0]))

    def failed(self, who: str) -> None:
        with self._lock:
            self._recent(who)
            self._failures.setdefault(who, []).append(self.clock())

    def succeeded(self, who: str) -> None:
        with self._lock:
            self._failures.pop(who, None)
