"""The other objects radtriage writes back besides the SR: summary image, key objects, GSPS.

Three builders, each a pure function from arrays and pydicom datasets to a highdicom object
(reading, writing and sending are the caller's job; nothing here touches a file or a socket),
plus the renderers that draw the summary image:

:func:`render_summary`
    One RGB image per study: a header band (the verdict ABNORMAL / NORMAL / NOT ANALYSED in big
    letters, the probability, the priority, the model's name and version, NOT FOR DIAGNOSTIC USE
    and the model card's notice) above a grid of the views, each a thumbnail with its heatmap
    blended in (a JET colour map, only where the heatmap is high, so the anatomy stays
    visible), its peak region boxed and its own probability; a view that was not scored says
    why. Kept about square (up to four views) with the verdict's capitals about 75 pixels
    tall at 1024 wide, so that they are still 8 or more pixels tall on a 128 x 128 PACS
    series-list thumbnail.
:func:`render_view_overlay`
    The per-view option: one RGB image per view, the same header in small form.
:func:`build_summary_sc`
    Either image as a Secondary Capture (RGB, 8 bit, uncompressed Explicit VR Little Endian) in
    the source's study, as its own series: Burned In Annotation YES, Image Type
    DERIVED\\SECONDARY, Conversion Type WSD (workstation), the algorithm as Manufacturer's Model
    Name and Software Versions, the notice in Image Comments and Derivation Description.
:func:`build_kos`
    A Key Object Selection document, title (113000, DCM, "Of Interest"), referencing the abnormal
    views and the SR, with a Key Object Description saying why (:func:`kos_description`).
:func:`build_gsps`
    A Grayscale Softcopy Presentation State over the views: one graphic layer (a viewer can
    toggle it) holding, per view with a peak region, the region as a closed rectangle POLYLINE
    and its probability as text, and on every view a line "AI TRIAGE - NOT FOR DIAGNOSTIC USE"
    (with the notice). The views' own display is kept: the Modality LUT, the first window (or
    VOI LUT, rescaled to 16-bit entries when it has 9 to 15) of each view, and the polarity (Presentation LUT Shape INVERSE for MONOCHROME1 or an INVERSE
    source, as DCMTK's ``dcmpsmk`` does, since a presentation state's grey pipeline ignores the
    image's Photometric Interpretation). Views of different sizes are fine (one Displayed Area
    item per size); views that differ in polarity or Modality LUT cannot share one presentation
    state: :func:`gsps_groups` splits them.

Every object passes dciodvfy without errors and reads back with pydicom and highdicom (the
tests check it); dciodvfy's one warning is an empty Laterality (Type 2C) on the SC and the GSPS
when the source views say neither L nor R. Burned-in text is ASCII only (OpenCV's Hershey fonts); labels never carry
patient data, which the caller must not put in :attr:`SummaryView.label` either.

Drawing uses OpenCV, like :mod:`dicom_io.pixels` (which the daemon loads anyway).
"""
from __future__ import annotations

import copy
import datetime
import logging
import math
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.demographics import clean_dataset, declare_character_set, notes_text
from dicom_io.pixels import inverted
from dicom_io.sr import (
    TriageReport,
    _box_numbers,
    _box_problem,
    _check_report,
    _evidence,
    _lo_text,
    _percent,
    not_analysed_text,
    reason_code,
)

__all__ = [
    "NOT_FOR_DIAGNOSTIC_USE",
    "SummaryView",
    "build_gsps",
    "build_kos",
    "build_summary_sc",
    "gsps_groups",
    "kos_description",
    "render_summary",
    "render_view_overlay",
    "summary_reason",
    "verdict",
]

logger = logging.getLogger(__name__)

#: What every burned-in output says, whatever the model.
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

_LO_MAX = 64  # Long String
_ST_MAX = 1024  # Short Text
_CS_MAX = 16  # Code String

Box = tuple[float, float, float, float]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class SummaryView:
    """One view as the summary shows it."""

    #: uint8 H x W grey, bone bright: the view as shown, at a working resolution (see
    #: :func:`dicom_io.pixels.to_display`); None when it could not be decoded (a grey tile
    #: with the reason is drawn instead)
    display: np.ndarray | None
    #: float32 H x W in [0, 1], the same shape as ``display`` (already mapped onto the view);
    #: None when not scored or when the model gives none
    heatmap: np.ndarray | None
    probability: float | None  # None: not scored
    #: the peak region (x0, y0, x1, y1) in ``display`` pixel coordinates (columns, rows; the
    #: top left corner of the top left pixel is (0, 0)); None: no region
    box: tuple[int, int, int, int] | None
    label: str  # e.g. "view 1  CR  WRIST" (never patient data)
    error: str | None = None  # why not scored


# --------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------


def verdict(report: TriageReport) -> str:
    """``"ABNORMAL"``, ``"NORMAL"`` or ``"NOT ANALYSED"`` (the word the summary shows)."""
    if report.probability is None:
        return "NOT ANALYSED"
    return "ABNORMAL" if report.abnormal else "NORMAL"


def summary_reason(report: TriageReport) -> str:
    """What the summary image says of a study not analysed: its code (the Series Description's)
    and its full reason, e.g. ``"Reason (BODY PART): no view could be scored: body part not
    supported: 'SKULL'"``, in ASCII; empty for a study that was analysed."""
    if report.probability is not None:
        return ""
    return _ascii(f"Reason ({reason_code(report)}): {not_analysed_text(report)}")


def _ascii(text: str | None) -> str:
    """``text`` as printable ASCII on one line (what Hershey fonts can draw)."""
    if not text:
        return ""
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    return " ".join("".join(c if c.isprintable() else " " for c in folded).split())


def _algorithm(report: TriageReport) -> str:
    return _ascii(f"{report.algorithm_name} {report.algorithm_version}")


def kos_description(report: TriageReport) -> str:
    """The Key Object Description of the study's KOS, e.g.
    ``'AI triage: abnormal views, probability 93% (radtriage-demo 1.0) - not for diagnostic
    use'``, with the report's notice appended when it has one."""
    _check_report(report)
    algorithm = f"{report.algorithm_name} {report.algorithm_version}"
    if report.probability is None:
        text = f"AI triage: not analysed ({algorithm})"
    else:
        flag = "abnormal" if report.abnormal else "normal"
        text = (f"AI triage: {flag} views, probability {_percent(report.probability)}% "
                f"({algorithm})")
    text = f"{text} - not for diagnostic use"
    if report.notice:
        text = f"{text} - {report.notice}"
    return text


# --------------------------------------------------------------------------
# drawing primitives (RGB arrays; OpenCV does not care about channel order)
# --------------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_DUPLEX

_BLACK: RGB = (0, 0, 0)
_WHITE: RGB = (255, 255, 255)
_GREY: RGB = (190, 190, 190)
_YELLOW: RGB = (255, 230, 0)
_AMBER: RGB = (255, 176, 0)
_RED: RGB = (200, 0, 0)
_GREEN: RGB = (0, 110, 0)
_LIGHT_RED: RGB = (255, 90, 90)
_LIGHT_GREEN: RGB = (90, 230, 90)
_CYAN: RGB = (0, 255, 255)
_TILE_BG: RGB = (24, 24, 24)
_STRIP_BG: RGB = (48, 48, 48)

#: (background, text) of the verdict box
_VERDICT_COLOURS: dict[str, tuple[RGB, RGB]] = {
    "ABNORMAL": (_RED, _WHITE),
    "NORMAL": (_GREEN, _WHITE),
    "NOT ANALYSED": (_AMBER, _BLACK),
}
_PRIORITY_COLOURS: dict[str, RGB] = {"HIGH": _LIGHT_RED, "ELEVATED": _AMBER, "ROUTINE": _WHITE}

#: lines of the notice drawn at most; the DICOM attributes carry it all
_MAX_LINES = 4
#: lines of a not-analysed study's reason drawn at most: its full reason, unless its views
#: failed in more ways than that holds (then each view's tile still shows its own)
_MAX_REASON_LINES = 12

#: the heatmap is blended in above this value only, at most this opaque
_HEAT_FLOOR = 0.4
_HEAT_ALPHA = 0.6


def _size(text: str, scale: float, thickness: int, font: int = _FONT) -> tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of ``text``."""
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    return w, h, base


def _fit(text: str, scale: float, thickness: int, max_width: int,
         font: int = _FONT) -> tuple[float, int]:
    """The largest (scale, thickness) up to the given ones at which ``text`` fits."""
    while scale > 0.3 and _size(text, scale, thickness, font)[0] > max_width:
        scale *= 0.92
        thickness = max(1, int(round(thickness * 0.92)))
    return scale, thickness


def _put(img: np.ndarray, text: str, x: int, top: int, scale: float, colour: RGB,
         thickness: int, font: int = _FONT) -> int:
    """Draw ``text`` with its cap line at ``top``; return the y just below its descenders."""
    _, h, base = _size(text, scale, thickness, font)
    cv2.putText(img, text, (int(x), int(top + h)), font, scale, colour, thickness, cv2.LINE_AA)
    return int(top + h + base)


def _wrap(text: str, scale: float, thickness: int, max_width: int,
          font: int = _FONT) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``max_width`` (a word longer than
    that is cut)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        while _size(word, scale, thickness, font)[0] > max_width and len(word) > 1:
            cut = len(word)
            while cut > 1 and _size(word[:cut], scale, thickness, font)[0] > max_width:
                cut -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}".strip()
        if _size(candidate, scale, thickness, font)[0] <= max_width:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _put_lines(img: np.ndarray, lines: Sequence[str], x: int, top: int, scale: float,
               colour: RGB, thickness: int, spacing: int, font: int = _FONT) -> int:
    y = top
    for line in lines:
        y = _put(img, line, x, y, scale, colour, thickness, font) + spacing
    return y - spacing if lines else top


def _px(value: float, s: float, minimum: int = 1) -> int:
    """``value`` pixels at 1024 wide, scaled to the image's width."""
    return max(minimum, int(round(value * s)))


# --------------------------------------------------------------------------
# header band
# --------------------------------------------------------------------------


def _header(report: TriageReport, width: int, *, compact: bool) -> np.ndarray:
    """The header band: verdict, probability, priority, algorithm, warning, notice."""
    s = width / 1024.0
    pad = _px(16, s)
    inner = width - 2 * pad
    word = verdict(report)
    bg, fg = _VERDICT_COLOURS[word]
    percent = None if report.probability is None else f"{_percent(report.probability)}%"
    priority = f"PRIORITY {_ascii(report.priority)}"
    priority_colour = _PRIORITY_COLOURS.get(report.priority, _WHITE)
    # Draw on a tall canvas, crop to what was used.
    canvas = np.zeros((_px(1400, s, 200), width, 3), np.uint8)
    y = pad

    # the verdict box (and the probability beside it)
    big = (1.7 if compact else 3.6) * s
    big_t = _px(3.5 if compact else 7, s, 2)
    box_pad = _px(8 if compact else 12, s)
    gap = _px(24, s)
    pct_w = _size(percent, big, big_t)[0] + gap if percent else 0
    scale, thick = _fit(word, big, big_t, inner - 2 * box_pad - pct_w)
    w, h, base = _size(word, scale, thick)
    x1, y1 = pad + w + 2 * box_pad, y + h + base + 2 * box_pad
    cv2.rectangle(canvas, (pad, y), (x1, y1), bg, thickness=-1)
    _put(canvas, word, pad + box_pad, y + box_pad, scale, fg, thick)
    if percent:
        right = x1 + gap
        pct_scale, pct_t = _fit(percent, scale, thick, width - pad - right)
        ph = _size(percent, pct_scale, pct_t)[1]
        _put(canvas, percent, right, y + (y1 - y - ph) // 2, pct_scale, _WHITE, pct_t)
    y = y1 + _px(10, s)

    warn = NOT_FOR_DIAGNOSTIC_USE
    if compact:
        # one line: PRIORITY ... | algorithm | NOT FOR DIAGNOSTIC USE
        small, small_t = 0.85 * s, _px(2, s)
        line = f"{priority}  |  AI {_algorithm(report)}  |  "
        scale, thick = _fit(line + warn, small, small_t, inner)
        x = pad
        _put(canvas, line, x, y, scale, _WHITE, thick)
        x += _size(line, scale, thick)[0]
        y = _put(canvas, warn, x, y, scale, _YELLOW, thick) + _px(8, s)
    else:
        scale, thick = _fit(priority, 1.6 * s, _px(3, s, 2), inner)
        y = _put(canvas, priority, pad, y, scale, priority_colour, thick) + _px(14, s)
        line = f"AI TRIAGE  {_algorithm(report)}"
        scale, thick = _fit(line, 1.0 * s, _px(2, s), inner)
        y = _put(canvas, line, pad, y, scale, _GREY, thick) + _px(14, s)
        scale, thick = _fit(warn, 1.4 * s, _px(3, s, 2), inner)
        y = _put(canvas, warn, pad, y, scale, _YELLOW, thick) + _px(14, s)

    text_scale = (0.7 if compact else 0.9) * s
    text_t = _px(2, s)
    spacing = _px(8, s)
    if report.notice:
        lines = _wrap(_ascii(report.notice), text_scale, text_t, inner)[:_MAX_LINES]
        y = _put_lines(canvas, lines, pad, y, text_scale, _YELLOW, text_t, spacing) + _px(12, s)
    if report.probability is None:
        lines = _wrap(summary_reason(report), text_scale, text_t, inner)
        if len(lines) > _MAX_REASON_LINES:
            lines = lines[:_MAX_REASON_LINES - 1] + ["... (each view's reason is on its tile)"]
        y = _put_lines(canvas, lines, pad, y, text_scale, _WHITE, text_t, spacing) + _px(12, s)
    y += pad - _px(12, s)
    band = canvas[: y + _px(6, s)].copy()
    band[-_px(6, s):] = bg  # a rule in the verdict's colour under the header
    return band


# --------------------------------------------------------------------------
# views
# --------------------------------------------------------------------------


def _check_view(view: SummaryView) -> None:
    if view.display is not None:
        d = view.display
        if not isinstance(d, np.ndarray) or d.dtype != np.uint8 or d.ndim != 2 or 0 in d.shape:
            raise TypeError("SummaryView.display must be a non-empty uint8 H x W array or None")
        if view.heatmap is not None:
            hm = view.heatmap
            if not isinstance(hm, np.ndarray) or hm.shape != d.shape:
                raise ValueError(
                    f"SummaryView.heatmap must have the display's shape {d.shape}, got "
                    f"{getattr(hm, 'shape', type(hm).__name__)}"
                )
    if view.probability is not None:
        p = float(view.probability)
        if math.isnan(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"view probability must be in [0, 1], got {view.probability!r}")


def _overlay(grey: np.ndarray, heatmap: np.ndarray | None) -> np.ndarray:
    """``grey`` (uint8) as RGB with ``heatmap`` (same shape) blended in where it is high."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if heatmap is None:
        return rgb
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32), nan=0.0), 0.0, 1.0)
    colours = cv2.applyColorMap((heat * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
    colours = colours[:, :, ::-1].astype(np.float32)  # OpenCV's colour maps are BGR
    alpha = _HEAT_ALPHA * np.clip((heat - _HEAT_FLOOR) / (1.0 - _HEAT_FLOOR), 0.0, 1.0)
    alpha = alpha[:, :, None]
    out = rgb.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return (out + 0.5).astype(np.uint8)


def _draw_view(area: np.ndarray, view: SummaryView, s: float) -> None:
    """Draw ``view`` fitted (aspect kept, centred) into ``area`` (an RGB array, in place)."""
    ah, aw = area.shape[:2]
    area[:] = _TILE_BG
    scored = view.probability is not None
    if view.display is not None:
        h, w = view.display.shape
        f = min(aw / w, ah / h)
        tw, th = max(1, int(round(w * f))), max(1, int(round(h * f)))
        ox, oy = (aw - tw) // 2, (ah - th) // 2
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
        grey = cv2.resize(view.display, (tw, th), interpolation=interp)
        heat = None
        if scored and view.heatmap is not None:
            heat = cv2.resize(view.heatmap.astype(np.float32), (tw, th),
                              interpolation=cv2.INTER_LINEAR)
        if not scored:
            grey = (grey.astype(np.float32) * 0.35).astype(np.uint8)  # dimmed under the reason
        area[oy:oy + th, ox:ox + tw] = _overlay(grey, heat)
        if scored and view.box is not None:
            try:
                x0, y0, x1, y1 = _box_numbers(view.box, "view box")
            except TypeError:
                logger.warning("summary: peak region %r is not four numbers; not drawn", view.box)
            else:
                if all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0:
                    p0 = (int(round(ox + x0 * f)), int(round(oy + y0 * f)))
                    p1 = (int(round(ox + x1 * f)), int(round(oy + y1 * f)))
                    t = _px(3, s, 2)
                    cv2.rectangle(area, p0, p1, _BLACK, t + 2, cv2.LINE_AA)
                    cv2.rectangle(area, p0, p1, _CYAN, t, cv2.LINE_AA)
    if not scored:
        inner = aw - 2 * _px(12, s)
        title = "NOT SCORED"
        scale, thick = _fit(title, 1.3 * s, _px(3, s, 2), inner)
        reason = _wrap(_ascii(view.error) or "no reason given", 0.8 * s, _px(2, s),
                       inner)[:_MAX_LINES]
        tw_, th_, tb_ = _size(title, scale, thick)
        line_h = _size("Ag", 0.8 * s, _px(2, s))[1] + _px(10, s)
        total = th_ + tb_ + _px(14, s) + line_h * len(reason)
        y = max(_px(8, s), (ah - total) // 2)
        y = _put(area, title, (aw - tw_) // 2, y, scale, _AMBER, thick) + _px(14, s)
        for line in reason:
            lw = _size(line, 0.8 * s, _px(2, s))[0]
            y = _put(area, line, (aw - lw) // 2, y, 0.8 * s, _WHITE, _px(2, s)) + _px(10, s)


def _strip(width: int, view: SummaryView, threshold: float, s: float) -> np.ndarray:
    """The label strip above a view: its label left, its probability (or NOT SCORED) right."""
    height = _px(44, s, 16)
    strip = np.empty((height, width, 3), np.uint8)
    strip[:] = _STRIP_BG
    pad = _px(10, s)
    if view.probability is None:
        right, colour = "NOT SCORED", _AMBER
    else:
        p = float(view.probability)
        right = f"{_percent(p)}%"
        colour = _LIGHT_RED if p >= threshold else _LIGHT_GREEN
    r_scale, r_t = _fit(right, 1.0 * s, _px(2, s), width // 2)
    rw, rh, _ = _size(right, r_scale, r_t)
    _put(strip, right, width - pad - rw, (height - rh) // 2, r_scale, colour, r_t)
    label = _ascii(view.label)
    if label:
        l_scale, l_t = _fit(label, 0.75 * s, _px(2, s), width - 3 * pad - rw)
        lh = _size(label, l_scale, l_t)[1]
        _put(strip, label, pad, (height - lh) // 2, l_scale, _WHITE, l_t)
    return strip


def _check_width(width: int) -> int:
    if not isinstance(width, (int, np.integer)) or isinstance(width, bool) or width < 256:
        raise ValueError(f"width must be an integer of at least 256 pixels, got {width!r}")
    return int(width)


def _grid_layout(n: int, aspect: float, width: int, height: float,
                 s: float) -> tuple[int, int, int]:
    """(columns, tile width, tile image height) for ``n`` views of ``aspect`` (height / width)
    in a grid ``width`` wide: the columns that give the largest thumbnails while the grid stays
    within ``height`` (so that the summary stays about square, and legible as a series-list
    thumbnail), or within a quarter of the width per row for many views."""
    pad, gap, strip_h = _px(16, s), _px(10, s), _px(44, s, 16)
    room = max(height, math.ceil(n / 4) * width / 4.0)
    best: tuple[float, int, int, int] | None = None
    for cols in range(1, min(n, 4) + 1):
        rows = math.ceil(n / cols)
        tile_w = (width - 2 * pad - (cols - 1) * gap) // cols
        max_h = (room - 2 * pad - (rows - 1) * gap) / rows - strip_h
        image_h = int(max(_px(60, s), min(max_h, tile_w * aspect)))
        thumb = min(tile_w, image_h / aspect)  # the fitted thumbnail's width
        key = (thumb, -cols)
        if best is None or key > (best[0], -best[1]):
            best = (thumb, cols, tile_w, image_h)
    assert best is not None
    return best[1], best[2], best[3]


def render_summary(report: TriageReport, views: Sequence[SummaryView], *,
                   width: int = 1024) -> np.ndarray:
    """The study's summary image: uint8 RGB H x ``width`` x 3 (see the module doc).

    The views are laid out in a grid (1 to 4 columns) sized to keep the whole image about
    square for up to 4 views (taller with more), each view fitted into its tile with its
    aspect ratio kept. ValueError for an inconsistent report (as
    :func:`dicom_io.sr.build_triage_sr`), a width below 256, a view probability outside [0, 1]
    or a heatmap whose shape is not its display's; TypeError for a display that is not uint8
    grey. A peak box that is not four finite numbers with x1 > x0 and y1 > y0 is not drawn.
    """
    _check_report(report)
    width = _check_width(width)
    views = list(views)
    for view in views:
        _check_view(view)
    s = width / 1024.0
    header = _header(report, width, compact=False)
    pad, gap = _px(16, s), _px(10, s)
    if not views:
        band = np.zeros((_px(120, s, 40), width, 3), np.uint8)
        band[:] = _TILE_BG
        _put(band, "no views", pad, _px(40, s), 1.0 * s, _GREY, _px(2, s))
        return np.ascontiguousarray(np.vstack([header, band]))
    n = len(views)
    aspects = [v.display.shape[0] / v.display.shape[1] for v in views if v.display is not None]
    aspect = float(np.clip(np.median(aspects), 0.6, 1.5)) if aspects else 0.75
    strip_h = _px(44, s, 16)
    cols, tile_w, image_h = _grid_layout(n, aspect, width, width - header.shape[0], s)
    rows = math.ceil(n / cols)
    tile_h = strip_h + image_h
    grid = np.zeros((2 * pad + rows * tile_h + (rows - 1) * gap, width, 3), np.uint8)
    for i, view in enumerate(views):
        r, c = divmod(i, cols)
        x, y = pad + c * (tile_w + gap), pad + r * (tile_h + gap)
        grid[y:y + strip_h, x:x + tile_w] = _strip(tile_w, view, float(report.threshold), s)
        _draw_view(grid[y + strip_h:y + tile_h, x:x + tile_w], view, s)
    return np.ascontiguousarray(np.vstack([header, grid]))


def render_view_overlay(report: TriageReport, view: SummaryView, *,
                        width: int = 1024) -> np.ndarray:
    """One view with its heatmap and peak region under the small header: uint8 RGB
    H x ``width`` x 3. The view fills the width (at most twice as tall as wide)."""
    _check_report(report)
    width = _check_width(width)
    _check_view(view)
    s = width / 1024.0
    header = _header(report, width, compact=True)
    strip = _strip(width, view, float(report.threshold), s)
    if view.display is not None:
        h, w = view.display.shape
        area_h = int(round(min(2.0, h / w) * width))
    else:
        area_h = width // 2
    area = np.zeros((area_h, width, 3), np.uint8)
    _draw_view(area, view, s)
    return np.ascontiguousarray(np.vstack([header, strip, area]))


# --------------------------------------------------------------------------
# DICOM helpers
# --------------------------------------------------------------------------


def _lo(text: str) -> str:
    return _lo_text(text)[:_LO_MAX].rstrip()


def _st(text: str) -> str:
    return " ".join(str(text).replace("\\", "/").split())[:_ST_MAX]


def _code_string(text: str) -> str:
    """``text`` as a highdicom-valid Code String: A-Z, 0-9, '_' and inner spaces, <= 16."""
    out = "".join(c if (c.isascii() and (c.isalnum() or c in " _")) else "_"
                  for c in str(text).upper())
    out = " ".join(out.split())[:_CS_MAX].strip(" _")
    if not out:
        raise ValueError(f"{text!r} gives no valid code string")
    return out


def _cleaned(ds: pydicom.Dataset, what: str) -> pydicom.Dataset:
    """A copy of ``ds`` whose patient, study, series and equipment values are valid
    (:func:`dicom_io.demographics.clean_dataset`): what highdicom copies into the output."""
    cleaned = clean_dataset(ds)
    if cleaned.notes:
        logger.debug("header values cleaned for the %s: %s", what, notes_text(cleaned.notes))
    return cleaned.dataset


def _require(ds: pydicom.Dataset, keywords: Sequence[str], what: str) -> None:
    for keyword in keywords:
        if not ds.get(keyword):
            raise ValueError(f"{what} without {keyword}")


def _series_laterality(source: pydicom.Dataset) -> str | None:
    """The source's Laterality (or Image Laterality) when it is L or R, else None."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def _dates(now: datetime.datetime | None) -> dict[str, object]:
    return {} if now is None else {"content_date": now.date(), "content_time": now.time()}


def _ref_item(ds: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


# --------------------------------------------------------------------------
# Secondary Capture
# --------------------------------------------------------------------------


def build_summary_sc(
    rgb: np.ndarray,
    source: pydicom.Dataset,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    manufacturer: str,
    algorithm_name: str,
    algorithm_version: str,
    series_description: str,
    notice: str | None = None,
    institution_name: str | None = None,
    now: datetime.datetime | None = None,
) -> hd.sc.SCImage:
    """The summary (or a per-view overlay) image as a Secondary Capture in ``source``'s study.

    Parameters
    ----------
    rgb:
        uint8 H x W x 3 RGB, as :func:`render_summary` returns it.
    source:
        Any image of the study (pixel data not needed): patient and study attributes, the
        Specific Character Set and the Laterality (when L or R) are copied from it, and its
        acquisition equipment goes into the Contributing Equipment Sequence (when it names a
        Manufacturer). Needs StudyInstanceUID; the other patient/study attributes are empty
        when it lacks them.
    series_instance_uid, sop_instance_uid, series_number, instance_number:
        Identity of the new image and of its (new) series.
    manufacturer, algorithm_name, algorithm_version:
        Manufacturer, Manufacturer's Model Name and Software Versions (General Equipment) and
        those of radtriage's Processing Equipment item.
    series_description:
        Series Description (cleaned and cut to 64 characters).
    notice:
        The model card's notice; in Image Comments, Derivation Description and the Contribution
        Description.
    now:
        Content and Secondary Capture Date/Time (default: the local time now).

    Returns an :class:`highdicom.sc.SCImage` (a pydicom Dataset), Explicit VR Little Endian;
    write it with ``sc.save_as(path, enforce_file_format=True)``.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise TypeError("rgb must be a non-empty uint8 H x W x 3 array")
    if rgb.shape[0] > 65535 or rgb.shape[1] > 65535:
        raise ValueError(f"image too large for DICOM: {rgb.shape[1]} x {rgb.shape[0]}")
    _require(source, ("StudyInstanceUID",), "source")
    if not algorithm_name or not algorithm_version:
        raise ValueError("algorithm_name and algorithm_version are required")
    source = _cleaned(source, "summary SC")
    when = now if now is not None else datetime.datetime.now()
    comment = f"AI triage summary ({algorithm_name} {algorithm_version}) - {NOT_FOR_DIAGNOSTIC_USE}"
    if notice:
        comment = f"{comment} - {notice}"
    radtriage = hd.ContributingEquipment(
        manufacturer=_lo(manufacturer),
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=_lo(algorithm_name),
        software_versions=_lo(algorithm_version),
        institution_name=institution_name,
        contribution_datetime=when,
        contribution_description=_st(comment),
    )
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=_lo(manufacturer),
        laterality=_series_laterality(source),
        # highdicom insists on an orientation for a PATIENT image; a collage has none, so it
        # is emptied below (Patient Orientation is Type 2)
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[radtriage],
        series_description=_lo(series_description),
        manufacturer_model_name=_lo(algorithm_name),
        software_versions=_lo(algorithm_version),
        institution_name=institution_name,
        **_dates(when),
    )
    sc.PatientOrientation = None
    if "Laterality" not in sc:
        sc.Laterality = None  # Type 2C: dciodvfy asks for it whenever Image Laterality is absent
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"  # workstation
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.LossyImageCompression = "00"
    sc.DateOfSecondaryCapture = when.strftime("%Y%m%d")
    sc.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    sc.ImageComments = _st(comment)  # LT; kept as short as an ST
    sc.DerivationDescription = _st(comment)
    declare_character_set(sc, source.get("SpecificCharacterSet"))
    logger.debug("built summary SC %s (%d x %d)", sop_instance_uid, rgb.shape[1], rgb.shape[0])
    return sc


# --------------------------------------------------------------------------
# Key Object Selection
# --------------------------------------------------------------------------


def build_kos(
    evidence: Sequence[pydicom.Dataset],
    key_images: Sequence[pydicom.Dataset],
    sr: pydicom.Dataset,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    manufacturer: str,
    description: str | None = None,
    series_description: str | None = "AI TRIAGE: KEY IMAGES",
    institution_name: str | None = None,
    now: datetime.datetime | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """A Key Object Selection document (113000, DCM, "Of Interest") for the study.

    Parameters
    ----------
    evidence:
        The study's source images (pixel data not needed); every key image must be one of
        them. Only what the document references is listed as its evidence.
    key_images:
        The views to flag (the abnormal ones); at least one. Duplicates are dropped.
    sr:
        radtriage's SR of the study (as built or as read back), referenced after the images.
    description:
        Key Object Description, e.g. :func:`kos_description`; none if None.
    series_description:
        Series Description of the KOS series (None: none).

    ValueError when a key image is not in ``evidence``, when the objects belong to different
    studies, or when there is no key image.
    """
    if len(evidence) == 0:
        raise ValueError("at least one evidence image is required")
    if len(key_images) == 0:
        raise ValueError("at least one key image is required")
    _require(sr, ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"), "sr")
    if sr.get("Modality") != "SR":
        raise ValueError("sr is not an SR document")
    known = {str(ds.SOPInstanceUID) for ds in _evidence(evidence)}
    for ds in key_images:
        if str(ds.get("SOPInstanceUID", "")) not in known:
            raise ValueError("a key image is not among the evidence")
    # validated (one study, UIDs present), deduplicated, Type 2 patient attributes filled in
    referenced = _evidence([*key_images, sr])
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=referenced,
        description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=referenced,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=_lo(manufacturer),
        institution_name=institution_name,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=_lo(series_description) if series_description else None,
        **_dates(now),
    )
    declare_character_set(kos, referenced[0].get("SpecificCharacterSet"))
    logger.debug("built KOS %s (%d key images)", sop_instance_uid, len(referenced) - 1)
    return kos


# --------------------------------------------------------------------------
# Grayscale Softcopy Presentation State
# --------------------------------------------------------------------------

_GSPS_IMAGE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
)


def _modality_lut_key(ds: pydicom.Dataset) -> tuple[float, float, str] | None:
    """(slope, intercept, type) of the image's Modality LUT, or None when it has none."""
    if "ModalityLUTSequence" in ds:
        raise ValueError("an image with a Modality LUT Sequence is not supported by build_gsps")
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    kind = str(ds.get("RescaleType", "") or "US")
    return (slope, intercept, kind)


def _group_key(ds: pydicom.Dataset) -> tuple[bool, tuple[float, float] | None]:
    """What images sharing one presentation state must agree on: polarity and Modality LUT
    (an absent one and slope 1 / intercept 0 are the same)."""
    lut = _modality_lut_key(ds)
    linear = None if lut is None or lut[:2] == (1.0, 0.0) else lut[:2]
    return (inverted(ds), linear)


def gsps_groups(images: Sequence[pydicom.Dataset]) -> list[list[pydicom.Dataset]]:
    """``images`` split into groups that can share one presentation state (same polarity, same
    Modality LUT), in order of first appearance; one group for a usual study."""
    groups: dict[tuple, list[pydicom.Dataset]] = {}
    for ds in images:
        groups.setdefault(_group_key(ds), []).append(ds)
    return list(groups.values())


def _check_gsps_images(images: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    if len(images) == 0:
        raise ValueError("at least one image is required")
    unique: dict[str, pydicom.Dataset] = {}
    for ds in images:
        _require(ds, _GSPS_IMAGE_KEYWORDS, "image")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise ValueError("a grayscale presentation state needs grey images")
        if str(ds.get("PhotometricInterpretation", "")).strip() not in ("MONOCHROME1",
                                                                        "MONOCHROME2"):
            raise ValueError("a grayscale presentation state needs MONOCHROME1/2 images")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError("multi-frame images are not supported by build_gsps")
        unique.setdefault(str(ds.SOPInstanceUID), ds)
    out = list(unique.values())
    if len({str(ds.StudyInstanceUID) for ds in out}) != 1:
        raise ValueError("the images belong to different studies")
    if len(gsps_groups(out)) != 1:
        raise ValueError("the images differ in polarity or Modality LUT; build one presentation "
                         "state per group of gsps_groups(images)")
    return out


def _values(value: object) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _voi_key(ds: pydicom.Dataset, window: tuple[float, float] | None) -> tuple | None:
    """A hashable description of the image's VOI, or None when it has none."""
    if window is not None:
        centre, width = (float(v) for v in window)
        if not (math.isfinite(centre) and math.isfinite(width) and width >= 1.0):
            raise ValueError(f"window {window!r} is not a (centre, width >= 1) pair")
        return ("window", centre, width, None, None)
    if "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter not in (None, "") \
            and ds.WindowWidth not in (None, ""):
        # the first window, as radtriage shows the view (a presentation state has one)
        try:
            centre = float(_values(ds.WindowCenter)[0])
            width = float(_values(ds.WindowWidth)[0])
        except (TypeError, ValueError, IndexError):
            centre = width = math.nan
        if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
            logger.warning("GSPS: an image's window is not usable; shown with the identity VOI")
            return None
        explanation = ds.get("WindowCenterWidthExplanation")
        explanation = str(_values(explanation)[0]) if explanation not in (None, "") else None
        function = str(ds.get("VOILUTFunction", "") or "") or None
        return ("window", centre, width, explanation, function)
    if ds.get("VOILUTSequence"):
        return ("lut", id(ds))  # copied as is, per image
    return None


def _voi_items(images: Sequence[pydicom.Dataset],
               windows: Mapping[str, tuple[float, float]]) -> list[pydicom.Dataset]:
    """Softcopy VOI LUT Sequence items: the images' windows (or VOI LUTs), or ``windows``."""
    groups: dict[tuple, list[pydicom.Dataset]] = defaultdict(list)
    for ds in images:
        key = _voi_key(ds, windows.get(str(ds.SOPInstanceUID)))
        if key is None:
            logger.debug("image without a window: shown with the identity VOI")
            continue
        groups[key].append(ds)
    items: list[pydicom.Dataset] = []
    for key, members in groups.items():
        refs = (None if len(members) == len(images)
                else hd.ReferencedImageSequence(referenced_images=members))
        if key[0] == "window":
            _, centre, width, explanation, function = key
            item: pydicom.Dataset = hd.pr.SoftcopyVOILUTTransformation(
                window_center=centre,
                window_width=width,
                voi_lut_function=function,
                referenced_images=refs,
            )
            if explanation:  # (highdicom 0.28 splits a single explanation into characters)
                item.WindowCenterWidthExplanation = _lo(explanation)
        else:
            item = pydicom.Dataset()
            if refs is not None:
                item.ReferencedImageSequence = refs
            item.VOILUTSequence = [_softcopy_voi_lut(lut) for lut in members[0].VOILUTSequence]
        items.append(item)
    return items


def _softcopy_voi_lut(lut: pydicom.Dataset) -> pydicom.Dataset:
    """An image's VOI LUT as a presentation state may carry it: there, LUT entries are 8 or 16
    bits (an image's may be 8 to 16), so a 9 to 15 bit LUT is rescaled to 16 bits."""
    out = copy.deepcopy(lut)
    try:
        entries, _first, bits = (int(v) for v in lut.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        raise ValueError("a VOI LUT without a valid LUT Descriptor") from None
    if bits in (8, 16):
        return out
    if not 8 < bits < 16:
        raise ValueError(f"a VOI LUT of {bits}-bit entries")
    value = lut.LUTData
    if isinstance(value, (bytes, bytearray)):
        data = np.frombuffer(value, "<u2")
    else:
        data = np.asarray(_values(value), dtype=np.uint32)
    data = data[: entries or 65536].astype(np.float64)
    scaled = np.round(np.clip(data, 0, (1 << bits) - 1) * 65535.0 / ((1 << bits) - 1))
    out.LUTDescriptor = [entries, int(lut.LUTDescriptor[1]), 16]
    out.add_new("LUTData", "OW", scaled.astype("<u2").tobytes())
    return out


def _displayed_areas(images: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """One Displayed Area Selection item per image size: the whole image, scaled to fit."""
    by_size: dict[tuple[int, int], list[pydicom.Dataset]] = defaultdict(list)
    for ds in images:
        by_size[(int(ds.Columns), int(ds.Rows))].append(ds)
    items = []
    for (columns, rows), members in by_size.items():
        item = pydicom.Dataset()
        if len(by_size) > 1:
            item.ReferencedImageSequence = [_ref_item(ds) for ds in members]
        item.DisplayedAreaTopLeftHandCorner = [1, 1]
        item.DisplayedAreaBottomRightHandCorner = [columns, rows]
        item.PresentationSizeMode = "SCALE TO FIT"
        item.PresentationPixelAspectRatio = [1, 1]
        items.append(item)
    return items


def _banner_height(rows: float) -> float:
    """Height of the "AI TRIAGE - NOT FOR DIAGNOSTIC USE" band at the top of a view."""
    return max(1.0, rows * 0.05)


def _label_box(box: Box, columns: float, rows: float) -> tuple[float, float, float, float]:
    """Where the probability text goes: a band just above the box (below the banner), else
    just below it, else inside it at its top."""
    x0, y0, x1, y1 = box
    th = max(rows * 0.05, 1.0)
    tw = min(columns, max(x1 - x0, columns * 0.3))
    left = min(x0, columns - tw)
    if y0 - th >= _banner_height(rows):
        top = y0 - th
    elif y1 + th <= rows:
        top = y1
    else:
        top = y0
    return (left, top, left + tw, min(rows, top + th))


def _rectangle(box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def build_gsps(
    images: Sequence[pydicom.Dataset],
    boxes: Mapping[str, tuple[float, float, float, float]],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    manufacturer: str,
    algorithm_name: str,
    algorithm_version: str,
    label: str = "AI TRIAGE",
    content_description: str = "AI triage peak regions",
    probabilities: Mapping[str, float] | None = None,
    notice: str | None = None,
    windows: Mapping[str, tuple[float, float]] | None = None,
    series_description: str | None = "AI TRIAGE: PEAK REGIONS",
    institution_name: str | None = None,
    now: datetime.datetime | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS drawing the peak regions on the views, on one graphic layer.

    Parameters
    ----------
    images:
        The views the presentation state applies to (pixel data not needed: Rows, Columns,
        Photometric Interpretation, the Modality LUT and VOI attributes are what is used), one
        study, single-frame grey images of one polarity and Modality LUT (see
        :func:`gsps_groups`); sizes and series may differ. Every one is referenced and shows the
        "AI TRIAGE - NOT FOR DIAGNOSTIC USE" line; duplicates are dropped.
    boxes:
        SOP Instance UID -> the peak region (x0, y0, x1, y1) in that image's pixel coordinates
        (columns, rows; the top left corner of the top left pixel is (0, 0), so a box lies in
        [0, Columns] x [0, Rows]), drawn as a closed rectangle POLYLINE. Boxes of other
        images are ignored (so the study's boxes can go with each group of
        :func:`gsps_groups`); a box that cannot be drawn is left out with a warning;
        ValueError when no box is left for these images.
    manufacturer, algorithm_name, algorithm_version:
        Manufacturer, Manufacturer's Model Name and Software Versions.
    label:
        Content Label and graphic layer name (made a valid Code String of at most 16
        characters: "AI TRIAGE").
    content_description:
        Content Description (with " - DEMO MODEL" when there is a notice; 64 characters at
        most) and graphic layer description.
    probabilities:
        SOP Instance UID -> the view's probability, written beside its box ("AI 93%").
    notice:
        The model card's notice, on every image's text line.
    windows:
        SOP Instance UID -> (centre, width) to use instead of the image's own window, e.g. the
        window the daemon computed for a view without one. An image with neither is shown with
        the identity VOI.
    now:
        Presentation Creation Date/Time (default: the local time now).
    """
    images = [_cleaned(ds, "GSPS") for ds in _check_gsps_images(images)]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    unknown = [uid for uid in boxes if str(uid) not in by_uid]
    if unknown:  # e.g. the boxes of the whole study, given to each of gsps_groups' groups
        logger.debug("GSPS: %d box(es) of images not among the images ignored", len(unknown))
    if not algorithm_name or not algorithm_version:
        raise ValueError("algorithm_name and algorithm_version are required")
    probabilities = {str(k): float(v) for k, v in (probabilities or {}).items()}
    for uid, p in probabilities.items():
        if math.isnan(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {p!r}")

    drawable: dict[str, Box] = {}
    for uid, box in boxes.items():
        ds = by_uid.get(str(uid))
        if ds is None:
            continue
        numbers = _box_numbers(box, "box")
        problem = _box_problem(numbers, ds.Columns, ds.Rows)
        if problem is not None:
            logger.warning("GSPS: peak region %r left out: %s", numbers, problem)
            continue
        drawable[str(uid)] = numbers
    if not drawable:
        raise ValueError("no peak region that can be drawn")

    layer_name = _code_string(label)
    description = content_description + (" - DEMO MODEL" if notice else "")
    layer = hd.pr.GraphicLayer(
        layer_name=layer_name,
        order=1,
        description=_lo(content_description),
        display_color=hd.color.CIELabColor.from_rgb(*_CYAN),
    )
    layer.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    banner = f"AI TRIAGE - {NOT_FOR_DIAGNOSTIC_USE}" + (f" - {notice}" if notice else "")
    annotations = []
    for ds in images:
        uid = str(ds.SOPInstanceUID)
        columns, rows = float(ds.Columns), float(ds.Rows)
        texts = [hd.pr.TextObject(
            text_value=_st(banner),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=(0.0, 0.0, columns, _banner_height(rows)),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )]
        graphics = None
        if uid in drawable:
            box = drawable[uid]
            graphics = [hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=_rectangle(box),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                is_filled=False,
            )]
            p = probabilities.get(uid)
            text = f"AI {_percent(p)}%" if p is not None else "AI peak region"
            texts.append(hd.pr.TextObject(
                text_value=text,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_label_box(box, columns, rows),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            ))
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[ds],
            graphic_layer=layer,
            graphic_objects=graphics,
            text_objects=texts,
        ))

    first = images[0]
    lut = _modality_lut_key(first)
    modality_lut = (None if lut is None else hd.ModalityLUTTransformation(
        rescale_intercept=lut[1], rescale_slope=lut[0], rescale_type=lut[2]))
    shape = (hd.PresentationLUTShapeValues.INVERSE if inverted(first)
             else hd.PresentationLUTShapeValues.IDENTITY)
    # highdicom wants images of one size; it is built for the first image, and the references,
    # annotations, displayed areas and windows of all of them are set afterwards. It is given
    # the first image without its VOI, which it would otherwise copy (onto all the images, and
    # it cannot copy a VOI LUT Sequence whose data is US).
    proxy = pydicom.Dataset()
    proxy.update(first)  # shallow: the (cleaned) image is not modified
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
                    "VOILUTFunction", "VOILUTSequence"):
        if keyword in proxy:
            del proxy[keyword]
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[proxy],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=_lo(manufacturer),
        manufacturer_model_name=_lo(algorithm_name),
        software_versions=_lo(algorithm_version),
        device_serial_number=None,
        content_label=layer_name,
        content_description=_lo(description),
        graphic_annotations=[annotations[0]],
        graphic_layers=[layer],
        institution_name=institution_name,
        modality_lut_transformation=modality_lut,
        voi_lut_transformations=None,  # set below
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=shape),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=_lo(series_description) if series_description else None,
    )
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in images:
        series[str(ds.SeriesInstanceUID)].append(_ref_item(ds))
    referenced_series = []
    for series_uid, refs in series.items():
        item = pydicom.Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedImageSequence = refs
        referenced_series.append(item)
    gsps.ReferencedSeriesSequence = referenced_series
    # Type 2C (dciodvfy asks for it whenever Image Laterality is absent): the views' side
    # when they all agree on one, else empty
    sides = {_series_laterality(ds) for ds in images}
    gsps.Laterality = sides.pop() if len(sides) == 1 else None
    gsps.GraphicAnnotationSequence = annotations
    gsps.DisplayedAreaSelectionSequence = _displayed_areas(images)
    if "SoftcopyVOILUTSequence" in gsps:
        del gsps.SoftcopyVOILUTSequence
    voi = _voi_items(images, windows or {})
    if voi:
        gsps.SoftcopyVOILUTSequence = voi
    if now is not None:
        gsps.PresentationCreationDate = now.strftime("%Y%m%d")
        gsps.PresentationCreationTime = now.strftime("%H%M%S")
    declare_character_set(gsps, first.get("SpecificCharacterSet"))
    logger.debug("built GSPS %s (%d images, %d regions)", sop_instance_uid, len(images),
                 len(drawable))
    return gsps
