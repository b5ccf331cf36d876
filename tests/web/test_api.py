"""The dashboard and JSON API (web/) through FastAPI's TestClient, over a real database."""

from __future__ import annotations

import datetime as dt
import io
import re

import cv2
import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from tests.web.conftest import PASSWORD, SECRET_KEY, TOKEN, cheap_hash, log_in, make_client, site_config

BEARER = {"Authorization": f"Bearer {TOKEN}"}


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/studies/1", "/queue", "/model", "/config", "/upload"])
def test_pages_send_you_to_the_login_page(sqlite_site, path):
    r = make_client(sqlite_site).get(path)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next={path}"


@pytest.mark.parametrize("path", ["/api/studies", "/api/studies/1", "/api/queue", "/api/model",
                                  "/api/config", "/metrics", "/readyz",
                                  "/studies/1/views/1.png"])
def test_api_needs_a_login_or_a_token(sqlite_site, path):
    client = make_client(sqlite_site)
    r = client.get(path)
    assert r.status_code in (401, 303) and "studies" not in r.text
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code in (401, 303)
    assert client.get(path, headers=BEARER).status_code == 200


def test_healthz_needs_no_login(sqlite_site):
    r = make_client(sqlite_site).get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "alive"}


def test_wrong_password_is_refused_and_the_right_one_opens_a_session(sqlite_site):
    client = make_client(sqlite_site)
    form = client.get("/login?next=/queue")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    bad = client.post("/login", data={"password": "guess", "csrf_token": token, "next": "/queue"})
    assert bad.status_code == 401 and "Wrong password" in bad.text
    assert "radtriage_session" not in client.cookies
    token = re.search(r'name="csrf_token" value="([^"]+)"', bad.text).group(1)
    ok = client.post("/login", data={"password": PASSWORD, "csrf_token": token, "next": "/queue"})
    assert ok.status_code == 303 and ok.headers["location"] == "/queue"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/queue").status_code == 200


def test_login_only_redirects_within_the_site(sqlite_site):
    client = make_client(sqlite_site)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post("/login", data={"password": PASSWORD, "csrf_token": token,
                                    "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_a_login_form_from_elsewhere_is_refused(sqlite_site):
    r = make_client(sqlite_site).post("/login", data={"password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403 and "radtriage_session" not in r.headers.get("set-cookie", "")


def test_repeated_failed_logins_are_throttled(sqlite_site):
    client = make_client(sqlite_site)
    codes = []
    for _ in range(11):
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        codes.append(client.post("/login", data={"password": "nope", "csrf_token": token}).status_code)
    assert codes[:10] == [401] * 10 and codes[10] == 429
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"password": PASSWORD, "csrf_token": token}).status_code == 429


def test_sessions_expire(sqlite_site, monkeypatch):
    from itsdangerous.timed import TimestampSigner

    import time

    config = sqlite_site.config.model_copy(update={"web": sqlite_site.config.web.model_copy(
        update={"session_lifetime_s": 60})})
    client = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": config}))
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 61)
    log_in_at_past = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', log_in_at_past.text).group(1)
    assert client.post("/login", data={"password": PASSWORD, "csrf_token": token}).status_code == 303
    monkeypatch.undo()
    assert client.get("/api/studies").json()["detail"] == "the session expired: log in again"
    r = client.get("/")  # a page sends you to log in again, and drops the dead cookie
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_changing_the_password_ends_every_session(sqlite_site):
    client = make_client(sqlite_site)
    log_in(client)
    cookie = client.cookies["radtriage_session"]
    changed = sqlite_site.config.model_copy(update={"web": sqlite_site.config.web.model_copy(
        update={"password_hash": cheap_hash("another long password")})})
    other = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": changed}))
    other.cookies.set("radtriage_session", cookie)
    r = other.get("/api/studies")
    assert r.status_code == 401 and "password changed" in r.json()["detail"]


def test_a_forged_cookie_is_refused(sqlite_site):
    client = make_client(sqlite_site)
    client.cookies.set("radtriage_session", "eyJ1IjoiYWRtaW4ifQ.forged.sig")
    assert client.get("/api/studies").status_code == 401


def test_logout_needs_csrf_and_ends_the_session(sqlite_site):
    client = make_client(sqlite_site)
    csrf = log_in(client)
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    assert client.get("/").status_code == 303


def test_security_headers(sqlite_site):
    r = make_client(sqlite_site).get("/healthz")
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


# -- worklist and study -----------------------------------------------------------------------


def test_worklist_is_sorted_by_priority_then_arrival(sqlite_site):
    client = make_client(sqlite_site)
    rows = client.get("/api/studies", headers=BEARER).json()["studies"]
    ids = sqlite_site.studies
    assert [r["id"] for r in rows] == [ids["high_early"], ids["high_late"], ids["elevated"], ids["routine"]]
    assert [r["priority"] for r in rows] == ["HIGH", "HIGH", "ELEVATED", "ROUTINE"]
    first = rows[0]
    assert first["probability"] == pytest.approx(0.93) and first["study_type"] == "WRIST"
    assert first["time_to_result_s"] == pytest.approx(5.0) and first["instances"] == 2
    assert first["accession_number"] == "ACC1"
    assert rows[-1]["state"] == "failed"
    log_in(client)
    html = client.get("/").text
    order = re.findall(r'data-priority="(\w*)" data-study-id="(\d+)"', html)
    assert order[0] == ("HIGH", str(ids["high_early"])) and order[-1][0] == "ROUTINE"


def test_worklist_filters(sqlite_site):
    client = make_client(sqlite_site)
    failed = client.get("/api/studies?state=failed", headers=BEARER).json()["studies"]
    assert [r["id"] for r in failed] == [sqlite_site.studies["routine"]]
    r = client.get("/api/studies?state=bogus", headers=BEARER)
    assert r.status_code == 400 and "receiving" in r.json()["detail"]
    later = make_client(sqlite_site, clock=lambda: sqlite_site.now + dt.timedelta(days=30))
    assert later.get("/api/studies?days=7", headers=BEARER).json()["studies"] == []


def test_study_page_shows_views_objects_deliveries_and_events(sqlite_site):
    client = make_client(sqlite_site)
    sid = sqlite_site.studies["high_late"]
    d = client.get(f"/api/studies/{sid}", headers=BEARER).json()
    cur = d["current_result"]
    assert cur["priority"] == "HIGH" and cur["series_description"].startswith("AI TRIAGE: ABNORMAL 88%")
    assert [v["heatmap"] for v in cur["views"]] == [True, True]
    assert {o["kind"] for o in cur["outputs"]} == {"SR", "SC"}
    assert {(x["object_kind"], x["destination"], x["state"]) for x in cur["deliveries"]} == {
        ("SR", "pacs", "pending"), ("SC", "pacs", "pending")}
    assert [e["kind"] for e in d["events"]] == ["scored"]
    log_in(client)
    html = client.get(f"/studies/{sid}").text
    for v in cur["views"]:
        assert f'src="/studies/{sid}/views/{v["id"]}.png"' in html
    assert d["study_instance_uid"] in html and "Audit events" in html
    assert "PHANTOM" not in html  # no patient name: the database holds none
    assert client.get("/studies/99999").status_code == 404
    assert client.get("/api/studies/99999", headers=BEARER).status_code == 404


def test_view_picture_is_the_view_with_its_heatmap(sqlite_site):
    client = make_client(sqlite_site)
    sid = sqlite_site.studies["high_late"]
    views = client.get(f"/api/studies/{sid}", headers=BEARER).json()["current_result"]["views"]
    r = client.get(f"/studies/{sid}/views/{views[0]['id']}.png", headers=BEARER)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == 768
    b, g, rr = (img[..., i].astype(int) for i in range(3))
    # the synthetic view is grey; the heatmap overlay and the header are coloured
    assert ((rr - b) > 80).sum() > 500
    other = sqlite_site.studies["routine"]
    assert client.get(f"/studies/{other}/views/{views[0]['id']}.png", headers=BEARER).status_code == 404
    s = client.get(f"/studies/{sid}/summary.png", headers=BEARER)
    assert s.status_code == 200 and cv2.imdecode(np.frombuffer(s.content, np.uint8), 1).shape[1] == 1024


def test_a_view_whose_pixels_retention_deleted_says_so(sqlite_site):
    from db import Instance

    client = make_client(sqlite_site)
    sid = sqlite_site.studies["elevated"]
    views = client.get(f"/api/studies/{sid}", headers=BEARER).json()["current_result"]["views"]
    with sqlite_site.db.session() as s:
        inst = s.get(Instance, views[0]["instance_id"])
        kept = inst.deleted_at
        inst.deleted_at = inst.received_at + dt.timedelta(days=1)
    try:
        r = client.get(f"/studies/{sid}/views/{views[0]['id']}.png", headers=BEARER)
        assert r.status_code == 404 and r.json()["detail"] == "retention deleted this view's pixel data"
        log_in(client)
        html = client.get(f"/studies/{sid}").text
        assert "pixel data deleted by retention; see the summary image" in html
        assert f'src="/studies/{sid}/views/{views[0]["id"]}.png"' not in html
        assert f'src="/studies/{sid}/views/{views[1]["id"]}.png"' in html
    finally:
        with sqlite_site.db.session() as s:
            s.get(Instance, views[0]["instance_id"]).deleted_at = kept


# -- queue --------------------------------------------------------------------------------------


def test_queue_lists_waiting_and_dead_deliveries(sqlite_site):
    q = make_client(sqlite_site).get("/api/queue", headers=BEARER).json()
    assert [d["id"] for d in q["dead"]] == [sqlite_site.dead_delivery]
    assert q["dead"][0]["last_error"] == "association rejected"
    prios = [d["priority"] for d in q["waiting"]]
    assert prios == sorted(prios, key=["HIGH", "ELEVATED", "ROUTINE"].index) and len(prios) == 7


def test_retry_needs_the_csrf_token(sqlite_site):
    client = make_client(sqlite_site)
    log_in(client)
    r = client.post(f"/queue/{sqlite_site.dead_delivery}/retry")
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post(f"/queue/{sqlite_site.dead_delivery}/retry", data={"csrf_token": "wrong"})
    assert r.status_code == 403
    r = client.post(f"/api/queue/{sqlite_site.dead_delivery}/retry", headers={"X-CSRF-Token": "x"})
    assert r.status_code == 403


def test_retry_requeues_a_dead_letter(fresh_site):
    from db import Delivery, DeliveryState, Event, Study, StudyState

    client = make_client(fresh_site)
    csrf = log_in(client)
    page = client.get("/queue").text
    assert f'action="/queue/{fresh_site.dead_delivery}/retry"' in page
    r = client.post(f"/queue/{fresh_site.dead_delivery}/retry", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"].startswith("/queue?done=")
    assert "queued to be sent now" in client.get(r.headers["location"]).text
    with fresh_site.db.session() as s:
        d = s.get(Delivery, fresh_site.dead_delivery)
        assert d.state == DeliveryState.PENDING and d.attempts == 0
        study = s.get(Study, fresh_site.studies["routine"])
        assert study.state == StudyState.DISPATCHING and study.state_reason is None
        events = s.scalars(select(Event).where(Event.study_id == study.id)).all()
        assert any("retry requested from the dashboard (was dead after 100" in (e.detail or "")
                   for e in events)
    again = client.post(f"/api/queue/{fresh_site.dead_delivery}/retry", headers=BEARER)
    assert again.status_code == 200 and again.json()["was"] == "pending"
    with fresh_site.db.session() as s:
        s.get(Delivery, fresh_site.dead_delivery).state = DeliveryState.DELIVERED
    refused = client.post(f"/api/queue/{fresh_site.dead_delivery}/retry", headers=BEARER)
    assert refused.status_code == 409 and "delivered" in refused.json()["detail"]
    assert client.post("/api/queue/99999/retry", headers=BEARER).status_code == 404


# -- metrics, health --------------------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_from_the_database_and_the_daemon(fresh_site):
    from daemon import metrics

    metrics.INSTANCES_RECEIVED.labels("stored").inc(0)
    text = make_client(fresh_site).get("/metrics", headers=BEARER).text
    assert _sample(text, "radtriage_database_up") == 1
    assert _sample(text, "radtriage_deliveries", state="dead") == 1
    assert _sample(text, "radtriage_deliveries", state="pending") == 7
    assert _sample(text, "radtriage_studies", state="failed") == 1
    assert _sample(text, "radtriage_studies", state="dispatching") == 3
    assert _sample(text, "radtriage_queue_depth", queue="deliveries") == 7
    assert _sample(text, "radtriage_queue_depth", queue="scoring") == 0
    assert _sample(text, "radtriage_oldest_pending_delivery_age_seconds") > 0
    from prometheus_client.parser import text_string_to_metric_families

    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name in ("radtriage_instances_received", "radtriage_studies_scored",
                 "radtriage_delivery_attempts", "radtriage_errors"):
        assert kinds[name] == "counter", name
    assert kinds["radtriage_stage_seconds"] == kinds["radtriage_inference_batch_seconds"] == "histogram"


def test_metrics_say_when_the_database_is_down(sqlite_site, tmp_path):
    from db import Database

    broken = Database(f"sqlite:///{tmp_path / 'missing' / 'no-tables.db'}")
    client = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "db": broken}))
    text = client.get("/metrics", headers=BEARER).text
    assert _sample(text, "radtriage_database_up") == 0
    ready = client.get("/readyz", headers=BEARER)
    assert ready.status_code == 503 and not ready.json()["checks"]["database"]["ok"]


def test_readyz(sqlite_site, tmp_path):
    ok = make_client(sqlite_site).get("/readyz", headers=BEARER)
    assert ok.status_code == 200 and ok.json()["ready"]
    assert ok.json()["checks"]["model"]["detail"].startswith("fixed-test (UNTRAINED) 9.9")
    no_model = make_client(sqlite_site, scorer=None).get("/readyz", headers=BEARER)
    assert no_model.status_code == 503 and no_model.json()["checks"]["model"]["detail"] == "no model loaded"
    gone = sqlite_site.config.model_copy(update={"storage": sqlite_site.config.storage.model_copy(
        update={"path": tmp_path / "not-there"})})
    r = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": gone})).get(
        "/readyz", headers=BEARER)
    assert r.status_code == 503 and "is not a folder" in r.json()["checks"]["storage"]["detail"]
    extra = make_client(sqlite_site, checks={"receiver": lambda: (False, "stopped")})
    assert extra.get("/readyz", headers=BEARER).json()["checks"]["receiver"] == {"ok": False, "detail": "stopped"}


# -- model and config ---------------------------------------------------------------------------


def test_model_page_has_the_card_and_the_daily_distribution(sqlite_site):
    client = make_client(sqlite_site)
    m = client.get("/api/model?days=3", headers=BEARER).json()
    assert m["card"]["name"] == "fixed-test" and m["threshold"] == 0.5
    assert [r["priority"] for r in m["priority_rules"]] == ["HIGH", "ELEVATED"]
    assert len(m["days"]) == 3
    day = (sqlite_site.now + dt.timedelta(minutes=10)).date().isoformat()
    total = {d["day"]: d for d in m["days"]}
    scored_days = [d for d in m["days"] if d["studies"]]
    assert sum(d["studies"] for d in scored_days) == 4
    assert sum(sum(d["histogram"]) for d in scored_days) == 4
    if len(scored_days) == 1:  # all four were scored the same UTC day
        d = scored_days[0]
        assert d["day"] == day and total[day]["histogram"] == [0, 0, 1, 0, 0, 0, 1, 0, 1, 1]
        assert d["mean"] == pytest.approx((0.2 + 0.93 + 0.6 + 0.88) / 4, abs=1e-4)
        assert d["abnormal_share"] == 0.75
    log_in(client)
    html = client.get("/model").text
    assert "fixed-test (UNTRAINED) 9.9" in html and 'id="distribution"' in html


def test_config_is_shown_with_secrets_masked(tmp_path):
    from web.masking import MASK, masked_config

    config = site_config(tmp_path, "postgresql://radtriage:s3cret-db@db.example/radtriage")
    config = config.model_copy(update={"destinations": [*config.destinations, type(config.destinations[0])(
        name="archive", type="dicomweb", url="https://user:pw-in-url@pacs.example/dicom-web",
        username="radtriage", password="s3cret-web", headers={"Authorization": "Bearer s3cret-hdr"})]})
    shown = masked_config(config)
    text = repr(shown)
    for secret in ("s3cret-db", "s3cret-web", "s3cret-hdr", "pw-in-url", config.web.password_hash,
                   config.web.token_hash, SECRET_KEY):
        assert secret not in text
    assert shown["database"]["url"] == "postgresql://radtriage:***@db.example/radtriage"
    assert shown["web"]["password_hash"] == MASK and shown["destinations"][1]["password"] == MASK
    assert shown["destinations"][1]["headers"] == {"Authorization": MASK}
    assert shown["destinations"][1]["username"] == "radtriage"  # not a secret
    assert shown["node"]["ae_title"] == "RADTRIAGE"


def test_config_page(sqlite_site):
    client = make_client(sqlite_site)
    api = client.get("/api/config", headers=BEARER).json()
    assert api["web"]["secret_key"] == "********" and api["destinations"][0]["name"] == "pacs"
    log_in(client)
    html = client.get("/config").text
    assert "ae_title: RADTRIAGE" in html and SECRET_KEY not in html
    assert sqlite_site.config.web.password_hash not in html


# -- upload -------------------------------------------------------------------------------------


def _png() -> bytes:
    img = np.zeros((120, 90), np.uint8)
    img[20:100, 30:60] = 200
    return cv2.imencode(".png", img)[1].tobytes()


def test_upload_scores_dicom_and_png_and_keeps_nothing(sqlite_site, tmp_path):
    from tests.conftest import write_study

    dicom = write_study(tmp_path / "up", views=2, rows=80, columns=64)
    client = make_client(sqlite_site)
    files = [("files", ("a.dcm", dicom[0].read_bytes(), "application/dicom")),
             ("files", ("b.dcm", dicom[1].read_bytes(), "application/dicom")),
             ("files", ("x.png", _png(), "image/png")),
             ("files", ("notes.txt", b"hello", "text/plain"))]
    r = client.post("/api/upload", files=files, headers=BEARER)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [s["source"] for s in out["studies"]] == ["DICOM", "PNG/JPEG"]
    study = out["studies"][0]
    assert study["study_instance_uid"] == pydicom.dcmread(dicom[0]).StudyInstanceUID
    assert study["probability"] == pytest.approx(0.9) and study["priority"] == "HIGH"
    assert study["study_type"] == "WRIST" and len(study["views"]) == 2
    for v in study["views"] + out["studies"][1]["views"]:
        img = cv2.imdecode(np.frombuffer(__import__("base64").b64decode(v["overlay_png"]), np.uint8), 1)
        assert img is not None and img.shape[1] == 768 and v["peak_box"] is not None
    assert out["refused"] == [{"name": "notes.txt", "error": "not a DICOM (Part 10), PNG or JPEG file"}]
    assert out["kept"] is None
    assert not (sqlite_site.config.storage.path / "uploads").exists()


def test_upload_page_keeps_the_files_only_when_asked(sqlite_site, tmp_path):
    client = make_client(sqlite_site)
    csrf = log_in(client)
    files = [("files", ("arm.png", _png(), "image/png"))]
    refused = client.post("/upload", files=files, data={"keep": "true"})
    assert refused.status_code == 403
    r = client.post("/upload", files=files, data={"csrf_token": csrf, "keep": "true"})
    assert r.status_code == 200 and "data:image/png;base64," in r.text and "90.0%" in r.text
    kept = re.search(r"Kept in storage.path/(uploads/[^<]+)</p>", r.text).group(1)
    folder = sqlite_site.config.storage.path / kept
    assert sorted(p.name for p in folder.iterdir()) == ["000-arm.png", "overlay-001.png", "result.json"]
    assert '"probability": 0.9' in (folder / "result.json").read_text()


def test_upload_errors_are_clear(sqlite_site):
    small = sqlite_site.config.model_copy(update={"web": sqlite_site.config.web.model_copy(
        update={"upload_max_mb": 0.001})})
    client = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": small}))
    big = client.post("/api/upload", files=[("files", ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(4000), "image/png"))],
                      headers=BEARER)
    assert big.status_code == 413 and "web.upload_max_mb" in big.json()["detail"]
    none = make_client(sqlite_site).post("/api/upload", headers=BEARER, files=[])
    assert none.status_code in (400, 422)
    broken = make_client(sqlite_site).post(
        "/api/upload", headers=BEARER, files=[("files", ("y.png", b"\x89PNG\r\n\x1a\nbroken", "image/png"))])
    assert broken.status_code == 200
    view = broken.json()["studies"][0]["views"][0]
    assert view["probability"] is None and "cannot decode the image" in view["error"]
    no_model = make_client(sqlite_site, scorer=None).post(
        "/api/upload", headers=BEARER, files=[("files", ("x.png", _png(), "image/png"))])
    assert no_model.status_code == 503 and "no model" in no_model.json()["detail"]


def test_upload_with_the_shipped_demo_model(sqlite_site, tmp_path):
    """The real model and the real pixel path: the daemon's checkpoint, its card's notice."""
    from pathlib import Path

    from daemon.service import load_scorer
    from tests.conftest import ROOT, write_study

    checkpoint = ROOT / "models" / "radtriage-demo.pt"
    if not checkpoint.is_file():
        pytest.skip(f"{checkpoint} is not here")
    model = {"checkpoint": Path(checkpoint), "device": "cpu"}
    if "warm_up" in type(sqlite_site.config.model).model_fields:
        model["warm_up"] = False  # one upload is the test; a warm-up pass would double it
    config = sqlite_site.config.model_copy(update={"model": sqlite_site.config.model.model_copy(
        update=model)})
    scorer = load_scorer(config)
    dicom = write_study(tmp_path / "demo", views=1, rows=256, columns=200)
    client = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": config}), scorer=scorer)
    r = client.post("/api/upload", headers=BEARER,
                    files=[("files", ("v.dcm", dicom[0].read_bytes(), "application/dicom"))])
    study = r.json()["studies"][0]
    assert 0.0 <= study["probability"] <= 1.0 and study["views"][0]["overlay_png"]
    assert "DEMO MODEL" in study["notice"] and "radtriage-demo" in study["model"]


# -- configuration and the command line ---------------------------------------------------------


def test_web_config_needs_a_login_and_a_real_hash():
    from daemon.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"web": {"enabled": True}}, environ={})
    assert "radtriage web-password" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({"web": {"password_hash": "hunter2"}}, environ={})
    assert "web.password_hash" in str(info.value) and "not a hash radtriage made" in str(info.value)
    with pytest.raises(ConfigError):
        parse_config({"web": {"secret_key": "short"}}, environ={})


def test_web_password_command_prints_a_hash_that_verifies(monkeypatch):
    from daemon.cli import main
    from daemon.config import parse_config
    from web.auth import verify_secret

    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    out, err = io.StringIO(), io.StringIO()
    assert main(["web-password", "--stdin"], out, err) == 0
    line = re.search(r'password_hash: "([^"]+)"', out.getvalue()).group(1)
    assert verify_secret("a long enough password", line) and not verify_secret("another", line)
    parse_config({"web": {"enabled": True, "password_hash": line}}, environ={})
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["web-password", "--stdin"], io.StringIO(), err) == 2 and "12 characters" in err.getvalue()
    out = io.StringIO()
    assert main(["web-password", "--token"], out, io.StringIO()) == 0
    token = re.search(r"it is not shown again\): (\S+)", out.getvalue()).group(1)
    assert verify_secret(token, re.search(r'token_hash: "([^"]+)"', out.getvalue()).group(1))
