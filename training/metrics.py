"""Study-level metrics of a binary abnormality classifier (the MURA evaluation), pure.

Every function takes plain sequences (labels 0/1, probabilities in [0, 1]) and returns plain
Python values, so the evaluator can write them to JSON as they are. Nothing here reads a file
or a model; the counting is scikit-learn's (``confusion_matrix``, ``cohen_kappa_score``,
``roc_auc_score``, ``roc_curve``, ``calibration_curve``), the definitions are in
``docs/evaluation.md`` and below.

Conventions:

* a study is called abnormal when its probability *reaches* the threshold,
  ``probability >= threshold`` (:func:`inference.policy.is_abnormal`);
* a metric that is undefined on the given studies is ``None``, never NaN and never a warning:
  AUROC with one class only, sensitivity without abnormal studies, specificity without normal
  ones, kappa when labels and calls all fall in one and the same class;
* calibration uses :data:`ECE_BINS` equal-width bins of the predicted probability:
  ``[0, 0.1], (0.1, 0.2], ..., (0.9, 1.0]`` (a probability on an inner edge belongs to the
  lower bin, as in scikit-learn's ``calibration_curve``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import numpy as np

#: Equal-width bins of the predicted probability for the reliability diagram and the ECE.
ECE_BINS = 10
#: How the per-study-type breakdown names studies whose type is unknown.
UNKNOWN_TYPE = "UNKNOWN"
#: Stated in every metrics.json, so a reader knows how the calibration numbers were made.
BINNING = (f"{ECE_BINS} equal-width bins of the predicted probability, [0, 0.1], (0.1, 0.2], ..., "
           "(0.9, 1]; ECE = sum over bins of (studies in bin / studies) x |fraction abnormal - "
           "mean probability|")


def _arrays(labels: Iterable[int], probabilities: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies: labels int 0/1, probabilities float64 in [0, 1], same length."""
    y = np.asarray(list(labels), dtype=np.int64)
    p = np.asarray(list(probabilities), dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (abnormal), not {sorted(set(y.tolist()) - {0, 1})}")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


# -- the parts ----------------------------------------------------------------------------------


def predictions(probabilities: Iterable[float], threshold: float) -> np.ndarray:
    """1 where the probability reaches the threshold (``p >= threshold``), else 0."""
    return (np.asarray(list(probabilities), dtype=np.float64) >= threshold).astype(np.int64)


def confusion(labels: Sequence[int], predicted: Sequence[int]) -> list[list[int]]:
    """``[[tn, fp], [fn, tp]]``: rows the truth (normal, abnormal), columns the call."""
    if len(labels) == 0:
        return [[0, 0], [0, 0]]
    from sklearn.metrics import confusion_matrix  # imported on use: the CLI starts faster

    cm = confusion_matrix(np.asarray(labels), np.asarray(predicted), labels=[0, 1])
    return [[int(v) for v in row] for row in cm]


def kappa(labels: Sequence[int], predicted: Sequence[int]) -> float | None:
    """Cohen's kappa of truth and call: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the observed agreement (accuracy); ``p_e`` the agreement expected by chance,
    ``P(truth 0) P(call 0) + P(truth 1) P(call 1)``. None where ``p_e = 1`` (truth and calls all
    one and the same class), where kappa is 0/0.
    """
    y, c = np.asarray(labels), np.asarray(predicted)
    if y.size == 0 or len(set(y.tolist()) | set(c.tolist())) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(y, c, labels=[0, 1]))


def auroc(labels: Sequence[int], probabilities: Sequence[float]) -> float | None:
    """Area under the ROC curve: the probability that a random abnormal study scores higher
    than a random normal one, ties counting one half. None with only one class."""
    y, p = _arrays(labels, probabilities)
    if len(set(y.tolist())) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def roc(labels: Sequence[int], probabilities: Sequence[float]) -> dict[str, list[float]] | None:
    """Every point of the ROC curve (``fpr``, ``tpr``, ``thresholds``; the first threshold is
    infinite, nothing called abnormal), or None with only one class."""
    y, p = _arrays(labels, probabilities)
    if len(set(y.tolist())) < 2:
        return None
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def reliability(labels: Sequence[int], probabilities: Sequence[float],
                n_bins: int = ECE_BINS) -> tuple[float | None, list[dict[str, Any]]]:
    """(expected calibration error, the reliability diagram's bins).

    Bins are equal-width over [0, 1]: ``[0, 1/n]``, ``(1/n, 2/n]``, ..., ``((n-1)/n, 1]``. For each
    bin: ``count``, ``mean_probability`` (the mean predicted probability) and
    ``fraction_positive`` (the share of abnormal studies; both None for an empty bin).
    ``ECE = sum_b (count_b / N) * |fraction_positive_b - mean_probability_b|``, None when N = 0.
    This is the calibration of P(abnormal) itself, not of the confidence in the called class.
    """
    y, p = _arrays(labels, probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # the same assignment calibration_curve makes (an inner edge belongs to the lower bin)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    bins: list[dict[str, Any]] = [
        {"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": int(counts[i]),
         "mean_probability": None, "fraction_positive": None} for i in range(n_bins)]
    if y.size == 0:
        return None, bins
    from sklearn.calibration import calibration_curve

    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform", pos_label=1)
    filled = np.nonzero(counts)[0]
    if len(filled) != len(prob_true):  # cannot happen unless scikit-learn changes its binning
        raise RuntimeError("calibration_curve's bins do not match the documented binning")
    ece = 0.0
    for i, frac, mean in zip(filled, prob_true, prob_pred):
        bins[i]["mean_probability"], bins[i]["fraction_positive"] = float(mean), float(frac)
        ece += counts[i] / y.size * abs(float(frac) - float(mean))
    return float(ece), bins


def threshold_for_sensitivity(labels: Sequence[int], probabilities: Sequence[float],
                              target: float) -> float:
    """The highest threshold whose sensitivity (``p >= threshold``) reaches ``target``.

    Sensitivity only changes at the probabilities of abnormal studies, so the answer is one of
    them: the k-th highest, with k the smallest number of abnormal studies whose share reaches
    ``target`` (``k / positives >= target``). Ties: every study whose probability equals the
    threshold is called abnormal, so where abnormal studies tie at it the sensitivity reached
    is above the target, and normal studies tied at it are false positives; no threshold
    between two equal probabilities exists to separate them.

    Raises ValueError when ``target`` is not in (0, 1] or there is no abnormal study.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity {target} is not in (0, 1]")
    y, p = _arrays(labels, probabilities)
    positives = np.sort(p[y == 1])[::-1]
    if positives.size == 0:
        raise ValueError("no abnormal study: sensitivity is undefined")
    k = next(k for k in range(1, positives.size + 1) if k / positives.size >= target)
    return float(positives[k - 1])


def threshold_for_max_kappa(labels: Sequence[int], probabilities: Sequence[float]) -> tuple[float, float]:
    """The threshold (``p >= threshold``) whose calls agree best with the truth: ``(threshold, kappa)``.

    Calls only change at the studies' probabilities, so every distinct probability is tried and
    the one with the highest Cohen's kappa (MURA's headline metric) wins; where several give the
    same kappa, the lowest wins (more abnormal studies flagged: the safer side for triage).
    The sweep counts ``tp`` and ``fp`` above each candidate at once and applies :func:`kappa`'s
    formula to them.

    Raises ValueError when the studies are all normal or all abnormal: no threshold separates them.
    """
    y, p = _arrays(labels, probabilities)
    n, positives = int(y.size), int(y.sum())
    if positives == 0 or positives == n:
        raise ValueError("the studies are all of one class: kappa cannot be maximised")
    candidates = np.unique(p)                          # ascending
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    tp = positives - np.searchsorted(pos, candidates, side="left")   # abnormal studies with p >= t
    fp = (n - positives) - np.searchsorted(neg, candidates, side="left")
    tn = (n - positives) - fp
    called = tp + fp
    p_o = (tp + tn) / n
    p_e = (positives * called + (n - positives) * (n - called)) / (n * n)
    kappas = (p_o - p_e) / (1.0 - p_e)                 # p_e < 1: both truth classes are present
    best = int(np.flatnonzero(kappas >= kappas.max() - 1e-12)[0])  # the lowest of any tie
    return float(candidates[best]), float(kappas[best])


def pointing_game(peaks: Sequence[tuple[float, float] | None],
                  boxes: Sequence[Sequence[Sequence[float]]]) -> float | None:
    """The share of views with a true box whose heatmap peak falls inside one of its boxes.

    ``peaks[i]`` is view i's heatmap maximum as ``(x, y)`` (column, row) in the same pixel
    coordinates as its boxes, or None where the view has no heatmap; ``boxes[i]`` its boxes,
    each ``(x0, y0, x1, y1, ...)`` (only the first four items are read; edges inclusive). Views
    without boxes do not count; a view with boxes but no peak counts as a miss. None when no
    view has a box.
    """
    if len(peaks) != len(boxes):
        raise ValueError(f"{len(peaks)} peaks but {len(boxes)} lists of boxes")
    hits = counted = 0
    for peak, view_boxes in zip(peaks, boxes):
        if not view_boxes:
            continue
        counted += 1
        if peak is None:
            continue
        x, y = peak
        if any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in view_boxes):
            hits += 1
    return _ratio(hits, counted)


# -- everything about one group of studies ------------------------------------------------------


def study_metrics(labels: Sequence[int], probabilities: Sequence[float], threshold: float,
                  *, target_sensitivity: float | None = None) -> dict[str, Any]:
    """Every metric of one group of studies at ``threshold``, JSON-ready.

    Keys: ``n``, ``positives``, ``negatives``, ``threshold``, ``accuracy``, ``kappa``, ``auroc``,
    ``sensitivity`` (tp / (tp + fn)), ``specificity`` (tn / (tn + fp)), ``confusion_matrix``
    (``[[tn, fp], [fn, tp]]``), ``ece``, ``reliability`` (the bins of :func:`reliability`) and,
    with ``target_sensitivity``, ``at_target_sensitivity``: the threshold of
    :func:`threshold_for_sensitivity` and the sensitivity and specificity reached there (None
    without abnormal studies), and ``max_kappa``: the threshold of :func:`threshold_for_max_kappa`
    with the kappa, sensitivity and specificity it reaches (None where one class is missing).
    """
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ValueError(f"threshold {threshold} is not in [0, 1]")
    y, p = _arrays(labels, probabilities)
    called = predictions(p, threshold)
    (tn, fp), (fn, tp) = confusion(y, called)
    ece, bins = reliability(y, p)
    out: dict[str, Any] = {
        "n": int(y.size),
        "positives": int(tp + fn),
        "negatives": int(tn + fp),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, int(y.size)),
        "kappa": kappa(y, called),
        "auroc": auroc(y, p),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "ece": ece,
        "reliability": bins,
    }
    def rates_at(t: float) -> dict[str, Any]:
        (tn2, fp2), (fn2, tp2) = confusion(y, predictions(p, t))
        return {"sensitivity": _ratio(tp2, tp2 + fn2), "specificity": _ratio(tn2, tn2 + fp2)}

    if target_sensitivity is not None:
        at = None
        if tp + fn:
            t = threshold_for_sensitivity(y, p, target_sensitivity)
            at = {"target": float(target_sensitivity), "threshold": t, **rates_at(t)}
        out["at_target_sensitivity"] = at
    best = None
    if tp + fn and tn + fp:
        t, k = threshold_for_max_kappa(y, p)
        best = {"threshold": t, "kappa": k, **rates_at(t)}
    out["max_kappa"] = best
    return out


def by_study_type(labels: Sequence[int], probabilities: Sequence[float],
                  study_types: Sequence[str | None], threshold: float, *,
                  target_sensitivity: float | None = None,
                  order: Sequence[str] = ()) -> "OrderedDict[str, dict[str, Any]]":
    """:func:`study_metrics` for each study type; a None type is :data:`UNKNOWN_TYPE`.

    Types come in ``order`` first (e.g. MURA's), then the others alphabetically, UNKNOWN last.
    """
    if not len(labels) == len(probabilities) == len(study_types):
        raise ValueError("labels, probabilities and study types differ in length")
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(study_types):
        groups.setdefault(t or UNKNOWN_TYPE, []).append(i)
    ranked = sorted(groups, key=lambda t: (t == UNKNOWN_TYPE, t not in order,
                                           list(order).index(t) if t in order else 0, t))
    return OrderedDict(
        (t, study_metrics([labels[i] for i in groups[t]], [probabilities[i] for i in groups[t]],
                          threshold, target_sensitivity=target_sensitivity))
        for t in ranked)

