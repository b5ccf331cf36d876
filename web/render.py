"""Pictures for the study and upload pages, drawn server-side with the daemon's own code.

A view's heatmap overlay is drawn exactly as the summary image draws it: the stored instance is
decoded and shown by :mod:`dicom_io.pixels` (as the worker did), scaled to a thumbnail by
:func:`dicom_io.prepare.thumbnail`, and the stored heatmap mapped onto it through its stored
:class:`~dicom_io.geometry.ViewGeometry` by :func:`daemon.products._summary_views`, then
rendered by :func:`dicom_io.outputs.render_view_overlay`. When retention deleted the instance,
the summary Secondary Capture the result produced (which shows every view) is served instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from dicom_io.errors import DicomIOError
from dicom_io.sr import TriageReport, ViewScore

#: Width of the pictures the pages show, pixels.
OVERLAY_WIDTH = 768


class PictureUnavailable(Exception):
    """There is nothing to draw; the message says why."""


def png(rgb: np.ndarray) -> bytes:
    """uint8 RGB (or grey) -> PNG bytes."""
    img = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise PictureUnavailable("OpenCV could not encode the picture as PNG")
    return buf.tobytes()


def report_for(result: dict[str, Any], views: Sequence[ViewScore] = (),
               notice: str | None = None) -> TriageReport:
    """The header a picture carries, from a stored result (:func:`web.queries._result_dict`)."""
    name, _, version = result["model"].rpartition(" ")
    return TriageReport(probability=result["probability"], abnormal=result["abnormal"],
                        priority=result["priority"], threshold=result["threshold"],
                        algorithm_name=name or result["model"], algorithm_version=version or "-",
                        views=tuple(views), reason=result["reason"], notice=notice,
                        study_type=result["study_type"])


def overlay(report: TriageReport, *, sop_instance_uid: str, probability: float | None,
            error: str | None, heatmap: np.ndarray | None, geometry, thumbnail: np.ndarray | None,  # type: ignore[no-untyped-def]
            box: tuple[float, float, float, float] | None, label: str,
            width: int = OVERLAY_WIDTH) -> np.ndarray:
    """One view with its heatmap and peak region under the result's header (uint8 RGB)."""
    from daemon.products import ViewProduct, _summary_views
    from dicom_io.outputs import render_view_overlay

    [shown] = _summary_views([ViewProduct(sop_instance_uid, probability, error, heatmap, geometry,
                                          thumbnail, box, label)])
    return render_view_overlay(report, shown, width=width)


def stored_view_overlay(root: Path, info: dict[str, Any], opts, notice: str | None = None  # type: ignore[no-untyped-def]
                        ) -> bytes:
    """The PNG of one scored view (``info``: :func:`web.queries.view_score`) decoded from
    storage with ``opts`` (:class:`dicom_io.pixels.DecodeOptions`)."""
    from dicom_io.geometry import ViewGeometry
    from dicom_io.heatmaps import decode_heatmap
    from dicom_io.pixels import display_frames, read_dataset
    from dicom_io.prepare import thumbnail

    if not info["stored"]:
        raise PictureUnavailable("retention deleted this view's pixel data")
    try:
        ds = read_dataset(root / info["path"])
        grey = display_frames(ds, opts)[0]  # a multi-frame view shows its first frame
    except (DicomIOError, OSError) as exc:
        raise PictureUnavailable(f"the stored view cannot be shown: {exc}") from exc
    try:
        heatmap = decode_heatmap(info["heatmap"]) if info["heatmap"] else None
        geometry = ViewGeometry.from_dict(info["geometry"]) if info["geometry"] else None
    except (ValueError, KeyError, TypeError) as exc:
        raise PictureUnavailable(f"the stored heatmap cannot be read: {exc}") from exc
    label = "  ".join(p for p in (f"view {info['number']}", info["modality"] or "",
                                  info["result"]["study_type"] or "") if p)
    rgb = overlay(report_for(info["result"], notice=notice), sop_instance_uid=info["sop_instance_uid"],
                  probability=info["probability"], error=info["error"], heatmap=heatmap,
                  geometry=geometry, thumbnail=thumbnail(grey), box=info["peak_box"], label=label)
    return png(rgb)


def summary_png(root: Path, relpath: str) -> bytes:
    """The pixels of a summary Secondary Capture radtriage wrote, as PNG."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(root / relpath)
        rgb = ds.pixel_array
    except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
        raise PictureUnavailable(f"the summary image cannot be read: {exc}") from exc
    return png(np.asarray(rgb, dtype=np.uint8))


def metrics_plot(kind: str, figures: Any, title: str) -> bytes:
    """The PNG of a model card's set of figures (:mod:`web.modelcard`): ``roc`` (the curve
    where the card holds it, and the operating point at the set's threshold) or
    ``reliability`` (the diagram of :func:`training.evaluate.plot_reliability`). Drawn with
    matplotlib's Agg canvas, no pyplot state: safe in the server's threads."""
    import io

    from web import modelcard

    out = io.BytesIO()
    if kind == "reliability":
        from training.evaluate import plot_reliability

        bins = modelcard.reliability_bins(figures)
        if bins is None:
            raise PictureUnavailable("the model card holds no reliability bins for this set")
        plot_reliability(out, bins, modelcard.number(figures.get("ece")))  # type: ignore[arg-type]
        return out.getvalue()
    if kind != "roc" or not modelcard.has_roc(figures):
        raise PictureUnavailable(f"no {kind} plot for this set")
    _roc_figure(figures, title).savefig(out, format="png")
    return out.getvalue()


def _roc_figure(figures: Any, title: str) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from web import modelcard

    # the size and layout of training.evaluate.plot_roc's figure, so both look alike
    fig = Figure(figsize=(5.5, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    auc = modelcard.number(figures.get("auroc"))
    auc_text = "" if auc is None else f"AUROC {auc:.3f}"
    points = modelcard.roc_points(figures)
    if points is not None:
        ax.plot(points[0], points[1], linewidth=2.2, color="black",
                label=f"overall ({auc_text})" if auc_text else "overall")
    elif auc_text:
        ax.text(0.55, 0.3, f"{auc_text}\n(the card holds no curve: import the model\n"
                           "with --evaluation to keep it)", ha="center", va="center", fontsize=8)
    op = modelcard.operating_point(figures)
    threshold = modelcard.number(figures.get("threshold"))
    if op is not None:
        ax.plot([op[0]], [op[1]], marker="o", color="tab:red", linestyle="none", clip_on=False,
                zorder=5, label="operating point" + ("" if threshold is None else
                                                     f" (threshold {threshold:g})"))
    ax.legend(loc="lower right", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=f"ROC, study level: {title}")
    ax.set_aspect("equal")
    return fig
