"""``radtriage send`` against radtriage's own Storage SCP (in-process, on a free port): every
file in its own transfer syntax over one association, byte for byte, one line per file; the
README's storescu command (DCMTK with ``deploy/storescu.cfg``) does the same; and ``radtriage
score`` counts and refuses the copies of one instance as the receiver does (issue 18, items 8
and 9)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from sqlalchemy import select

from daemon.cli import main
from daemon.offline import digests
from db import Instance
from dicom_io.synthetic import StudySpec, make_study
from tests.dicom_io.corpus import BY_UID, missing_encoder, write_encoding
from tests.integration.conftest import ROOT, need
from tests.unit.conftest import restore_logging  # noqa: F401  (a fixture: `score` sets up logging)

pytestmark = pytest.mark.integration

#: uncompressed, JPEG 2000 (lossless and lossy), JPEG-LS, RLE, deflated; DCMTK's JPEG lossless
#: where dcmcjpeg is installed
SYNTAXES = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.JPEG2000Lossless,
            uid.JPEG2000, uid.JPEGLSLossless, uid.RLELossless, uid.DeflatedExplicitVRLittleEndian,
            uid.JPEGLossless)


def mixed_study(folder: Path, seed: int) -> dict[Path, str]:
    """One study, each view in another transfer syntax: file -> its Transfer Syntax UID."""
    folder.mkdir(parents=True)
    syntaxes = [ts for ts in SYNTAXES if missing_encoder(BY_UID[ts]) is None]
    files = {}
    for n, (ds, ts) in enumerate(zip(make_study(StudySpec(views=len(syntaxes), rows=64, columns=64,
                                                          seed=seed)), syntaxes)):
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        source = folder.parent / f"source-{seed}-{n}.dcm"  # what DCMTK encodes from, kept apart
        ds.save_as(source, enforce_file_format=True)
        path = write_encoding(ds, BY_UID[ts], folder / f"view{n}-{BY_UID[ts].name}.dcm", source=source)
        files[path] = ts
    return files


def send(*argv: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["send", *argv], out=out, err=err)
    return code, out.getvalue().splitlines(), err.getvalue()


def stored(db, files: dict[Path, str], root: Path) -> None:  # type: ignore[no-untyped-def]
    """Each file is stored in its own transfer syntax with its data set unchanged."""
    with db.session() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    for path, ts in files.items():
        row = rows[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
        assert row.transfer_syntax_uid == ts, path.name
        assert digests(root / row.path)[1] == digests(path)[1], f"{path.name}: data set changed"


def test_send_proposes_each_files_own_transfer_syntax(receivers, tmp_path: Path) -> None:
    receiver, db = receivers()
    files = mixed_study(tmp_path / "in", seed=31)
    assert {uid.JPEG2000Lossless, uid.JPEG2000, uid.JPEGLSLossless, uid.RLELossless} <= set(files.values())
    code, lines, err = send(str(tmp_path / "in"), "--host", "127.0.0.1", "--port", str(receiver.port))
    assert (code, err) == (0, ""), lines
    assert lines == [f"{p}: Success 0x0000" for p in sorted(files)]
    stored(db, files, tmp_path / "storage")


def test_send_reports_each_file_not_stored_and_exits_1(receivers, tmp_path: Path) -> None:
    receiver, db = receivers()
    files = mixed_study(tmp_path / "in", seed=32)
    first = sorted(files)[0]
    # an MR image (refused at negotiation), other bytes under a stored UID (0xC409), an
    # identical copy (Success, nothing new), and a file that is not DICOM
    ds = pydicom.dcmread(first)
    ds.SeriesDescription = "other content"
    ds.save_as(tmp_path / "in" / "z1-other-bytes.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(first)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid.MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.save_as(tmp_path / "in" / "z2-mr.dcm", enforce_file_format=True)
    shutil.copy(first, tmp_path / "in" / "z3-identical.dcm")
    (tmp_path / "in" / "z4-notes.txt").write_text("not DICOM\n", encoding="utf-8")

    code, lines, err = send(str(tmp_path / "in"), "--host", "127.0.0.1", "--port", str(receiver.port))
    assert code == 1
    assert err == f"radtriage: 3 of {len(files) + 4} file(s) not stored\n"
    by_file = dict(line.split(": ", 1) for line in lines)
    assert len(lines) == len(files) + 4
    assert all(by_file[str(p)] == "Success 0x0000" for p in files)
    assert by_file[str(tmp_path / "in" / "z1-other-bytes.dcm")].startswith(
        "Failure 0xC409 its SOP Instance UID is already stored with other content")
    assert by_file[str(tmp_path / "in" / "z2-mr.dcm")] == (
        "not sent: RADTRIAGE refused MR Image Storage in Explicit VR Little Endian at negotiation")
    assert by_file[str(tmp_path / "in" / "z3-identical.dcm")] == "Success 0x0000"
    assert by_file[str(tmp_path / "in" / "z4-notes.txt")].startswith("not sent: not a DICOM file")
    stored(db, files, tmp_path / "storage")


def test_send_to_nobody_says_so(tmp_path: Path) -> None:
    from tests.conftest import free_port

    files = mixed_study(tmp_path / "in", seed=33)
    port = free_port()
    code, lines, _ = send(str(sorted(files)[0]), "--host", "127.0.0.1", "--port", str(port))
    assert code == 1
    assert lines == [f"{sorted(files)[0]}: not sent: cannot associate with RADTRIAGE at "
                     f"127.0.0.1:{port} (refused, down or timed out)"]


def test_the_readmes_storescu_command_sends_a_mixed_folder(receivers, tmp_path: Path) -> None:
    """DCMTK 3.6.7's storescu proposes one compressed transfer syntax at a time (-xv, -xw, ...);
    with deploy/storescu.cfg it proposes every one radtriage takes, and sends each file as it is."""
    receiver, db = receivers()
    files = mixed_study(tmp_path / "in", seed=34)
    cfg = ROOT / "deploy" / "storescu.cfg"
    proc = subprocess.run([need("storescu"), "-xf", str(cfg), "Radtriage", "-aec", "RADTRIAGE",
                           "+sd", "+r", "127.0.0.1", str(receiver.port), str(tmp_path / "in")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stored(db, files, tmp_path / "storage")


def test_score_counts_a_copy_once_and_refuses_other_bytes_as_the_receiver_does(
        receivers, tmp_path: Path, small_checkpoint: Path, restore_logging: None) -> None:
    """The same files through the receiver and through ``radtriage score``: an identical copy is
    one instance (Success / counted once), other content under the same UIDs is refused
    (0xC409 / not scored, with both SHA-256)."""
    import json

    import yaml

    receiver, _db = receivers()
    folder = tmp_path / "in"
    files = sorted(mixed_study(folder, seed=35))[:3]
    for extra in set(folder.iterdir()) - set(files):
        extra.unlink()
    shutil.copy(files[1], folder / "z-identical.dcm")
    ds = pydicom.dcmread(files[0])
    ds.SeriesDescription = "other content"
    ds.save_as(folder / "z-other.dcm", enforce_file_format=True)

    code, lines, _ = send(str(folder), "--host", "127.0.0.1", "--port", str(receiver.port))
    by_file = dict(line.split(": ", 1) for line in lines)
    assert code == 1
    assert by_file[str(folder / "z-identical.dcm")] == "Success 0x0000"
    assert by_file[str(folder / "z-other.dcm")].startswith("Failure 0xC409")

    config = tmp_path / "score.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(small_checkpoint), "device": "cpu", "allow_untrained": True,
                  "warm_up": False},
        "preprocessing": {"size": 64}, "decoding": {"workers": 1}}), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main(["score", str(folder), "--json", "--config", str(config)], out=out, err=err) == 0, err.getvalue()
    [study] = json.loads(out.getvalue())
    assert (study["views_analysed"], len(study["views"])) == (3, 3)
    assert [d["path"] for d in study["duplicates"]] == [str(folder / "z-identical.dcm")]
    [refused] = study["refused"]
    assert refused["path"] == str(folder / "z-other.dcm")
    for f in (files[0], folder / "z-other.dcm"):
        assert digests(f)[0] in refused["error"]
    assert "0xC409" in refused["error"]
