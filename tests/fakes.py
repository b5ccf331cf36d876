"""Stand-ins for the outside systems the tests do not need for real."""
from __future__ import annotations

from dataclasses import dataclass

from inference.model import ModelCard


@dataclass
class FixedScorer:
    """A stand-in model: every prepared view gets ``probability``; records the batch sizes it saw."""

    probability: float
    card: ModelCard = ModelCard(name="fixed-test", version="9.9", trained=False)

    def __post_init__(self) -> None:
        self.calls: list[int] = []

    def score(self, views):  # type: ignore[no-untyped-def]
        self.calls.append(len(views))
        return [self.probability] * len(views)


@dataclass
class HeatmapScorer(FixedScorer):
    """FixedScorer with heatmaps: a 7 x 7 map, zero but for one hot cell (row, column)."""

    hot: tuple[int, int] = (1, 5)

    def score_with_heatmaps(self, views, method="cam"):  # type: ignore[no-untyped-def]
        import numpy as np

        self.calls.append(len(views))
        hm = np.zeros((7, 7), np.float32)
        hm[self.hot] = 4.0
        return [(self.probability, hm.copy()) for _ in views]


def drawn_text(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Every line of text dicom_io.outputs burns into a summary image from now on, in order."""
    from dicom_io import outputs

    drawn: list[str] = []
    put = outputs._put

    def spy(img, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(text)
        return put(img, text, *args, **kwargs)

    monkeypatch.setattr(outputs, "_put", spy)
    return drawn
