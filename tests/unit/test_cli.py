"""daemon.cli: ``radtriage score`` offline, end to end through the untrained plumbing checkpoint."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from daemon.cli import main
from daemon.config import PriorityConfig
from inference.policy import priority_for
from tests.conftest import write_study



pytestmark = pytest.mark.usefixtures("cli_env")


def make_config(tmp_path: Path, checkpoint: Path, **model) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "radtriage.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "batch_size": 4, **model},
        "storage": {"path": "var/storage"},
        "database": {"url": "sqlite:///var/radtriage.db"},
    }), encoding="utf-8")
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    write_study(folder / "study", views=2, seed=5)
    (folder / "notes.txt").write_text("not a DICOM file\n", encoding="utf-8")
    return folder


def test_score_json(tmp_path: Path, folder: Path, untrained_checkpoint: Path) -> None:
    config = make_config(tmp_path, untrained_checkpoint, allow_untrained=True)
    code, out, err = run("score", str(folder), "--json", "--config", str(config))
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list) and len(rows) == 2

    study = next(r for r in rows if r["study_instance_uid"] is not None)
    views = study["views"]
    assert len(views) == 2
    from pydicom import dcmread

    files = sorted((folder / "study").iterdir())
    expected_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {v["sop_instance_uid"] for v in views} == expected_uids
    assert study["study_instance_uid"] == str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    for v in views:
        assert v["error"] is None
        assert 0.0 <= v["probability"] <= 1.0
    mean = sum(v["probability"] for v in views) / 2
    assert study["probability"] == pytest.approx(mean, abs=1e-12)
    rules = [(r.min_probability, r.priority) for r in PriorityConfig().rules]
    assert study["priority"] == priority_for(study["probability"], rules, "ROUTINE")
    assert study["abnormal"] is (study["probability"] >= 0.5)
    assert "UNTRAINED" in study["model"]

    junk = next(r for r in rows if r["study_instance_uid"] is None)
    assert junk["probability"] is None and junk["priority"] == "ROUTINE"
    [bad] = junk["views"]
    assert bad["path"] == str(folder / "notes.txt")
    assert bad["probability"] is None and bad["sop_instance_uid"] is None
    assert "not a readable DICOM file" in bad["error"]


def test_score_table(tmp_path: Path, folder: Path, untrained_checkpoint: Path) -> None:
    config = make_config(tmp_path, untrained_checkpoint, allow_untrained=True)
    code, out, err = run("score", str(folder), "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("STUDY INSTANCE UID")
    assert any("2/2 analysed" in line and "WRIST" in line for line in lines)
    assert any("(unreadable files)" in line and "0/1 analysed" in line for line in lines)


def test_score_refuses_untrained_model(tmp_path: Path, folder: Path, untrained_checkpoint: Path) -> None:
    config = make_config(tmp_path, untrained_checkpoint)
    code, out, err = run("score", str(folder), "--json", "--config", str(config))
    assert code == 1
    assert out == ""
    assert "untrained" in err.lower() and "never trained" in err
    assert str(untrained_checkpoint) in err


def test_score_missing_checkpoint_exits_1(tmp_path: Path, folder: Path) -> None:
    config = make_config(tmp_path, tmp_path / "absent.pt", allow_untrained=True)
    code, _, err = run("score", str(folder), "--config", str(config))
    assert code == 1
    assert "absent.pt" in err


def test_score_missing_input_exits_2(tmp_path: Path, untrained_checkpoint: Path) -> None:
    config = make_config(tmp_path, untrained_checkpoint, allow_untrained=True)
    code, _, err = run("score", str(tmp_path / "nothing-here"), "--config", str(config))
    assert code == 2
    assert "nothing-here" in err


def test_score_bad_config_exits_2(tmp_path: Path, folder: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  threshold: 3\n", encoding="utf-8")
    code, out, err = run("score", str(folder), "--config", str(path))
    assert code == 2 and out == ""
    assert "model.threshold = 3" in err


def test_import_model_through_the_command_line(tmp_path: Path) -> None:
    """A torchvision state dict -> a radtriage checkpoint the daemon loads, with the seeds' recipe."""
    import torch

    from dicom_io.pixels import Preprocessing
    from inference.model import build_model, load_checkpoint

    src = tmp_path / "foreign.pth"
    torch.save(build_model("densenet121").state_dict(), src)
    dst = tmp_path / "imported.pt"
    code, out, err = run("import-model", str(src), "--out", str(dst), "--name", "site-model",
                         "--version", "3")
    assert code == 0, err
    assert out.startswith(f"{dst}: site-model 3 (densenet121")
    _model, card = load_checkpoint(dst)
    assert Preprocessing.from_card(card.preprocessing) == Preprocessing(crop=False)
    code, out, err = run("import-model", str(src), "--out", str(tmp_path / "x.pt"), "--name", "m",
                         "--version", "1", "--preprocessing", '{"sharpen": true}')
    assert code == 2 and "unknown preprocessing keys in the model card: sharpen" in err
    assert not (tmp_path / "x.pt").exists()
