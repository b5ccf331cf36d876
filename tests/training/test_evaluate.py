"""training.datasets and training.evaluate on tiny MURA and DICOM sets written here.

The model is an untrained DenseNet-121 at 64 px: the scores mean nothing, the plumbing is
what is tested (files written, study = mean of its views, per-type sections) and the absence of
train/serve skew (a view becomes the identical tensor through the training and daemon paths).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from dicom_io.bodypart import SelectionRules  # noqa: E402
from dicom_io.pixels import DecodeOptions, Preprocessing, to_model_input  # noqa: E402
from dicom_io.prepare import prepare_view  # noqa: E402
from dicom_io.synthetic import StudySpec, make_instance  # noqa: E402
from inference.model import ModelCard, Scorer, build_model, load_checkpoint, save_checkpoint  # noqa: E402
from training.datasets import (  # noqa: E402
    Box,
    DatasetError,
    View,
    detect_layout,
    group_by_study,
    load,
    parse_study_types,
    read_dicom_truth,
    read_mura,
)
from daemon.cli import main
from training import metrics as M  # noqa: E402
from training.evaluate import (  # noqa: E402
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    POINTING_GAME_NO_VIEWS,
    POINTING_GAME_UNAVAILABLE,
    phantoms_of,
    evaluate,
    held_out_metrics,
)

PREP = Preprocessing(size=64)
#: (study type, patient, study folder, label, views); the last one's image files are never written
MURA_STUDIES = [
    ("WRIST", "patient00001", "study1_positive", 1, 3),
    ("WRIST", "patient00002", "study1_negative", 0, 2),
    ("WRIST", "patient00003", "study2_negative", 0, 1),
    ("HAND", "patient00004", "study1_positive", 1, 2),
    ("HAND", "patient00005", "study1_negative", 0, 1),
    ("HAND", "patient00006", "study1_positive", 1, 3),
    ("HAND", "patient00007", "study1_negative", 0, 1),
]
MISSING_STUDY = "MURA-v1.1/valid/XR_HAND/patient00007/study1_negative"


def radiograph(seed: int, h: int = 96, w: int = 80) -> np.ndarray:
    """A displayed 8-bit view: dark background, a bright 'bone', some noise."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 20, np.float32)
    x0 = int(w * (0.3 + 0.2 * rng.random()))
    img[int(h * 0.1):int(h * 0.9), x0:x0 + w // 5] = 200
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mura")
    base = root / "MURA-v1.1"
    paths, labelled = [], []
    for n, (study_type, patient, study, label, views) in enumerate(MURA_STUDIES):
        folder = f"MURA-v1.1/valid/XR_{study_type}/{patient}/{study}"
        labelled.append(f"{folder}/,{label}")
        for v in range(views):
            paths.append(f"{folder}/image{v + 1}.png")
            if folder == MISSING_STUDY:
                continue
            (root / folder).mkdir(parents=True, exist_ok=True)
            grey = radiograph(10 * n + v)
            if n == 0 and v == 0:  # real MURA has some RGB PNGs
                cv2.imwrite(str(root / folder / f"image{v + 1}.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
            else:
                cv2.imwrite(str(root / folder / f"image{v + 1}.png"), grey)
    (base / "valid_image_paths.csv").write_text("\n".join(paths) + "\n")
    (base / "valid_labeled_studies.csv").write_text("\n".join(labelled) + "\n")
    train = root / "MURA-v1.1/train/XR_WRIST/patient09999/study1_positive"
    train.mkdir(parents=True)
    cv2.imwrite(str(train / "image1.png"), radiograph(99))
    (base / "train_image_paths.csv").write_text(
        "MURA-v1.1/train/XR_WRIST/patient09999/study1_positive/image1.png\n")
    (base / "train_labeled_studies.csv").write_text(
        "MURA-v1.1/train/XR_WRIST/patient09999/study1_positive/,1\n")
    return root


#: (key, body part, label, truth study type, split, views)
DICOM_STUDIES = [
    ("s1", "WRIST", 1, "WRIST", "valid", 2),
    ("s2", "HAND", 0, "", "valid", 1),  # no type in truth.csv: the headers say HAND
    ("s3", "WRIST", 0, "WRIST", "valid", 2),
    ("s4", "HAND", 1, "HAND", "train", 1),
]


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicomset")
    folder = root / "dicom"
    rows = ["study_instance_uid,label,study_type,split,boxes"]
    for n, (key, body_part, label, study_type, split, views) in enumerate(DICOM_STUDIES):
        spec = StudySpec(views=views, rows=96, columns=96, body_part=body_part, seed=n,
                         accession_number=f"ACC{n}")
        boxes = []
        for v in range(views):
            ds = make_instance(spec, v)
            where = folder / f"batch{n % 2}" / key
            where.mkdir(parents=True, exist_ok=True)
            ds.save_as(where / (f"{v}.dcm" if v else "IM0"), enforce_file_format=True)  # any name
            if key == "s1" and v == 0:
                boxes.append({"sop_instance_uid": ds.SOPInstanceUID, "finding": "fracture",
                              "x0": 10, "y0": 12, "x1": 30, "y1": 40})
        rows.append(f"{spec.study_instance_uid},{label},{study_type},{split},"
                    + ('"' + json.dumps(boxes).replace('"', '""') + '"' if boxes else ""))
    (folder / "truth.csv").write_text("\n".join(rows) + "\n")
    (folder / "README.txt").write_text("not DICOM: skipped\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("model") / "untrained121.pt"
    save_checkpoint(path, build_model("densenet121"),
                    ModelCard(name="eval-test", version="0.0.1", arch="densenet121", trained=False,
                              description="random weights, plumbing only", preprocessing=PREP.to_card()))
    return path


@pytest.fixture(scope="module")
def mura_result(checkpoint: Path, mura_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval_mura")
    result = evaluate(checkpoint, mura_root, out, allow_untrained=True, device="cpu", workers=1,
                      batch_size=4)
    return result, out


# -- readers -----------------------------------------------------------------------------------


def test_read_mura(mura_root: Path) -> None:
    views = read_mura(mura_root, "valid")
    assert len(views) == sum(s[4] for s in MURA_STUDIES)
    studies = group_by_study(views)
    assert len(studies) == len(MURA_STUDIES)
    first = studies["MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive"]
    assert [v.path.name for v in first] == ["image1.png", "image2.png", "image3.png"]
    assert {(v.label, v.study_type) for v in first} == {(1, "WRIST")}
    assert first[0].path == mura_root / "MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive/image1.png"
    assert not first[0].is_dicom
    # ROOT may be MURA-v1.1 itself; a filter keeps only some types; the train split is its own
    assert read_mura(mura_root / "MURA-v1.1", "valid") == views
    assert {v.study_type for v in read_mura(mura_root, "valid", "hand")} == {"HAND"}
    assert len(read_mura(mura_root, "train")) == 1
    assert detect_layout(mura_root) == "mura"


def test_read_mura_labels_from_folder_names_when_unlisted(tmp_path: Path) -> None:
    base = tmp_path / "MURA-v1.1"
    base.mkdir()
    (base / "valid_image_paths.csv").write_text(
        "MURA-v1.1/valid/XR_ELBOW/patient1/study1_positive/image1.png\n"
        "MURA-v1.1/valid/XR_ELBOW/patient2/study1_negative/image1.png\n")
    (base / "valid_labeled_studies.csv").write_text("MURA-v1.1/valid/XR_ELBOW/patient2/study1_negative/,1\n")
    labels = [v.label for v in read_mura(tmp_path, "valid")]
    assert labels == [1, 1]  # the CSV wins over the folder name where it has the study
    (base / "valid_labeled_studies.csv").write_text("MURA-v1.1/valid/XR_ELBOW/patient2/study1_negative/,yes\n")
    with pytest.raises(DatasetError, match="line 1: label 'yes'"):
        read_mura(tmp_path, "valid")


def test_read_dicom_truth(dicom_root: Path) -> None:
    views = read_dicom_truth(dicom_root, "valid")
    studies = group_by_study(views)
    assert len(studies) == 3 and len(views) == 5  # s4 is in the train split; README.txt skipped
    types = {vs[0].study_type for vs in studies.values()}
    assert types == {"WRIST", "HAND"}  # s2's type from its headers
    boxed = [v for v in views if v.boxes]
    assert len(boxed) == 1 and boxed[0].boxes == (Box(10, 12, 30, 40, "fracture"),)
    assert all(v.is_dicom and v.sop_instance_uid for v in views)
    assert read_dicom_truth(dicom_root / "dicom", "valid") == views
    assert len(read_dicom_truth(dicom_root, None)) == 6
    assert len(read_dicom_truth(dicom_root, "valid", ["HAND"])) == 1
    assert detect_layout(dicom_root) == "dicom"


def test_layout_errors(tmp_path: Path, mura_root: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        detect_layout(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="neither"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetError, match="no MURA-v1.1/test_image_paths.csv"):
        read_mura(mura_root, "test")
    with pytest.raises(ValueError, match="unknown study type 'KNEE'"):
        parse_study_types("WRIST,KNEE")
    assert parse_study_types(" xr_wrist ,HAND,") == ("WRIST", "HAND")
    assert parse_study_types("") is None


# -- no train/serve skew -----------------------------------------------------------------------


def test_dicom_view_gives_the_daemons_tensor(dicom_root: Path) -> None:
    from daemon.config import load_config
    from daemon.worker import build_pool

    opts = DecodeOptions()
    for view in read_dicom_truth(dicom_root, None):
        ours = load(view, PREP, opts)
        assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
        daemon = prepare_view(view.path, PREP, opts, SelectionRules())
        assert np.array_equal(ours, daemon.tensor[0])
    # and the pool exactly as the daemon builds it from its (default) config
    with build_pool(load_config(None), PREP) as pool:
        served = pool.map([view.path])[0]  # in a worker process, as the daemon serves it
    assert np.array_equal(load(view, PREP), served.tensor[0])


def test_png_view_gives_to_model_input_of_opencv_grey(mura_root: Path) -> None:
    views = read_mura(mura_root, "valid")
    for view in views[:4]:  # the first is an RGB PNG
        expected = to_model_input(cv2.imread(str(view.path), cv2.IMREAD_GRAYSCALE), PREP)
        assert np.array_equal(load(view, PREP), expected)


def test_load_says_why_a_view_cannot_be_used(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load(View(tmp_path / "gone.png", "s", 0, None), PREP)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(DatasetError, match="junk.dcm"):
        load(View(junk, "s", 0, None), PREP)


# -- evaluate ----------------------------------------------------------------------------------


def test_evaluate_writes_everything(mura_result: tuple[dict, Path]) -> None:
    result, out = mura_result
    for name in ("metrics.json", "report.md", "roc.png", "reliability.png"):
        assert (out / name).is_file(), name
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["overall"] == json.loads(json.dumps(result["overall"]))
    report = (out / "report.md").read_text()
    assert "![ROC curves](roc.png)" in report and "![Reliability diagram](reliability.png)" in report
    assert "UNTRAINED" in report and "never trained" in report
    assert POINTING_GAME_NO_VIEWS in report


def test_evaluate_counts_and_sections(mura_result: tuple[dict, Path], checkpoint: Path) -> None:
    result, _ = mura_result
    assert result["model"]["preprocessing"]["size"] == 64  # from the card
    card = load_checkpoint(checkpoint, allow_untrained=True)[1]
    if getattr(card, "threshold", None) is None:  # cards before radtriage-checkpoint/2
        assert result["threshold"] == {"value": 0.5, "source": "default"}
    else:
        assert result["threshold"] == {"value": card.threshold, "source": "model card"}
    data = result["data"]
    assert (data["studies"], data["studies_not_analysed"]) == (6, 1)
    assert (data["views"], data["views_not_analysed"]) == (13, 1)
    assert list(result["by_study_type"]) == ["HAND", "WRIST"]  # MURA's order
    assert result["overall"]["n"] == 6 and result["overall"]["positives"] == 3
    assert result["by_study_type"]["HAND"]["n"] == 3 and result["by_study_type"]["WRIST"]["n"] == 3
    assert sum(sum(map(sum, m["confusion_matrix"])) for m in result["by_study_type"].values()) == 6
    for key in ("accuracy", "kappa", "auroc", "sensitivity", "specificity", "ece", "reliability",
                "confusion_matrix", "at_target_sensitivity", "max_kappa"):
        assert key in result["overall"]
    missing = [s for s in result["studies"] if s["probability"] is None]
    assert [s["study"] for s in missing] == [MISSING_STUDY]
    assert "cannot read the image: no such file" in missing[0]["views"][0]["error"]
    assert result["pointing_game"]["available"] is False


def test_study_probability_is_the_mean_of_directly_scored_views(
        mura_result: tuple[dict, Path], mura_root: Path, checkpoint: Path) -> None:
    result, _ = mura_result
    model, card = load_checkpoint(checkpoint, allow_untrained=True)
    scorer = Scorer(model, card, device=torch.device("cpu"), batch_size=16)
    by_key = group_by_study(read_mura(mura_root, "valid"))
    for study in result["studies"]:
        if study["probability"] is None:
            continue
        direct = scorer.score([load(v, PREP) for v in by_key[study["study"]]])
        assert [v["probability"] for v in study["views"]] == pytest.approx(direct, abs=1e-5)
        assert study["probability"] == pytest.approx(float(np.mean(direct)), abs=1e-5)
        assert study["probability"] == pytest.approx(
            float(np.mean([v["probability"] for v in study["views"]])), abs=1e-12)


def test_evaluate_dicom_html_in_worker_processes(checkpoint: Path, dicom_root: Path, tmp_path: Path) -> None:
    result = evaluate(checkpoint, dicom_root, tmp_path, allow_untrained=True, device="cpu",
                      workers=2, fmt="html", threshold=0.25, target_sensitivity=0.5)
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert '<img src="roc.png"' in (tmp_path / "report.html").read_text()
    assert result["data"]["layout"] == "dicom"
    assert result["data"]["studies"] == 3 and result["data"]["views_not_analysed"] == 0
    assert result["threshold"] == {"value": 0.25, "source": "argument"}
    assert result["overall"]["at_target_sensitivity"]["target"] == 0.5
    pg = result["pointing_game"]
    assert pg["method"] == "cam" and pg["views_with_boxes"] == 1
    assert pg["available"] and pg["views"] == 1 and pg["hit_rate"] in (0.0, 1.0)
    assert "Pointing game" in (tmp_path / "report.html").read_text()
    assert set(result["by_study_type"]) == {"HAND", "WRIST"}
    # identical scores to the in-thread path, with or without heatmaps
    inline = evaluate(checkpoint, dicom_root, tmp_path / "inline", allow_untrained=True,
                      device="cpu", workers=1, threshold=0.25, heatmap=None)
    assert inline["pointing_game"]["available"] is False
    assert inline["pointing_game"]["reason"] == POINTING_GAME_UNAVAILABLE
    assert [s["probability"] for s in inline["studies"]] == pytest.approx(
        [s["probability"] for s in result["studies"]], abs=1e-6)


def test_threshold_default_order() -> None:
    from types import SimpleNamespace

    from training.evaluate import _card_threshold

    assert _card_threshold(SimpleNamespace(threshold=0.3)) == 0.3
    assert _card_threshold(SimpleNamespace(threshold=None)) is None
    assert _card_threshold(object()) is None


# -- command line ------------------------------------------------------------------------------


def _cli(*argv: str) -> tuple[int, str, str]:
    """``radtriage evaluate ARGV``, through the command line's own parser."""
    out, err = io.StringIO(), io.StringIO()
    code = main(["evaluate", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_success(checkpoint: Path, mura_root: Path, tmp_path: Path) -> None:
    code, out, err = _cli(str(checkpoint), str(mura_root), "--out", str(tmp_path), "--study-types",
                          "WRIST", "--workers", "1", "--device", "cpu", "--allow-untrained",
                          "--format", "html")
    assert code == EXIT_OK, err
    assert out.count("\n") == 1 and out.startswith("3 studies (0 not analysed)")
    assert (tmp_path / "report.html").is_file()


@pytest.mark.parametrize("case, expected, message", [
    ("missing folder", EXIT_USAGE, "no such folder"),
    ("no studies", EXIT_USAGE, "no study found in split 'valid' of type ELBOW"),
    ("unknown type", EXIT_USAGE, "unknown study type 'KNEE'"),
    ("no layout", EXIT_USAGE, "neither MURA-v1.1/valid_image_paths.csv nor dicom/truth.csv"),
    ("bad checkpoint", EXIT_FAILURE, "not a readable torch checkpoint"),
    ("untrained", EXIT_FAILURE, "never trained"),
])
def test_cli_errors(case: str, expected: int, message: str, checkpoint: Path, mura_root: Path,
                    tmp_path: Path) -> None:
    ckpt, root, extra = str(checkpoint), str(mura_root), ["--allow-untrained"]
    if case == "missing folder":
        root = str(tmp_path / "nowhere")
    elif case == "no studies":
        extra += ["--study-types", "ELBOW"]
    elif case == "unknown type":
        extra += ["--study-types", "KNEE"]
    elif case == "no layout":
        root = str(tmp_path)
    elif case == "bad checkpoint":
        (tmp_path / "bad.pt").write_bytes(b"garbage")
        ckpt = str(tmp_path / "bad.pt")
    elif case == "untrained":
        extra = []
    code, out, err = _cli(ckpt, root, "--out", str(tmp_path / "out"), "--workers", "1",
                          "--device", "cpu", *extra)
    assert code == expected
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("radtriage: cannot evaluate: ") and message in err


# -- an evaluation on a card -------------------------------------------------------------------


def test_an_evaluation_goes_on_the_card_as_held_out(mura_result: tuple[dict, Path], checkpoint: Path,
                                                    tmp_path: Path) -> None:
    result, out = mura_result
    assert result["data"]["phantoms"] is None  # drawn by the test, not by radtriage phantoms
    held = held_out_metrics(result)
    assert held["auroc"] == result["overall"]["auroc"] and held["kappa"] == result["overall"]["kappa"]
    assert held["studies"] == result["data"]["studies"] and held["set"] == f"{result['data']['root']}, split valid"
    assert set(held["by_study_type"]) == set(result["by_study_type"])
    # what the dashboard's Model page plots (issue 18): the ROC curve's corners and the bins
    assert held["reliability"] == result["overall"]["reliability"]
    roc = held["roc"]
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    full = M.roc([s["label"] for s in result["studies"] if s["probability"] is not None],
                 [s["probability"] for s in result["studies"] if s["probability"] is not None])
    assert set(zip(roc["fpr"], roc["tpr"])) <= {(round(x, 5), round(y, 5))
                                                for x, y in zip(full["fpr"], full["tpr"])}
    assert len(roc["fpr"]) <= len(full["fpr"])
    code = main(["import-model", str(checkpoint), "--out", str(tmp_path / "stamped.pt"), "--name", "eval-test",
                 "--version", "0.0.2", "--evaluation", str(out / "metrics.json")],
                out=io.StringIO(), err=io.StringIO())
    assert code == EXIT_OK
    card = load_checkpoint(tmp_path / "stamped.pt", allow_untrained=True)[1]
    assert card.metrics["held_out"] == json.loads(json.dumps(held))
    err = io.StringIO()
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    assert main(["import-model", str(checkpoint), "--out", str(tmp_path / "x.pt"), "--name", "n", "--version",
                 "1", "--evaluation", str(tmp_path / "other.json")], out=io.StringIO(), err=err) == EXIT_USAGE
    assert "other.json: not a radtriage evaluation" in err.getvalue() and not (tmp_path / "x.pt").exists()


def test_phantom_data_are_named_by_their_seed(tmp_path: Path) -> None:
    from training.phantoms import VERSION, generate

    generate(tmp_path, studies=2, seed=2, formats=("mura",), size=96, workers=1)
    result = {"format": "radtriage-evaluation/1", "overall": {k: 0.9 for k in
                                                             ("auroc", "kappa", "accuracy", "sensitivity",
                                                              "specificity", "ece")},
              "data": {"root": str(tmp_path), "split": "valid", "study_types": None, "studies": 400,
                       "views": 950, "phantoms": phantoms_of(tmp_path)},
              "threshold": {"value": 0.5}, "model": {"name": "m", "version": "1"}, "by_study_type": {}}
    held = held_out_metrics(result)
    assert held["set"] == f"radtriage phantoms --seed 2 (2 studies, generator {VERSION}), split valid"


def test_pointing_game_counts_peaks_inside_true_boxes() -> None:
    from training.datasets import Box, View
    from training.evaluate import pointing_game

    def view(*boxes: Box) -> View:
        return View(path=Path("x.dcm"), study_key="s", label=1, study_type="WRIST", boxes=boxes)

    views = [view(Box(10, 10, 19, 19, "fracture")), view(Box(0, 0, 4, 4, "lytic")),
             view(Box(50, 50, 60, 60, "fracture"), Box(0, 0, 9, 9, "hardware")), view(), view(Box(0, 0, 9, 9))]
    labels = [1, 1, 1, 1, 0]
    peaks = [(19.5, 10.0), (5.0, 1.0), (5.0, 5.0), (1.0, 1.0), (1.0, 1.0)]
    pg = pointing_game(views, labels, peaks)
    # view 1 hits (edges inclusive), view 2 misses (x 5 is past 4), view 3 hits its hardware box;
    # view 4 has no box and view 5 is of a normal study: neither counts
    assert pg["available"] and pg["views"] == 3 and pg["hit_rate"] == pytest.approx(2 / 3)
    assert pg["by_finding"] == {"fracture": {"hit_rate": 0.5, "views": 2},
                                "hardware": {"hit_rate": 1.0, "views": 1},
                                "lytic": {"hit_rate": 0.0, "views": 1}}
    assert pointing_game(views, labels, [None] * 5)["available"] is False
