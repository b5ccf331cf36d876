"""daemon.worker + daemon.products: what one scoring makes, who gets it, and the never-lower rule."""

from __future__ import annotations

import json

import pydicom
import pytest
from sqlalchemy import select

from daemon.config import parse_config
from daemon.worker import StudyScorer
from db import Delivery, ImageScore, Instance, OutputObject, Study, StudyResult, StudyState
from dicom_io.geometry import ViewGeometry
from dicom_io.heatmaps import decode_heatmap
from tests.fakes import HeatmapScorer, drawn_text
from tests.unit.test_worker import NOW, _setup


def _config(tmp_path, **report):  # type: ignore[no-untyped-def]
    return parse_config({
        "storage": {"path": str(tmp_path / "storage")},
        "database": {"url": "sqlite://"},
        "report": {"summary": "off", **report},
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": 2575},
            {"name": "ris-results", "type": "hl7", "host": "127.0.0.1", "port": 2576,
             "objects": ["result"]},
        ],
    }, base=tmp_path, environ={})


def _score(config, database, probability: float) -> int:  # type: ignore[no-untyped-def]
    worker = StudyScorer(config, database, HeatmapScorer(probability), clock=lambda: NOW)
    study_id, revision = worker.claim_next()
    result_id = worker.score_study(study_id, revision)
    worker.close()
    assert result_id is not None
    return result_id


def _rescore_later(database) -> None:  # type: ignore[no-untyped-def]
    """What a late instance does: the study is complete again, in a new revision."""
    with database.session() as s:
        study = s.scalar(select(Study))
        study.state, study.revision = StudyState.COMPLETE, study.revision + 1


def _outputs(database, result_id: int) -> dict[str, list[OutputObject]]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        out: dict[str, list[OutputObject]] = {}
        for o in s.scalars(select(OutputObject).where(OutputObject.result_id == result_id)):
            s.expunge(o)
            out.setdefault(o.kind, []).append(o)
        return out


def _deliveries(database, result_id: int) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        return {(d.destination, d.object_kind) for d in
                s.scalars(select(Delivery).where(Delivery.result_id == result_id))}


def test_heatmap_and_peak_region_are_stored_with_each_view(tmp_path, database) -> None:
    _setup(tmp_path, database)
    config = _config(tmp_path)
    result_id = _score(config, database, 0.9)
    with database.session() as s:
        scores = s.scalars(select(ImageScore).where(ImageScore.result_id == result_id)).all()
        assert len(scores) == 2
        for sc in scores:
            hm = decode_heatmap(sc.heatmap)
            assert hm.shape == (7, 7) and hm[1, 5] == pytest.approx(4.0)
            assert sc.heatmap_method == "cam"
            g = ViewGeometry.from_dict(json.loads(sc.geometry))
            x0, y0, x1, y1 = sc.peak_box
            # the hot cell is row 1, column 5 of 7: the upper right of the cropped view
            y_lo, y_hi, x_lo, x_hi = g.crop
            sx, sy = g.columns / g.display_width, g.rows / g.display_height
            assert x0 >= x_lo * sx + (x_hi - x_lo) * sx * 0.5 and x1 <= x_hi * sx + 1
            assert y1 <= y_lo * sy + (y_hi - y_lo) * sy * 0.5 and y0 >= y_lo * sy - 1
        sr = pydicom.dcmread(tmp_path / "storage" / s.get(StudyResult, result_id).sr_path)
    # the SR's region on each view is that box
    regions = []
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "SCOORD":
            regions.append([float(v) for v in item.GraphicData])
        stack.extend(item.get("ContentSequence", []))
    boxes = {tuple(sc.peak_box) for sc in scores}
    assert len(regions) == 2
    for r in regions:
        xs, ys = r[0::2], r[1::2]
        assert (min(xs), min(ys), max(xs), max(ys)) in boxes


def test_high_study_raises_the_order_and_reports_to_the_ris(tmp_path, database) -> None:
    _setup(tmp_path, database)
    config = _config(tmp_path)
    result_id = _score(config, database, 0.9)
    outputs = _outputs(database, result_id)
    assert sorted(outputs) == ["ORM", "ORU", "SR"]
    assert len(outputs["ORU"]) == 2  # one for each HL7 destination: each names its receiver
    assert [o.detail for o in outputs["ORM"]] == ["HIGH"]
    assert _deliveries(database, result_id) == {
        ("pacs", "SR"), ("ris", "ORM"), ("ris", "ORU"), ("ris-results", "ORU")}
    orm = (tmp_path / "storage" / outputs["ORM"][0].path).read_bytes().decode()
    segments = {seg[:3]: seg for seg in orm.split("\r") if seg}
    assert segments["MSH"].split("|")[8].startswith("ORM^O01")
    assert segments["ORC"].split("|")[7].split("^")[5] == "S"  # stat
    assert segments["MSH"].split("|")[9] == outputs["ORM"][0].uid


def test_the_order_priority_is_never_lowered_nor_raised_twice(tmp_path, database) -> None:
    _setup(tmp_path, database)
    config = _config(tmp_path)
    first = _score(config, database, 0.6)  # ELEVATED: raised to ASAP
    assert [o.detail for o in _outputs(database, first)["ORM"]] == ["ELEVATED"]
    _rescore_later(database)
    second = _score(config, database, 0.3)  # ROUTINE now: nothing lowers it
    assert "ORM" not in _outputs(database, second) and "ORU" in _outputs(database, second)
    _rescore_later(database)
    # the first update was superseded before it was sent (still pending): the order is
    # still to be raised, and it is
    third = _score(config, database, 0.65)
    assert [o.detail for o in _outputs(database, third)["ORM"]] == ["ELEVATED"]
    with database.session() as s:  # pretend it went out
        for d in s.scalars(select(Delivery).where(Delivery.result_id == third)):
            d.state = "delivered"
    _rescore_later(database)
    fourth = _score(config, database, 0.7)  # ELEVATED again: already there
    assert "ORM" not in _outputs(database, fourth)
    _rescore_later(database)
    fifth = _score(config, database, 0.95)  # HIGH: raised further
    assert [o.detail for o in _outputs(database, fifth)["ORM"]] == ["HIGH"]


def test_a_rescored_study_names_the_sr_it_replaces(tmp_path, database) -> None:
    _setup(tmp_path, database)
    config = _config(tmp_path)
    first = _score(config, database, 0.9)
    _rescore_later(database)
    second = _score(config, database, 0.2)
    with database.session() as s:
        old, new = s.get(StudyResult, first), s.get(StudyResult, second)
        assert old.superseded and not new.superseded
        sr = pydicom.dcmread(tmp_path / "storage" / new.sr_path)
        old_uid = old.sr_sop_instance_uid
    refs = [r.ReferencedSOPInstanceUID for st in sr.PredecessorDocumentsSequence
            for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
    assert refs == [old_uid]


def _dciodvfy_errors(path) -> list[str]:  # type: ignore[no-untyped-def]
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_every_object_is_valid_and_references_the_study(tmp_path, database) -> None:
    import cv2
    import highdicom as hd

    from tests.conftest import ROOT

    _, files = _setup(tmp_path, database)
    views = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    config = _config(tmp_path, summary="study", key_objects=True, presentation_state=True)
    result_id = _score(config, database, 0.9)
    outputs = _outputs(database, result_id)
    assert sorted(outputs) == ["GSPS", "KOS", "ORM", "ORU", "SC", "SR"]
    assert ("pacs", "SC") in _deliveries(database, result_id)
    read = {}
    for kind in ("SR", "SC", "KOS", "GSPS"):
        [o] = outputs[kind]
        path = tmp_path / "storage" / o.path
        assert _dciodvfy_errors(path) == [], kind
        read[kind] = ds = pydicom.dcmread(path)
        assert ds.SeriesInstanceUID == o.series_instance_uid
    study = {ds.StudyInstanceUID for ds in read.values()}
    assert len(study) == 1 and len({ds.SeriesInstanceUID for ds in read.values()}) == 4
    sc = read["SC"]
    assert sc.BurnedInAnnotation == "YES" and sc.SeriesDescription.startswith("AI TRIAGE: ABNORMAL")
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(read["KOS"])
    refs = {r.ReferencedSOPInstanceUID for st in kos.CurrentRequestedProcedureEvidenceSequence
            for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert refs == views | {read["SR"].SOPInstanceUID}
    gsps = read["GSPS"]
    assert gsps.GraphicLayerSequence[0].GraphicLayer == "AI TRIAGE"
    drawn = {ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID: list(ann.GraphicObjectSequence[0].GraphicData)
             for ann in gsps.GraphicAnnotationSequence}
    with database.session() as s:
        for sc_row in s.scalars(select(ImageScore).where(ImageScore.result_id == result_id)):
            x0, y0, x1, y1 = sc_row.peak_box
            assert drawn[sc_row.instance.sop_instance_uid] == pytest.approx(
                [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0])
    # the summary, kept as a test artefact; its header holds text, its views the overlay
    rgb = sc.pixel_array
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    cv2.imwrite(str(out / "summary-unit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert rgb.shape[1] == 1024
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    assert red[:40].any()  # the ABNORMAL frame and verdict are red


def test_a_study_not_analysed_says_why_in_short_and_in_full(tmp_path, database, monkeypatch) -> None:
    """Issue 18 item 4: the Series Description carries a code that fits its 64 characters; the
    database, the SR's Comment, the summary image and the HL7 result the full reason."""
    _setup(tmp_path, database, views=2)
    with database.session() as s:
        for n, instance in enumerate(s.scalars(select(Instance)).all(), start=2):
            ds = pydicom.dcmread(tmp_path / "storage" / instance.path)
            ds.NumberOfFrames = n  # multi-frame: refused by the pixel stage (decoding.multiframe)
            ds.save_as(tmp_path / "storage" / instance.path, enforce_file_format=True)
    drawn = drawn_text(monkeypatch)
    result_id = _score(_config(tmp_path, summary="study"), database, 0.9)
    with database.session() as s:
        result = s.get(StudyResult, result_id)
        reason, description = result.reason, result.series_description
    assert reason == ("no view could be scored: multi-frame images (2 frames) are not scored "
                      "(decoding.multiframe: refuse); multi-frame images (3 frames) are not "
                      "scored (decoding.multiframe: refuse)")
    assert description == "AI TRIAGE: NOT ANALYSED - MULTIFRAME"
    outputs_made = _outputs(database, result_id)
    sr = pydicom.dcmread(tmp_path / "storage" / outputs_made["SR"][0].path)
    sc = pydicom.dcmread(tmp_path / "storage" / outputs_made["SC"][0].path)
    assert sr.SeriesDescription == sc.SeriesDescription == description
    comments = [i.TextValue for i in _walk(sr.ContentSequence)
                if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert f"NOT ANALYSED: {reason}" in comments
    assert f"Reason (MULTIFRAME): {reason}" in " ".join(drawn), drawn  # burned in, in full
    oru = (tmp_path / "storage" / outputs_made["ORU"][0].path).read_bytes().decode()
    assert f"Not analysed: {reason}" in oru.replace("\\T\\", "&")
    for kind in ("SR", "SC"):
        assert _dciodvfy_errors(tmp_path / "storage" / outputs_made[kind][0].path) == [], kind


def _walk(items):  # type: ignore[no-untyped-def]
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))
