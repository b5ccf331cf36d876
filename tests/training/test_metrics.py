"""training.metrics against numbers worked out by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    BINNING,
    ECE_BINS,
    UNKNOWN_TYPE,
    auroc,
    by_study_type,
    confusion,
    kappa,
    pointing_game,
    reliability,
    study_metrics,
    threshold_for_max_kappa,
    threshold_for_sensitivity,
)

# Ten studies, four abnormal (label 1) and six normal (label 0).
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROBS = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05]
# At threshold 0.5 (abnormal when p >= 0.5):
#   abnormal studies 0.9, 0.8, 0.6 called abnormal, 0.3 missed   -> tp 3, fn 1
#   normal studies: 0.7 called abnormal, the other five not       -> fp 1, tn 5


def test_confusion_accuracy_sensitivity_specificity() -> None:
    m = study_metrics(LABELS, PROBS, 0.5)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]      # [[tn, fp], [fn, tp]]
    assert (m["n"], m["positives"], m["negatives"]) == (10, 4, 6)
    assert m["accuracy"] == pytest.approx(8 / 10)           # (tp + tn) / n = (3 + 5) / 10
    assert m["sensitivity"] == pytest.approx(3 / 4)         # tp / (tp + fn)
    assert m["specificity"] == pytest.approx(5 / 6)         # tn / (tn + fp)
    assert m["threshold"] == 0.5


def test_kappa_by_hand() -> None:
    # p_o = accuracy = 8/10 = 0.8
    # truth abnormal 4/10, called abnormal (tp + fp) 4/10; truth normal 6/10, called normal 6/10
    # p_e = 0.4 * 0.4 + 0.6 * 0.6 = 0.16 + 0.36 = 0.52
    # kappa = (p_o - p_e) / (1 - p_e) = 0.28 / 0.48 = 7/12
    assert study_metrics(LABELS, PROBS, 0.5)["kappa"] == pytest.approx(7 / 12)


def test_auroc_by_hand_counts_pairs_ties_half() -> None:
    # 4 x 6 = 24 (abnormal, normal) pairs; for each abnormal study, the normal ones it outranks:
    #   0.9 -> all 6; 0.8 -> all 6; 0.6 -> 5 (not 0.7);
    #   0.3 -> 3 (0.2, 0.1, 0.05) + one tie with 0.3 counting 1/2 = 3.5
    # AUROC = (6 + 6 + 5 + 3.5) / 24 = 20.5 / 24 = 41/48
    assert auroc(LABELS, PROBS) == pytest.approx(41 / 48)
    assert study_metrics(LABELS, PROBS, 0.5)["auroc"] == pytest.approx(41 / 48)


def test_perfect_and_inverted_ranking() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # the one pair is a tie


def test_undefined_metrics_are_none_without_warnings() -> None:
    # one class only: AUROC undefined; all normal and all called normal: kappa 0/0
    m = study_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert m["auroc"] is None
    assert m["kappa"] is None
    assert m["sensitivity"] is None          # no abnormal study
    assert m["specificity"] == 1.0
    assert m["accuracy"] == 1.0
    m = study_metrics([1, 1], [0.9, 0.2], 0.5)
    assert m["auroc"] is None and m["specificity"] is None and m["sensitivity"] == 0.5
    # one class but calls of both: p_e = p_o, kappa 0
    assert kappa([0, 0, 0, 0], [0, 1, 0, 1]) == pytest.approx(0.0)
    empty = study_metrics([], [], 0.5)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ece"] is None


def test_ece_by_hand() -> None:
    labels = [0, 0, 1, 1, 1, 0]
    probs = [0.05, 0.15, 0.15, 0.85, 0.95, 0.95]
    # bin [0, 0.1]:    0.05             -> count 1, mean 0.05, abnormal 0/1 -> |0 - 0.05|   = 0.05
    # bin (0.1, 0.2]:  0.15, 0.15       -> count 2, mean 0.15, abnormal 1/2 -> |0.5 - 0.15| = 0.35
    # bin (0.8, 0.9]:  0.85             -> count 1, mean 0.85, abnormal 1/1 -> |1 - 0.85|   = 0.15
    # bin (0.9, 1]:    0.95, 0.95       -> count 2, mean 0.95, abnormal 1/2 -> |0.5 - 0.95| = 0.45
    # ECE = (1 * 0.05 + 2 * 0.35 + 1 * 0.15 + 2 * 0.45) / 6 = 1.8 / 6 = 0.3
    ece, bins = reliability(labels, probs)
    assert ece == pytest.approx(0.3)
    assert len(bins) == ECE_BINS == 10
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 2]
    assert bins[1]["mean_probability"] == pytest.approx(0.15)
    assert bins[1]["fraction_positive"] == pytest.approx(0.5)
    assert bins[2]["mean_probability"] is None and bins[2]["fraction_positive"] is None
    assert (bins[0]["lower"], bins[0]["upper"]) == (0.0, pytest.approx(0.1))
    assert study_metrics(labels, probs, 0.5)["ece"] == pytest.approx(0.3)
    assert "10 equal-width bins" in BINNING


def test_bin_edges_belong_to_the_lower_bin() -> None:
    # 0 and 0.1 in [0, 0.1]; 0.2 in (0.1, 0.2]; 0.5 in (0.4, 0.5]; 1.0 in (0.9, 1]
    _, bins = reliability([0, 0, 0, 0, 1], [0.0, 0.1, 0.2, 0.5, 1.0])
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 1, 0, 0, 0, 0, 1]


def test_perfectly_calibrated_bin_has_no_error() -> None:
    # eight studies at 0.25, of which a quarter (2) are abnormal: |0.25 - 0.25| = 0
    ece, _ = reliability([1, 1, 0, 0, 0, 0, 0, 0], [0.25] * 8)
    assert ece == pytest.approx(0.0)


def test_threshold_for_sensitivity() -> None:
    # abnormal probabilities, highest first: 0.9, 0.8, 0.6, 0.3
    # target 0.5  -> 2 of 4 needed -> the 2nd highest, 0.8
    # target 0.75 -> 3 of 4        -> 0.6
    # target 0.76 -> 4 of 4        -> 0.3;  target 0.95 and 1.0 likewise
    assert threshold_for_sensitivity(LABELS, PROBS, 0.5) == 0.8
    assert threshold_for_sensitivity(LABELS, PROBS, 0.75) == 0.6
    assert threshold_for_sensitivity(LABELS, PROBS, 0.76) == 0.3
    assert threshold_for_sensitivity(LABELS, PROBS, 0.95) == 0.3
    assert threshold_for_sensitivity(LABELS, PROBS, 1.0) == 0.3
    # at 0.3 every abnormal study is called, and the normal 0.7, 0.4 and the tied 0.3: spec 3/6
    at = study_metrics(LABELS, PROBS, 0.5, target_sensitivity=0.95)["at_target_sensitivity"]
    assert at == {"target": 0.95, "threshold": 0.3, "sensitivity": 1.0, "specificity": 0.5}


def test_threshold_for_sensitivity_ties() -> None:
    # two abnormal studies tie at 0.6: target 1/3 needs one, but no threshold separates the
    # tie, so 0.6 calls both and reaches 2/3
    labels, probs = [1, 1, 1, 0], [0.6, 0.6, 0.2, 0.6]
    t = threshold_for_sensitivity(labels, probs, 1 / 3)
    assert t == 0.6
    m = study_metrics(labels, probs, t)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[0, 1], [1, 2]]  # the normal study tied at 0.6 is a false positive


def test_threshold_for_sensitivity_refuses() -> None:
    with pytest.raises(ValueError, match="no abnormal study"):
        threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError, match="not in"):
        threshold_for_sensitivity(LABELS, PROBS, 0.0)
    assert study_metrics([0, 0], [0.1, 0.2], 0.5, target_sensitivity=0.9)["at_target_sensitivity"] is None


def test_threshold_for_max_kappa_by_hand() -> None:
    # n 10, 4 abnormal; p_e = 0.4 * called/10 + 0.6 * (1 - called/10); kappa at each probability:
    #   t 0.9: tp 1 fp 0, p_o 0.7, p_e 0.58 -> 0.12/0.42 = 2/7
    #   t 0.8: tp 2 fp 0, p_o 0.8, p_e 0.56 -> 0.24/0.44 = 6/11
    #   t 0.7: tp 2 fp 1, p_o 0.7, p_e 0.54 -> 0.16/0.46 = 8/23
    #   t 0.6: tp 3 fp 1, p_o 0.8, p_e 0.52 -> 0.28/0.48 = 7/12   <- the highest
    #   t 0.4: tp 3 fp 2, p_o 0.7, p_e 0.50 -> 0.4
    #   t 0.3: tp 4 fp 3, p_o 0.7, p_e 0.46 -> 0.24/0.54 = 4/9;  lower thresholds less
    t, k = threshold_for_max_kappa(LABELS, PROBS)
    assert t == 0.6 and k == pytest.approx(7 / 12)
    assert k == pytest.approx(kappa(LABELS, [int(p >= t) for p in PROBS]))
    best = study_metrics(LABELS, PROBS, 0.5)["max_kappa"]
    assert best == {"threshold": 0.6, "kappa": pytest.approx(7 / 12), "sensitivity": 0.75,
                    "specificity": pytest.approx(5 / 6)}


def test_threshold_for_max_kappa_takes_the_lowest_of_a_tie_and_agrees_with_a_sweep() -> None:
    # 0.8 (tp 1 fp 0) and 0.3 (tp 2 fp 1) both give kappa 0.5 on these four studies
    assert threshold_for_max_kappa([1, 0, 1, 0], [0.8, 0.5, 0.3, 0.1]) == (0.3, pytest.approx(0.5))
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 200)
    probs = np.round(np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1), 2)   # with ties
    t, k = threshold_for_max_kappa(labels, probs)
    sweep = {float(c): kappa(labels, (probs >= c).astype(int)) for c in np.unique(probs)}
    assert k == pytest.approx(max(v for v in sweep.values() if v is not None))
    assert sweep[t] == pytest.approx(k)


def test_threshold_for_max_kappa_refuses_one_class() -> None:
    with pytest.raises(ValueError, match="all of one class"):
        threshold_for_max_kappa([1, 1], [0.1, 0.2])
    assert study_metrics([0, 0], [0.1, 0.2], 0.5)["max_kappa"] is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        study_metrics([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        study_metrics([0, 1], [0.1, 1.2], 0.5)
    with pytest.raises(ValueError, match="probabilities"):
        study_metrics([0, 1, 1], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError):
        study_metrics([0, 1], [0.1, 0.2], math.nan)


def test_confusion_has_both_classes_always() -> None:
    assert confusion([0, 0], [0, 0]) == [[2, 0], [0, 0]]


def test_by_study_type() -> None:
    types = ["WRIST", "HAND", None, "WRIST", "HAND", "WRIST", "ZEBRA", "HAND", "WRIST", None]
    out = by_study_type(LABELS, PROBS, types, 0.5, order=("HAND", "WRIST"))
    assert list(out) == ["HAND", "WRIST", "ZEBRA", UNKNOWN_TYPE]
    assert sum(m["n"] for m in out.values()) == 10
    assert out["WRIST"]["n"] == 4
    # WRIST (indices 0, 3, 5, 8): abnormal 0.9 (tp), abnormal 0.3 (fn), normal 0.4 and 0.1 (tn)
    assert out["WRIST"]["confusion_matrix"] == [[2, 0], [1, 1]]
    with pytest.raises(ValueError):
        by_study_type(LABELS, PROBS, types[:3], 0.5)


def test_pointing_game() -> None:
    peaks = [(5, 5), (50, 50), (10, 10), None, (3, 3)]
    boxes = [
        [(0, 0, 10, 10, "fracture")],        # inside -> hit
        [(0, 0, 10, 10)],                    # outside -> miss
        [(20, 20, 30, 30), (0, 0, 10, 10)],  # on the second box's corner (edges inclusive) -> hit
        [(0, 0, 1, 1)],                      # no heatmap peak -> miss
        [],                                  # no box: does not count
    ]
    assert pointing_game(peaks, boxes) == pytest.approx(2 / 4)
    assert pointing_game([(1, 1)], [[]]) is None
    with pytest.raises(ValueError):
        pointing_game([(1, 1)], [])
