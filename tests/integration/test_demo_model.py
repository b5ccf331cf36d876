"""The daemon as ``make run`` starts it, with the shipped demo model, end to end.

Phantom studies the model has never seen (their own seed) go in with DCMTK's ``storescu``; the
SRs come out at a DCMTK ``storescp`` acting as the PACS. The daemon runs on the embedded model
settings (``models/radtriage-demo.pt``, trained flag checked, no ``allow_untrained``); the test
checks that every report says it came from the demo model, that the start-up log says so, and
that an abnormal study with metal in it is called abnormal and a normal study normal.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from inference.model import DEMO_NOTICE
from tests.integration.conftest import storescu, wait_for
from training.phantoms import generate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _texts(ds: pydicom.Dataset) -> list[str]:
    out, stack = [], list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "TEXT":
            out.append(item.TextValue)
        stack.extend(item.get("ContentSequence", []))
    return out


def test_the_demo_model_triages_phantoms_and_says_what_it_is(make_daemon, pacs, tmp_path: Path) -> None:
    generate(tmp_path / "phantoms", studies=6, seed=31, formats=("dicom",), workers=1)
    truth: dict[str, tuple[int, str]] = {}
    for line in (tmp_path / "phantoms/dicom/truth.csv").read_text().splitlines()[1:]:
        uid, label, _type, _split, boxes = line.split(",", 4)
        truth[uid] = (int(label), boxes)
    # storescu proposes uncompressed syntaxes only and cannot convert RLE, JPEG-LS or JPEG 2000
    # (the transfer syntaxes have their own tests): send every view decompressed
    files = []
    for path in sorted((tmp_path / "phantoms/dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        files.append(tmp_path / f"send{len(files):03d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)

    daemon = make_daemon(model={"checkpoint": str(ROOT / "models/radtriage-demo.pt"), "allow_untrained": False},
                         destinations=pacs.as_destination(["sr", "summary"])).start()
    storescu(daemon.port, files)
    received = wait_for(lambda: (lambda f: f if len(f) == 2 * len(truth) else None)(pacs.files()), 180,
                        f"{len(truth)} SRs and {len(truth)} summary images at the PACS")
    datasets = [pydicom.dcmread(p) for p in received]
    srs = [ds for ds in datasets if ds.Modality == "SR"]
    summaries = [ds for ds in datasets if ds.Modality != "SR"]
    assert len(srs) == len(summaries) == len(truth)
    for ds in summaries:  # the summary says it too, in its header and burned into its pixels
        assert ds.BurnedInAnnotation == "YES" and ds.SeriesDescription.endswith(" - DEMO MODEL")
        assert DEMO_NOTICE in " ".join(str(ds.get(k, "")) for k in ("ImageComments", "DerivationDescription"))
    assert daemon.stop() == 0, daemon.output()
    log = daemon.log_path.read_text(errors="replace")
    assert f"model radtriage-demo 1.1: {DEMO_NOTICE}" in log
    assert "threshold 0.45 (the model card's)" in log  # model.threshold: null, the embedded default

    verdicts = {}
    for ds in srs:
        assert ds.SeriesDescription.endswith(" - DEMO MODEL"), ds.SeriesDescription
        assert DEMO_NOTICE in _texts(ds)
        verdicts[ds.StudyInstanceUID] = ds.SeriesDescription
    assert set(verdicts) == set(truth)
    for uid, (label, boxes) in truth.items():
        if label == 0:
            assert verdicts[uid].startswith("AI TRIAGE: NORMAL"), (uid, verdicts[uid])
        elif '"hardware"' in boxes:  # metal in the view: the easiest finding of all
            assert verdicts[uid].startswith("AI TRIAGE: ABNORMAL"), (uid, verdicts[uid])
