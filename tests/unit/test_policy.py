"""inference.policy: view probabilities -> study probability -> abnormal flag and priority."""
from __future__ import annotations

import itertools
import math

import pytest

from daemon.config import PriorityConfig
from inference.policy import is_abnormal, priority_for, study_probability

DEFAULT = PriorityConfig()
RULES = [(r.min_probability, r.priority) for r in DEFAULT.rules]


def test_default_rules_are_the_documented_ones() -> None:
    assert sorted(RULES) == [(0.5, "ELEVATED"), (0.8, "HIGH")]
    assert DEFAULT.default == "ROUTINE"


# -- study_probability -------------------------------------------------------------------------


def test_mean_of_scored_views() -> None:
    assert study_probability([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert study_probability([0.7]) == 0.7


def test_unscored_views_are_left_out() -> None:
    assert study_probability([0.2, None, 0.6, None]) == pytest.approx(0.4)


@pytest.mark.parametrize("views", [[], [None], [None, None]])
def test_no_scored_view_gives_none(views: list) -> None:
    assert study_probability(views) is None


def test_accepts_a_generator() -> None:
    assert study_probability(p for p in (0.1, None, 0.3)) == pytest.approx(0.2)


def test_bounds_are_allowed() -> None:
    assert study_probability([0.0, 1.0]) == 0.5
    assert study_probability([0.0]) == 0.0


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_values_outside_unit_interval_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        study_probability([0.5, bad])


def test_mean_is_exact_for_many_views() -> None:
    # fsum: no drift with many small values
    assert study_probability([0.1] * 10) == 0.1


# -- priority_for --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (1.0, "HIGH"),
        (0.8, "HIGH"),         # boundary inclusive
        (0.79, "ELEVATED"),
        (0.5, "ELEVATED"),     # boundary inclusive
        (0.49, "ROUTINE"),
        (0.0, "ROUTINE"),
        (None, "ROUTINE"),     # not analysed: the default
    ],
)
def test_default_rules(p: float | None, expected: str) -> None:
    assert priority_for(p, RULES, DEFAULT.default) == expected


def test_none_gets_the_given_default_even_if_a_rule_starts_at_zero() -> None:
    rules = [(0.0, "ELEVATED"), (0.9, "HIGH")]
    assert priority_for(None, rules, "ROUTINE") == "ROUTINE"
    assert priority_for(0.0, rules, "ROUTINE") == "ELEVATED"


def test_no_rules_gives_default() -> None:
    assert priority_for(0.99, [], "ROUTINE") == "ROUTINE"


@pytest.mark.parametrize("order", list(itertools.permutations(
    [(0.8, "HIGH"), (0.5, "ELEVATED"), (0.3, "ELEVATED")])))
def test_rule_order_does_not_matter(order: tuple) -> None:
    got = [priority_for(p, list(order), "ROUTINE") for p in (0.95, 0.8, 0.6, 0.4, 0.29, None)]
    assert got == ["HIGH", "HIGH", "ELEVATED", "ELEVATED", "ROUTINE", "ROUTINE"]


def test_priority_never_decreases_with_probability() -> None:
    rank = {"HIGH": 0, "ELEVATED": 1, "ROUTINE": 2}
    levels = [rank[priority_for(i / 1000, RULES, "ROUTINE")] for i in range(1001)]
    assert levels == sorted(levels, reverse=True)
    assert set(levels) == {0, 1, 2}


# -- is_abnormal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "threshold", "expected"),
    [(0.5, 0.5, True), (0.4999, 0.5, False), (0.9, 0.5, True), (0.7, 0.75, False), (0.75, 0.75, True)],
)
def test_is_abnormal_boundary(p: float, threshold: float, expected: bool) -> None:
    assert is_abnormal(p, threshold) is expected
