"""``radtriage score`` on files cut short: each says it is truncated, and where (issue 18, item 6).

The study's good view is scored; every view cut in its pixel data (JPEG 2000 as in the issue,
and the other encodings of ``tests/dicom_io/truncated.py``) carries a reason that names the
truncation, never "modality (none)". ``tests/dicom_io/test_truncated_files.py`` checks
``prepare_view`` itself, headers cut short included.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
import yaml

from daemon.cli import main
from tests.dicom_io.truncated import source, write_truncated


pytestmark = pytest.mark.usefixtures("cli_env")


def _score(folder: Path, tmp_path: Path, checkpoint: Path) -> io.StringIO:
    """``radtriage score FOLDER --json`` with the untrained plumbing model; its output."""
    config = tmp_path / "radtriage.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "batch_size": 4,
                  "allow_untrained": True},
        "storage": {"path": "var/storage"}, "database": {"url": "sqlite:///var/radtriage.db"},
        "decoding": {"workers": 1},
    }), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main(["score", str(folder), "--json", "--config", str(config)], out=out, err=err) == 0, err.getvalue()
    return out


def test_score_says_which_files_are_truncated(tmp_path: Path, untrained_checkpoint: Path) -> None:
    study = tmp_path / "study"
    ds = source()
    cut = write_truncated(study, "pixels", ds=ds)
    good = study / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    (study / "whole").rename(tmp_path / "whole")  # only the good view and the cut ones are scored
    out = _score(study, tmp_path, untrained_checkpoint)
    views = {Path(v["path"]).stem: v for row in json.loads(out.getvalue()) for v in row["views"]}
    assert set(views) == {"good", *cut}
    assert views.pop("good")["error"] is None
    assert "JPEG2000Lossless" in views  # the file
    for name, view in views.items():
        error = view["error"]
        assert view["probability"] is None, name
        assert error and "truncated" in error and "modality" not in error.lower(), (name, error)
    assert pydicom.dcmread(good).Modality == "CR"


def test_score_says_a_file_cut_in_its_header_is_truncated(tmp_path: Path,
                                                          untrained_checkpoint: Path) -> None:
    """Cut before its Study Instance UID, a file cannot even be grouped into a study: it is
    listed as unreadable, saying it is truncated, not "has no attribute 'StudyInstanceUID'"."""
    study = tmp_path / "study"
    cut = write_truncated(study, "header")
    (study / "whole").rename(tmp_path / "whole")
    out = _score(study, tmp_path, untrained_checkpoint)
    errors = {Path(v["path"]).stem: v["error"] for row in json.loads(out.getvalue())
              for v in row["views"]}
    assert set(errors) == set(cut)
    for name, error in errors.items():
        assert error and "truncated" in error and "attribute" not in error, (name, error)
