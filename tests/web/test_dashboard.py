"""What an operator sees on the dashboard (issue 18, item 10): the quarantine, the model's
metrics and plots, the DEMO notice, NOT ANALYSED studies, the queue without duplicates and
each destination's own configuration."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from tests.web.conftest import TOKEN, Site, add_study, demo_scorer, log_in, make_client, quarantine_two

BEARER = {"Authorization": f"Bearer {TOKEN}"}
DEMO_NOTICE = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"


@pytest.fixture(scope="module")
def site(sqlite_site: Site) -> Site:
    """The seeded site plus a study that could not be analysed (an XA study: only CR and DX
    are scored) and two quarantined files with their notes."""
    ids = dict(sqlite_site.studies)
    ids["not_analysed"] = add_study(sqlite_site.config, sqlite_site.db, sqlite_site.root,
                                    "not_analysed", 0.7, "WRIST",
                                    sqlite_site.now + dt.timedelta(minutes=5), 5, modality="XA")
    quarantine_two(sqlite_site.config.storage.path)
    return sqlite_site.__class__(**{**sqlite_site.__dict__, "studies": ids})


# -- quarantine --------------------------------------------------------------------------------


def test_quarantine_api_lists_the_files_newest_first(site: Site) -> None:
    q = make_client(site).get("/api/quarantine", headers=BEARER).json()
    assert q["count"] == 2 and q["folder"] == str(site.config.storage.path / "quarantine")
    assert [f["calling_ae"] for f in q["files"]] == ["PACS", "MODALITY1"]
    newest = q["files"][0]
    assert newest["at"] == "2026-05-06T09:30:00+00:00" and newest["reason"] == "no pixel data <b>bold</b>"
    assert newest["name"] == "20260506T093000-0000bbbb.dcm" and newest["sop_instance_uid"] == "1.2.3.PACS"


def test_quarantine_page_is_in_the_nav_and_escapes_the_notes(site: Site) -> None:
    client = make_client(site)
    assert client.get("/quarantine").status_code == 303  # a login first
    log_in(client)
    html = client.get("/").text
    assert 'href="/quarantine" id="nav-quarantine"' in html
    assert re.search(r'<a href="/quarantine"[^>]*>quarantined 2</a>', html)
    page = client.get("/quarantine").text
    rows = re.findall(r'<tr class="quarantined"', page)
    assert len(rows) == 2 and "2 file(s)" in page
    assert "no pixel data &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert page.index("PACS") < page.index("MODALITY1")


def test_empty_quarantine(sqlite_site: Site, tmp_path: Path) -> None:
    cfg = sqlite_site.config.model_copy(update={"storage": sqlite_site.config.storage.model_copy(
        update={"path": tmp_path})})
    client = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": cfg}))
    assert client.get("/api/quarantine", headers=BEARER).json() == {
        "count": 0, "folder": str(tmp_path / "quarantine"), "files": []}


# -- NOT ANALYSED ------------------------------------------------------------------------------


def test_a_not_analysed_study_has_a_grey_not_analysed_flag(site: Site) -> None:
    client = make_client(site)
    sid = site.studies["not_analysed"]
    rows = {r["id"]: r for r in client.get("/api/studies", headers=BEARER).json()["studies"]}
    assert rows[sid]["analysed"] is False and rows[sid]["flag"] == "NOT ANALYSED"
    assert rows[site.studies["routine"]]["flag"] == "ROUTINE"
    assert rows[site.studies["high_early"]]["flag"] == "HIGH"
    detail = client.get(f"/api/studies/{sid}", headers=BEARER).json()
    assert detail["current_result"]["flag"] == "NOT ANALYSED"
    log_in(client)
    html = client.get("/").text
    row = re.search(rf'<tr class="study"[^>]*data-study-id="{sid}">(.*?)</tr>', html, re.S).group(1)
    assert '<span class="flag flag-not-analysed">NOT ANALYSED</span>' in row and "ROUTINE" not in row
    page = client.get(f"/studies/{sid}").text
    assert '<span class="flag flag-not-analysed" id="study-priority">NOT ANALYSED</span>' in page
    css = client.get("/static/style.css").text
    rule = re.search(r"\.flag-not-analysed\s*\{([^}]*)\}", css).group(1)
    colour = re.search(r"background:\s*#([0-9a-f]{6})\b", rule).group(1)
    assert colour[0:2] == colour[2:4] == colour[4:6]  # grey: red, green and blue alike


# -- the DEMO notice ---------------------------------------------------------------------------


def test_worklist_and_study_page_carry_the_demo_notice(site: Site) -> None:
    client = make_client(site, scorer=demo_scorer())
    assert client.get("/api/studies", headers=BEARER).json()["notice"] == DEMO_NOTICE
    log_in(client)
    html = client.get("/").text
    notice = re.search(r'<p class="[^"]*\bdemo\b[^"]*" id="notice">(.*?)</p>', html, re.S)
    assert notice and DEMO_NOTICE in notice.group(1)
    assert html.index('id="notice"') < html.index('id="worklist"')  # above the list
    study = client.get(f"/studies/{site.studies['high_early']}").text
    assert re.search(r'id="notice">[^<]*' + re.escape(DEMO_NOTICE), study)


def test_no_notice_for_a_validated_model(site: Site) -> None:
    client = make_client(site)  # the stand-in card is not a demo
    assert client.get("/api/studies", headers=BEARER).json()["notice"] is None
    log_in(client)
    assert 'id="notice"' not in client.get("/").text


# -- the queue ---------------------------------------------------------------------------------


@pytest.fixture
def failing_site(fresh_site: Site) -> Iterator[Site]:
    """A site where one pending delivery failed twice already."""
    from sqlalchemy import select

    from db import Delivery, DeliveryState

    with fresh_site.db.session() as s:
        d = s.scalars(select(Delivery).where(Delivery.state == DeliveryState.PENDING)
                      .order_by(Delivery.id)).first()
        d.attempts, d.last_error = 2, "pacs (PACS@127.0.0.1:104): association rejected"
    yield fresh_site


def test_queue_lists_a_failing_delivery_once(failing_site: Site) -> None:
    client = make_client(failing_site)
    q = client.get("/api/queue", headers=BEARER).json()
    failing, waiting = [d["id"] for d in q["failing"]], [d["id"] for d in q["waiting"]]
    assert len(failing) == 1 and len(waiting) == 6
    assert not set(failing) & set(waiting)
    log_in(client)
    html = client.get("/queue").text
    shown = re.findall(r'<tr data-delivery-id="(\d+)"', html)
    assert len(shown) == len(set(shown)) == 8  # 1 failing, 6 waiting, 1 dead: each once


# -- the model page ----------------------------------------------------------------------------


def test_model_metrics_are_a_table_per_set_and_study_type(site: Site) -> None:
    client = make_client(site, scorer=demo_scorer())
    m = client.get("/api/model", headers=BEARER).json()
    [held, valid] = m["metric_sets"]
    assert held["key"] == "held_out" and held["set"] == "radtriage phantoms --seed 2, split valid"
    assert held["rows"][0] == {"group": "overall", "studies": 400, "accuracy": 0.905, "kappa": 0.81,
                               "auroc": 0.957, "sensitivity": 0.86, "specificity": 0.95,
                               "ece": 0.091, "threshold": 0.45}
    assert [r["group"] for r in held["rows"]] == ["overall", "ELBOW", "WRIST"]
    assert held["rows"][1]["kappa"] == 0.783 and held["rows"][1]["ece"] is None
    assert held["plots"] == {"roc": "/model/held_out/roc.png",
                             "reliability": "/model/held_out/reliability.png"}
    assert valid["key"] == "validation" and valid["rows"][0]["threshold"] == 0.5
    assert valid["rows"][0]["ece"] is None and valid["plots"]["reliability"] is None
    log_in(client)
    html = client.get("/model").text
    assert "{&#34;" not in html and '{"set"' not in html  # no raw JSON any more
    table = re.search(r'<table id="metrics-held_out".*?</table>', html, re.S).group(0)
    cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", table)
    for text in ("Accuracy", "Kappa", "AUROC", "Sensitivity", "Specificity", "ECE", "Threshold",
                 "overall", "0.905", "0.810", "0.957", "0.860", "0.950", "0.091", "0.45", "ELBOW"):
        assert text in cells, text
    assert '<img src="/model/held_out/roc.png"' in html
    assert '<img src="/model/held_out/reliability.png"' in html


def _png(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)


def test_model_plots_are_drawn_on_the_server_and_cached(site: Site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import web.render

    client = make_client(site, scorer=demo_scorer())
    roc = _png(client.get("/model/held_out/roc.png", headers=BEARER))
    assert roc.shape[0] > 300 and roc.shape[1] > 300
    assert _png(client.get("/model/held_out/reliability.png", headers=BEARER)).shape[0] > 300
    # the validation set has an operating point but no curve: the ROC still shows where it works
    assert _png(client.get("/model/validation/roc.png", headers=BEARER)).shape[0] > 300
    assert client.get("/model/validation/reliability.png", headers=BEARER).status_code == 404
    calls = []
    monkeypatch.setattr(web.render, "metrics_plot", lambda *a, **k: calls.append(a) or b"")
    again = client.get("/model/held_out/roc.png", headers=BEARER)
    assert again.status_code == 200 and again.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert calls == []  # from the cache
    assert client.get("/model/nonsense/roc.png", headers=BEARER).status_code == 404
    assert client.get("/model/held_out/roc.png").status_code in (401, 303)  # a login first


def test_model_page_without_metrics_or_model(site: Site) -> None:
    client = make_client(site)  # the stand-in card has no metrics
    assert client.get("/api/model", headers=BEARER).json()["metric_sets"] == []
    log_in(client)
    assert "The model card records no metrics." in client.get("/model").text
    nothing = make_client(site, scorer=None)
    assert nothing.get("/api/model", headers=BEARER).json()["metric_sets"] == []
    assert nothing.get("/model/held_out/roc.png", headers=BEARER).status_code == 404


# -- a destination's own configuration ---------------------------------------------------------


def test_effective_config_shows_each_destination_with_its_own_keys(tmp_path: Path) -> None:
    from daemon.config import parse_config
    from web.masking import masked_config

    config = parse_config({"destinations": [
        {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104},
        {"name": "web", "type": "dicomweb", "url": "https://pacs/dicom-web", "password": "s3cret"},
        {"name": "ris", "type": "hl7", "host": "ris", "port": 2575},
    ]}, base=tmp_path, environ={})
    pacs, web, ris = masked_config(config)["destinations"]
    assert set(pacs) == {"name", "type", "objects", "ae_title", "host", "port", "tls"}
    assert set(web) == {"name", "type", "objects", "url", "username", "password", "headers", "ca_file"}
    assert web["password"] == "********"
    assert set(ris) == {"name", "type", "objects", "host", "port", "message",
                        "receiving_application", "receiving_facility"}
    assert ris["message"] == "ORM^O01"


def test_config_page_shows_no_hl7_defaults_for_a_dicom_destination(site: Site) -> None:
    client = make_client(site)
    [dest] = client.get("/api/config", headers=BEARER).json()["destinations"]
    assert "receiving_application" not in dest and "url" not in dest
    log_in(client)
    assert "receiving_application" not in client.get("/config").text
