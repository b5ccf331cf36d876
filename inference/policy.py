"""Pure policy: how view probabilities become a study probability and a worklist priority.

No torch here: these functions are used by the daemon, the CLI and the tests alike.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def study_probability(view_probabilities: Iterable[float | None]) -> float | None:
    """The MURA rule: the study probability is the mean of its scored views.

    Views that could not be scored (``None``) are left out; with none scored the study has no
    probability (it is reported as not analysed).
    """
    scored = [p for p in view_probabilities if p is not None]
    if not scored:
        return None
    for p in scored:
        if not (0.0 <= p <= 1.0) or math.isnan(p):
            raise ValueError(f"view probability {p!r} outside [0, 1]")
    return math.fsum(scored) / len(scored)


def is_abnormal(probability: float, threshold: float) -> bool:
    """A study is abnormal when its probability reaches the threshold."""
    return probability >= threshold


def priority_for(
    probability: float | None,
    rules: Sequence[tuple[float, str]],
    default: str,
) -> str:
    """The priority of the first rule, highest ``min_probability`` first, that ``probability`` reaches.

    ``rules`` are ``(min_probability, priority)`` pairs in any order. A study without a
    probability (not analysed) gets ``default``: the radiologist reads it as if no AI had seen it.
    """
    if probability is None:
        return default
    for min_probability, priority in sorted(rules, key=lambda r: -r[0]):
        if probability >= min_probability:
            return priority
    return default
