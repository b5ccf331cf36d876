"""Bad input never stops a study: every broken view is a recorded per-view error with its reason.

One study holds a good view and one view of each kind of bad input (:data:`EXPECTED`). Through
``radtriage score`` (in-process) and through :class:`daemon.worker.StudyScorer` the study is still
reported: the good view is scored, every other view carries a reason that names its problem, the
SR says "NOT SCORED: <reason>" per view and "1 of N views scored", and no received file is
touched. ``tests/integration/test_bad_pixels.py`` sends the same study to the real daemon.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, generate_uid

from daemon.cli import main
from daemon.config import parse_config
from daemon.status import render_status
from daemon.worker import StudyScorer
from db import Instance, Study, StudyResult, StudyState
from dicom_io.bodypart import SelectionRules
from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import prepare_view
from dicom_io.storage import instance_relpath
from dicom_io.synthetic import StudySpec, make_instance
from tests.fakes import FixedScorer

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)

#: ``limits.max_pixels`` of these tests: 256 x 256 views pass, the 512 x 512 one does not, and
#: the view whose Rows are doubled (512 x 256) reaches the pixel checks behind the size limit.
MAX_PIXELS = 200_000

#: The settings every test here scores with (the kinds 5 and 6 need them).
SETTINGS = {
    "limits": {"max_pixels": MAX_PIXELS},
    "scoring": {"unmapped_body_part": "not_analysed"},
}

#: kind of bad view -> words its error must contain (the good view is ``good.dcm``).
EXPECTED: dict[str, tuple[str, ...]] = {
    "no_pixel_data": ("no pixel data",),
    "truncated_native": ("truncated pixel data", "need 131072"),
    "truncated_jpeg2000": ("truncated pixel data", "JPEG 2000"),
    "truncated_jpeg_lossless": ("truncated pixel data", "JPEG Lossless"),
    "bits_stored_20": ("Bits Stored 20", "contradict"),
    "rows_doubled": ("truncated pixel data", "Rows 512"),
    "rows_halved": ("contradict the data",),
    "cmyk": ("CMYK", "not supported"),
    "too_large": ("512 x 512", "limits.max_pixels"),
    "knee": ("body part not supported", "KNEE"),
    "localizer": ("LOCALIZER", "not scored"),
}


def _cut_codestream(ds: Dataset, keep: float = 0.6) -> Dataset:
    """Keep the first ``keep`` of the only frame, re-encapsulated so the file still parses."""
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:int(len(frame) * keep)]])
    return ds


def _jpeg_lossless(ds: Dataset, workdir: Path) -> Dataset:
    """``ds`` encoded JPEG Lossless SV1 by DCMTK's dcmcjpeg (pydicom 3.0 has no JPEG encoder)."""
    src, dst = workdir / "jpeg-ll-src.dcm", workdir / "jpeg-ll.dcm"
    ds.save_as(src, enforce_file_format=True)
    subprocess.run(["dcmcjpeg", "+e1", str(src), str(dst)], check=True, capture_output=True)
    out = pydicom.dcmread(dst)
    assert out.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    src.unlink()
    dst.unlink()
    return out


def bad_views(spec: StudySpec, workdir: Path) -> dict[str, Dataset]:
    """The good view and one view of each kind of bad input, all of ``spec``'s study.

    The study description names no body part, so the KNEE view is not mapped to a WRIST by the
    study-level text (the first field naming a study type decides, dicom_io.bodypart).
    JPEG Lossless is encoded by DCMTK's dcmcjpeg: without it, that kind is left out.
    """

    def view(number: int, **changes: object) -> Dataset:
        ds = make_instance(replace(spec, **changes), number)
        ds.StudyDescription = "XR EXTREMITIES"
        return ds

    views: dict[str, Dataset] = {"good": view(0)}

    ds = view(1)
    del ds.PixelData
    views["no_pixel_data"] = ds

    ds = view(2)
    ds.PixelData = ds.PixelData[:len(ds.PixelData) // 2]
    views["truncated_native"] = ds

    ds = view(3)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    views["truncated_jpeg2000"] = _cut_codestream(ds)

    if shutil.which("dcmcjpeg"):
        views["truncated_jpeg_lossless"] = _cut_codestream(_jpeg_lossless(view(4), workdir))
    elif os.environ.get("CI") == "true":
        pytest.fail("dcmcjpeg is not installed (make test installs dcmtk)")

    ds = view(5)
    ds.BitsStored, ds.HighBit = 20, 19  # Bits Allocated stays 16
    views["bits_stored_20"] = ds

    ds = view(6)
    ds.Rows = 2 * ds.Rows  # the data holds half of what the header claims
    views["rows_doubled"] = ds

    ds = view(7)
    ds.Rows = ds.Rows // 2  # the data holds twice what the header claims
    views["rows_halved"] = ds

    ds = view(8)
    ds.PhotometricInterpretation = "CMYK"
    views["cmyk"] = ds

    views["too_large"] = view(9, rows=512, columns=512)

    ds = view(10, body_part="KNEE", series_instance_uid=generate_uid())
    ds.SeriesNumber = 2
    views["knee"] = ds

    ds = view(11)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    views["localizer"] = ds
    return views


def write_mixed_study(folder: Path, *, good: bool = True) -> dict[str, Path]:
    """Write the mixed study to ``folder/<kind>.dcm``; return kind -> file.

    ``good=False`` writes the bad views only. Each call is a new study (new UIDs).
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec = StudySpec(views=1, rows=256, columns=256, seed=11)
    files = {}
    for kind, ds in bad_views(spec, folder).items():
        if kind == "good" and not good:
            continue
        files[kind] = folder / f"{kind}.dcm"
        ds.save_as(files[kind], enforce_file_format=True)
    return files


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_reason(kind: str, error: str | None) -> None:
    assert error, f"{kind}: no error recorded"
    for word in EXPECTED[kind]:
        assert word in error, f"{kind}: {word!r} not in {error!r}"


# -- radtriage score ----------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("cli_env")


def make_config(tmp_path: Path, checkpoint: Path, workers: int = 1) -> Path:
    path = tmp_path / "radtriage.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "batch_size": 4,
                  "allow_untrained": True},
        "storage": {"path": "var/storage"},
        "database": {"url": "sqlite:///var/radtriage.db"},
        "decoding": {"workers": workers},
        **SETTINGS,
    }), encoding="utf-8")
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_mixed_study(tmp_path_factory.mktemp("mixed") / "study")


@pytest.fixture(scope="module")
def only_bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_mixed_study(tmp_path_factory.mktemp("only-bad") / "study", good=False)


def _kind(view: dict) -> str:
    return Path(view["path"]).stem


@pytest.mark.parametrize("workers", [1, 2], ids=["in-thread", "process-pool"])
def test_score_json_reports_every_bad_view(tmp_path, mixed, untrained_checkpoint, workers):
    before = {kind: digest(p) for kind, p in mixed.items()}
    config = make_config(tmp_path, untrained_checkpoint, workers=workers)
    code, out, err = run("score", str(mixed["good"].parent), "--json", "--config", str(config))
    assert code == 0, err

    [study] = json.loads(out)  # one study: every view has the same Study Instance UID
    assert study["study_instance_uid"] == str(pydicom.dcmread(mixed["good"]).StudyInstanceUID)
    views = {_kind(v): v for v in study["views"]}
    assert set(views) == set(mixed)
    assert study["views_analysed"] == 1
    assert study["views_not_analysed"] == len(mixed) - 1
    assert study["study_type"] == "WRIST"

    good = views.pop("good")
    assert good["error"] is None and 0.0 <= good["probability"] <= 1.0
    assert study["probability"] == good["probability"]
    for kind, v in views.items():
        assert v["probability"] is None, kind
        assert_reason(kind, v["error"])
    assert views["knee"]["study_type"] is None

    assert {kind: digest(p) for kind, p in mixed.items()} == before  # read, never changed


def test_score_json_study_of_bad_views_only(tmp_path, only_bad, untrained_checkpoint):
    config = make_config(tmp_path, untrained_checkpoint)
    code, out, err = run("score", str(only_bad["cmyk"].parent), "--json", "--config", str(config))
    assert code == 0, err
    [study] = json.loads(out)
    assert study["probability"] is None and study["abnormal"] is None
    assert study["priority"] == "ROUTINE"
    assert study["views_analysed"] == 0
    assert study["views_not_analysed"] == len(only_bad)
    for v in study["views"]:
        assert v["probability"] is None
        assert_reason(_kind(v), v["error"])


def test_score_table_lists_the_reasons(tmp_path, mixed, untrained_checkpoint):
    config = make_config(tmp_path, untrained_checkpoint)
    code, out, err = run("score", str(mixed["good"].parent), "--config", str(config))
    assert code == 0, err
    study_uid = str(pydicom.dcmread(mixed["good"]).StudyInstanceUID)
    [row] = [line for line in out.splitlines() if line.startswith(study_uid)]
    assert f" 1/{len(mixed)} " in f"{row} "  # views analysed / views
    shown = {}  # one line per file: its probability, or why it was not analysed
    for line in out.splitlines():
        if line.startswith("    "):
            path, _, what = line.strip().partition(": ")
            shown[path] = what
    for kind, path in mixed.items():
        if kind == "good":
            float(shown[str(path)])
        else:
            what = shown.get(str(path), "")
            assert what.startswith("not analysed: "), (kind, what)
            assert_reason(kind, what[len("not analysed: "):])


# -- StudyScorer: database rows, the SR, the stored files ---------------------------------------


def _store(tmp_path: Path, database, files: dict[str, Path]) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Put ``files`` in storage and the database as the receiver would; kind -> stored path."""
    stored = {}
    with database.session() as s:
        first = pydicom.dcmread(next(iter(files.values())), stop_before_pixels=True)
        study = Study(study_instance_uid=first.StudyInstanceUID, state=StudyState.COMPLETE,
                      first_received_at=NOW, last_received_at=NOW, completed_at=NOW, revision=1)
        s.add(study)
        s.flush()
        for kind, f in files.items():
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            stored[kind] = tmp_path / "storage" / rel
            stored[kind].parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, stored[kind])
            s.add(Instance(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID,
                           sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                           transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                           size_bytes=f.stat().st_size, received_at=NOW))
    return stored


def _scorer(tmp_path: Path, database, model: FixedScorer) -> StudyScorer:  # type: ignore[no-untyped-def]
    config = parse_config({
        "storage": {"path": str(tmp_path / "storage")},
        "database": {"url": "sqlite://"},  # unused: the fixture's database is passed in
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "decoding": {"workers": 1},
        **SETTINGS,
    }, base=tmp_path, environ={})
    return StudyScorer(config, database, model, clock=lambda: NOW)


def sr_texts(ds: Dataset) -> list[str]:
    """Every TEXT value of an SR content tree, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            out.append(str(item.TextValue))
        out.extend(sr_texts(item))
    return out


def test_study_scorer_records_every_bad_view(tmp_path, database, mixed):
    stored = _store(tmp_path, database, mixed)
    before = {kind: digest(p) for kind, p in stored.items()}
    model = FixedScorer(0.7)
    worker = _scorer(tmp_path, database, model)
    try:
        result_id = worker.score_study(*worker.claim_next())
    finally:
        worker.close()
    assert model.calls == [1]  # only the good view reached the model

    with database.session() as s:
        result = s.get(StudyResult, result_id)
        assert result.analysed and result.reason is None
        assert result.probability == pytest.approx(0.7) and result.priority == "ELEVATED"
        assert result.study_type == "WRIST"
        kind_of = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): kind
                   for kind, p in mixed.items()}
        errors = {kind_of[sc.instance.sop_instance_uid]: sc.error for sc in result.scores}
        probabilities = {kind_of[sc.instance.sop_instance_uid]: sc.probability for sc in result.scores}
        assert set(errors) == set(mixed)
        assert errors.pop("good") is None and probabilities.pop("good") == pytest.approx(0.7)
        assert all(p is None for p in probabilities.values())
        for kind, error in errors.items():
            assert_reason(kind, error)
        sr_path = tmp_path / "storage" / result.sr_path
        assert s.get(Study, result.study_id).state == StudyState.DISPATCHING

    sr = pydicom.dcmread(sr_path)
    texts = sr_texts(sr)
    assert f"1 of {len(mixed)} views scored" in texts
    for kind, error in errors.items():
        assert f"NOT SCORED: {error}" in texts, kind
    assert sr.CompletionFlag == "PARTIAL"
    assert sr.SeriesDescription == "AI TRIAGE: ABNORMAL 70% - PRIORITY ELEVATED"
    evidence = {r.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == set(kind_of)  # every received view is referenced, scored or not

    assert {kind: digest(p) for kind, p in stored.items()} == before  # nothing deleted or changed

    status = render_status(database)  # what `radtriage status` prints
    assert f"1 of {len(mixed)} views analysed; not analysed:" in status
    assert "WRIST" in status
    for error in errors.values():
        assert error in status


def test_study_scorer_study_of_bad_views_only(tmp_path, database, only_bad):
    stored = _store(tmp_path, database, only_bad)
    before = {kind: digest(p) for kind, p in stored.items()}
    model = FixedScorer(0.7)
    worker = _scorer(tmp_path, database, model)
    try:
        result_id = worker.score_study(*worker.claim_next())
    finally:
        worker.close()
    assert model.calls == []

    with database.session() as s:
        result = s.get(StudyResult, result_id)
        assert not result.analysed and result.probability is None and result.priority == "ROUTINE"
        assert result.reason.startswith("no view could be scored: ")
        assert result.series_description.startswith("AI TRIAGE: NOT ANALYSED")
        errors = [sc.error for sc in result.scores]
        assert len(errors) == len(only_bad) and all(errors)
        for error in errors:
            assert error in result.reason
        sr_path = tmp_path / "storage" / result.sr_path

    texts = sr_texts(pydicom.dcmread(sr_path))
    assert f"NOT ANALYSED: {result.reason}" in texts
    assert f"0 of {len(only_bad)} views scored" in texts
    for error in errors:
        assert f"NOT SCORED: {error}" in texts
    assert {kind: digest(p) for kind, p in stored.items()} == before


# -- bugs found: contradictions and empty values that slip through -----------------------------


def _prepare(ds: Dataset, tmp_path: Path, opts: DecodeOptions = DecodeOptions()):  # type: ignore[no-untyped-def]
    path = tmp_path / "view.dcm"
    ds.save_as(path, enforce_file_format=True)
    return prepare_view(path, Preprocessing(), opts, SelectionRules())


def test_empty_pixel_data_element_says_no_pixel_data(tmp_path):
    ds = make_instance(StudySpec(), 0)
    ds.PixelData = b""
    view = _prepare(ds, tmp_path)
    assert view.tensor is None
    assert "no pixel data" in view.error


def _j2k() -> Dataset:
    """A 256 x 256, 12-bit view, JPEG 2000 lossless (OpenJPEG through pylibjpeg)."""
    ds = make_instance(StudySpec(rows=256, columns=256), 0)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return ds


def _jpeg_baseline(workdir: Path) -> Dataset:
    """A 256 x 256, 8-bit view, JPEG baseline (DCMTK's dcmcjpeg)."""
    if not shutil.which("dcmcjpeg"):
        if os.environ.get("CI") == "true":
            pytest.fail("dcmcjpeg is not installed (make test installs dcmtk)")
        pytest.skip("dcmcjpeg is not installed")
    src, dst = workdir / "baseline-src.dcm", workdir / "baseline.dcm"
    make_instance(StudySpec(rows=256, columns=256, bits_stored=8), 0).save_as(
        src, enforce_file_format=True)
    subprocess.run(["dcmcjpeg", "+eb", "+sr", str(src), str(dst)], check=True, capture_output=True)
    ds = pydicom.dcmread(dst)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    return ds


#: with working_size 128, a 256-column view is decoded at half size where the syntax allows it
#: (JPEG 2000 resolution level 1, JPEG baseline DCT scale 1/2)
REDUCED = DecodeOptions(working_size=128, reduced_decode=True)
FULL = DecodeOptions(working_size=128, reduced_decode=False)


@pytest.mark.parametrize("encode", [lambda _: _j2k(), _jpeg_baseline], ids=["jpeg2000", "jpeg-baseline"])
def test_rows_contradicting_the_codestream_are_refused_by_the_full_decode(tmp_path, encode):
    ds = encode(tmp_path)
    ds.Rows = 512  # the codestream is 256 x 256
    view = _prepare(ds, tmp_path, FULL)
    assert view.tensor is None and "contradict" in view.error and "codestream of 256 x 256" in view.error


@pytest.mark.parametrize("encode", [lambda _: _j2k(), _jpeg_baseline], ids=["jpeg2000", "jpeg-baseline"])
def test_rows_contradicting_the_codestream_are_refused_by_the_reduced_decode(tmp_path, encode):
    ds = encode(tmp_path)
    ds.Rows = 512  # the codestream is 256 x 256
    view = _prepare(ds, tmp_path, REDUCED)
    assert view.tensor is None
    assert view.error is not None


@pytest.mark.parametrize("opts", [FULL, REDUCED], ids=["full", "reduced"])
def test_j2k_bits_stored_contradicting_the_codestream_is_refused(tmp_path, opts):
    ds = _j2k()
    ds.BitsStored, ds.HighBit = 8, 7  # the codestream's precision is 12 bits
    view = _prepare(ds, tmp_path, opts)
    assert view.tensor is None
    assert "Bits Stored" in view.error
