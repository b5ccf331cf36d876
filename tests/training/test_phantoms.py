"""Tests for training.phantoms: determinism, label/box consistency, both output layouts, the CLI.

Small on purpose: 160-256 pixel views and a handful of studies, generated once per module.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from dicom_io.bodypart import study_type_of
from dicom_io.pixels import prepare_file
from training import phantoms as ph

SIZE = 160
STUDIES = 8
SEED = 11

MURA_IMAGE = re.compile(r"^MURA-v1\.1/(train|valid)/XR_([A-Z]+)/patient(\d{5})/study(\d+)_(positive|negative)/"
                        r"image(\d+)\.png$")
MURA_STUDY = re.compile(r"^(MURA-v1\.1/(train|valid)/XR_([A-Z]+)/patient\d{5}/study\d+_(positive|negative)/),([01])$")


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms") / "out"
    summary = ph.generate(out, studies=STUDIES, seed=SEED, size=SIZE)
    assert summary.studies == STUDIES and summary.formats == ("mura", "dicom")
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes(generated: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    ph.generate(again, studies=STUDIES, seed=SEED, size=SIZE)
    first, second = digest(generated), digest(again)
    assert len(first) > STUDIES * 2
    assert first == second


def test_a_different_seed_gives_different_files(generated: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ph.generate(other, studies=STUDIES, seed=SEED + 1, size=SIZE)
    a, b = digest(generated), digest(other)
    pngs_a = {h for p, h in a.items() if p.endswith(".png")}
    pngs_b = {h for p, h in b.items() if p.endswith(".png")}
    assert pngs_a and pngs_b and not pngs_a & pngs_b
    assert not {p for p in a if p.endswith(".dcm")} & {p for p in b if p.endswith(".dcm")}  # other UIDs


def test_worker_processes_write_the_same_files(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    ph.generate(one, studies=3, seed=5, size=128, workers=1)
    ph.generate(two, studies=3, seed=5, size=128, workers=2)
    assert digest(one) == digest(two)


def test_render_view_is_a_pure_function_of_the_generator_state() -> None:
    a, boxes_a = ph.render_view("WRIST", np.random.default_rng(3), ["fracture"], 192)
    b, boxes_b = ph.render_view("WRIST", np.random.default_rng(3), ["fracture"], 192)
    assert np.array_equal(a, b) and boxes_a == boxes_b
    c = ph.radiograph(a, np.random.default_rng(4), boxes=boxes_a, marker="L", text="PA")
    d = ph.radiograph(b, np.random.default_rng(4), boxes=boxes_b, marker="L", text="PA")
    assert np.array_equal(c, d)


# -- rendering -------------------------------------------------------------------------------------


@pytest.mark.parametrize("study_type", ph.STUDY_TYPES)
def test_every_study_type_and_view_renders(study_type: str) -> None:
    for i, view in enumerate(ph.VIEWS[study_type]):
        image, boxes = ph.render_view(study_type, np.random.default_rng(i), [], 128, view=view)
        assert image.dtype == np.float32 and max(image.shape) == 128 and min(image.shape) >= 0.45 * 128
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert boxes == []
        assert float(image.max()) - float(np.percentile(image, 10)) > 0.1, view  # bone on a background
        shown = ph.radiograph(image, np.random.default_rng(i), marker="R", text=view)
        assert shown.shape == image.shape and shown.dtype == np.float32
        assert 0.0 <= float(shown.min()) and float(shown.max()) <= 1.0


CASES = [(t, k) for t in ph.STUDY_TYPES for k in ph.kinds_for(t)]


@pytest.mark.parametrize(("study_type", "kind"), CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_a_finding_has_a_box_where_the_image_changed(study_type: str, kind: str) -> None:
    """Rendered from the same generator state with and without the finding: the same anatomy,
    and the box is where the pixels differ."""
    for seed in range(12):
        with_, boxes = ph.render_view(study_type, np.random.default_rng(seed), [kind], 192)
        without, none = ph.render_view(study_type, np.random.default_rng(seed), [], 192)
        assert none == [] and with_.shape == without.shape
        if boxes:
            break
    else:
        pytest.fail(f"no {kind} seen in 12 {study_type} views")
    H, W = with_.shape
    diff = np.abs(with_ - without)
    for b in boxes:
        assert b.finding == kind
        assert 0 <= b.x0 < b.x1 <= W - 1 and 0 <= b.y0 < b.y1 <= H - 1
        inside = diff[b.y0:b.y1 + 1, b.x0:b.x1 + 1]
        assert float(inside.max()) > 0.1, "the finding does not show inside its box"
        assert float(inside.mean()) > 0.005
    if kind in ("lytic", "sclerotic", "hardware"):   # nothing moved: the change stays in the box
        outside = diff.copy()
        for b in boxes:
            outside[max(b.y0 - 2, 0):b.y1 + 3, max(b.x0 - 2, 0):b.x1 + 3] = 0
        assert float(outside.max()) < 0.05


def test_findings_given_as_objects_are_placed_where_they_say() -> None:
    subject = ph.Subject(side="L", finger=3)
    finding = ph.Finding("hardware", "radius", 0.5, "plate", (("length", 0.3), ("dir", 0.0),
                                                              ("screws", 4.0), ("skip", 0.0)))
    image, boxes = ph.render_view("FOREARM", np.random.default_rng(0), [finding], 256, view="AP",
                                  subject=subject)
    assert [b.finding for b in boxes] == ["hardware"]
    b = boxes[0]
    assert float(image[b.y0:b.y1 + 1, b.x0:b.x1 + 1].max()) > 0.95   # metal is white


def test_unknown_names_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="study type"):
        ph.render_view("KNEE", rng)
    with pytest.raises(ValueError, match="no view"):
        ph.render_view("WRIST", rng, view="Y")
    with pytest.raises(ValueError, match="cannot show"):
        ph.draw_finding("dislocation", "FOREARM", ph.Subject(), rng)
    with pytest.raises(ValueError, match="unknown finding"):
        ph.render_view("WRIST", rng, ["fracturr"])


def test_collimation_marker_and_text_stay_off_the_boxes() -> None:
    boxes = [ph.Box("fracture", 2, 2, 150, 40), ph.Box("lytic", 100, 150, 155, 195)]
    covered = 0
    for seed in range(40):
        alpha, level = ph.overlays((200, 160), np.random.default_rng(seed), boxes=boxes, marker="R",
                                   text="SYN 0001 PA")
        assert alpha.shape == level.shape == (200, 160)
        for b in boxes:
            assert float(alpha[max(b.y0 - 2, 0):b.y1 + 3, max(b.x0 - 2, 0):b.x1 + 3].max()) == 0.0
        covered += int(alpha.max() > 0.5)
    assert covered > 20   # there is a marker, text or collimation most of the time


# -- studies ---------------------------------------------------------------------------------------


def test_the_plan_is_balanced_and_split_by_patient() -> None:
    plans = ph.plan_studies(40, 3, abnormal_fraction=0.3, valid_fraction=0.25)
    assert plans == ph.plan_studies(40, 3, abnormal_fraction=0.3, valid_fraction=0.25)
    assert sum(p.label for p in plans) == 12
    assert set(Counter(p.study_type for p in plans).values()) <= {5, 6}
    split_of: dict[int, set[str]] = {}
    for p in plans:
        split_of.setdefault(p.patient, set()).add(p.split)
        assert 1 <= len(p.views) <= 4 and all(v in ph.VIEWS[p.study_type] for v in p.views)
        assert bool(p.findings) == bool(p.label)
    assert all(len(s) == 1 for s in split_of.values())
    n_valid = sum("valid" in s for s in split_of.values())
    assert n_valid == round(len(split_of) * 0.25)
    assert max(p.patient for p in plans if p.split == "train") < min(p.patient for p in plans if p.split == "valid")
    for block in range(0, 40, 4):
        four = plans[block:block + 4]
        assert {p.modality for p in four} == {"CR", "DX"}
        assert {p.photometric for p in four} == {"MONOCHROME1", "MONOCHROME2"}
        assert {p.bits_stored for p in four} == {10, 12, 14, 16}


def test_study_types_can_be_chosen() -> None:
    plans = ph.plan_studies(6, 1, study_types="wrist, XR_HAND")
    assert {p.study_type for p in plans} == {"WRIST", "HAND"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(studies=0), "studies"),
    (dict(seed=-1), "seed"),
    (dict(abnormal_fraction=1.5), "abnormal_fraction"),
    (dict(valid_fraction=-0.1), "valid_fraction"),
    (dict(study_types=["KNEE"]), "KNEE"),
    (dict(size=32), "size"),
    (dict(formats=("png",)), "formats"),
])
def test_generate_refuses_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(studies=2, seed=1, size=128) | kwargs
    with pytest.raises(ValueError, match=message):
        ph.generate(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_generate_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        ph.generate(tmp_path, studies=1, seed=1, size=128)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# -- what was written: labels and boxes --------------------------------------------------------------


def test_positive_studies_have_boxes_and_negative_ones_none(generated: Path) -> None:
    truth = read_csv(generated / "dicom" / "truth.csv")
    index = read_csv(generated / "studies.csv")
    assert len(truth) == len(index) == STUDIES
    assert {r["label"] for r in truth} == {"0", "1"}
    for row in truth:
        boxes = json.loads(row["boxes"])
        assert (len(boxes) > 0) == (row["label"] == "1"), row
    mura_boxes = read_csv(generated / "mura_boxes.csv")
    positive = {r["mura_study"] for r in index if r["label"] == "1"}
    assert {r["image_path"].rsplit("/", 1)[0] + "/" for r in mura_boxes} == positive
    for r in index:
        findings = json.loads(r["findings"])
        assert (len(findings) > 0) == (r["label"] == "1")
        assert all(f["kind"] in ph.FINDINGS for f in findings)


def test_mura_layout_and_csvs(generated: Path) -> None:
    base = generated / "MURA-v1.1"
    listed = []
    for split in ph.SPLITS:
        lines = (base / f"{split}_image_paths.csv").read_text(encoding="utf-8").splitlines()
        for line in lines:
            m = MURA_IMAGE.match(line)
            assert m, line
            assert m.group(1) == split and m.group(2) in ph.STUDY_TYPES
            assert (generated / line).is_file()
            listed.append(line)
        studies = (base / f"{split}_labeled_studies.csv").read_text(encoding="utf-8").splitlines()
        for line in studies:
            m = MURA_STUDY.match(line)
            assert m, line
            assert m.group(5) == ("1" if m.group(4) == "positive" else "0")
            assert (generated / m.group(1)).is_dir()
        assert {line.rsplit("/", 1)[0] + "/" for line in lines} == {s.split(",")[0] for s in studies}
    on_disk = sorted(str(p.relative_to(generated)) for p in base.rglob("*.png"))
    assert sorted(listed) == on_disk
    for rel in on_disk[:6]:
        grey = cv2.imread(str(generated / rel), cv2.IMREAD_UNCHANGED)
        assert grey.dtype == np.uint8 and grey.ndim == 2 and max(grey.shape) == SIZE
    for row in read_csv(generated / "mura_boxes.csv"):
        h, w = cv2.imread(str(generated / row["image_path"]), cv2.IMREAD_GRAYSCALE).shape
        assert 0 <= int(row["x0"]) < int(row["x1"]) < w and 0 <= int(row["y0"]) < int(row["y1"]) < h


def test_dicom_studies_read_back_through_the_daemons_pipeline(generated: Path) -> None:
    root = generated / "dicom"
    truth = {r["study_instance_uid"]: r for r in read_csv(root / "truth.csv")}
    assert {p.name for p in root.iterdir() if p.is_dir()} == set(truth)
    seen: Counter = Counter()
    sops: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        study, series = path.parent.parent.name, path.parent.name
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (study, series, path.stem)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}[ds.Modality]
        assert re.fullmatch(r"PHANTOM\^\d{4,}", str(ds.PatientName))
        assert study_type_of(ds) == truth[study]["study_type"], (ds.BodyPartExamined, ds.StudyDescription)
        assert ds.BitsStored in (10, 12, 14, 16) and ds.HighBit == ds.BitsStored - 1
        assert int(ds.pixel_array.max()) < 1 << ds.BitsStored
        assert ds.ImagerPixelSpacing and ds.BurnedInAnnotation == "YES"
        x = prepare_file(path)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()
        seen["modality", ds.Modality] += 1
        seen["photometric", ds.PhotometricInterpretation] += 1
        seen["bits", int(ds.BitsStored)] += 1
        seen["syntax", str(ds.file_meta.TransferSyntaxUID)] += 1
        sops[ds.SOPInstanceUID] = (int(ds.Rows), int(ds.Columns))
    assert {v for k, v in seen if k == "modality"} == {"CR", "DX"}
    assert {v for k, v in seen if k == "photometric"} == {"MONOCHROME1", "MONOCHROME2"}
    assert {v for k, v in seen if k == "bits"} == {10, 12, 14, 16}
    assert {v for k, v in seen if k == "syntax"} == set(ph.TRANSFER_SYNTAXES)
    for row in truth.values():
        for box in json.loads(row["boxes"]):
            rows, cols = sops[box["sop_instance_uid"]]   # the box's instance exists
            assert 0 <= box["x0"] < box["x1"] < cols and 0 <= box["y0"] < box["y1"] < rows
            assert box["finding"] in ph.FINDINGS


def test_dicom_pixels_are_the_mura_pixels(generated: Path) -> None:
    """Both layouts hold the same views: the DICOM stored values, windowed, give the PNG."""
    index = read_csv(generated / "studies.csv")
    row = next(r for r in index if r["label"] == "1")
    files = sorted((generated / "dicom" / row["study_instance_uid"]).rglob("*.dcm"),
                   key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    for n, path in enumerate(files, 1):
        ds = pydicom.dcmread(path)
        png = cv2.imread(str(generated / row["mura_study"] / f"image{n}.png"), cv2.IMREAD_GRAYSCALE)
        assert png.shape == ds.pixel_array.shape
        values = ds.pixel_array.astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            values = (1 << ds.BitsStored) - 1 - values
        corr = np.corrcoef(values.ravel(), png.astype(float).ravel())[0, 1]
        assert corr > 0.999


def test_the_training_readers_accept_both_layouts(generated: Path) -> None:
    from training.datasets import read_dicom_truth, read_mura

    mura = read_mura(generated, "train") + read_mura(generated, "valid")
    assert len(mura) == sum(1 for _ in (generated / "MURA-v1.1").rglob("*.png"))
    dicom = read_dicom_truth(generated, None)
    assert len(dicom) == len(mura)
    assert sum(len(v.boxes) for v in dicom) == len(read_csv(generated / "mura_boxes.csv"))
    assert {v.label for v in dicom} == {0, 1}


def test_phantoms_json_records_how_they_were_made(generated: Path) -> None:
    meta = json.loads((generated / "phantoms.json").read_text(encoding="utf-8"))
    assert meta["version"] == ph.VERSION and meta["seed"] == SEED
    assert meta["arguments"] == {"studies": STUDIES, "seed": SEED, "abnormal_fraction": 0.5,
                                 "study_types": list(ph.STUDY_TYPES), "valid_fraction": 0.2,
                                 "formats": ["mura", "dicom"], "size": SIZE}
    assert meta["counts"]["studies"] == STUDIES
    assert meta["counts"]["views"] == sum(1 for _ in (generated / "dicom").rglob("*.dcm"))


# -- command line ------------------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    parser = ph.add_arguments(argparse.ArgumentParser(prog="radtriage phantoms"))
    out, err = io.StringIO(), io.StringIO()
    code = ph.phantoms_cli(parser.parse_args(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_one_format(tmp_path: Path) -> None:
    code, out, err = run_cli(str(tmp_path / "o"), "--studies", "2", "--seed", "4", "--format", "mura",
                             "--size", "128", "--study-types", "HAND,FINGER", "--abnormal-fraction", "1",
                             "--workers", "1")
    assert code == 0, err
    assert "2 studies (2 abnormal" in out
    assert (tmp_path / "o" / "MURA-v1.1" / "train_image_paths.csv").is_file()
    assert not (tmp_path / "o" / "dicom").exists()


@pytest.mark.parametrize("argv, message", [
    (["--study-types", "KNEE"], "KNEE"),
    (["--valid-fraction", "2"], "valid_fraction"),
])
def test_cli_reports_bad_arguments(tmp_path: Path, argv: list[str], message: str) -> None:
    code, _, err = run_cli(str(tmp_path / "o"), "--studies", "1", "--seed", "1", *argv)
    assert code == 2 and message in err


def test_contact_sheet(tmp_path: Path) -> None:
    image, boxes = ph.render_view("HAND", np.random.default_rng(2), ["hardware"], 128)
    sheet = ph.contact_sheet([(image, boxes, "HAND"), (image, [], "again")], columns=2, cell=100)
    assert sheet.shape == (100, 200, 3) and sheet.dtype == np.uint8
