"""Tests for dicom_io.outputs: the summary image, its Secondary Capture, the KOS and the GSPS.

The study is a phantom (training.phantoms): wrist views with a lytic lesion and its ground-truth
box, turned into CR/DX instances by dicom_io.synthetic and shown by dicom_io.pixels.to_display.
A fake heatmap peaks on the lesion, so the test can check that the overlay lands on it. The
summary images are also written to ``test-artifacts/`` (gitignored) for a person to look at.

Text in the images is checked without OCR: the ink of one colour in one line (or in the verdict
box) is compared with the expected string drawn by OpenCV and resized onto it.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import subprocess
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.outputs import (
    NOT_FOR_DIAGNOSTIC_USE,
    SummaryView,
    build_gsps,
    build_kos,
    build_summary_sc,
    gsps_groups,
    kos_description,
    render_summary,
    render_view_overlay,
    verdict,
)
from dicom_io.pixels import to_display
from dicom_io.sr import TriageReport, ViewScore, build_triage_sr
from dicom_io.synthetic import StudySpec, make_instance, make_study
from training.phantoms import render_view

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DEMO = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7)
FONT = cv2.FONT_HERSHEY_DUPLEX

# colours the renderer promises (RGB): verdict boxes, warning text, peak box
RED, GREEN, AMBER, YELLOW, CYAN, WHITE = (
    (200, 0, 0), (0, 110, 0), (255, 176, 0), (255, 230, 0), (0, 255, 255), (255, 255, 255))


# --------------------------------------------------------------------------
# the phantom study
# --------------------------------------------------------------------------


@dataclasses.dataclass
class PhantomView:
    ds: Dataset
    display: np.ndarray
    box: tuple[int, int, int, int] | None  # the lesion, (x0, y0, x1, y1), x1/y1 exclusive


def phantom_study(photometric: str = "MONOCHROME2", modality: str = "CR",
                  lesions: tuple[bool, ...] = (True, True, False), seed: int = 0,
                  laterality: str = "L") -> list[PhantomView]:
    """Wrist views (each its own size) of one study; a lesion where ``lesions`` says so."""
    study_uid, series_uid = generate_uid(), generate_uid()
    out = []
    for v, lesion in enumerate(lesions):
        for attempt in range(50):  # a drawn lesion may show in no box: draw again
            rng = np.random.default_rng([seed, v, attempt])
            image, boxes = render_view("WRIST", rng, findings=("lytic",) if lesion else (),
                                       size=256)
            if not lesion or boxes:
                break
        rows, columns = image.shape
        spec = StudySpec(rows=rows, columns=columns, bits_stored=12, modality=modality,
                         photometric=photometric, study_instance_uid=study_uid,
                         series_instance_uid=series_uid)
        ds = make_instance(spec, v)
        values = np.round(image.astype(np.float64) * 4095).astype(np.uint16)
        if photometric == "MONOCHROME1":
            values = (4095 - values).astype(np.uint16)
        ds.PixelData = values.tobytes()
        if modality == "CR":
            ds.Laterality = laterality
        else:
            ds.ImageLaterality = laterality
        display = to_display(ds)
        assert display.shape == image.shape  # below the working size: not rescaled
        box = None
        if lesion:
            b = boxes[0]
            box = (b.x0, b.y0, b.x1 + 1, b.y1 + 1)  # phantom boxes are edge-inclusive
        out.append(PhantomView(ds, display, box))
    return out


def fake_heatmap(shape: tuple[int, int], box: tuple[int, int, int, int] | None) -> np.ndarray:
    """A CAM-like blob on the box (all low without one)."""
    if box is None:
        return np.full(shape, 0.2, np.float32)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    sigma = max(x1 - x0, y1 - y0) / 2.0
    blob = np.exp(-((xx - (x0 + x1) / 2) ** 2 + (yy - (y0 + y1) / 2) ** 2) / (2 * sigma**2))
    return blob.astype(np.float32)


def make_report(views: list[PhantomView], probs: tuple[float | None, ...], *,
                notice: str | None = DEMO, priority: str = "HIGH",
                threshold: float = 0.5) -> TriageReport:
    scores = tuple(
        ViewScore(str(v.ds.SOPInstanceUID), p, None if p is not None else "decode failed",
                  box=v.box if p is not None else None)
        for v, p in zip(views, probs)
    )
    scored = [p for p in probs if p is not None]
    probability = sum(scored) / len(scored) if scored else None
    return TriageReport(
        probability=probability,
        abnormal=None if probability is None else probability >= threshold,
        priority=priority,
        threshold=threshold,
        algorithm_name="radtriage-demo",
        algorithm_version="1.0",
        views=scores,
        reason=None if scored else "no view could be decoded",
        notice=notice,
        study_type="WRIST",
    )


def summary_views(views: list[PhantomView], probs, *, heat: bool = True) -> list[SummaryView]:
    out = []
    for n, (v, p) in enumerate(zip(views, probs), start=1):
        out.append(SummaryView(
            display=v.display,
            heatmap=fake_heatmap(v.display.shape, v.box) if heat and p is not None else None,
            probability=p,
            box=v.box if p is not None else None,
            label=f"view {n}  {v.ds.Modality}  WRIST",
            error=None if p is not None else "decode failed",
        ))
    return out


@pytest.fixture
def study() -> list[PhantomView]:
    return phantom_study()


PROBS = (0.91, 0.74, 0.12)


def write_png(name: str, rgb: np.ndarray) -> Path:
    """Write an artefact (RGB) to test-artifacts/ and check that it reads back the same."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(back, rgb)
    return path


# --------------------------------------------------------------------------
# reading images without OCR
# --------------------------------------------------------------------------


def ink(img: np.ndarray, colour, tol: int = 60) -> np.ndarray:
    return np.abs(img.astype(np.int32) - np.array(colour)).max(axis=2) <= tol


def bands(mask: np.ndarray, gap: int = 2) -> list[tuple[int, int]]:
    """Row ranges [a, b) holding ink, separated by more than ``gap`` empty rows."""
    out: list[list[int]] = []
    for r in np.flatnonzero(mask.any(axis=1)):
        if out and r - out[-1][1] <= gap:
            out[-1][1] = r
        else:
            out.append([r, r])
    return [(a, b + 1) for a, b in out]


def segments(mask: np.ndarray, gap: int = 30) -> list[np.ndarray]:
    """The lines of ``mask``, each split where more than ``gap`` columns are empty (the texts
    of tiles side by side)."""
    out = []
    for a, b in bands(mask):
        line = mask[a:b]
        cols = np.flatnonzero(line.any(axis=0))
        start = prev = cols[0]
        for c in [*cols[1:], None]:
            if c is None or c - prev > gap:
                out.append(line[:, start: prev + 1])
                start = c
            prev = c if c is not None else prev
    return out


def crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def text_similarity(mask: np.ndarray, text: str) -> float:
    """Correlation between the ink in ``mask`` and ``text`` drawn by OpenCV onto its extent."""
    target = crop(mask).astype(np.float32)
    h, w = target.shape
    if h < 4 or w < 4:
        return 0.0
    (tw, th), base = cv2.getTextSize(text, FONT, 4, 8)
    canvas = np.zeros((th + base + 40, tw + 40), np.uint8)
    cv2.putText(canvas, text, (20, 20 + th), FONT, 4, 255, 8, cv2.LINE_AA)
    template = crop(canvas > 127).astype(np.uint8) * 255
    template = cv2.resize(template, (w, h), interpolation=cv2.INTER_AREA) > 127
    a = cv2.GaussianBlur(target, (5, 5), 0).ravel()
    b = cv2.GaussianBlur(template.astype(np.float32), (5, 5), 0).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def header_of(img: np.ndarray, rule_colour) -> np.ndarray:
    """The header band: down to the first full-width rule of the verdict's colour."""
    full = ink(img, rule_colour, 30).all(axis=1)
    return img[: int(np.flatnonzero(full)[0])]


def below_header(img: np.ndarray, rule_colour) -> np.ndarray:
    """What is below the header's rule: the views."""
    full = ink(img, rule_colour, 30).all(axis=1)
    first = int(np.flatnonzero(full)[0])
    end = first + int(np.argmin(full[first:]))
    return img[end:]


def verdict_box(header: np.ndarray, colour) -> np.ndarray:
    """The verdict box (filled with ``colour``), cropped."""
    ys, xs = np.nonzero(ink(header, colour, 12))
    return header[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def without_verdict_box(header: np.ndarray, colour) -> np.ndarray:
    """The header with its verdict box blacked out (to read what is beside it)."""
    ys, xs = np.nonzero(ink(header, colour, 12))
    out = header.copy()
    out[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = 0
    return out


def lines_of(header: np.ndarray, colour, tol: int = 60) -> list[np.ndarray]:
    mask = ink(header, colour, tol)
    return [mask[a:b] for a, b in bands(mask)]


def best_line(header: np.ndarray, colour, text: str) -> float:
    return max((text_similarity(m, text) for m in lines_of(header, colour)), default=0.0)


def mapped(box, f: float, x: int, y: int) -> tuple[float, float, float, float]:
    """A box in display pixels -> where it is in the summary (the display drawn at (x, y),
    scaled by f)."""
    return (x + box[0] * f, y + box[1] * f, x + box[2] * f, y + box[3] * f)


def chroma(img: np.ndarray) -> np.ndarray:
    c = img.astype(np.int32)
    return c.max(axis=2) - c.min(axis=2)


def locate(summary_rgb: np.ndarray, display: np.ndarray) -> tuple[float, int, int, float]:
    """Where ``display`` was drawn in the summary: (scale, x, y, match score), by template
    matching over scales (coarse at half resolution, then refined)."""
    grey = cv2.cvtColor(summary_rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    h, w = display.shape

    def score(img, f):
        tw, th = int(round(w * f)), int(round(h * f))
        if tw >= img.shape[1] or th >= img.shape[0] or tw < 16 or th < 16:
            return -1.0, (0, 0)
        tpl = cv2.resize(display, (tw, th), interpolation=cv2.INTER_AREA)
        res = cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED)
        _, best, _, at = cv2.minMaxLoc(res)
        return best, at

    coarse = max(np.linspace(0.3, 6.0, 115), key=lambda f: score(small, f / 2)[0])
    fine = max(np.linspace(coarse * 0.95, coarse * 1.05, 21), key=lambda f: score(grey, f)[0])
    best, (x, y) = score(grey, fine)
    return float(fine), int(x), int(y), float(best)


# --------------------------------------------------------------------------
# dciodvfy and DCMTK
# --------------------------------------------------------------------------


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} not installed")
    return exe


def dciodvfy(path: Path) -> list[str]:
    proc = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True,
                          timeout=60)
    return (proc.stdout + proc.stderr).splitlines()


#: the only warning dciodvfy may give: Laterality is empty (Type 2C) when the source has no L/R
LATERALITY_WARNING = "attribute <Laterality>"


def assert_dciodvfy_clean(path: Path, *, allow_laterality_warning: bool = False) -> None:
    lines = dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)
    warnings = [line for line in lines if line.startswith("Warning")
                and not (allow_laterality_warning and LATERALITY_WARNING in line)]
    assert warnings == [], "\n".join(lines)


def save(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def uids(**kw):  # noqa: ANN003
    return dict(series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), **kw)


def make_sr(views: list[PhantomView], report: TriageReport) -> Dataset:
    return build_triage_sr(report, [v.ds for v in views], **uids(series_number=900),
                           device_observer_uid=generate_uid(), now=NOW)


def headers(views: list[PhantomView], tmp_path: Path) -> list[Dataset]:
    """The views as the daemon has them at output time: read without pixel data."""
    out = []
    for i, v in enumerate(views):
        path = tmp_path / f"view{i}.dcm"
        v.ds.save_as(path, enforce_file_format=True)
        out.append(pydicom.dcmread(path, stop_before_pixels=True))
    return out


# --------------------------------------------------------------------------
# the summary image
# --------------------------------------------------------------------------


def test_summary_of_an_abnormal_study(study):
    report = make_report(study, PROBS)
    rgb = render_summary(report, summary_views(study, PROBS))
    write_png("summary-abnormal.png", rgb)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[1:] == (1024, 3)

    header = header_of(rgb, RED)
    assert 150 < header.shape[0] < 0.5 * rgb.shape[0]
    box = verdict_box(header, RED)
    words = ink(box, WHITE, 80)
    assert text_similarity(words, "ABNORMAL") > 0.85
    for other in ("NORMAL", "NOT ANALYSED"):
        assert text_similarity(words, other) < 0.5
    # about square, and the verdict big enough to read on a 128 x 128 series-list thumbnail
    # (the whole image shrunk into it): its capitals at least 8 pixels tall there
    assert rgb.shape[0] <= 1.15 * rgb.shape[1]
    assert crop(words).shape[0] * 128 / max(rgb.shape[:2]) >= 8
    assert best_line(without_verdict_box(header, RED), WHITE, "59%") > 0.85  # (0.91 + 0.74 + 0.12) / 3
    assert best_line(header, (255, 90, 90), "PRIORITY HIGH") > 0.85
    assert best_line(header, (190, 190, 190), "AI TRIAGE radtriage-demo 1.0") > 0.8
    assert best_line(header, YELLOW, NOT_FOR_DIAGNOSTIC_USE) > 0.85
    assert best_line(header, YELLOW, DEMO) > 0.85
    # high contrast: the header is mostly black, its text bright
    assert (header.max(axis=2) < 20).mean() > 0.5


def test_overlay_lands_on_the_lesion(study):
    report = make_report(study, PROBS)
    with_heat = render_summary(report, summary_views(study, PROBS))
    without = render_summary(report, summary_views(study, PROBS, heat=False))
    assert with_heat.shape == without.shape
    overlay = np.abs(with_heat.astype(np.int32) - without.astype(np.int32)).max(axis=2) > 12
    assert overlay.any()
    near_a_lesion = np.zeros_like(overlay)
    for v in study:
        f, x, y, score = locate(without, v.display)
        assert score > 0.8
        if v.box is None:
            continue
        x0, y0, x1, y1 = mapped(v.box, f, x, y)
        w, h = x1 - x0, y1 - y0
        # the heatmap's colour is inside the lesion box, the anatomy without it is grey there
        inner = (slice(int(y0 + 0.3 * h), int(y1 - 0.3 * h)),
                 slice(int(x0 + 0.3 * w), int(x1 - 0.3 * w)))
        assert chroma(with_heat[inner]).mean() > 60
        assert chroma(without[inner]).mean() < 5
        # the overlay is centred on the lesion
        ys, xs = np.nonzero(overlay[int(y0 - h):int(y1 + h), int(x0 - w):int(x1 + w)])
        assert abs(xs.mean() + int(x0 - w) - (x0 + x1) / 2) < 0.15 * w + 2
        assert abs(ys.mean() + int(y0 - h) - (y0 + y1) / 2) < 0.15 * h + 2
        near_a_lesion[max(0, int(y0 - h)):int(y1 + h), max(0, int(x0 - w)):int(x1 + w)] = True
        # the peak box is drawn on the lesion box (cyan, a few pixels thick)
        cyan = ink(with_heat, CYAN, 40)
        cy, cx = np.nonzero(cyan[int(y0 - 8):int(y1 + 8), int(x0 - 8):int(x1 + 8)])
        assert abs(cx.min() + int(x0 - 8) - x0) <= 4 and abs(cx.max() + int(x0 - 8) - x1) <= 4
        assert abs(cy.min() + int(y0 - 8) - y0) <= 4 and abs(cy.max() + int(y0 - 8) - y1) <= 4
    # and nowhere else (not on the normal view, whose heatmap is low everywhere)
    assert not (overlay & ~near_a_lesion).any()


def test_summary_of_a_normal_study_without_notice(study):
    probs = (0.2, 0.1, 0.05)
    report = make_report(study, probs, notice=None, priority="ROUTINE")
    rgb = render_summary(report, summary_views(study, probs))
    write_png("summary-normal.png", rgb)
    header = header_of(rgb, GREEN)
    words = ink(verdict_box(header, GREEN), WHITE, 80)
    assert text_similarity(words, "NORMAL") > 0.85
    assert text_similarity(words, "ABNORMAL") < 0.5
    assert best_line(header, WHITE, "PRIORITY ROUTINE") > 0.85
    yellow = lines_of(header, YELLOW)
    assert len(yellow) == 1 and text_similarity(yellow[0], NOT_FOR_DIAGNOSTIC_USE) > 0.85
    assert not ink(rgb, RED, 30).any()  # no abnormal red anywhere


def test_summary_of_a_study_not_analysed(study):
    probs = (None, None, None)
    report = make_report(study, probs)
    assert verdict(report) == "NOT ANALYSED"
    views = summary_views(study, probs)
    views[2] = dataclasses.replace(views[2], display=None, error="no pixel data")
    rgb = render_summary(report, views)
    write_png("summary-not-analysed.png", rgb)
    header = header_of(rgb, AMBER)
    words = ink(verdict_box(header, AMBER), (0, 0, 0), 80)
    assert text_similarity(words, "NOT ANALYSED") > 0.85
    assert best_line(header, WHITE, "Reason (UNREADABLE): no view could be decoded") > 0.85
    assert best_line(header, YELLOW, DEMO) > 0.85
    # every tile says NOT SCORED (in its label strip and over the view), and why
    grid = below_header(rgb, AMBER)
    amber = segments(ink(grid, AMBER, 40))
    assert len(amber) == 6
    assert all(text_similarity(m, "NOT SCORED") > 0.85 for m in amber)
    reasons = [text_similarity(m, "decode failed") for m in segments(ink(grid, WHITE, 60))]
    assert sum(r > 0.85 for r in reasons) == 2
    assert max(text_similarity(m, "no pixel data")
               for m in segments(ink(grid, WHITE, 60))) > 0.85
    # a view that was not scored shows no heatmap, even when it is given one
    heated = [dataclasses.replace(v, heatmap=fake_heatmap(v.display.shape, pv.box))
              if v.display is not None else v for v, pv in zip(views, study)]
    np.testing.assert_array_equal(render_summary(report, heated), rgb)


def test_view_overlay(study):
    report = make_report(study, PROBS)
    view = summary_views(study, PROBS)[0]
    rgb = render_view_overlay(report, view)
    write_png("overlay-view1.png", rgb)
    assert rgb.shape[1] == 1024 and rgb.dtype == np.uint8
    header = header_of(rgb, RED)
    assert header.shape[0] < 200  # the small header
    assert text_similarity(ink(verdict_box(header, RED), WHITE, 80), "ABNORMAL") > 0.85
    assert best_line(header, YELLOW, DEMO) > 0.85
    plain = render_view_overlay(report, dataclasses.replace(view, heatmap=None))
    f, x, y, score = locate(plain, view.display)
    assert score > 0.8 and f > 2  # the view fills the width (256 -> 1024 wide, or 2x tall)
    x0, y0, x1, y1 = mapped(study[0].box, f, x, y)
    w, h = x1 - x0, y1 - y0
    inner = (slice(int(y0 + 0.3 * h), int(y1 - 0.3 * h)),
             slice(int(x0 + 0.3 * w), int(x1 - 0.3 * w)))
    assert chroma(rgb[inner]).mean() > 60 and chroma(plain[inner]).mean() < 5
    # the compact header says NOT FOR DIAGNOSTIC USE (yellow) on its second line
    yellow = lines_of(header, YELLOW)
    assert len(yellow) == 2
    words = yellow[0][:, np.flatnonzero(yellow[0].any(axis=0)).min():]
    assert text_similarity(words, NOT_FOR_DIAGNOSTIC_USE) > 0.8


def test_summary_narrower_and_many_views(study):
    report = make_report(study, PROBS)
    views = summary_views(study, PROBS) * 4  # 12 views: a 4-column grid
    rgb = render_summary(report, views, width=512)
    assert rgb.shape[1] == 512 and rgb.shape[0] < 2 * 512
    header = header_of(rgb, RED)
    assert text_similarity(ink(verdict_box(header, RED), WHITE, 80), "ABNORMAL") > 0.8
    assert render_summary(report, [], width=300).shape[1] == 300  # no views: still a header


def test_summary_text_is_ascii_and_never_fails_on_odd_labels(study):
    report = dataclasses.replace(make_report(study, PROBS), algorithm_name="modèle-ß")
    views = summary_views(study, PROBS)
    views[0] = dataclasses.replace(views[0], label="Ansicht 1 Handgelenk \u2013 seitlich " * 5)
    rgb = render_summary(report, views)
    assert rgb.shape[1] == 1024


def test_render_rejects_bad_input(study):
    report = make_report(study, PROBS)
    view = summary_views(study, PROBS)[0]
    with pytest.raises(TypeError):
        render_summary(report, [dataclasses.replace(view, display=view.display.astype(float))])
    with pytest.raises(ValueError):
        render_summary(report, [dataclasses.replace(view, heatmap=np.zeros((3, 3), np.float32))])
    with pytest.raises(ValueError):
        render_summary(report, [view], width=100)
    with pytest.raises(ValueError):
        render_view_overlay(dataclasses.replace(report, abnormal=False), view)
    with pytest.raises(ValueError):
        render_summary(report, [dataclasses.replace(view, probability=1.5)])


# --------------------------------------------------------------------------
# the Secondary Capture
# --------------------------------------------------------------------------


def build_sc(rgb, source, **kw):  # noqa: ANN001, ANN003
    args = dict(series_number=901, manufacturer="radtriage", algorithm_name="radtriage-demo",
                algorithm_version="1.0", series_description="AI TRIAGE: ABNORMAL 59% - SUMMARY",
                notice=DEMO, now=NOW)
    args.update(kw)
    return build_summary_sc(rgb, source, **uids(**args))


def test_summary_secondary_capture(study, tmp_path):
    report = make_report(study, PROBS)
    rgb = render_summary(report, summary_views(study, PROBS))
    source = headers(study, tmp_path)[0]
    sc = build_sc(rgb, source)
    assert isinstance(sc, hd.sc.SCImage)
    path = tmp_path / "sc.dcm"
    back = save(sc, path)
    assert_dciodvfy_clean(path)
    assert back.SOPClassUID == SECONDARY_CAPTURE
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # in the original study, as its own series
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.PatientID == source.PatientID and back.PatientName == source.PatientName
    assert back.AccessionNumber == source.AccessionNumber
    assert back.SeriesNumber == 901 and back.InstanceNumber == 1
    assert back.SeriesDescription == "AI TRIAGE: ABNORMAL 59% - SUMMARY"
    # RGB 8 bit, burned in
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    assert back.BitsAllocated == 8 and back.PlanarConfiguration == 0
    assert back.BurnedInAnnotation == "YES"
    assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
    assert back.ConversionType == "WSD"
    assert back.Manufacturer == "radtriage"
    assert back.ManufacturerModelName == "radtriage-demo" and back.SoftwareVersions == "1.0"
    assert DEMO in back.ImageComments and DEMO in back.DerivationDescription
    assert NOT_FOR_DIAGNOSTIC_USE in back.ImageComments
    assert back.Laterality == "L"
    assert back.DateOfSecondaryCapture == "20260304" and back.ContentDate == "20260304"
    np.testing.assert_array_equal(back.pixel_array, rgb)
    # radtriage is named as Processing Equipment, with the notice
    descriptions = [i.get("ContributionDescription", "")
                    for i in back.ContributingEquipmentSequence]
    assert any(DEMO in d for d in descriptions)
    # highdicom reads it back
    image = hd.imread(path)
    np.testing.assert_array_equal(image.get_frame(1), rgb)


def test_secondary_capture_of_a_view_overlay_and_laterality(tmp_path):
    views = phantom_study("MONOCHROME1", "DX", laterality="R")
    report = make_report(views, PROBS)
    rgb = render_view_overlay(report, summary_views(views, PROBS)[1])
    sc = build_sc(rgb, views[1].ds, instance_number=2, notice=None)
    path = tmp_path / "sc.dcm"
    back = save(sc, path)
    assert_dciodvfy_clean(path)
    assert back.Laterality == "R"  # from Image Laterality
    assert back.InstanceNumber == 2
    assert DEMO not in back.ImageComments
    # a source without L/R: Laterality empty (dciodvfy's one warning)
    source = views[1].ds.copy()
    source.ImageLaterality = "U"
    back = save(build_sc(rgb, source), tmp_path / "sc2.dcm")
    assert back.Laterality in (None, "")
    assert_dciodvfy_clean(tmp_path / "sc2.dcm", allow_laterality_warning=True)


def test_secondary_capture_rejects_bad_input(study):
    with pytest.raises(TypeError):
        build_sc(np.zeros((10, 10), np.uint8), study[0].ds)
    with pytest.raises(TypeError):
        build_sc(np.zeros((10, 10, 3), np.float32), study[0].ds)
    source = study[0].ds.copy()
    del source.StudyInstanceUID
    with pytest.raises(ValueError):
        build_sc(np.zeros((10, 10, 3), np.uint8), source)


def test_secondary_capture_with_a_sparse_source(study, tmp_path):
    """A source lacking Type 2 patient/study attributes still gives a valid object."""
    source = study[0].ds.copy()
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName"):
        del source[keyword]
    path = tmp_path / "sc.dcm"
    save(build_sc(np.zeros((64, 64, 3), np.uint8), source), path)
    lines = dciodvfy(path)
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)


# --------------------------------------------------------------------------
# the Key Object Selection
# --------------------------------------------------------------------------


def test_kos_references_the_abnormal_views_and_the_sr(study, tmp_path):
    report = make_report(study, PROBS)
    sr = make_sr(study, report)
    sources = headers(study, tmp_path)
    abnormal = [ds for ds, p in zip(sources, PROBS) if p >= report.threshold]
    assert len(abnormal) == 2
    description = kos_description(report)
    assert description == ("AI triage: abnormal views, probability 59% (radtriage-demo 1.0) - "
                           f"not for diagnostic use - {DEMO}")
    kos = build_kos(sources, abnormal, sr, **uids(series_number=902), manufacturer="radtriage",
                    description=description, now=NOW)
    path = tmp_path / "kos.dcm"
    back = save(kos, path)
    assert_dciodvfy_clean(path)
    assert back.SOPClassUID == KOS and back.Modality == "KO"
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert back.PatientID == sources[0].PatientID
    assert back.ContentDate == "20260304"
    doc = hd.ko.KeyObjectSelectionDocument.from_dataset(back)
    title = doc.content[0].name
    assert (title.value, title.scheme_designator, title.meaning) == ("113000", "DCM",
                                                                      "Of Interest")
    items = doc.content[0].ContentSequence
    texts = [i.value for i in items if i.value_type == hd.sr.ValueTypeValues.TEXT]
    assert texts == [description]
    images = [i.referenced_sop_instance_uid for i in items
              if i.value_type == hd.sr.ValueTypeValues.IMAGE]
    composites = [i.referenced_sop_instance_uid for i in items
                  if i.value_type == hd.sr.ValueTypeValues.COMPOSITE]
    assert images == [ds.SOPInstanceUID for ds in abnormal]
    assert composites == [sr.SOPInstanceUID]
    # the evidence lists exactly what is referenced, by series
    evidence = {
        (series.SeriesInstanceUID, ref.ReferencedSOPInstanceUID)
        for study_item in back.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in abnormal} | {
        (sr.SeriesInstanceUID, sr.SOPInstanceUID)}
    assert doc.resolve_reference(sr.SOPInstanceUID)[1] == sr.SeriesInstanceUID


def test_kos_with_the_sr_as_read_back_and_duplicates(study, tmp_path):
    report = make_report(study, PROBS)
    sr = save(make_sr(study, report), tmp_path / "sr.dcm")
    sources = [v.ds for v in study]
    kos = build_kos(sources, [sources[0], sources[0]], sr, **uids(series_number=902),
                    manufacturer="radtriage", description=None, series_description=None)
    path = tmp_path / "kos.dcm"
    back = save(kos, path)
    assert_dciodvfy_clean(path)
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for i in back.ContentSequence if "ReferencedSOPSequence" in i]
    assert refs == [sources[0].SOPInstanceUID, sr.SOPInstanceUID]
    assert "SeriesDescription" not in back


def test_kos_rejects_what_it_cannot_reference(study, tmp_path):
    report = make_report(study, PROBS)
    sr = make_sr(study, report)
    sources = [v.ds for v in study]
    kw = dict(uids(series_number=902), manufacturer="radtriage")
    with pytest.raises(ValueError):
        build_kos(sources, [], sr, **kw)
    with pytest.raises(ValueError):
        build_kos([], sources[:1], sr, **kw)
    with pytest.raises(ValueError):  # a key image that is not a view of the study
        build_kos(sources[1:], sources[:1], sr, **kw)
    other = phantom_study(lesions=(True,), seed=7)
    with pytest.raises(ValueError):  # an SR of another study
        build_kos(sources, sources[:1], make_sr(other, make_report(other, (0.9,))), **kw)
    with pytest.raises(ValueError):  # not an SR
        build_kos(sources, sources[:1], sources[2], **kw)


def test_kos_description_of_other_reports(study):
    assert kos_description(make_report(study, (0.2, 0.1, 0.0), notice=None)) == (
        "AI triage: normal views, probability 10% (radtriage-demo 1.0) - not for diagnostic use")
    assert kos_description(make_report(study, (None, None, None), notice=None)) == (
        "AI triage: not analysed (radtriage-demo 1.0) - not for diagnostic use")


# --------------------------------------------------------------------------
# the GSPS
# --------------------------------------------------------------------------


def gsps_for(views: list[Dataset], boxes, **kw):  # noqa: ANN001, ANN003
    args = dict(series_number=903, manufacturer="radtriage", algorithm_name="radtriage-demo",
                algorithm_version="1.0", now=NOW)
    args.update(kw)
    return build_gsps(views, boxes, **uids(**args))


def annotations_by_image(ps: Dataset) -> dict[str, Dataset]:
    out = {}
    for ann in ps.GraphicAnnotationSequence:
        (ref,) = ann.ReferencedImageSequence
        out[ref.ReferencedSOPInstanceUID] = ann
    return out


def dcmp2pgm(image: Path, ps: Path, out: Path) -> np.ndarray:
    """The image as DCMTK shows it under the presentation state (8-bit grey)."""
    proc = subprocess.run([tool("dcmp2pgm"), "-p", str(ps), str(image), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return cv2.imread(str(out), cv2.IMREAD_UNCHANGED)


def dcmpschk(path: Path) -> None:
    proc = subprocess.run([tool("dcmpschk"), str(path)], capture_output=True, text=True,
                          timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Test passed" in out and "E:" not in out, out


@pytest.mark.parametrize("photometric,modality", [
    ("MONOCHROME2", "CR"), ("MONOCHROME1", "CR"), ("MONOCHROME1", "DX"), ("MONOCHROME2", "DX"),
])
def test_gsps_draws_the_peak_regions(photometric, modality, tmp_path):
    study = phantom_study(photometric, modality)
    sources = headers(study, tmp_path)  # no pixel data
    assert len({(ds.Rows, ds.Columns) for ds in sources}) > 1  # views of different sizes
    boxes = {str(ds.SOPInstanceUID): v.box for ds, v in zip(sources, study) if v.box}
    probabilities = {str(ds.SOPInstanceUID): p for ds, p in zip(sources, PROBS)}
    ps = gsps_for(sources, boxes, probabilities=probabilities, notice=DEMO)
    assert isinstance(ps, hd.pr.GrayscaleSoftcopyPresentationState)
    path = tmp_path / "ps.dcm"
    back = save(ps, path)
    assert_dciodvfy_clean(path)
    dcmpschk(path)
    assert back.SOPClassUID == GSPS and back.Modality == "PR"
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert back.ContentLabel == "AI TRIAGE"
    assert back.ContentDescription == "AI triage peak regions - DEMO MODEL"
    assert back.PresentationCreationDate == "20260304"
    assert back.Laterality == "L"
    # one layer, which every annotation is on
    (layer,) = back.GraphicLayerSequence
    assert layer.GraphicLayer == "AI TRIAGE"
    assert {a.GraphicLayer for a in back.GraphicAnnotationSequence} == {"AI TRIAGE"}
    # every view referenced; a rectangle exactly on each box, its probability beside it
    refs = [r.ReferencedSOPInstanceUID for s in back.ReferencedSeriesSequence
            for r in s.ReferencedImageSequence]
    assert refs == [ds.SOPInstanceUID for ds in sources]
    anns = annotations_by_image(back)
    assert set(anns) == {ds.SOPInstanceUID for ds in sources}
    for ds, v, p in zip(sources, study, PROBS):
        ann = anns[ds.SOPInstanceUID]
        texts = [t.UnformattedTextValue for t in ann.TextObjectSequence]
        assert texts[0] == f"AI TRIAGE - {NOT_FOR_DIAGNOSTIC_USE} - {DEMO}"
        if v.box is None:
            assert "GraphicObjectSequence" not in ann and len(texts) == 1
            continue
        (graphic,) = ann.GraphicObjectSequence
        assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
        assert graphic.GraphicFilled == "N"
        x0, y0, x1, y1 = v.box
        np.testing.assert_allclose(np.array(graphic.GraphicData).reshape(-1, 2),
                                   [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        assert texts[1] == f"AI {round(p * 100)}%"
        label = ann.TextObjectSequence[1]
        assert 0 <= label.BoundingBoxTopLeftHandCorner[0] and \
            label.BoundingBoxBottomRightHandCorner[0] <= ds.Columns
    # one displayed area per size, each referencing its images
    areas = back.DisplayedAreaSelectionSequence
    assert len(areas) == len({(ds.Rows, ds.Columns) for ds in sources})
    for area in areas:
        for ref in area.ReferencedImageSequence:
            ds = next(d for d in sources if d.SOPInstanceUID == ref.ReferencedSOPInstanceUID)
            assert list(area.DisplayedAreaBottomRightHandCorner) == [ds.Columns, ds.Rows]
    # the views' window is kept, and their polarity
    (voi,) = back.SoftcopyVOILUTSequence
    assert float(voi.WindowCenter) == float(sources[0].WindowCenter)
    assert float(voi.WindowWidth) == float(sources[0].WindowWidth)
    assert back.PresentationLUTShape == ("INVERSE" if photometric == "MONOCHROME1"
                                         else "IDENTITY")
    if modality == "DX":
        assert float(back.RescaleSlope) == 1.0 and float(back.RescaleIntercept) == 0.0
    # DCMTK shows the view under it as radtriage does: bone bright (MONOCHROME1 included)
    image_path = tmp_path / "view0-full.dcm"
    study[0].ds.save_as(image_path, enforce_file_format=True)
    shown = dcmp2pgm(image_path, path, tmp_path / "view0.pgm")
    assert shown.shape == study[0].display.shape
    r = np.corrcoef(shown.ravel().astype(float), study[0].display.ravel().astype(float))[0, 1]
    assert r > 0.98


def test_gsps_of_same_size_views_in_two_series(tmp_path):
    sources = make_study(StudySpec(views=3))
    sources[2].SeriesInstanceUID = generate_uid()
    sources[1].WindowCenter, sources[1].WindowWidth = 1000, 1500
    boxes = {str(sources[0].SOPInstanceUID): (10, 20, 60.5, 90),
             str(sources[2].SOPInstanceUID): (100, 100, 256, 256)}
    ps = gsps_for(sources, boxes, label="ai triage/v1", content_description="peaks",
                  windows={str(sources[2].SOPInstanceUID): (300.0, 600.0)})
    path = tmp_path / "ps.dcm"
    back = save(ps, path)
    assert_dciodvfy_clean(path, allow_laterality_warning=True)  # the sources have no L/R
    dcmpschk(path)
    assert back.ContentLabel == "AI TRIAGE_V1" and back.ContentDescription == "peaks"
    assert len(back.ReferencedSeriesSequence) == 2
    (area,) = back.DisplayedAreaSelectionSequence  # one size: applies to all
    assert "ReferencedImageSequence" not in area
    windows = {}
    for item in back.SoftcopyVOILUTSequence:
        for ref in item.ReferencedImageSequence:
            windows[ref.ReferencedSOPInstanceUID] = (float(item.WindowCenter),
                                                     float(item.WindowWidth))
    assert windows == {sources[0].SOPInstanceUID: (2047.0, 4095.0),
                       sources[1].SOPInstanceUID: (1000.0, 1500.0),
                       sources[2].SOPInstanceUID: (300.0, 600.0)}
    anns = annotations_by_image(back)
    np.testing.assert_allclose(anns[sources[0].SOPInstanceUID].GraphicObjectSequence[0]
                               .GraphicData[:4], [10, 20, 60.5, 20])
    # the label goes below a box at the top, inside one filling the image
    for uid in boxes:
        label = anns[uid].TextObjectSequence[1]
        assert label.UnformattedTextValue == "AI peak region"  # no probabilities given
        assert label.BoundingBoxBottomRightHandCorner[1] <= 256


def test_gsps_leaves_out_boxes_it_cannot_draw(study, tmp_path, caplog):
    sources = [v.ds for v in study]
    good = str(sources[0].SOPInstanceUID)
    bad = {str(sources[1].SOPInstanceUID): (10, 10, 5000, 20),  # outside the image
           str(sources[2].SOPInstanceUID): (30, 30, 10, 10)}  # inverted
    with caplog.at_level(logging.WARNING, logger="dicom_io.outputs"):
        back = save(gsps_for(sources, {good: study[0].box, **bad}), tmp_path / "ps.dcm")
    assert len([r for r in caplog.records if "left out" in r.getMessage()]) == 2
    drawn = [a for a in back.GraphicAnnotationSequence if "GraphicObjectSequence" in a]
    assert [a.ReferencedImageSequence[0].ReferencedSOPInstanceUID for a in drawn] == [good]
    assert_dciodvfy_clean(tmp_path / "ps.dcm")
    with pytest.raises(ValueError):  # nothing left to draw
        gsps_for(sources, bad)
    with pytest.raises(ValueError):  # only a box of an image that is not referenced
        gsps_for(sources[1:], {good: study[0].box})
    with pytest.raises(TypeError):
        gsps_for(sources, {good: (1, 2, 3)})


def test_gsps_groups_views_it_cannot_share(tmp_path):
    mono2 = phantom_study("MONOCHROME2", "DX", lesions=(True,))
    mono1 = phantom_study("MONOCHROME1", "DX", lesions=(True,))
    rescaled = phantom_study("MONOCHROME2", "DX", lesions=(True,))
    rescaled[0].ds.RescaleIntercept = -1024
    for views in (mono1, rescaled):  # into one study
        views[0].ds.StudyInstanceUID = mono2[0].ds.StudyInstanceUID
    cr = phantom_study("MONOCHROME2", "CR", lesions=(True,))  # no rescale: same as DX 1/0
    cr[0].ds.StudyInstanceUID = mono2[0].ds.StudyInstanceUID
    images = [mono2[0].ds, mono1[0].ds, rescaled[0].ds, cr[0].ds]
    groups = gsps_groups(images)
    assert [[ds.SOPInstanceUID for ds in g] for g in groups] == [
        [mono2[0].ds.SOPInstanceUID, cr[0].ds.SOPInstanceUID],
        [mono1[0].ds.SOPInstanceUID], [rescaled[0].ds.SOPInstanceUID]]
    boxes = {str(ds.SOPInstanceUID): v[0].box
             for ds, v in zip(images, (mono2, mono1, rescaled, cr))}
    with pytest.raises(ValueError):
        gsps_for(images, boxes)
    for n, group in enumerate(groups):
        ps = gsps_for(group, boxes)  # the study's boxes: each group draws its own
        path = tmp_path / f"ps{n}.dcm"
        back = save(ps, path)
        assert_dciodvfy_clean(path)  # all views are of the left side: Laterality L
        drawn = annotations_by_image(back)
        assert set(drawn) == {ds.SOPInstanceUID for ds in group}
        assert all("GraphicObjectSequence" in a for a in drawn.values())
    assert float(pydicom.dcmread(tmp_path / "ps2.dcm").RescaleIntercept) == -1024


def test_gsps_rejects_what_it_cannot_present(study):
    sources = [v.ds for v in study]
    box = {str(sources[0].SOPInstanceUID): study[0].box}
    with pytest.raises(ValueError):
        gsps_for([], box)
    colour = sources[0].copy()
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    with pytest.raises(ValueError):
        gsps_for([colour], box)
    other_study = sources[1].copy()
    other_study.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError):
        gsps_for([sources[0], other_study], box)
    with pytest.raises(ValueError):
        gsps_for(sources, box, probabilities={str(sources[0].SOPInstanceUID): 2.0})


def test_gsps_copies_voi_luts_and_several_windows(tmp_path):
    sources = make_study(StudySpec(views=2))
    lut_view, windows_view = sources
    del lut_view.WindowCenter, lut_view.WindowWidth
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTExplanation = "SOFT"
    item.add_new("LUTData", "US",
                 (np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16).tolist())
    lut_view.VOILUTSequence = [item]
    windows_view.WindowCenter, windows_view.WindowWidth = [2047, 1000], [4095, 800]
    windows_view.WindowCenterWidthExplanation = ["FULL", "BONE"]
    boxes = {str(ds.SOPInstanceUID): (10, 10, 50, 50) for ds in sources}
    path = tmp_path / "ps.dcm"
    back = save(gsps_for(sources, boxes), path)
    assert_dciodvfy_clean(path, allow_laterality_warning=True)
    dcmpschk(path)
    by_image = {item.ReferencedImageSequence[0].ReferencedSOPInstanceUID: item
                for item in back.SoftcopyVOILUTSequence}
    lut = by_image[lut_view.SOPInstanceUID]
    assert "WindowCenter" not in lut
    # a presentation state's LUT entries are 8 or 16 bits: the 12-bit LUT is rescaled
    assert list(lut.VOILUTSequence[0].LUTDescriptor) == [4096, 0, 16]
    assert lut.VOILUTSequence[0].LUTExplanation == "SOFT"
    data = np.frombuffer(lut.VOILUTSequence[0].LUTData, "<u2")
    expected = np.round(np.array(item.LUTData, float) * 65535 / 4095)
    np.testing.assert_array_equal(data, expected)
    # DCMTK shows the view through the LUT as the LUT says (a square root: brighter)
    image_path = tmp_path / "lut.dcm"
    lut_view.save_as(image_path, enforce_file_format=True)
    shown = dcmp2pgm(image_path, path, tmp_path / "lut.pgm").astype(float)
    stored = lut_view.pixel_array.astype(float)
    r = np.corrcoef(shown.ravel(), np.sqrt(stored / 4095).ravel())[0, 1]
    assert r > 0.98
    win = by_image[windows_view.SOPInstanceUID]
    # a presentation state has one window: the first, which radtriage shows too
    assert float(win.WindowCenter) == 2047.0 and float(win.WindowWidth) == 4095.0
    assert win.WindowCenterWidthExplanation == "FULL"
