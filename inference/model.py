"""DenseNet classifiers with one output, radtriage checkpoints and batched scoring.

A radtriage checkpoint is a ``torch.save`` of a plain dict, loadable with
``weights_only=True``::

    {"format": "radtriage-checkpoint/1",
     "arch": "densenet169",
     "card": {"name": ..., "version": ..., "trained": bool, "description": ...,
              "preprocessing": {"size": 224, "mean": [...], "std": [...]}},
     "state_dict": {...}}

The card travels with the weights: outputs name the model by it, and a checkpoint whose card
says ``trained: false`` is refused unless the caller allows it explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torchvision import models as tv_models

from inference.errors import CheckpointError, UntrainedModelError

log = logging.getLogger(__name__)

FORMAT = "radtriage-checkpoint/1"
ARCHITECTURES = {
    "densenet121": tv_models.densenet121,
    "densenet169": tv_models.densenet169,
    "densenet201": tv_models.densenet201,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelCard:
    """What a model is: named on every output it contributes to."""

    name: str
    version: str
    arch: str = "densenet169"
    trained: bool = True
    description: str = ""
    preprocessing: dict[str, Any] = field(
        default_factory=lambda: {"size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    )

    @property
    def display_name(self) -> str:
        return self.name if self.trained else f"{self.name} (UNTRAINED)"


def build_model(arch: str = "densenet169") -> nn.Module:
    """torchvision's DenseNet with a single-logit head (the MURA recipe), random weights."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise CheckpointError(
            f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None
    return factory(weights=None, num_classes=1)


def save_checkpoint(path: Path | str, model: nn.Module, card: ModelCard) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "arch": card.arch, "card": asdict(card), "state_dict": state}, path)


def load_checkpoint(path: Path | str, *, allow_untrained: bool = False) -> tuple[nn.Module, ModelCard]:
    """Load a radtriage checkpoint into a fresh model (on the CPU, eval mode).

    Raises CheckpointError naming the path and what is wrong: missing, unreadable, not a
    radtriage checkpoint, or weights that do not fit the architecture it names.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint file; put a radtriage checkpoint there or point "
            "model.checkpoint at one (README, 'Models')"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a radtriage checkpoint (expected a dict with format {FORMAT!r})"
        )
    try:
        card = ModelCard(**blob["card"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the model card is missing or malformed ({exc})") from exc
    if not card.trained and not allow_untrained:
        raise UntrainedModelError(
            f"{path}: the card of {card.name} {card.version} says it was never trained; "
            "set model.allow_untrained: true only to test the plumbing"
        )
    try:
        model = build_model(blob.get("arch", card.arch))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"{path}: weights do not fit {card.arch} with one output: {' '.join(first)}"
        ) from exc
    model.eval()
    return model, card


def select_device(preference: Literal["auto", "cpu", "cuda"]) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise CheckpointError("model.device is cuda but no CUDA device is available")
    return torch.device("cpu")


class Scorer:
    """Scores prepared views (float32 arrays, 3xHxW, normalised) in batches."""

    def __init__(
        self, model: nn.Module, card: ModelCard, *, device: torch.device,
        batch_size: int = 16, cpu_threads: int = 0,
    ) -> None:
        if device.type == "cpu" and cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.card = card
        self.device = device
        self.batch_size = batch_size
        self.model = model.to(device).eval()
        if device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def score(self, views: Sequence[np.ndarray]) -> list[float]:
        """Probability of abnormality for each view, in order."""
        out: list[float] = []
        for start in range(0, len(views), self.batch_size):
            chunk = np.stack(views[start:start + self.batch_size]).astype(np.float32, copy=False)
            batch = torch.from_numpy(chunk).to(self.device)
            if self.device.type == "cpu":
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits = self.model(batch).float().reshape(-1)
            out.extend(torch.sigmoid(logits).cpu().tolist())
        return out
