"""``radtriage evaluate``: a checkpoint scored on labelled studies, the MURA way, with a report.

Every view is prepared by the daemon's own code (:func:`training.datasets.prepare_path` in a
:class:`dicom_io.prepare.PreparePool`, so DICOM goes through :func:`dicom_io.prepare.prepare_view`
with the model card's preprocessing) and scored in batches by :class:`inference.model.Scorer`.
A study's probability is the mean of its scored views (:func:`inference.policy.study_probability`,
a multi-frame view counting as the mean of its frames, as in the daemon); a study none of whose
views could be scored is listed as not analysed and left out of the metrics.

Outputs in ``out_dir``: ``metrics.json`` (everything, see ``docs/evaluation.md``), ``report.md``
or ``report.html``, ``roc.png`` and ``reliability.png``.

Command line (the lead wires it into ``daemon/cli.py`` with :func:`add_arguments` and
:func:`evaluate_cli`)::

    radtriage evaluate CHECKPOINT DATA_ROOT --out DIR [--split valid] [--study-types WRIST,HAND]
        [--threshold T] [--target-sensitivity 0.95] [--format md|html] [--layout auto|mura|dicom]
        [--device auto|cpu|cuda] [--batch-size N] [--workers N] [--allow-untrained]

Exit codes: 0 done; 1 the model cannot be used or scoring failed (bad or untrained checkpoint,
no CUDA, nothing could be scored, the output cannot be written); 2 the arguments point at
nothing usable (no such folder, no known layout, no study in that split or of those types, a
malformed truth file, a bad option value). Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, TextIO

import numpy as np

from dicom_io.bodypart import MURA_STUDY_TYPES, SelectionRules
from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import PreparePool
from training import metrics as M
from training.datasets import (
    DatasetError,
    View,
    group_by_study,
    parse_study_types,
    prepare_path,
    read_views,
)

log = logging.getLogger(__name__)

FORMAT = "radtriage-evaluation/1"
DEFAULT_THRESHOLD = 0.5
POINTING_GAME_UNAVAILABLE = "not available (no heatmaps)"
POINTING_GAME_NO_VIEWS = "not available (no view of an abnormal study has a true box and a heatmap)"
#: metrics.json's threshold source -> how the report says it
_THRESHOLD_SOURCES = {"argument": "as given", "model card": "the model card's",
                      "default": "the default; the card records none"}
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
ReportFormat = Literal["md", "html"]


class EvaluationError(Exception):
    """The evaluation could not be completed (scoring failed, nothing scored, output not written)."""


# -- scoring -----------------------------------------------------------------------------------


def score_views(scorer: Any, views: Sequence[View], prep: Preprocessing, opts: DecodeOptions,
                rules: SelectionRules, *, workers: int = 0, progress: TextIO | None = None,
                heatmap: str | None = None,
                ) -> tuple[list[float | None], list[str | None], list[tuple[float, float] | None]]:
    """(probability, error, peak) of every view, in order; a view that cannot be scored has None
    and its reason. Views are prepared in ``workers`` processes (:class:`PreparePool`), scored in
    the scorer's batches, a chunk at a time so memory stays bounded. With ``heatmap`` (cam or
    gradcam) a DICOM view's ``peak`` is where its heatmap is highest, in the view's pixel
    coordinates (x, y), from the pass that scores it (its most suspicious frame's); else None."""
    from dicom_io.geometry import peak_point

    probabilities: list[float | None] = [None] * len(views)
    errors: list[str | None] = [None] * len(views)
    peaks: list[tuple[float, float] | None] = [None] * len(views)
    pool = PreparePool(prep, opts, rules, workers=workers)
    pool.task = prepare_path
    chunk = max(4 * int(getattr(scorer, "batch_size", 16)), 8 * pool.workers, 32)
    with pool:
        for start in range(0, len(views), chunk):
            part = views[start:start + chunk]
            prepared = pool.map([v.path for v in part])
            frames: list[np.ndarray] = []
            owner: list[tuple[int, Any]] = []
            for i, p in enumerate(prepared, start):
                if p.tensor is None:
                    errors[i] = p.error or "not scored"
                else:
                    frames.extend(p.tensor)
                    owner.extend((i, p.geometry[f] if f < len(p.geometry) else None)
                                 for f in range(p.frames))
            try:
                if heatmap and frames:
                    pairs = scorer.score_with_heatmaps(frames, heatmap)
                else:
                    pairs = [(float(s), None) for s in scorer.score(frames)] if frames else []
            except RuntimeError as exc:  # torch's errors (CUDA out of memory, ...)
                raise EvaluationError(f"inference failed: {type(exc).__name__}: {exc}") from exc
            per_view: dict[int, list[tuple[float, Any, Any]]] = {}
            for (i, geometry), (s, hm) in zip(owner, pairs):
                per_view.setdefault(i, []).append((float(s), geometry, hm))
            for i, s_list in per_view.items():
                probabilities[i] = float(np.mean([s for s, _, _ in s_list]))
                _, geometry, hm = max(s_list, key=lambda t: t[0])
                if hm is not None and geometry is not None:
                    peaks[i] = peak_point(hm, geometry)
            if progress is not None:
                print(f"evaluate: {start + len(part)}/{len(views)} views", file=progress, flush=True)
    return probabilities, errors, peaks


def pointing_game(views: Sequence[View], labels: Sequence[int],
                  peaks: Sequence[tuple[float, float] | None]) -> dict[str, Any]:
    """How often a view's heatmap peak falls inside one of its true boxes (Zhang et al. 2018's
    pointing game), over the views of abnormal studies that have boxes and a heatmap; overall
    and per finding. Box edges are inclusive pixels, so a peak at (x, y) hits [x0, x1 + 1)."""
    hits: dict[str, list[int]] = {}
    total: list[int] = []
    for view, label, peak in zip(views, labels, peaks):
        if not label or not view.boxes or peak is None:
            continue
        x, y = peak
        inside = [b for b in view.boxes if b.x0 <= x < b.x1 + 1 and b.y0 <= y < b.y1 + 1]
        total.append(int(bool(inside)))
        for finding in {b.finding or "finding" for b in view.boxes}:
            hits.setdefault(finding, []).append(
                int(any((b.finding or "finding") == finding for b in inside)))
    return {"available": bool(total), "reason": None if total else POINTING_GAME_NO_VIEWS,
            "hit_rate": float(np.mean(total)) if total else None, "views": len(total),
            "by_finding": {k: {"hit_rate": float(np.mean(v)), "views": len(v)}
                           for k, v in sorted(hits.items())}}


# -- plots (matplotlib's Agg canvas, no pyplot state) ------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_roc(path: Path, curves: Sequence[tuple[str, Sequence[int], Sequence[float]]],
             operating: tuple[float, float] | None, threshold: float) -> None:
    """ROC curves (the first one bold: overall), the operating point at ``threshold``."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    drawn = 0
    for k, (name, labels, probs) in enumerate(curves):
        points = M.roc(labels, probs)
        if points is None:
            continue
        auc = M.auroc(labels, probs)
        ax.plot(points["fpr"], points["tpr"], linewidth=2.2 if k == 0 else 1.0,
                color="black" if k == 0 else None, label=f"{name} (AUROC {auc:.3f}, n={len(labels)})")
        drawn += 1
    if operating is not None:
        ax.plot([operating[0]], [operating[1]], marker="o", color="tab:red", linestyle="none",
                label=f"threshold {threshold:g}", clip_on=False, zorder=5)
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "ROC undefined: the studies are all of one class", ha="center", va="center")
    else:
        ax.legend(loc="lower right", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title="ROC, study level")
    ax.set_aspect("equal")
    fig.savefig(path)


def plot_reliability(path: Path, bins: Sequence[dict[str, Any]], ece: float | None) -> None:
    """Reliability diagram (fraction abnormal vs mean probability per bin) over a histogram."""
    fig = _figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    filled = [b for b in bins if b["count"]]
    if filled:
        top.plot([b["mean_probability"] for b in filled], [b["fraction_positive"] for b in filled],
                 marker="o", color="tab:blue", label="studies")
    top.legend(loc="upper left", fontsize=8)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction abnormal",
            title="Reliability, study level" + ("" if ece is None else f" (ECE {ece:.3f})"))
    lowers = [b["lower"] for b in bins]
    widths = [b["upper"] - b["lower"] for b in bins]
    bottom.bar(lowers, [b["count"] for b in bins], width=widths, align="edge",
               color="0.7", edgecolor="0.3")
    bottom.set(xlabel="predicted probability (mean of the study's views)", ylabel="studies")
    fig.savefig(path)


# -- report ------------------------------------------------------------------------------------


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _blocks(result: dict[str, Any]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p"|"warn", text), ("table", header, rows), ("img", alt, src)."""
    model, data, thr = result["model"], result["data"], result["threshold"]
    overall = result["overall"]
    b: list[tuple] = [("h1", f"Evaluation of {model['display_name']} {model['version']}")]
    if not model["trained"]:
        b.append(("warn", "This checkpoint's card says it was never trained: its scores mean nothing."))
    if model.get("notice"):
        b.append(("warn", model["notice"]))
    b.append(("p", f"Data: {data['root']} ({data['layout']} layout), split {data['split']}"
                   + (f", study types {', '.join(data['study_types'])}" if data["study_types"] else "")
                   + f". {data['studies']} studies evaluated ({data['studies_not_analysed']} not analysed), "
                   f"{data['views']} views ({data['views_not_analysed']} not scored). "
                   f"Created {result['created']}."))
    at, mk = overall.get("at_target_sensitivity"), overall.get("max_kappa")
    b.append(("p", f"A study's probability is the mean of its views' probabilities (MURA); it is "
                   f"called abnormal when it reaches the threshold {thr['value']:g} "
                   f"({_THRESHOLD_SOURCES.get(thr['source'], thr['source'])})."
                   + ("" if at is None else
                      f" The highest threshold reaching sensitivity {at['target']:g} overall is "
                      f"{at['threshold']:.4f} (sensitivity {_num(at['sensitivity'])}, specificity "
                      f"{_num(at['specificity'])}).")
                   + ("" if mk is None else
                      f" The threshold with the highest kappa overall is {mk['threshold']:.4f} "
                      f"(kappa {_num(mk['kappa'])}, sensitivity {_num(mk['sensitivity'])}, "
                      f"specificity {_num(mk['specificity'])}).")))
    b.append(("h2", "Study-level metrics"))
    header = ["study type", "studies", "abnormal", "accuracy", "kappa", "AUROC", "sensitivity",
              "specificity", "ECE", f"threshold at sens. {result['target_sensitivity']:g}",
              "threshold at max. kappa"]
    rows = []
    for name, m in [*result["by_study_type"].items(), ("overall", overall)]:
        t = m.get("at_target_sensitivity")
        rows.append([f"**{name}**" if name == "overall" else name, m["n"], m["positives"],
                     _num(m["accuracy"]), _num(m["kappa"]), _num(m["auroc"]), _num(m["sensitivity"]),
                     _num(m["specificity"]), _num(m["ece"]), _num(t["threshold"], 4) if t else "–",
                     _num(m["max_kappa"]["threshold"], 4) if m.get("max_kappa") else "–"])
    b.append(("table", header, rows))
    (tn, fp), (fn, tp) = overall["confusion_matrix"]
    b.append(("h2", f"Confusion matrix (overall, threshold {thr['value']:g})"))
    b.append(("table", ["truth \\ call", "normal", "abnormal"],
              [["normal", tn, fp], ["abnormal", fn, tp]]))
    b.append(("h2", "ROC"))
    b.append(("img", "ROC curves", result["files"]["roc"]))
    b.append(("h2", "Calibration"))
    b.append(("p", f"Expected calibration error {_num(overall['ece'])}: {M.BINNING}."))
    b.append(("img", "Reliability diagram", result["files"]["reliability"]))
    b.append(("table", ["bin", "studies", "mean probability", "fraction abnormal"],
              [[f"{'[' if i == 0 else '('}{bin_['lower']:.1f}, {bin_['upper']:.1f}]", bin_["count"],
                _num(bin_["mean_probability"]), _num(bin_["fraction_positive"])]
               for i, bin_ in enumerate(overall["reliability"])]))
    pg = result["pointing_game"]
    b.append(("h2", "Pointing game"))
    b.append(("p", "How often a view's heatmap peak"
                   + (f" ({pg['method']})" if pg.get("method") else "")
                   + " falls inside one of its true boxes, over the views of abnormal studies with "
                   "boxes. Hit rate: " + (_num(pg["hit_rate"]) if pg["available"] else pg["reason"])
                   + (f" over {pg['views']} view(s)" if pg["available"] else "")
                   + f"; {pg['views_with_boxes']} view(s) with true boxes."))
    if pg["available"] and pg.get("by_finding"):
        b.append(("table", ["finding", "views", "hit rate"],
                  [[k, v["views"], _num(v["hit_rate"])] for k, v in pg["by_finding"].items()]))
    missing = [s for s in result["studies"] if s["probability"] is None]
    if missing:
        b.append(("h2", "Studies not analysed"))
        b.append(("table", ["study", "type", "reason (first view)"],
                  [[s["study"], s["study_type"] or "–",
                    next((v["error"] for v in s["views"] if v["error"]), "–")] for s in missing[:50]]))
        if len(missing) > 50:
            b.append(("p", f"... and {len(missing) - 50} more (metrics.json lists them all)."))
    b.append(("p", "Definitions: docs/evaluation.md. Everything above is in metrics.json."))
    return b


def _markdown(blocks: Iterable[tuple]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "warn":
            out.append(f"> **Warning:** {block[1]}")
        elif kind == "img":
            out.append(f"![{block[1]}]({block[2]})")
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(cell(h) for h in header) + " |",
                     "|" + "|".join(" --- " for _ in header) + "|"]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _html(blocks: Iterable[tuple], title: str) -> str:
    def esc(v: Any) -> str:
        text = html.escape(str(v))
        if text.startswith("**") and text.endswith("**"):
            return f"<strong>{text[2:-2]}</strong>"
        return text

    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(block[1])}</p>")
        elif kind == "warn":
            body.append(f'<p class="warn"><strong>Warning:</strong> {esc(block[1])}</p>')
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(block[2])}" alt="{html.escape(block[1])}"></p>')
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #999;padding:.2em .5em;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.warn{color:#a00}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# -- the evaluation ----------------------------------------------------------------------------


def _card_threshold(card: Any) -> float | None:
    """The operating threshold a model card records, if it records one."""
    value = getattr(card, "threshold", None)
    return None if value is None else float(value)


def phantoms_of(data_root: Path) -> dict[str, Any] | None:
    """How ``radtriage phantoms`` made ``data_root`` (its ``phantoms.json``: generator version,
    seed, number of studies), or None when it holds no phantoms."""
    try:
        meta = json.loads((data_root / "phantoms.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{data_root / 'phantoms.json'}: not readable: {exc}") from exc
    if not isinstance(meta, dict):
        return None
    counts = meta.get("counts") if isinstance(meta.get("counts"), dict) else {}
    return {"version": meta.get("version"), "seed": meta.get("seed"), "studies": counts.get("studies")}


#: The overall figures of an evaluation that :func:`held_out_metrics` puts on a card.
HELD_OUT_KEYS = ("auroc", "kappa", "accuracy", "sensitivity", "specificity", "ece")


def held_out_metrics(result: Mapping[str, Any], source: str = "metrics.json") -> dict[str, Any]:
    """An evaluation's ``metrics.json`` (what :func:`evaluate` returns) as the ``held_out`` entry
    of a model card's metrics: the overall figures, the threshold, the number of studies and
    views, per study type AUROC and kappa, and ``set``, which data they were measured on; and
    what the dashboard's Model page plots: ``reliability`` (the diagram's bins) and ``roc``
    (``fpr``, ``tpr``: the curve's corners, :func:`roc_outline`), where the evaluation has them.
    Raises ValueError naming ``source`` for anything else."""
    if not isinstance(result, Mapping) or result.get("format") != FORMAT:
        raise ValueError(f"{source}: not a radtriage evaluation ({FORMAT})")
    try:
        overall, data = result["overall"], result["data"]
        held: dict[str, Any] = {k: overall[k] for k in HELD_OUT_KEYS}
        made = data.get("phantoms")
        where = (f"radtriage phantoms --seed {made['seed']} ({made['studies']} studies, generator "
                 f"{made['version']})" if made else str(data["root"]))
        held.update(
            set=f"{where}, split {data['split']}"
                + (f", study types {', '.join(data['study_types'])}" if data.get("study_types") else ""),
            studies=data["studies"], views=data["views"], threshold=result["threshold"]["value"],
            model=f"{result['model']['name']} {result['model']['version']}",
            by_study_type={t: {"studies": m["n"], "auroc": m["auroc"], "kappa": m["kappa"]}
                           for t, m in result["by_study_type"].items()})
        if overall.get("reliability"):
            held["reliability"] = overall["reliability"]
        scored = [s for s in result.get("studies", ()) if s["probability"] is not None]
        points = M.roc([s["label"] for s in scored], [s["probability"] for s in scored])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{source}: not a complete radtriage evaluation (missing {exc})") from None
    if points is not None:
        held["roc"] = roc_outline(points["fpr"], points["tpr"])
    return held


def roc_outline(fpr: Sequence[float], tpr: Sequence[float], digits: int = 5) -> dict[str, list[float]]:
    """The corners of an ROC curve (every point where its direction changes; the first and
    the last), rounded to ``digits``: the same curve in a few dozen points instead of one per
    study, small enough for a model card."""
    pts = [(round(float(x), digits), round(float(y), digits)) for x, y in zip(fpr, tpr)]
    pts = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
    keep = [pts[0]]
    for prev, cur, nxt in zip(pts, pts[1:], pts[2:]):
        turn = (cur[0] - prev[0]) * (nxt[1] - cur[1]) - (cur[1] - prev[1]) * (nxt[0] - cur[0])
        if abs(turn) > 1e-12:
            keep.append(cur)
    if len(pts) > 1:
        keep.append(pts[-1])
    return {"fpr": [x for x, _ in keep], "tpr": [y for _, y in keep]}


def evaluate(
    checkpoint: Path | str,
    data_root: Path | str,
    out_dir: Path | str,
    *,
    split: str = "valid",
    study_types: Iterable[str] | str | None = None,
    threshold: float | None = None,
    target_sensitivity: float = 0.95,
    batch_size: int = 16,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    workers: int = 0,
    allow_untrained: bool = False,
    fmt: ReportFormat = "md",
    layout: Literal["auto", "mura", "dicom"] = "auto",
    decode: DecodeOptions = DecodeOptions(),
    rules: SelectionRules = SelectionRules(),
    progress: TextIO | None = None,
    heatmap: Literal["cam", "gradcam"] | None = "cam",
) -> dict[str, Any]:
    """Score every labelled study of ``data_root`` with ``checkpoint``; write and return the metrics.

    ``heatmap``: the heatmap whose peaks the pointing game checks against the true boxes
    (phantoms'), None for no heatmaps.

    The model's preprocessing comes from its card only. ``threshold`` defaults to the card's (if
    it records one), else 0.5. ``workers``: preparation processes as in the daemon (0: one per
    core, 1: in this thread). ``decode``/``rules``: the daemon's run-time decoding options and
    selection rules (defaults: config.yaml's defaults).

    Raises ValueError (a bad argument), DatasetError (no data, or malformed truth),
    inference.errors.CheckpointError (the model cannot be used), EvaluationError (scoring
    failed, nothing scored, output not written).
    """
    from inference.errors import CheckpointError
    from inference.model import Scorer, load_checkpoint, select_device

    if fmt not in ("md", "html"):
        raise ValueError(f"report format {fmt!r}: md or html")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity {target_sensitivity} is not in (0, 1]")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not in [0, 1]")
    if batch_size < 1 or workers < 0:
        raise ValueError("batch size must be at least 1 and workers at least 0")
    checkpoint, data_root, out_dir = Path(checkpoint), Path(data_root), Path(out_dir)
    wanted = parse_study_types(study_types)
    chosen_layout, views = read_views(data_root, split, wanted, layout)
    if not views:
        raise DatasetError(f"{data_root}: no study found in split {split!r}"
                           + (f" of type {', '.join(wanted)}" if wanted else ""))

    model, card = load_checkpoint(checkpoint, allow_untrained=allow_untrained)
    try:
        prep = Preprocessing.from_card(card.preprocessing)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: the card's preprocessing is unusable: {exc}") from exc
    scorer = Scorer(model, card, device=select_device(device), batch_size=batch_size)
    if threshold is not None:
        thr, source = float(threshold), "argument"
    elif _card_threshold(card) is not None:
        thr, source = _card_threshold(card), "model card"
    else:
        thr, source = DEFAULT_THRESHOLD, "default"
    log.info("evaluating %s %s on %d views of %s (%s layout)", card.name, card.version,
             len(views), data_root, chosen_layout)

    probabilities, errors, peaks = score_views(scorer, views, prep, decode, rules, workers=workers,
                                               progress=progress, heatmap=heatmap)

    from inference.policy import study_probability

    index = {id(v): i for i, v in enumerate(views)}
    studies: list[dict[str, Any]] = []
    for key, members in group_by_study(views).items():
        view_rows = []
        for v in members:
            i = index[id(v)]
            view_rows.append({"path": _relative(v.path, data_root), "sop_instance_uid": v.sop_instance_uid,
                              "probability": probabilities[i], "error": errors[i]})
        studies.append({"study": key, "study_type": members[0].study_type, "label": members[0].label,
                        "probability": study_probability(r["probability"] for r in view_rows),
                        "views": view_rows})
    scored = [s for s in studies if s["probability"] is not None]
    if not scored:
        first = next((e for e in errors if e), "no reason recorded")
        raise EvaluationError(f"none of the {len(studies)} studies could be scored; the first "
                              f"view's reason: {first}")
    labels = [s["label"] for s in scored]
    probs = [s["probability"] for s in scored]
    types = [s["study_type"] for s in scored]
    overall = M.study_metrics(labels, probs, thr, target_sensitivity=target_sensitivity)
    per_type = M.by_study_type(labels, probs, types, thr, target_sensitivity=target_sensitivity,
                               order=MURA_STUDY_TYPES)

    report_name = f"report.{fmt}"
    result: dict[str, Any] = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"checkpoint": str(checkpoint), "name": card.name, "version": card.version,
                  "arch": card.arch, "trained": card.trained, "display_name": card.display_name,
                  "notice": card.notice,
                  "preprocessing": prep.to_card()},
        "data": {"root": str(data_root), "layout": chosen_layout, "split": split,
                 "study_types": list(wanted) if wanted else None,
                 "studies": len(scored), "studies_not_analysed": len(studies) - len(scored),
                 "views": len(views), "views_not_analysed": sum(p is None for p in probabilities),
                 "phantoms": phantoms_of(data_root)},
        "threshold": {"value": thr, "source": source},
        "target_sensitivity": target_sensitivity,
        "aggregation": "study probability = mean of its scored views' probabilities (MURA)",
        "binning": M.BINNING,
        "overall": overall,
        "by_study_type": per_type,
        "pointing_game": {
            **({"available": False, "reason": POINTING_GAME_UNAVAILABLE, "hit_rate": None,
                "views": 0, "by_finding": {}} if not heatmap
               else pointing_game(views, [v.label for v in views], peaks)),
            "method": heatmap, "views_with_boxes": sum(bool(v.boxes) for v in views)},
        "studies": studies,
        "files": {"metrics": "metrics.json", "report": report_name, "roc": "roc.png",
                  "reliability": "reliability.png"},
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        curves = [("overall", labels, probs)]
        if len(per_type) > 1:
            for name in per_type:
                idx = [i for i, t in enumerate(types) if (t or M.UNKNOWN_TYPE) == name]
                curves.append((name, [labels[i] for i in idx], [probs[i] for i in idx]))
        operating = None
        if overall["sensitivity"] is not None and overall["specificity"] is not None:
            operating = (1.0 - overall["specificity"], overall["sensitivity"])
        plot_roc(out_dir / "roc.png", curves, operating, thr)
        plot_reliability(out_dir / "reliability.png", overall["reliability"], overall["ece"])
        blocks = _blocks(result)
        title = f"Evaluation of {card.display_name} {card.version}"
        text = _markdown(blocks) if fmt == "md" else _html(blocks, title)
        (out_dir / report_name).write_text(text, encoding="utf-8")
        with (out_dir / "metrics.json").open("w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, allow_nan=False)
            f.write("\n")
    except OSError as exc:
        raise EvaluationError(f"{out_dir}: cannot write the report: {exc.strerror or exc}") from exc
    return result


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# -- command line ------------------------------------------------------------------------------


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``evaluate`` subcommand's arguments (what :func:`evaluate_cli` reads)."""
    parser.add_argument("checkpoint", help="radtriage checkpoint (.pt)")
    parser.add_argument("data_root", help="folder holding MURA-v1.1/ or dicom/truth.csv")
    parser.add_argument("--out", required=True, help="folder for metrics.json, the report and the plots")
    parser.add_argument("--split", default="valid", help="split to evaluate (default: valid)")
    parser.add_argument("--study-types", help="only these study types, comma-separated (e.g. WRIST,HAND)")
    parser.add_argument("--threshold", type=_unit_interval,
                        help="operating threshold (default: the model card's, else 0.5)")
    parser.add_argument("--target-sensitivity", type=_unit_interval, default=0.95,
                        help="report the highest threshold reaching this sensitivity (default: 0.95)")
    parser.add_argument("--format", choices=("md", "html"), default="md", help="report format (default: md)")
    parser.add_argument("--layout", choices=("auto", "mura", "dicom"), default="auto",
                        help="data layout (default: whichever DATA_ROOT holds)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--heatmap", choices=("cam", "gradcam", "none"), default="cam",
                        help="heatmap for the pointing game (default: cam; none: no heatmaps)")
    parser.add_argument("--batch-size", type=_count(1), default=16)
    parser.add_argument("--workers", type=_count(0), default=0,
                        help="preparation processes (0: one per core, 1: none)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="accept a checkpoint whose card says untrained (plumbing tests only)")
    return parser


def evaluate_cli(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run :func:`evaluate` from parsed arguments; one line on ``out`` when done, on ``err`` when not."""
    from inference.errors import CheckpointError

    data_root = Path(args.data_root)
    if not data_root.is_dir():
        print(f"radtriage: cannot evaluate: {data_root}: no such folder", file=err)
        return EXIT_USAGE
    try:
        result = evaluate(
            args.checkpoint, data_root, args.out, split=args.split, study_types=args.study_types,
            threshold=args.threshold, target_sensitivity=args.target_sensitivity,
            batch_size=args.batch_size, device=args.device, workers=args.workers,
            allow_untrained=args.allow_untrained, fmt=args.format,
            layout=getattr(args, "layout", "auto"), progress=err,
            heatmap=None if getattr(args, "heatmap", "cam") == "none" else getattr(args, "heatmap", "cam"))
    except (DatasetError, ValueError) as exc:
        print(f"radtriage: cannot evaluate: {exc}", file=err)
        return EXIT_USAGE
    except (CheckpointError, EvaluationError) as exc:
        print(f"radtriage: cannot evaluate: {exc}", file=err)
        return EXIT_FAILURE
    o = result["overall"]
    print(f"{result['data']['studies']} studies ({result['data']['studies_not_analysed']} not analysed): "
          f"accuracy {_num(o['accuracy'])}, kappa {_num(o['kappa'])}, AUROC {_num(o['auroc'])} at "
          f"threshold {result['threshold']['value']:g}; report: "
          f"{Path(args.out) / result['files']['report']}", file=out)
    return EXIT_OK
