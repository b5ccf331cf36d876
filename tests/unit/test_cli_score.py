"""``radtriage score``: the table names every file and each study's verdict, as ``--json`` does
(issue 18, item 10); copies of one SOP Instance UID are taken as the daemon's receiver takes
them (item 8; the same files through the receiver: tests/integration/test_send.py)."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pydicom
import pytest
import yaml

from daemon.cli import main
from daemon.offline import Copy, second_copy
from tests.conftest import write_study


pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def config(tmp_path: Path, small_checkpoint: Path) -> Path:
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(small_checkpoint), "device": "cpu", "allow_untrained": True,
                  "warm_up": False},
        "preprocessing": {"size": 64}, "decoding": {"workers": 1}}), encoding="utf-8")
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A study of three views, each of whose SOP Instance UIDs comes twice more: view 2 as an
    identical copy, view 3 with the same data set under other file meta, view 1 with other
    content, and view 1 again under another study; an MR study (not analysed); a text file."""
    folder = tmp_path / "in"
    views = write_study(folder / "study", views=3, rows=64, columns=64, seed=7)
    shutil.copy(views[1], folder / "study" / "x-view2-copy.dcm")
    ds = pydicom.dcmread(views[2])
    ds.file_meta.ImplementationVersionName = "OTHER_TOOL_1"
    ds.save_as(folder / "study" / "x-view3-other-meta.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(views[0])
    ds.SeriesDescription = "changed after it was sent"
    ds.save_as(folder / "study" / "x-view1-other-content.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(views[0])
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "z-view1-moved.dcm", enforce_file_format=True)
    write_study(folder / "mr", views=1, rows=64, columns=64, modality="MR", seed=8)
    (folder / "notes.txt").write_text("not a DICOM file\n", encoding="utf-8")
    return folder


def test_a_second_copy_is_counted_once_or_refused_with_both_hashes(folder: Path, config: Path) -> None:
    code, out, err = run("score", str(folder), "--json", "--config", str(config))
    assert code == 0, err
    rows = json.loads(out)
    study_dir = folder / "study"
    [study] = [r for r in rows if r["views"] and r["views"][0]["path"].startswith(str(study_dir))]
    assert (study["views_analysed"], study["views_not_analysed"], len(study["views"])) == (3, 0, 3)
    assert [v["path"] for v in study["views"]] == [str(study_dir / f"view{n}.dcm") for n in (1, 2, 3)]
    assert sorted((d["path"], d["same_as"]) for d in study["duplicates"]) == [
        (str(study_dir / "x-view2-copy.dcm"), str(study_dir / "view2.dcm")),
        (str(study_dir / "x-view3-other-meta.dcm"), str(study_dir / "view3.dcm"))]
    refused = {d["path"]: d for d in study["refused"]}
    assert set(refused) == {str(study_dir / "x-view1-other-content.dcm"), str(folder / "z-view1-moved.dcm")}
    for path, entry in refused.items():
        assert entry["sha256"] == sha256(Path(path))
        assert sha256(study_dir / "view1.dcm") in entry["error"] and entry["sha256"] in entry["error"]
        assert "0xC409" in entry["error"] and str(study_dir / "view1.dcm") in entry["error"]
    assert "other content" in refused[str(study_dir / "x-view1-other-content.dcm")]["error"]
    assert "never moves" in refused[str(folder / "z-view1-moved.dcm")]["error"]
    # the moved copy's study holds nothing else: it is refused, not a study of its own
    assert not any(v["path"] == str(folder / "z-view1-moved.dcm") for r in rows for v in r["views"])


def test_the_table_names_each_file_and_each_verdict_as_json_does(folder: Path, config: Path) -> None:
    code, out, err = run("score", str(folder), "--json", "--config", str(config))
    assert code == 0, err
    rows = json.loads(out)
    code, table, err = run("score", str(folder), "--config", str(config))
    assert code == 0, err
    lines = table.splitlines()
    assert lines[0].split() == ["STUDY", "INSTANCE", "UID", "TYPE", "VERDICT", "PROB", "PRIORITY", "VIEWS"]
    verdicts = set()
    for r in rows:
        [line] = [ln for ln in lines if ln.startswith(r["study_instance_uid"] or "(unreadable files)")]
        prob = "-" if r["probability"] is None else f"{r['probability']:.3f}"
        assert f"  {r['verdict']}  " in line and f"  {prob}  " in line and f"  {r['priority']}  " in line
        assert line.endswith(f"{r['views_analysed']}/{len(r['views'])} analysed")
        verdicts.add(r["verdict"])
        if r["probability"] is None:
            assert r["verdict"] == "NOT ANALYSED"
        else:
            assert r["verdict"] == ("ABNORMAL" if r["abnormal"] else "NORMAL")
        for v in r["views"]:
            shown = f"{v['probability']:.3f}" if v["probability"] is not None else f"not analysed: {v['error']}"
            assert f"    {v['path']}: {shown}" in lines
        for d in r["duplicates"]:
            assert f"    {d['path']}: the same instance as {d['same_as']} (counted once)" in lines
        for d in r["refused"]:
            assert f"    {d['path']}: not scored: {d['error']}" in lines
    assert "NOT ANALYSED" in verdicts and verdicts & {"NORMAL", "ABNORMAL"}
    mr = next(r for r in rows if r["views"] and "/mr/" in r["views"][0]["path"])
    assert mr["verdict"] == "NOT ANALYSED" and mr["reason"] and "modality" in mr["reason"].lower()
    assert mr["series_description"].startswith("AI TRIAGE: NOT ANALYSED")


def test_a_copy_with_the_same_data_set_is_the_same_instance(tmp_path: Path) -> None:
    a = Copy(tmp_path / "a.dcm", "1.2", "1.2.3", "1.2.3.4", "f" * 64, "d" * 64)
    assert second_copy(a, Copy(tmp_path / "b.dcm", "1.2", "1.2.3", "1.2.3.4", "e" * 64, "d" * 64)) is None
    other = second_copy(a, Copy(tmp_path / "c.dcm", "1.2", "1.2.3", "1.2.3.4", "e" * 64, "c" * 64))
    assert other is not None and "f" * 64 in other and "e" * 64 in other
    moved = second_copy(a, Copy(tmp_path / "d.dcm", "9.9", "1.2.3", "1.2.3.4", "e" * 64, "d" * 64))
    assert moved is not None and "never moves" in moved
