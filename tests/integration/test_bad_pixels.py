"""Bad pixels through the real daemon: DCMTK storescu sends, DCMTK storescp is the PACS.

The mixed study of ``tests/unit/test_score_bad_input.py`` (one good view and one view of each
kind of bad input): what the receiver's structural check (:mod:`dicom_io.validate`) can see
without decoding is refused with 0xC000 and quarantined with its reason; the rest is stored as
sent, its SR says which views were not scored and why, nothing received is removed, and the
daemon goes on to score the next study.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
)
from sqlalchemy import select

from daemon.cli import main
from db import Database, ImageScore, Instance, Study, StudyResult, StudyState
from dicom_io.synthetic import CR_IMAGE_STORAGE
from tests.conftest import write_study
from tests.integration.conftest import storescu, wait_for
from tests.unit.test_score_bad_input import SETTINGS, assert_reason, sr_texts, write_mixed_study

pytestmark = pytest.mark.integration

#: bad views whose damage shows in the file's structure: refused at receive time
REFUSED_AT_RECEIVE = {"no_pixel_data", "truncated_native", "rows_doubled"}


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set: what follows the preamble and the File Meta group."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00", path
    (group_length,) = struct.unpack("<I", raw[140:144])  # (0002,0000) UL, explicit VR
    return raw[144 + group_length:]


def storescu_profile(folder: Path) -> list[str]:
    """storescu options for one association carrying each file in its own transfer syntax.

    storescu proposes only uncompressed syntaxes unless told otherwise, and then converts, which
    it cannot do for JPEG 2000 (no codec) nor for a cut codestream; this profile (a storescu ``--config-file``) proposes CR
    in every syntax the mixed study uses, so each file goes as it is.
    """
    path = folder / "storescu.cfg"
    path.write_text(f"""\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = {ExplicitVRLittleEndian}
TransferSyntax2 = {ImplicitVRLittleEndian}
[JPEGLossless]
TransferSyntax1 = {JPEGLosslessSV1}
[JPEG2000Lossless]
TransferSyntax1 = {JPEG2000Lossless}

[[PresentationContexts]]
[BadPixels]
PresentationContext1 = {CR_IMAGE_STORAGE}\\Uncompressed
PresentationContext2 = {CR_IMAGE_STORAGE}\\JPEGLossless
PresentationContext3 = {CR_IMAGE_STORAGE}\\JPEG2000Lossless

[[Profiles]]
[BadPixels]
PresentationContexts = BadPixels
""", encoding="ascii")
    return ["-xf", str(path), "BadPixels"]


def test_bad_views_are_reported_and_the_daemon_goes_on(make_daemon, pacs, tmp_path):
    files = write_mixed_study(tmp_path / "bad")
    study_uid = str(pydicom.dcmread(files["good"], stop_before_pixels=True).StudyInstanceUID)
    kind_of = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): kind
               for kind, p in files.items()}
    daemon = make_daemon(destinations=pacs.as_destination(), decoding={"workers": 2},
                         **SETTINGS).start()

    # what the structural check sees is refused and quarantined; the rest is answered Success
    assert REFUSED_AT_RECEIVE <= set(files)
    refused = {k: files.pop(k) for k in sorted(REFUSED_AT_RECEIVE)}
    kind_of = {uid: kind for uid, kind in kind_of.items() if kind in files}
    for kind, path in refused.items():
        out = storescu(daemon.port, [path], check=False)
        assert "Received Store Response (Error: CannotUnderstand)" in out.stdout + out.stderr, kind
    quarantine = daemon.workdir / "storage" / "quarantine"
    reasons = sorted(p.read_text() for p in quarantine.glob("*.txt"))
    assert len(reasons) == len(refused) and len(list(quarantine.glob("*.dcm"))) == len(refused)
    assert all("reason: " in r for r in reasons)
    sent = storescu(daemon.port, list(files.values()), extra=storescu_profile(tmp_path))
    output = sent.stdout + sent.stderr
    assert sent.returncode == 0, output
    assert output.count("Received Store Response (Success)") == len(files), output
    assert not re.search(r"Received Store Response \((?!Success)", output), output

    wait_for(lambda: pacs.files(), 60, "the SR of the bad study")
    # the daemon is still up and scores the next study
    good_files = write_study(tmp_path / "good", views=2, rows=256, columns=256, seed=2)
    storescu(daemon.port, good_files)
    wait_for(lambda: len(pacs.files()) == 2, 60, "the SR of the good study after the bad one")
    assert daemon.proc.poll() is None, daemon.output()

    srs = {str(ds.StudyInstanceUID): ds for ds in map(pydicom.dcmread, pacs.files())}
    good_sr = srs[str(pydicom.dcmread(good_files[0], stop_before_pixels=True).StudyInstanceUID)]
    assert "NOT" not in good_sr.SeriesDescription and good_sr.CompletionFlag == "COMPLETE"

    # the SR of the bad study: analysed on its one good view, each other view with its reason
    sr = srs[study_uid]
    assert re.fullmatch(r"AI TRIAGE: (ABNORMAL|NORMAL) \d{1,3}% - PRIORITY (HIGH|ELEVATED|ROUTINE)",
                        sr.SeriesDescription), sr.SeriesDescription
    assert sr.CompletionFlag == "PARTIAL"
    texts = sr_texts(sr)
    assert f"1 of {len(files)} views scored" in texts
    not_scored = [t[len("NOT SCORED: "):] for t in texts if t.startswith("NOT SCORED: ")]
    assert len(not_scored) == len(files) - 1

    db = Database(daemon.db_url)
    try:
        def delivered() -> bool:
            with db.session() as s:
                return all(st.state == StudyState.DELIVERED for st in s.scalars(select(Study)))

        wait_for(delivered, 30, "both studies to be marked delivered")
        with db.session() as s:
            study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            result = s.scalar(select(StudyResult).where(StudyResult.study_id == study.id))
            assert result.analysed and result.sr_sop_instance_uid == sr.SOPInstanceUID
            rows = s.execute(select(Instance.sop_instance_uid, ImageScore.probability, ImageScore.error)
                             .join(ImageScore, ImageScore.instance_id == Instance.id)
                             .where(ImageScore.result_id == result.id)).all()
            errors = {kind_of[uid]: error for uid, _, error in rows}
            probabilities = {kind_of[uid]: p for uid, p, _ in rows}
            assert set(errors) == set(files)
            assert errors.pop("good") is None
            assert result.probability == pytest.approx(probabilities.pop("good"), abs=1e-12)
            assert all(p is None for p in probabilities.values())
            for kind, error in errors.items():
                assert_reason(kind, error)
            assert sorted(not_scored) == sorted(errors.values())

            # every received instance is still in storage, its data set the bytes sent
            instances = s.scalars(select(Instance).where(Instance.study_id == study.id)).all()
            assert {i.sop_instance_uid for i in instances} == set(kind_of)
            for inst in instances:
                stored = daemon.workdir / "storage" / inst.path
                assert dataset_bytes(stored) == dataset_bytes(files[kind_of[inst.sop_instance_uid]])
        assert len(list(quarantine.glob("*.dcm"))) == len(refused)  # nothing more quarantined
    finally:
        db.dispose()

    # `radtriage status` lists the study, delivered with all its instances; it prints no per-view
    # errors (nor a not-analysed reason): those are in the database, checked above
    out = io.StringIO()
    assert main(["status", "--config", str(daemon.config_path)], out=out) == 0
    [line] = [line for line in out.getvalue().splitlines() if line.endswith(study_uid)]
    assert " delivered " in line and f" {len(files)}  " in line

    assert daemon.stop() == 0, daemon.output()
    # every kind was foreseen: none went through prepare_view's catch-all (it logs a traceback)
    log = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
