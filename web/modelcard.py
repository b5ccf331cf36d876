"""The model card's metrics as the Model page shows them: one table per set of figures.

A card's ``metrics`` (``docs/models.md``) is free-form; what radtriage writes is
``{"set": ..., "auroc": ..., "kappa": ..., "by_study_type": {TYPE: {...}}, "held_out": {...}}``:
the training run's validation figures at the top level, and ``held_out`` (an evaluation on data
the training never saw, :func:`training.evaluate.held_out_metrics`), which may carry the ROC
curve (``roc``: ``fpr``, ``tpr``) and the reliability diagram's bins (``reliability``). Each
mapping with any of :data:`COLUMNS` is one set; held out comes first, since it is the one that
says how the model does on new data.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

#: The figures of a row, in the table's order.
COLUMNS = ("accuracy", "kappa", "auroc", "sensitivity", "specificity", "ece", "threshold")
#: Keys of a set that are not "other figures": the columns, and what the heading shows.
_DESCRIBED = {*COLUMNS, "set", "studies", "n", "by_study_type", "roc", "reliability"}
TITLES = {"held_out": "Held out", "validation": "Validation (during training)"}
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a set's key is part of its plots' URLs


def title_of(key: str) -> str:
    """A set's heading: "Held out", "Validation (during training)", else its key."""
    return TITLES.get(key, key.replace("_", " ").capitalize())


def number(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _has_figures(value: Any) -> bool:
    return isinstance(value, Mapping) and any(number(value.get(k)) is not None for k in COLUMNS)


def named_sets(metrics: Mapping[str, Any] | None) -> list[tuple[str, Mapping[str, Any]]]:
    """(key, figures) of each set in ``metrics``: ``held_out`` first, then the card's own
    figures (key ``validation``), then any other nested set by its key."""
    if not isinstance(metrics, Mapping):
        return []
    nested = [(str(k), v) for k, v in metrics.items()
              if k != "by_study_type" and _KEY.match(str(k)) and _has_figures(v)]
    own = [("validation" if "validation" not in metrics else "card", metrics)] \
        if _has_figures(metrics) else []
    return ([kv for kv in nested if kv[0] == "held_out"] + own
            + [kv for kv in nested if kv[0] != "held_out"])


def _row(group: str, figures: Mapping[str, Any], threshold: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"group": group,
                           "studies": _count(figures.get("studies", figures.get("n")))}
    row.update({k: number(figures.get(k)) for k in COLUMNS})
    if row["threshold"] is None:
        row["threshold"] = threshold  # a study type's kappa is measured at its set's threshold
    return row


def has_roc(figures: Mapping[str, Any]) -> bool:
    """An ROC plot can show something: the curve, or the operating point."""
    return roc_points(figures) is not None or operating_point(figures) is not None


def roc_points(figures: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    roc = figures.get("roc")
    if not isinstance(roc, Mapping):
        return None
    fpr, tpr = roc.get("fpr"), roc.get("tpr")
    if not isinstance(fpr, list) or not isinstance(tpr, list) or len(fpr) != len(tpr) or len(fpr) < 2:
        return None
    xs, ys = [number(x) for x in fpr], [number(y) for y in tpr]
    if any(v is None for v in xs + ys):
        return None
    return xs, ys  # type: ignore[return-value]


def operating_point(figures: Mapping[str, Any]) -> tuple[float, float] | None:
    """(1 - specificity, sensitivity) at the set's threshold."""
    sens, spec = number(figures.get("sensitivity")), number(figures.get("specificity"))
    return None if sens is None or spec is None else (1.0 - spec, sens)


def reliability_bins(figures: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    bins = figures.get("reliability")
    if not isinstance(bins, list) or not bins:
        return None
    out = []
    for b in bins:
        if not isinstance(b, Mapping) or number(b.get("lower")) is None \
                or number(b.get("upper")) is None or _count(b.get("count")) is None:
            return None
        out.append({"lower": number(b["lower"]), "upper": number(b["upper"]), "count": b["count"],
                    "mean_probability": number(b.get("mean_probability")),
                    "fraction_positive": number(b.get("fraction_positive"))})
    return out


def metric_sets(metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Each set as the page and ``/api/model`` show it: its key and title, what it was measured
    on, one row per group (``overall``, then each study type) with :data:`COLUMNS` (None where
    the card does not say), the other figures it records, and its plots' URLs (None: no data
    for that plot on the card)."""
    out = []
    for key, figures in named_sets(metrics):
        threshold = number(figures.get("threshold"))
        rows = [_row("overall", figures, threshold)]
        by_type = figures.get("by_study_type")
        if isinstance(by_type, Mapping):
            rows += [_row(str(t), m, threshold) for t, m in by_type.items() if isinstance(m, Mapping)]
        other = {str(k): v for k, v in figures.items()
                 if k not in _DESCRIBED and not isinstance(v, (Mapping, list))}
        out.append({
            "key": key, "title": title_of(key),
            "set": figures.get("set") if isinstance(figures.get("set"), str) else None,
            "rows": rows, "other": other,
            "plots": {"roc": f"/model/{key}/roc.png" if has_roc(figures) else None,
                      "reliability": f"/model/{key}/reliability.png"
                      if reliability_bins(figures) is not None else None},
        })
    return out


def plot_figures(metrics: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    """The figures of the set ``key`` (for its plots), or None."""
    return next((figures for k, figures in named_sets(metrics) if k == key), None)
