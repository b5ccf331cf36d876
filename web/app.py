"""The operators' dashboard and JSON API (FastAPI): :func:`create_app` builds it for one daemon.

Pages (HTML, server-rendered) and their JSON twins:

=====================================  ==========================================================
``/`` , ``/api/studies``               worklist: recent studies, HIGH > ELEVATED > ROUTINE, then
                                       arrival (oldest first); flag, probability, body part,
                                       state, time to result
``/studies/{id}``, ``/api/studies/{id}``  each view with its heatmap overlay and probability,
                                       the objects made, their deliveries, the audit events
``/queue``, ``/api/queue``             failing and waiting deliveries (each once), dead letters; ``POST
                                       /queue/{id}/retry`` (``/api/queue/{id}/retry``)
``/model``, ``/api/model``             the model card, its metrics (a table per set, ROC and
                                       reliability plots: ``/model/{set}/roc.png``,
                                       ``reliability.png``), threshold, priority rules and the
                                       daily distribution of study probabilities
``/quarantine``, ``/api/quarantine``   what the receiver refused and kept, newest first, with
                                       each note's calling AE, SOP Instance UID and reason
``/config``, ``/api/config``           the effective configuration, secrets masked
``/upload``, ``/api/upload`` (POST)    ad-hoc scoring of DICOM, PNG or JPEG files
``/metrics``                           Prometheus text format
``/healthz``                           alive (no login needed)
``/readyz``                            database, storage and model ready (200) or not (503)
=====================================  ==========================================================

Everything but ``/healthz`` and the login page needs a session (``/login``) or a bearer token;
every POST made with a session cookie needs its CSRF token (:mod:`web.auth`). Bodies are read
by :mod:`web.forms`, after those checks and within limits; an ID in a path that names nothing
(zero, negative, too large for the database, not a number) is a 404. ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are believed from ``web.trusted_proxies`` only.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from daemon import metrics as daemon_metrics
from db import Database, Study, utcnow
from web import queries
from web.auth import AuthError, LoginThrottle, SessionSigner, TokenChecker, same_token, verify_secret
from web.forms import FRAMING_BYTES, CloseUnreadBody, FormError, read_multipart, read_small_form
from web.masking import masked_config
from web.sessions import SessionStore

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "radtriage_session"
LOGIN_COOKIE = "radtriage_login"  # the login form's CSRF token (double submit)

_SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}

#: the largest ID a path may name: the database's keys are INTEGER, 32 bits on PostgreSQL (a
#: larger number made SQLite raise OverflowError, a 500, and PostgreSQL refuse the query)
MAX_ID = 2 ** 31 - 1
#: a database key in a path; anything else is a 404 (:func:`create_app`'s validation handler)
DbId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
_ID_NAMES = {"study_id": "study", "score_id": "view", "delivery_id": "delivery"}


@dataclass
class WebContext:
    """What the app serves from: the daemon's config, database, model and preparation pool."""

    config: Any  # daemon.config.Config
    db: Database
    #: the served model (daemon.worker.ViewScorer); None: not loaded (readyz says so, uploads 503)
    scorer: Any = None
    #: the pool uploads are prepared in; None: made on first upload (web.upload.upload_pool)
    upload_pool: Any = None
    clock: Callable[[], dt.datetime] = utcnow
    #: extra readiness checks: name -> callable giving (ok, detail); e.g. the DICOM receiver
    checks: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    kind: str  # session | token
    csrf: str | None = None
    sid: str | None = None  # the session's id (web.sessions), for logging out


class _NeedLogin(Exception):
    def __init__(self, api: bool, reason: str) -> None:
        self.api, self.reason = api, reason


def _is_api(path: str) -> bool:
    return path.startswith(("/api/", "/metrics", "/readyz"))


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no //) may be where login sends you."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def create_app(ctx: WebContext) -> FastAPI:
    cfg = ctx.config
    web = cfg.web
    key = web.secret_key or secrets.token_urlsafe(48)
    if web.secret_key is None:
        log.info("web.secret_key is not set: sessions are signed with a random key and end when "
                 "radtriage restarts")
    signer = SessionSigner(key, web.session_lifetime_s, web.password_hash)
    sessions = SessionStore(ctx.db, web.session_lifetime_s, ctx.clock)
    tokens = TokenChecker(web.token_hash)
    throttle = LoginThrottle()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = lambda p: "-" if p is None else f"{100 * p:.1f}%"
    templates.env.filters["secs"] = _seconds_text
    templates.env.filters["when"] = lambda t: "-" if not t else t.replace("T", " ")[:19]
    templates.env.filters["flag_class"] = _flag_class
    templates.env.filters["figure"] = _figure_text
    pictures: "OrderedDict[tuple[int, int], bytes]" = OrderedDict()
    pictures_lock = threading.Lock()
    plots: dict[tuple[str, str, str], bytes] = {}  # (card, set, kind) -> PNG: a card never changes
    upload_lock = threading.Lock()
    from daemon.metrics import WEB_LOGINS
    from web.metrics import Exposition

    exposition = Exposition(ctx.db, ctx.clock)
    app = FastAPI(title="radtriage", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- plumbing ------------------------------------------------------------------------

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(_NeedLogin)
    async def _need_login(request: Request, exc: _NeedLogin):  # type: ignore[no-untyped-def]
        if exc.api:
            return JSONResponse({"detail": exc.reason}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="radtriage"'})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        if request.cookies.get(SESSION_COOKIE):
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # type: ignore[no-untyped-def]
        if _is_api(request.url.path) or request.url.path.endswith(".png"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))
        return templates.TemplateResponse(request, "error.html", {
            "status": exc.status_code, "detail": exc.detail, "user": None, "csrf": None},
            status_code=exc.status_code)

    @app.exception_handler(FormError)
    async def _form_error(request: Request, exc: FormError):  # type: ignore[no-untyped-def]
        return await _http_error(request, StarletteHTTPException(exc.status, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        bad = [e for e in exc.errors() if tuple(e.get("loc", ()))[:1] == ("path",)]
        if not bad:
            return await request_validation_exception_handler(request, exc)
        name = str(bad[0]["loc"][-1])
        value = str(request.path_params.get(name, ""))[:40]
        return await _http_error(request, StarletteHTTPException(404, (
            f"there is no {_ID_NAMES.get(name, name)} {value!r}: an ID is a whole number from 1 "
            f"to {MAX_ID}")))

    @app.exception_handler(SQLAlchemyError)
    async def _db_error(request: Request, exc: SQLAlchemyError):  # type: ignore[no-untyped-def]
        daemon_metrics.ERRORS.labels("database").inc()
        log.error("web: the database failed: %s", str(exc).splitlines()[0])
        detail = "the database is not answering; try again shortly"
        if _is_api(request.url.path):
            return JSONResponse({"detail": detail}, status_code=503)
        return templates.TemplateResponse(request, "error.html", {
            "status": 503, "detail": detail, "user": None, "csrf": None}, status_code=503)

    def principal(request: Request) -> Principal:
        api = _is_api(request.url.path)
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            if tokens.check(auth[7:].strip()):
                return Principal("token")
            raise _NeedLogin(api, "the bearer token is not valid")
        try:
            session = signer.check(request.cookies.get(SESSION_COOKIE))
        except AuthError as exc:
            raise _NeedLogin(api, str(exc)) from exc
        if not sessions.is_open(session.sid):
            raise _NeedLogin(api, "the session has ended (logged out or expired): log in again")
        return Principal("session", session.csrf, session.sid)

    def _check_csrf(who: Principal, given: str | None) -> Principal:
        if who.kind == "token":
            return who  # no cookie, nothing to forge
        if not same_token(given, who.csrf or ""):
            raise HTTPException(403, "the form is stale or came from another site (CSRF token "
                                     "missing or wrong): reload the page and try again")
        return who

    async def csrf_checked(request: Request, who: Principal = Depends(principal)) -> Principal:
        """A small form's POST: the token from the X-CSRF-Token header or the form (read here,
        at most web.forms.SMALL_FORM_BYTES)."""
        given = request.headers.get("x-csrf-token")
        if given is None and who.kind == "session" and request.headers.get("content-type"):
            given = (await read_small_form(request)).get("csrf_token")
        return _check_csrf(who, given)

    def upload_checked(request: Request, who: Principal = Depends(principal)) -> Principal:
        """An upload's POST, before a byte of its body is read: the login, and a session's CSRF
        token when a script sends it in the X-CSRF-Token header. A browser's form sends it as
        its first field instead (never in the address, where access logs and the history
        would keep it): :func:`_read_upload` checks it before any file part is read."""
        if who.kind == "session" and "x-csrf-token" in request.headers:
            return _check_csrf(who, request.headers["x-csrf-token"])
        return who

    def page(request: Request, name: str, who: Principal, **data: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": who, "csrf": who.csrf, **data})

    # -- health ----------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz(who: Principal = Depends(principal)) -> JSONResponse:
        checks = {"database": _check_database(ctx.db), "storage": _check_storage(cfg),
                  "model": _check_model(ctx.scorer)}
        for name, check in ctx.checks.items():
            checks[name] = check()
        body = {"ready": all(ok for ok, _ in checks.values()),
                "checks": {k: {"ok": ok, "detail": detail} for k, (ok, detail) in checks.items()}}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    def prometheus(who: Principal = Depends(principal)) -> Response:
        return Response(exposition.render(), media_type=CONTENT_TYPE_LATEST)

    # -- login -----------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002
        token = secrets.token_urlsafe(32)
        response = templates.TemplateResponse(request, "login.html", {
            "user": None, "csrf": None, "login_csrf": token, "next": _safe_next(next),
            "error": None, "password_login": web.password_hash is not None})
        _set_cookie(response, LOGIN_COOKIE, token, web, max_age=3600)
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        form = await read_small_form(request)  # no session yet to check first: a few KB at most
        return await run_in_threadpool(_login, request, form.get("password", ""),
                                       form.get("csrf_token", ""), form.get("next", "/"))

    def _login(request: Request, password: str, csrf_token: str, next: str) -> Response:  # noqa: A002
        # the client's address: the connection's peer, or what a web.trusted_proxies proxy says
        who = request.client.host if request.client else "?"
        target = _safe_next(next)

        def again(error: str, status: int) -> HTMLResponse:
            token = secrets.token_urlsafe(32)
            response = templates.TemplateResponse(request, "login.html", {
                "user": None, "csrf": None, "login_csrf": token, "next": target, "error": error,
                "password_login": web.password_hash is not None}, status_code=status)
            _set_cookie(response, LOGIN_COOKIE, token, web, max_age=3600)
            return response

        if not same_token(csrf_token, request.cookies.get(LOGIN_COOKIE, "")):
            return again("The login form expired; try again.", 403)
        wait = throttle.blocked_for(who)
        if wait:
            WEB_LOGINS.labels("throttled").inc()
            log.warning("web: login from %s refused: too many failed attempts", who)
            return again(f"Too many failed logins; try again in {int(wait) + 1} s.", 429)
        if not verify_secret(password, web.password_hash):
            throttle.failed(who)
            WEB_LOGINS.labels("failed").inc()
            log.warning("web: failed login from %s", who)
            return again("Wrong password.", 401)
        throttle.succeeded(who)
        WEB_LOGINS.labels("succeeded").inc()
        log.info("web: admin logged in from %s", who)
        cookie, _ = signer.issue(sessions.open())
        response = RedirectResponse(target, status_code=303)
        _set_cookie(response, SESSION_COOKIE, cookie, web, max_age=int(web.session_lifetime_s))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @app.post("/logout")
    def logout(who: Principal = Depends(csrf_checked)) -> Response:
        if who.sid is not None:
            sessions.close(who.sid)  # the cookie is refused from now on, on every node
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- worklist and studies ----------------------------------------------------------------

    def _worklist(days: float, limit: int, state: str | None) -> list[dict[str, Any]]:
        try:
            return queries.worklist(ctx.db, ctx.clock(), days=days, limit=limit, state=state)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    @app.get("/", response_class=HTMLResponse)
    def worklist_page(request: Request, days: float = Query(7, gt=0, le=3650),
                      limit: int = Query(200, ge=1, le=5000), state: str | None = None,
                      who: Principal = Depends(principal)) -> HTMLResponse:
        rows = _worklist(days, limit, state or None)
        return page(request, "worklist.html", who, rows=rows, days=days, state=state or "",
                    states=[s.value for s in queries.StudyState], counts=queries.counts(ctx.db),
                    notice=_served_notice(), quarantined=_quarantine(0).count)

    @app.get("/api/studies")
    def worklist_api(days: float = Query(7, gt=0, le=3650), limit: int = Query(200, ge=1, le=5000),
                     state: str | None = None, who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"notice": _served_notice(), "studies": _worklist(days, limit, state or None)}

    def _served_notice() -> str | None:
        """What the served model says about itself on every output (the demo model's DEMO
        notice), shown above the worklist: every result there may be the demo model's."""
        card = getattr(ctx.scorer, "card", None)
        return card.notice if card is not None else None

    def _study(study_id: int) -> dict[str, Any]:
        try:
            study = queries.study_detail(ctx.db, study_id)
        except queries.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        current = study["current_result"]
        study["notice"] = _notice(current) if current is not None else None
        return study

    @app.get("/studies/{study_id}", response_class=HTMLResponse)
    def study_page(request: Request, study_id: DbId, who: Principal = Depends(principal)) -> HTMLResponse:
        study = _study(study_id)
        return page(request, "study.html", who, study=study, notice=study["notice"],
                    has_summary=queries.summary_path(ctx.db, study_id) is not None)

    @app.get("/api/studies/{study_id}")
    def study_api(study_id: DbId, who: Principal = Depends(principal)) -> dict[str, Any]:
        return _study(study_id)

    @app.get("/studies/{study_id}/views/{score_id}.png")
    def view_picture(study_id: DbId, score_id: DbId, who: Principal = Depends(principal)) -> Response:
        from dicom_io.pixels import DecodeOptions
        from web.render import PictureUnavailable, stored_view_overlay

        key = (study_id, score_id)  # a score is drawn for its own study only
        with pictures_lock:
            cached = pictures.get(key)
            if cached is not None:
                pictures.move_to_end(key)
        if cached is None:
            try:
                info = queries.view_score(ctx.db, study_id, score_id)
            except queries.NotFound as exc:
                raise HTTPException(404, str(exc)) from exc
            d = cfg.decoding
            opts = DecodeOptions(working_size=d.working_size, reduced_decode=d.reduced_decode,
                                 multiframe="frames", max_pixels=cfg.limits.max_pixels)
            try:
                cached = stored_view_overlay(cfg.storage.path, info, opts, notice=_notice(info["result"]))
            except PictureUnavailable as exc:
                raise HTTPException(404, str(exc)) from exc
            with pictures_lock:
                pictures[key] = cached
                while len(pictures) > 128:
                    pictures.popitem(last=False)
        return Response(cached, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/studies/{study_id}/summary.png")
    def summary_picture(study_id: DbId, who: Principal = Depends(principal)) -> Response:
        from web.render import PictureUnavailable, summary_png

        rel = queries.summary_path(ctx.db, study_id)
        if rel is None:
            raise HTTPException(404, f"study {study_id} has no summary image")
        try:
            data = summary_png(cfg.storage.path, rel)
        except PictureUnavailable as exc:
            raise HTTPException(404, str(exc)) from exc
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def _notice(result: dict[str, Any]) -> str | None:
        card = getattr(ctx.scorer, "card", None)
        if card is not None and result["model"] == f"{card.display_name} {card.version}":
            return card.notice
        return None

    # -- quarantine --------------------------------------------------------------------------

    def _quarantine(limit: int):  # type: ignore[no-untyped-def]
        from daemon.status import read_quarantine

        return read_quarantine(cfg.storage.path, limit=limit)

    @app.get("/quarantine", response_class=HTMLResponse)
    def quarantine_page(request: Request, limit: int = Query(100, ge=1, le=5000),
                        who: Principal = Depends(principal)) -> HTMLResponse:
        return page(request, "quarantine.html", who, quarantine=_quarantine(limit).to_dict())

    @app.get("/api/quarantine")
    def quarantine_api(limit: int = Query(100, ge=1, le=5000),
                       who: Principal = Depends(principal)) -> dict[str, Any]:
        return _quarantine(limit).to_dict()

    # -- queue -------------------------------------------------------------------------------

    @app.get("/queue", response_class=HTMLResponse)
    def queue_page(request: Request, done: str | None = None, error: str | None = None,
                   who: Principal = Depends(principal)) -> HTMLResponse:
        return page(request, "queue.html", who, queue=queries.queue(ctx.db), done=done, error=error)

    @app.get("/api/queue")
    def queue_api(who: Principal = Depends(principal)) -> dict[str, Any]:
        return queries.queue(ctx.db)

    def _retry(delivery_id: int) -> dict[str, Any]:
        try:
            out = queries.retry_delivery(ctx.db, delivery_id, ctx.clock())
        except queries.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except queries.RetryRefused as exc:
            raise HTTPException(409, str(exc)) from exc
        log.info("web: delivery %s (%s to %s) retried from the dashboard (was %s)", delivery_id,
                 out["object_kind"], out["destination"], out["was"])
        return out

    @app.post("/queue/{delivery_id}/retry")
    def retry_form(delivery_id: DbId, who: Principal = Depends(csrf_checked)) -> Response:
        try:
            out = _retry(delivery_id)
        except HTTPException as exc:
            return RedirectResponse(f"/queue?error={quote(str(exc.detail))}", status_code=303)
        msg = f"{out['object_kind']} to {out['destination']} queued to be sent now"
        return RedirectResponse(f"/queue?done={quote(msg)}", status_code=303)

    @app.post("/api/queue/{delivery_id}/retry")
    def retry_api(delivery_id: DbId, who: Principal = Depends(csrf_checked)) -> dict[str, Any]:
        return _retry(delivery_id)

    # -- model and config --------------------------------------------------------------------

    def _model(days: int) -> dict[str, Any]:
        from web.modelcard import metric_sets

        card = getattr(ctx.scorer, "card", None)
        return {
            "loaded": card is not None,
            "card": card.to_dict() if card is not None else None,
            "metric_sets": metric_sets(card.metrics) if card is not None else [],
            "display_name": card.display_name if card is not None else None,
            "notice": card.notice if card is not None else None,
            "checkpoint": str(cfg.model.checkpoint),
            "threshold": cfg.model.threshold if card is None else cfg.model.operating_threshold(card),
            "priority_rules": [r.model_dump() for r in cfg.priority.rules],
            "priority_default": cfg.priority.default,
            "days": queries.score_distribution(ctx.db, ctx.clock(), days=days),
        }

    @app.get("/model", response_class=HTMLResponse)
    def model_page(request: Request, days: int = Query(14, ge=1, le=365),
                   who: Principal = Depends(principal)) -> HTMLResponse:
        m = _model(days)
        peak = max([max(d["histogram"]) for d in m["days"]] + [1])
        return page(request, "model.html", who, model=m, peak=peak)

    @app.get("/api/model")
    def model_api(days: int = Query(14, ge=1, le=365), who: Principal = Depends(principal)) -> dict[str, Any]:
        return _model(days)

    @app.get("/model/{key}/{kind}.png")
    def model_plot(key: str, kind: str, who: Principal = Depends(principal)) -> Response:
        """The ROC or reliability plot of one set of the card's metrics, drawn once."""
        from web import render
        from web.modelcard import plot_figures, title_of

        card = getattr(ctx.scorer, "card", None)
        figures = plot_figures(card.metrics, key) if card is not None else None
        if figures is None or kind not in ("roc", "reliability"):
            raise HTTPException(404, f"the model card has no {key!r} metrics to plot")
        which = (f"{card.name} {card.version} {card.sha256}", key, kind)
        with pictures_lock:
            data = plots.get(which)
        if data is None:
            try:
                data = render.metrics_plot(kind, figures, title_of(key))
            except render.PictureUnavailable as exc:
                raise HTTPException(404, str(exc)) from exc
            with pictures_lock:
                plots[which] = data
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/config", response_class=HTMLResponse)
    def config_page(request: Request, who: Principal = Depends(principal)) -> HTMLResponse:
        import yaml

        text = yaml.safe_dump(masked_config(cfg), sort_keys=False, allow_unicode=True, width=100)
        return page(request, "config.html", who, text=text)

    @app.get("/api/config")
    def config_api(who: Principal = Depends(principal)) -> dict[str, Any]:
        return masked_config(cfg)

    # -- upload ------------------------------------------------------------------------------

    async def _read_upload(request: Request, who: Principal):  # type: ignore[no-untyped-def]
        """The uploaded files and the keep box, read as they stream (the caller is checked; a
        session's CSRF token, unless it came in the header, is the form's first field)."""
        from web.upload import UploadedFile

        limit = int(web.upload_max_mb * 1024 * 1024)
        too_large = f"the upload is larger than web.upload_max_mb ({web.upload_max_mb:g} MB)"
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + FRAMING_BYTES:
            raise HTTPException(413, too_large)  # said up front: nothing read
        pending = who.kind == "session" and "x-csrf-token" not in request.headers
        form = await read_multipart(
            request, limit=limit, too_large=too_large,
            first_field=("csrf_token", lambda token: _check_csrf(who, token)) if pending else None)
        keep = form.fields.get("keep", "").strip().lower() in ("true", "on", "1", "yes")
        # a browser sends an empty, nameless part when no file is chosen
        return [UploadedFile(f.filename or "file", f.data) for f in form.files if f.data or f.filename], keep

    def _score(uploaded, keep: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        from web.upload import UploadError, score_upload, upload_pool

        if ctx.scorer is None:
            raise HTTPException(503, "no model is loaded: uploads cannot be scored")
        with upload_lock:  # one upload at a time: the model and the pool are shared
            if ctx.upload_pool is None:
                from daemon.service import model_preprocessing

                ctx.upload_pool = upload_pool(cfg, model_preprocessing(cfg, ctx.scorer.card))
            try:
                return score_upload(uploaded, config=cfg, scorer=ctx.scorer, pool=ctx.upload_pool,
                                    keep=keep, now=ctx.clock())
            except UploadError as exc:
                raise HTTPException(400, str(exc)) from exc

    @app.get("/upload", response_class=HTMLResponse)
    def upload_form(request: Request, who: Principal = Depends(principal)) -> HTMLResponse:
        return page(request, "upload.html", who, result=None, error=None,
                    limit_mb=web.upload_max_mb, loaded=ctx.scorer is not None)

    @app.post("/upload", response_class=HTMLResponse)
    async def upload(request: Request, who: Principal = Depends(upload_checked)) -> HTMLResponse:
        from starlette.concurrency import run_in_threadpool

        uploaded, keep = await _read_upload(request, who)
        try:
            result = await run_in_threadpool(_score, uploaded, keep)
            error = None
        except HTTPException as exc:
            result, error = None, str(exc.detail)
        return page(request, "upload.html", who, result=result, error=error,
                    limit_mb=web.upload_max_mb, loaded=ctx.scorer is not None)

    @app.post("/api/upload")
    async def upload_api(request: Request, who: Principal = Depends(upload_checked)) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        uploaded, keep = await _read_upload(request, who)
        return await run_in_threadpool(_score, uploaded, keep)

    # outermost first: the proxy's word on the client before anything reads request.client;
    # then Connection: close on an answer sent before the body was read (web.forms)
    app.add_middleware(CloseUnreadBody)
    if web.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(web.trusted_proxies))
    return app


def _set_cookie(response: Response, name: str, value: str, web, *, max_age: int) -> None:  # type: ignore[no-untyped-def]
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=web.secure_cookies)


def _flag_class(flag: str | None) -> str:
    """The CSS class of a study's badge (:func:`web.queries.flag`): flag-HIGH, ...,
    flag-not-analysed (grey), flag-none (no result yet)."""
    if not flag:
        return "flag-none"
    return "flag-not-analysed" if flag == queries.NOT_ANALYSED else f"flag-{flag}"


def _figure_text(value: Any, digits: int = 3) -> str:
    """A metric in a table: three decimals, "-" where the card does not say."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _seconds_text(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# -- readiness checks (each (ok, detail)) -------------------------------------------------------


def _check_database(db: Database) -> tuple[bool, str]:
    try:
        with db.session() as s:
            s.execute(select(Study.id).limit(1)).all()
    except SQLAlchemyError as exc:
        return False, f"{db.describe()}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return True, db.describe()


def _check_storage(cfg) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    root = cfg.storage.path
    if not root.is_dir():
        return False, f"{root} is not a folder"
    if not os.access(root, os.W_OK | os.X_OK):
        return False, f"{root} is not writable by this process"
    free = shutil.disk_usage(root).free
    need = cfg.storage.min_free_mb * 1024 * 1024
    if need and free < need:
        return False, (f"{root}: {free // 1048576} MB free, below storage.min_free_mb "
                       f"({cfg.storage.min_free_mb} MB): C-STOREs are refused")
    return True, f"{root}: {free // 1048576} MB free"


def _check_model(scorer) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    card = getattr(scorer, "card", None)
    if card is None:
        return False, "no model loaded"
    return True, f"{card.display_name} {card.version}" + (f" ({card.notice})" if card.notice else "")
