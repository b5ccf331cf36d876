"""``radtriage train``: a DenseNet with one logit trained on a MURA layout (or DICOM with truth),
the MURA recipe, through the daemon's own pixel path.

The recipe (the seeds', after the MURA paper; ``docs/training.md`` is the user's page):

    model          torchvision DenseNet-169 (121 and 201 too) with one output, a logit; random
                   weights seeded by ``seed``, or an initial weights file (ImageNet, say) whose
                   classifier is re-initialised to one output (:func:`load_initial_weights`)
    input          every view prepared exactly as the daemon prepares it: DICOM through
                   :func:`dicom_io.prepare.prepare_view`, PNG/JPEG through
                   :func:`dicom_io.pixels.to_model_input` (:func:`training.datasets.prepare_path`
                   in a :class:`dicom_io.prepare.PreparePool`), with the :class:`Preprocessing`
                   that goes into the model's card (224 px, ImageNet mean/std by default)
    augmentation   on the prepared tensor, training split only: a random horizontal flip
                   (p = 0.5) and a random rotation, uniform in +-``rotation`` degrees (10: the
                   seeds' ``RandomRotation(10)``; the MURA paper says "up to 30"), bilinear, the
                   corners filled with black as torchvision fills a rotated image
    loss           the MURA paper's class-weighted binary cross-entropy (:class:`LossWeights`):
                   per study type T, from *image* counts of the training split,
                   ``w_abnormal = N_T / (A_T + N_T)``, ``w_normal = A_T / (A_T + N_T)``; a
                   batch's loss is the mean over its images of ``w * BCE(logit, label)``
    optimiser      Adam, lr 1e-4, betas (0.9, 0.999); ReduceLROnPlateau on the validation loss
                   (factor 0.1, patience 1), stepped once an epoch
    selection      the checkpoint with the lowest validation loss (the same weighted loss on
                   the validation split, no augmentation) is ``best.pt``

Each epoch writes, each file atomically (a temporary file, synced, renamed into place):
``last.pt`` and, when the validation loss improved, ``best.pt`` (radtriage checkpoints,
:func:`inference.model.save_checkpoint`, whose cards carry the preprocessing, the training data
and the epoch's metrics); ``history.json`` (one record an epoch); and ``state.pt``, everything a
resumed run needs (model, optimiser, scheduler, epoch, random states, best loss). ``state.pt``
is written last: it is the commit point of an epoch.

Determinism: every random choice (the initial weights, the order of the views, the flips and
angles) comes from ``seed`` (the order and the augmentation of epoch ``e`` from ``(seed, e)``
alone), views are prepared in the same order whatever the number of workers, and batches are
cut from that order, not from the preparation chunks. With ``deterministic=True`` on the CPU,
the same data, seed, arguments, torch build and thread count give bit-identical weights, and
a run resumed after epoch k gives the weights of an uninterrupted one. On CUDA, torch has no
deterministic backward for the DenseNet's final adaptive average pooling: runs agree to within
floating-point noise only (a warning says so).

Command line (the lead wires it into ``daemon/cli.py`` with :func:`add_arguments` and
:func:`train_cli`)::

    radtriage train DATA_ROOT --out DIR [--study-types WRIST,HAND] [--arch densenet169]
        [--epochs 10] [--batch-size 8] [--lr 1e-4] [--size 224] [--resize squash|letterbox]
        [--crop/--no-crop] [--clahe] [--initial-weights FILE] [--resume] [--seed 0]
        [--device auto|cpu|cuda] [--workers 0] [--name NAME] [--version V] [--max-steps N] ...

Exit codes: 0 trained; 1 the training failed (initial weights that do not fit, no CUDA, no
view could be prepared, a loss that is not finite, an unreadable ``state.pt``, the output
cannot be written); 2 the arguments point at nothing usable (no such folder, no known layout,
no study in a split, an unknown study type, a folder that already holds a run without
``--resume``, a resume with other settings). Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dicom_io.bodypart import MURA_STUDY_TYPES, SelectionRules
from dicom_io.pixels import DecodeOptions, Preprocessing, normalise
from dicom_io.prepare import PreparePool
from inference.errors import CheckpointError, WeightsMismatchError
from inference.model import (
    ARCHITECTURES,
    ModelCard,
    atomic_write,
    build_model,
    fit_state_dict,
    load_weights,
    save_checkpoint,
)
from inference.policy import study_probability
from training import metrics as M
from training.datasets import (
    DatasetError,
    Layout,
    View,
    group_by_study,
    parse_study_types,
    prepare_path,
    read_views,
)
from training.evaluate import _count, phantoms_of

log = logging.getLogger(__name__)

STATE_FORMAT = "radtriage-training-state/1"
HISTORY_FORMAT = "radtriage-training-history/1"
BEST, LAST, STATE, HISTORY = "best.pt", "last.pt", "state.pt", "history.json"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: Seconds between progress lines when the stream is not a terminal (a terminal gets one line,
#: rewritten in place).
PROGRESS_EVERY_S = 30.0
#: The operating threshold written on the card (the metrics are measured at it).
THRESHOLD = 0.5
#: What the JSON of the loss weights calls views without a study type.
UNKNOWN_TYPE = M.UNKNOWN_TYPE
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class TrainingError(Exception):
    """The training could not be done or finished: nothing to train on could be prepared, the
    loss stopped being finite, torch failed (out of memory, ...), ``state.pt`` is unreadable,
    or the output cannot be written. The message says which and where."""


# -- the loss ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassWeights:
    """The MURA paper's weights of one study type, from the training split's image counts."""

    abnormal: float
    normal: float
    #: images (views) of abnormal and normal studies the weights were counted from
    abnormal_images: int
    normal_images: int

    @classmethod
    def from_counts(cls, abnormal_images: int, normal_images: int) -> "ClassWeights":
        """``w_abnormal = N / (A + N)``, ``w_normal = A / (A + N)``; (0.5, 0.5) with no image."""
        total = abnormal_images + normal_images
        if total == 0:
            return cls(0.5, 0.5, 0, 0)
        return cls(normal_images / total, abnormal_images / total, abnormal_images, normal_images)

    def of(self, label: int) -> float:
        return self.abnormal if label else self.normal

    def to_json(self) -> dict[str, Any]:
        return {"abnormal": self.abnormal, "normal": self.normal,
                "abnormal_images": self.abnormal_images, "normal_images": self.normal_images}


@dataclass(frozen=True)
class LossWeights:
    """Per-image weights of the binary cross-entropy: the MURA paper's, per study type.

    For each study type T of the training split, with A_T the images of its abnormal studies and
    N_T those of its normal ones, ``w_abnormal(T) = N_T / (A_T + N_T)`` and
    ``w_normal(T) = A_T / (A_T + N_T)``: each type's two classes weigh the same in total. Counts
    are of images (views as listed, a multi-frame view once), as the seeds counted. Views
    without a study type are a type of their own (``None``); a view of a type the training split
    lacks (in the validation split) gets :attr:`overall`, the same formula over every image.
    """

    by_type: Mapping[str | None, ClassWeights]
    overall: ClassWeights

    @classmethod
    def from_views(cls, views: Iterable[View]) -> "LossWeights":
        counts: dict[str | None, list[int]] = {}
        for v in views:
            counts.setdefault(v.study_type, [0, 0])[0 if v.label else 1] += 1
        by_type = {t: ClassWeights.from_counts(a, n) for t, (a, n) in counts.items()}
        overall = ClassWeights.from_counts(sum(c[0] for c in counts.values()),
                                           sum(c[1] for c in counts.values()))
        return cls(by_type, overall)

    def weight(self, view: View) -> float:
        return self.by_type.get(view.study_type, self.overall).of(view.label)

    def one_class_types(self) -> list[str]:
        """Types whose training images are all of one class (the other gets weight 0)."""
        return [t or UNKNOWN_TYPE for t, w in self.by_type.items()
                if w.abnormal_images == 0 or w.normal_images == 0]

    def to_json(self) -> dict[str, Any]:
        def rank(t: str | None) -> tuple:
            return (t is None, MURA_STUDY_TYPES.index(t) if t in MURA_STUDY_TYPES else 99, t or "")

        return {"counts": "images of the training split", "overall": self.overall.to_json(),
                "by_study_type": {t or UNKNOWN_TYPE: self.by_type[t].to_json()
                                  for t in sorted(self.by_type, key=rank)}}


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``w_i * BCE(sigmoid(logit_i), label_i)`` (``BCEWithLogits`` with
    per-sample weights; the mean is over samples, not normalised by the weights)."""
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weights)


# -- augmentation --------------------------------------------------------------------------------


def augment(x: torch.Tensor, flips: torch.Tensor, degrees: torch.Tensor,
            fill: Sequence[float]) -> torch.Tensor:
    """Prepared views ``x`` (B, 3, S, S) flipped left-right where ``flips`` (B, bool) and rotated
    by ``degrees`` (B) about their centre, bilinear; what comes in from outside the view is
    ``fill`` (per channel: black after normalisation). Pure and deterministic."""
    x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(-1), x)
    if not bool((degrees != 0).any()):
        return x
    rad = degrees.to(device=x.device, dtype=x.dtype) * (math.pi / 180.0)
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    f = torch.tensor(list(fill), dtype=x.dtype, device=x.device)[None, :, None, None]
    return F.grid_sample(x - f, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + f


def black(prep: Preprocessing) -> tuple[float, float, float]:
    """A black pixel after normalisation, per channel."""
    return tuple(float(-m / s) for m, s in zip(prep.mean, prep.std))  # type: ignore[return-value]


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training views in ``epoch`` (1-based): a permutation from (seed, epoch)."""
    return np.random.default_rng(_epoch_seed(seed, epoch, 0)).permutation(n)


# -- views to tensors ----------------------------------------------------------------------------


class PreparedSplit:
    """One split's views as model input, through the daemon's path (:class:`PreparePool` running
    :func:`training.datasets.prepare_path`), optionally cached in memory.

    The cache keeps each prepared frame as the 8-bit grey image it was normalised from (the
    model input is ``normalise(grey)``, so it is restored bit for bit: checked when stored, the
    float32 tensor kept where it would not be). A view that cannot be prepared is remembered
    with its reason and not tried again.
    """

    def __init__(self, views: Sequence[View], pool: PreparePool, prep: Preprocessing, *,
                 cache: bool) -> None:
        self.views, self.pool, self.prep = views, pool, prep
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.errors: dict[int, str] = {}
        std, mean = float(prep.std[0]), float(prep.mean[0])
        self._unnormalise = (std * 255.0, mean * 255.0)

    def _pack(self, frames: np.ndarray) -> np.ndarray:
        a, b = self._unnormalise
        grey = np.clip(np.rint(frames[:, 0] * a + b), 0, 255).astype(np.uint8)
        if all(np.array_equal(normalise(g, self.prep), f) for g, f in zip(grey, frames)):
            return grey
        return frames  # not exactly restorable: kept as it is

    def _unpack(self, stored: np.ndarray) -> np.ndarray:
        if stored.dtype == np.uint8:
            return np.stack([normalise(g, self.prep) for g in stored])
        return stored

    def get(self, indices: Sequence[int]) -> list[np.ndarray | None]:
        """Each view's frames, float32 (frames, 3, S, S), or None where it cannot be prepared."""
        out: list[np.ndarray | None] = [None] * len(indices)
        todo: list[int] = []
        for k, i in enumerate(indices):
            if self.cache is not None and i in self.cache:
                out[k] = self._unpack(self.cache[i])
            elif i not in self.errors:
                todo.append(k)
        prepared = self.pool.map([self.views[indices[k]].path for k in todo]) if todo else []
        for k, p in zip(todo, prepared):
            i = indices[k]
            if p.tensor is None:
                self.errors[i] = p.error or "not prepared"
                log.warning("%s: not used for training: %s", self.views[i].path, self.errors[i])
                continue
            out[k] = p.tensor
            if self.cache is not None:
                self.cache[i] = self._pack(p.tensor)
        return out

    @property
    def cached_bytes(self) -> int:
        return sum(a.nbytes for a in self.cache.values()) if self.cache else 0


def stream_views(split: PreparedSplit, order: Sequence[int], chunk: int,
                 executor: ThreadPoolExecutor) -> Iterator[tuple[int, np.ndarray]]:
    """``(view index, frames)`` in ``order``, skipping views that cannot be prepared; the next
    chunk is prepared in ``executor`` while the caller works on this one."""
    chunks = [list(order[s:s + chunk]) for s in range(0, len(order), chunk)]
    pending: Future | None = executor.submit(split.get, chunks[0]) if chunks else None
    try:
        for k, indices in enumerate(chunks):
            assert pending is not None
            result = pending.result()
            pending = executor.submit(split.get, chunks[k + 1]) if k + 1 < len(chunks) else None
            for i, frames in zip(indices, result):
                if frames is not None:
                    yield int(i), frames
    finally:
        if pending is not None and not pending.cancel():
            pending.result()  # let a running preparation finish before the pool closes


def batches(samples: Iterable[tuple[int, np.ndarray]], batch_size: int, *,
            min_last: int = 1) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Batches of ``batch_size`` frames (the last one smaller, dropped below ``min_last``), each
    with its frames' view indices. Cut from the stream of frames, so a batch does not depend on
    how the views were chunked for preparation."""
    xs: list[np.ndarray] = []
    owners: list[int] = []
    for i, frames in samples:
        for f in frames:
            xs.append(f)
            owners.append(i)
        while len(xs) >= batch_size:
            yield np.stack(xs[:batch_size]), owners[:batch_size]
            del xs[:batch_size], owners[:batch_size]
    if xs and len(xs) >= min_last:
        yield np.stack(xs), owners


# -- initial weights -----------------------------------------------------------------------------


def load_initial_weights(model: nn.Module, path: Path | str, arch: str) -> dict[str, Any]:
    """Load a weights file into ``model`` (torchvision's ``arch`` with one output) before training.

    The file may be any form :func:`inference.checkpoints.read_source` reads without unpickling
    code: a torchvision state dict (ImageNet weights a site provides, torchvision-0.2 key names
    too), a radtriage checkpoint, such a state dict under ``state_dict`` or DataParallel's
    ``module.``. Every key but the classifier's must be there with the model's shape, and no
    other key (strict); a classifier with one output of the right width is kept (fine-tuning a
    radtriage model), any other (ImageNet's 1000 outputs, none) is replaced by the model's own,
    freshly initialised one. Raises WeightsMismatchError listing what does not fit (and which
    architecture the file holds, when that is another), CheckpointError when the file cannot be
    read. Returns what was done, for the history and the card.
    """
    from inference.checkpoints import detect_arch, read_source

    path = Path(path)
    source = read_source(path)  # CheckpointError naming the file when it cannot be read
    own = model.state_dict()
    state = {k: v for k, v in source.state_dict.items() if not k.startswith("classifier.")}
    head = {k: v for k, v in source.state_dict.items() if k.startswith("classifier.")}
    keep = (set(head) == {"classifier.weight", "classifier.bias"}
            and all(isinstance(head[k], torch.Tensor) and head[k].shape == own[k].shape for k in head))
    if keep:
        state.update(head)
        classifier = "kept (the file's has one output)"
    else:
        state["classifier.weight"] = own["classifier.weight"]
        state["classifier.bias"] = own["classifier.bias"]
        w = head.get("classifier.weight")
        had = (f"{w.shape[0]} outputs" if isinstance(w, torch.Tensor) and w.ndim == 2
               else "none" if not head else ", ".join(sorted(head)))
        classifier = f"re-initialised to one output (the file's: {had})"
    try:
        fitted = fit_state_dict(state, arch, where=f"{path}: ", fill_batches_tracked=True)
    except WeightsMismatchError as exc:
        held, _ = detect_arch(state)
        hint = (f"\n  the file holds {held} weights: train with arch {held}"
                if held is not None and held != arch else "")
        raise WeightsMismatchError(f"{exc} (the classifier is not checked: it is re-initialised){hint}",
                                   missing=exc.missing, unexpected=exc.unexpected,
                                   mismatched=exc.mismatched) from exc
    load_weights(model, fitted)
    return {"path": str(path), "source": source.describe(), "classifier": classifier}


# -- files ---------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    def write(f: Any) -> None:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")

    atomic_write(path, write, "w")


def _views_fingerprint(views: Sequence[View]) -> str:
    h = hashlib.sha256()
    for v in views:
        h.update(f"{v.path}\0{v.study_key}\0{v.label}\0{v.study_type}\n".encode("utf-8"))
    return h.hexdigest()


def _rng_states(device: torch.device) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "python": [version, list(mt), gauss],
    }


def _set_rng_states(states: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and states.get("cuda"):
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))


# -- progress ------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds) + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """A progress bar with ETA on a stream: rewritten in place on a terminal, else a line every
    :data:`PROGRESS_EVERY_S` seconds and at the end. ``None`` writes nothing."""

    def __init__(self, stream: TextIO | None, label: str, total: int, unit: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream, self.label, self.total, self.unit, self.clock = stream, label, max(total, 1), unit, clock
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.start = self.last = clock()
        self.done = 0

    def line(self, done: int, note: str = "") -> str:
        elapsed = self.clock() - self.start
        frac = min(1.0, done / self.total)
        eta = elapsed / done * (self.total - done) if done else float("nan")
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        rate = f"{done / elapsed:.1f} {self.unit}/s" if elapsed > 0 and done else f"- {self.unit}/s"
        left = "ETA ?" if math.isnan(eta) else f"ETA {_clock(max(eta, 0.0))}"
        return (f"{self.label} [{bar}] {min(done, self.total)}/{self.total} {_clock(elapsed)} "
                f"{left} {rate}" + (f" {note}" if note else ""))

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        if self.stream is None:
            return
        now = self.clock()
        if self.tty:
            print("\r" + self.line(done, note).ljust(79), end="", file=self.stream, flush=True)
        elif now - self.last >= PROGRESS_EVERY_S:
            print(self.line(done, note), file=self.stream, flush=True)
            self.last = now

    def close(self, note: str = "") -> None:
        if self.stream is None:
            return
        self.total = max(self.done, 1) if self.done < self.total else self.total
        text = self.line(self.done, note)
        print(("\r" + text.ljust(79)) if self.tty else text, file=self.stream, flush=True)


# -- the run -------------------------------------------------------------------------------------


def _resolve_device(device: Device) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}: auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device cuda, but no CUDA device is available")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@dataclass
class _Split:
    name: str
    views: list[View]
    data: PreparedSplit
    labels: torch.Tensor
    weights: torch.Tensor


def _describe(views: Sequence[View]) -> dict[str, Any]:
    studies = group_by_study(views)
    abnormal = sum(1 for vs in studies.values() if vs[0].label)
    return {"views": len(views), "studies": len(studies), "abnormal_studies": abnormal,
            "normal_studies": len(studies) - abnormal}


def _validate(model: nn.Module, split: _Split, *, batch_size: int, chunk: int,
              executor: ThreadPoolExecutor, device: torch.device,
              progress: TextIO | None, label: str) -> dict[str, Any]:
    """The weighted loss and the study-level metrics on a split, without augmentation."""
    model.eval()
    loss_sum, n = 0.0, 0
    per_view: dict[int, list[float]] = {}
    bar = Progress(progress, label, len(split.views), "views")
    seen = 0
    with torch.no_grad():
        for x_np, owners in batches(stream_views(split.data, range(len(split.views)), chunk, executor),
                                    batch_size):
            x = torch.from_numpy(x_np).to(device)
            idx = torch.tensor(owners, device=device)
            logits = model(x).float().reshape(-1)
            losses = F.binary_cross_entropy_with_logits(logits, split.labels[idx], weight=split.weights[idx],
                                                        reduction="none")
            loss_sum += float(losses.double().sum())
            n += len(owners)
            for i, p in zip(owners, torch.sigmoid(logits).cpu().tolist()):
                per_view.setdefault(i, []).append(p)
            seen = max(owners) + 1
            bar.update(seen)
    bar.update(len(split.views))
    if n == 0:
        first = next(iter(split.data.errors.values()), "no reason recorded")
        raise TrainingError(f"none of the {len(split.views)} views of split {split.name!r} could be "
                            f"prepared; the first one's reason: {first}")
    index = {id(v): i for i, v in enumerate(split.views)}
    labels, probs, types = [], [], []
    for members in group_by_study(split.views).values():
        p = study_probability(float(np.mean(per_view[index[id(v)]])) if index[id(v)] in per_view else None
                              for v in members)
        if p is not None:
            labels.append(members[0].label)
            probs.append(p)
            types.append(members[0].study_type)
    overall = M.study_metrics(labels, probs, THRESHOLD)
    per_type = M.by_study_type(labels, probs, types, THRESHOLD, order=MURA_STUDY_TYPES)
    out = {"loss": loss_sum / n,
           **{k: overall[k] for k in ("auroc", "kappa", "accuracy", "sensitivity", "specificity")},
           "studies": len(labels), "views_not_prepared": len(split.data.errors),
           "by_study_type": {t: {"studies": m["n"], "auroc": m["auroc"], "kappa": m["kappa"]}
                             for t, m in per_type.items()}}
    bar.close(f"loss {out['loss']:.4f}")
    return out


def _resume_config(**kwargs: Any) -> dict[str, Any]:
    """What must be the same for a resumed run to continue the same training (JSON-like)."""
    return json.loads(json.dumps(kwargs))


def train(
    data_root: Path | str,
    out: Path | str,
    *,
    split_train: str = "train",
    split_valid: str = "valid",
    study_types: Iterable[str] | str | None = None,
    layout: Layout | Literal["auto"] = "auto",
    arch: str = "densenet169",
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 1e-4,
    rotation: float = 10.0,
    flip: bool = True,
    preprocessing: Preprocessing = Preprocessing(),
    decode: DecodeOptions = DecodeOptions(),
    rules: SelectionRules = SelectionRules(),
    initial_weights: Path | str | None = None,
    resume: bool = False,
    seed: int = 0,
    deterministic: bool = True,
    device: Device = "auto",
    workers: int = 0,
    cache_mb: int = 1024,
    max_steps: int | None = None,
    name: str | None = None,
    version: str = "0.1.0",
    half: bool = False,
    precision: Precision = "fp32",
    progress: TextIO | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train a DenseNet on ``data_root`` by the MURA recipe (module docstring); write ``out``.

    ``split_train``/``split_valid``: the splits trained on and validated on (MURA's ``train`` and
    ``valid``, or truth.csv's ``split`` values); ``study_types``: only these MURA types (both
    splits); ``layout``: which layout ``data_root`` holds (auto: whichever it holds).
    ``preprocessing``: what every view goes through; it is written on the card, and the daemon
    then requires it. ``decode``/``rules``: the daemon's decoding options and selection rules
    (DICOM views it would not score are not trained on). ``rotation``/``flip``: the augmentation.
    ``initial_weights``: a weights file to start from (:func:`load_initial_weights`), else random
    weights from ``seed``. ``resume``: continue the run in ``out`` from its ``state.pt`` (the
    settings must be those it was started with; ``epochs``, ``device``, ``workers``,
    ``cache_mb``, ``max_steps``, ``progress`` may change). ``workers``: preparation processes (0:
    one per core, 1: in this process). ``cache_mb``: prepared views of a split are kept in
    memory (8 bit, about size^2 bytes a view, restored bit for bit) when they fit in what is
    left of this many MiB, the validation split first; 0 prepares every view every epoch.
    ``max_steps``: at most this many training batches an epoch (smoke tests). ``name``/``version``:
    the card's (name default ``radtriage-<arch>``). ``half``: best.pt and last.pt in float16.
    ``precision``: ``fp32``, or ``bf16`` for the training steps' forward pass under
    ``torch.autocast`` (bfloat16 matmuls and convolutions, float32 weights, optimiser and loss;
    about twice as fast on CPUs with AVX-512 BF16 and on CUDA); validation always runs in
    float32, as the daemon scores.
    ``progress``: a stream for progress bars (stderr on the command line); ``on_epoch``: called
    with each epoch's history record.

    Returns ``{"out", "best", "last", "state", "history", "best_epoch", "best_valid_loss", "card",
    "loss_weights", "data", "device", "resumed_from_epoch", "initial_weights"}``.

    Raises ValueError (a bad argument, a folder that holds another run, a resume with other
    settings), DatasetError (no data, a malformed layout), inference.errors.CheckpointError
    (initial weights that cannot be read or do not fit), TrainingError (the run failed).
    """
    # -- arguments --------------------------------------------------------------------------
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"preprocessing must be a Preprocessing, not {type(preprocessing).__name__}")
    if preprocessing.size < 32:
        raise ValueError(f"size {preprocessing.size}: a DenseNet needs at least 32 pixels")
    if epochs < 1 or batch_size < 2 or workers < 0 or cache_mb < 0 or (max_steps is not None and max_steps < 1):
        raise ValueError("epochs and max steps must be at least 1, the batch size at least 2 "
                         "(batch normalisation), workers and cache_mb at least 0")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate {lr} is not a positive number")
    if not (0 <= rotation <= 180):
        raise ValueError(f"rotation {rotation} is not in [0, 180] degrees")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed {seed!r} is not a whole number >= 0")
    name = name or f"radtriage-{arch}"
    ModelCard(name=name, version=version, arch=arch)  # a bad name or version fails now, not after an epoch
    data_root, out = Path(data_root), Path(out)
    wanted = parse_study_types(study_types)

    # -- data --------------------------------------------------------------------------------
    chosen, train_views = read_views(data_root, split_train, wanted, layout)
    _, valid_views = read_views(data_root, split_valid, wanted, chosen)
    for split, views in ((split_train, train_views), (split_valid, valid_views)):
        if not views:
            raise DatasetError(f"{data_root}: no study found in split {split!r}"
                               + (f" of type {', '.join(wanted)}" if wanted else ""))
    shared = set(group_by_study(train_views)) & set(group_by_study(valid_views))
    if shared:
        raise DatasetError(f"{data_root}: {len(shared)} studies are in both split {split_train!r} and "
                           f"split {split_valid!r} (e.g. {sorted(shared)[0]})")
    loss_weights = LossWeights.from_views(train_views)
    one_class = loss_weights.one_class_types()
    if one_class:
        log.warning("study type(s) %s have training images of one class only: the other class "
                    "of that type has weight 0", ", ".join(one_class))
    data_info = {"root": str(data_root), "layout": chosen, "study_types": list(wanted) if wanted else None,
                 "train": {"split": split_train, **_describe(train_views)},
                 "valid": {"split": split_valid, **_describe(valid_views)}}
    config = _resume_config(
        data_root=str(data_root.resolve()), layout=chosen, split_train=split_train,
        split_valid=split_valid, study_types=list(wanted) if wanted else None, arch=arch,
        batch_size=batch_size, lr=lr, rotation=rotation, flip=flip,
        preprocessing=preprocessing.to_card(), decode=asdict(decode), seed=seed, precision=precision,
        deterministic=deterministic, train_views=_views_fingerprint(train_views),
        valid_views=_views_fingerprint(valid_views))

    # -- the folder: a new run, or the one to resume -------------------------------------------
    state_path = out / STATE
    saved: dict[str, Any] | None = None
    if resume:
        if not state_path.is_file():
            raise ValueError(f"nothing to resume: {state_path} does not exist")
        try:
            saved = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
            raise TrainingError(f"{state_path}: not a readable training state ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise TrainingError(f"{state_path}: not a radtriage training state ({STATE_FORMAT})")
        differ = sorted(k for k in set(config) | set(saved["config"]) if config.get(k) != saved["config"].get(k))
        if differ:
            shown = "; ".join(f"{k}: {_short(saved['config'].get(k))} then, {_short(config.get(k))} now"
                              for k in differ)
            raise ValueError(f"cannot resume {out}: the run was started with other settings ({shown})")
    else:
        existing = [f for f in (STATE, BEST, LAST) if (out / f).exists()]
        if existing:
            raise ValueError(f"{out} already holds a training run ({', '.join(existing)}); continue it "
                             "with resume (--resume) or choose another folder")

    # -- determinism, model, optimiser ----------------------------------------------------------
    dev = _resolve_device(device)
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic and dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        log.warning("on CUDA, DenseNet's adaptive average pooling has no deterministic backward: "
                    "runs agree to within floating-point noise, not bit for bit")
    try:
        torch.use_deterministic_algorithms(deterministic, warn_only=dev.type == "cuda")
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
        return _run(
            data_root=data_root, out=out, config=config, saved=saved, data_info=data_info,
            train_views=train_views, valid_views=valid_views, loss_weights=loss_weights, arch=arch,
            epochs=epochs, batch_size=batch_size, lr=lr, rotation=rotation, flip=flip,
            prep=preprocessing, decode=decode, rules=rules, initial_weights=initial_weights,
            seed=seed, dev=dev, workers=workers, cache_mb=cache_mb, max_steps=max_steps,
            name=name, version=version, half=half, precision=precision, progress=progress,
            on_epoch=on_epoch)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _run(*, data_root: Path, out: Path, config: dict[str, Any], saved: dict[str, Any] | None,
         data_info: dict[str, Any], train_views: list[View], valid_views: list[View],
         loss_weights: LossWeights, arch: str, epochs: int, batch_size: int, lr: float,
         rotation: float, flip: bool, prep: Preprocessing, decode: DecodeOptions,
         rules: SelectionRules, initial_weights: Path | str | None, seed: int, dev: torch.device,
         workers: int, cache_mb: int, max_steps: int | None, name: str, version: str, half: bool,
         precision: Precision, progress: TextIO | None, on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model = build_model(arch)
    init_info: dict[str, Any] | None = None
    if saved is None and initial_weights is not None:
        init_info = load_initial_weights(model, initial_weights, arch)
    elif saved is not None:
        init_info = saved.get("initial_weights")
        load_weights(model, saved["model"])
    model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=1)
    history: list[dict[str, Any]] = []
    start_epoch, best_loss, best_epoch, best_card = 1, math.inf, 0, None
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        history = list(saved["history"])
        start_epoch = int(saved["epoch"]) + 1
        best_loss, best_epoch = float(saved["best_loss"]), int(saved["best_epoch"])
        best_card = saved.get("best_card")
        _set_rng_states(saved["rng"], dev)
        log.info("resuming %s after epoch %d (best: epoch %d, valid loss %.4f)", out,
                 start_epoch - 1, best_epoch, best_loss)

    def labels_and_weights(views: Sequence[View]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor([float(v.label) for v in views], dtype=torch.float32, device=dev),
                torch.tensor([loss_weights.weight(v) for v in views], dtype=torch.float32, device=dev))

    budget = cache_mb * 2**20
    per_view = prep.size * prep.size
    cache_valid = len(valid_views) * per_view <= budget
    budget -= len(valid_views) * per_view if cache_valid else 0
    cache_train = len(train_views) * per_view <= budget
    fill = black(prep)
    #: a model that has seen only phantoms says so on every output
    phantoms = phantoms_of(data_root)
    demo = phantoms is not None
    description = (f"DenseNet ({arch}) with one logit trained by radtriage train: the MURA recipe "
                   f"(class-weighted BCE per study type, Adam lr {lr:g}, ReduceLROnPlateau x0.1 "
                   f"patience 1, batch {batch_size}, flip {'on' if flip else 'off'}, rotation "
                   f"+-{rotation:g} deg, seed {seed}, {precision})")
    training_data = (
        (f"radtriage phantoms --seed {phantoms['seed']} ({phantoms['studies']} studies, generator "
         f"{phantoms['version']}), " if phantoms else "")
        + f"{chosen_name(data_info['layout'])} at {data_root}, split {data_info['train']['split']} "
        f"({data_info['train']['views']} views, {data_info['train']['studies']} studies: "
        f"{data_info['train']['abnormal_studies']} abnormal), study types "
        f"{', '.join(data_info['study_types']) if data_info['study_types'] else 'all'}; validated on "
        f"split {data_info['valid']['split']} ({data_info['valid']['views']} views, "
        f"{data_info['valid']['studies']} studies)"
        + (f"; initial weights {Path(init_info['path']).name}" if init_info else ""))
    result_base = {"out": str(out), "best": str(out / BEST), "last": str(out / LAST),
                   "state": str(out / STATE), "loss_weights": loss_weights.to_json(), "data": data_info,
                   "device": str(dev), "resumed_from_epoch": start_epoch - 1 if saved is not None else None,
                   "initial_weights": init_info}

    pool = PreparePool(prep, decode, rules, workers=workers)
    pool.task = prepare_path
    chunk = max(4 * batch_size, 8 * pool.workers, 32)
    try:
        with pool, ThreadPoolExecutor(max_workers=1, thread_name_prefix="radtriage-prepare") as executor:
            train_split = _Split(data_info["train"]["split"], train_views,
                                 PreparedSplit(train_views, pool, prep, cache=cache_train),
                                 *labels_and_weights(train_views))
            valid_split = _Split(data_info["valid"]["split"], valid_views,
                                 PreparedSplit(valid_views, pool, prep, cache=cache_valid),
                                 *labels_and_weights(valid_views))
            steps_per_epoch = -(-len(train_views) // batch_size)
            if max_steps is not None:
                steps_per_epoch = min(steps_per_epoch, max_steps)
            for epoch in range(start_epoch, epochs + 1):
                record = _epoch(model, optimizer, train_split, valid_split, epoch=epoch, epochs=epochs,
                                seed=seed, batch_size=batch_size, chunk=chunk, executor=executor,
                                dev=dev, rotation=rotation, flip=flip, fill=fill,
                                steps=steps_per_epoch, precision=precision, progress=progress)
                scheduler.step(record["valid_loss"])
                improved = record["valid_loss"] < best_loss
                metrics = {"set": f"split {data_info['valid']['split']} of {data_root}", "epoch": epoch,
                           "threshold": THRESHOLD, "train_loss": record["train_loss"],
                           **{k: record[k] for k in ("valid_loss", "auroc", "kappa", "accuracy",
                                                     "sensitivity", "specificity", "studies",
                                                     "by_study_type")}}
                card = ModelCard(name=name, version=version, arch=arch, trained=True, demo=demo,
                                 description=f"{description}; epoch {epoch}", preprocessing=prep.to_card(),
                                 threshold=THRESHOLD, training_data=training_data, metrics=metrics)
                try:
                    stored = save_checkpoint(out / LAST, model, card, half=half)
                    if improved:
                        best_loss, best_epoch = record["valid_loss"], epoch
                        best_card = save_checkpoint(out / BEST, model, card, half=half).to_dict()
                    record["best"] = improved
                    record["last_sha256"] = stored.sha256
                    history.append(record)
                    _write_json(out / HISTORY, {"format": HISTORY_FORMAT, "config": config,
                                                "loss_weights": loss_weights.to_json(), "epochs": history})
                    state = {"format": STATE_FORMAT, "config": config, "epoch": epoch,
                             "model": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "best_loss": best_loss, "best_epoch": best_epoch, "best_card": best_card,
                             "history": history, "rng": _rng_states(dev), "initial_weights": init_info}
                    atomic_write(out / STATE, lambda f: torch.save(state, f))
                except OSError as exc:
                    raise TrainingError(f"{out}: cannot write the checkpoints: {exc.strerror or exc}") from exc
                if progress is not None:
                    print(_summary(record, epochs), file=progress, flush=True)
                log.info("%s", _summary(record, epochs))
                if on_epoch is not None:
                    on_epoch(record)
    except RuntimeError as exc:  # torch's own errors (out of memory, ...) at the boundary
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TrainingError(f"training failed: {type(exc).__name__}: {first}") from exc
    return {**result_base, "history": history, "best_epoch": best_epoch,
            "best_valid_loss": best_loss if best_epoch else None, "card": best_card}


def chosen_name(layout: str) -> str:
    return {"mura": "MURA layout", "dicom": "DICOM with truth.csv"}.get(layout, layout)


def _summary(record: Mapping[str, Any], epochs: int) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    return (f"epoch {record['epoch']}/{epochs}: train loss {num(record['train_loss'])}, valid loss "
            f"{num(record['valid_loss'])}, AUROC {num(record['auroc'])}, kappa {num(record['kappa'])}, "
            f"lr {record['lr']:g}, {record['seconds']:.0f} s ({record['images_per_s']:.1f} images/s)"
            + (", best so far" if record.get("best") else ""))


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, train_split: _Split, valid_split: _Split,
           *, epoch: int, epochs: int, seed: int, batch_size: int, chunk: int,
           executor: ThreadPoolExecutor, dev: torch.device, rotation: float, flip: bool,
           fill: Sequence[float], steps: int, precision: Precision,
           progress: TextIO | None) -> dict[str, Any]:
    """One epoch: training on the shuffled training split, then validation. Its history record."""
    started = time.perf_counter()
    lr = float(optimizer.param_groups[0]["lr"])
    order = epoch_order(len(train_split.views), seed, epoch)
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 1))
    model.train()
    bar = Progress(progress, f"epoch {epoch}/{epochs} train", steps, "steps")
    loss_sum, images, step = 0.0, 0, 0
    stream = stream_views(train_split.data, order, chunk, executor)
    try:
        for x_np, owners in batches(stream, batch_size, min_last=2):
            n = len(owners)
            flips = torch.rand(n, generator=generator) < 0.5  # drawn either way: the same stream
            if not flip:
                flips.zero_()
            degrees = (torch.rand(n, generator=generator) * 2 - 1) * rotation
            x = torch.from_numpy(x_np).to(dev)
            with torch.no_grad():
                x = augment(x, flips, degrees, fill)
            idx = torch.tensor(owners, device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x).float().reshape(-1)
            loss = weighted_bce(logits, train_split.labels[idx], train_split.weights[idx])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"epoch {epoch} step {step + 1}: the loss is {value}; lower the "
                                    "learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += value * n
            images += n
            step += 1
            bar.update(step, f"loss {loss_sum / images:.4f}")
            if step >= steps:
                break
    finally:
        stream.close()
    train_seconds = time.perf_counter() - started
    if images == 0:
        first = next(iter(train_split.data.errors.values()), "no reason recorded")
        raise TrainingError(f"none of the {len(train_split.views)} views of split {train_split.name!r} "
                            f"could be prepared; the first one's reason: {first}")
    bar.close(f"loss {loss_sum / images:.4f}")
    valid = _validate(model, valid_split, batch_size=batch_size, chunk=chunk, executor=executor,
                      device=dev, progress=progress, label=f"epoch {epoch}/{epochs} valid")
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch, "lr": lr, "train_loss": loss_sum / images, "valid_loss": valid["loss"],
        "auroc": valid["auroc"], "kappa": valid["kappa"], "accuracy": valid["accuracy"],
        "sensitivity": valid["sensitivity"], "specificity": valid["specificity"],
        "studies": valid["studies"], "by_study_type": valid["by_study_type"],
        "train_steps": step, "train_images": images,
        "train_views_not_prepared": len(train_split.data.errors),
        "valid_views_not_prepared": valid["views_not_prepared"],
        "train_seconds": round(train_seconds, 3), "seconds": round(seconds, 3),
        "images_per_s": round(images / train_seconds, 3) if train_seconds > 0 else 0.0,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# -- command line --------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _degrees(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 180:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 180]")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train`` subcommand's arguments (what :func:`train_cli` reads)."""
    d = Preprocessing()
    parser.add_argument("data_root", metavar="DATA_ROOT", help="folder holding MURA-v1.1/ or dicom/truth.csv")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for best.pt, last.pt, state.pt and history.json")
    parser.add_argument("--study-types", help="only these study types, comma-separated (e.g. WRIST,HAND)")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default="densenet169",
                        help="torchvision DenseNet (default: densenet169)")
    parser.add_argument("--epochs", type=_count(1), default=10, help="epochs (default: 10)")
    parser.add_argument("--batch-size", type=_count(2), default=8, help="images a step (default: 8)")
    parser.add_argument("--lr", type=_positive_float, default=1e-4, help="Adam's learning rate (default: 1e-4)")
    parser.add_argument("--size", type=_count(32), default=d.size, help=f"input pixels (default: {d.size})")
    parser.add_argument("--resize", choices=("squash", "letterbox"), default=d.resize,
                        help=f"to size x size (default: {d.resize})")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=d.crop,
                        help="crop to the anatomy (default: on)")
    parser.add_argument("--clahe", action="store_true", help="contrast-limited histogram equalisation")
    parser.add_argument("--rotation", type=_degrees, default=10.0, metavar="DEG",
                        help="random rotation within +-DEG degrees (default: 10)")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flip")
    parser.add_argument("--initial-weights", metavar="FILE",
                        help="start from these weights (e.g. ImageNet; the classifier is re-initialised)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    parser.add_argument("--seed", type=_count(0), default=0, help="random seed (default: 0)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="deterministic algorithms (default: on)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=_count(0), default=0,
                        help="preparation processes (0: one per core, 1: none)")
    parser.add_argument("--cache-mb", type=_count(0), default=1024, metavar="MIB",
                        help="keep prepared views of a split in memory when they fit (default: 1024; 0: never)")
    parser.add_argument("--layout", choices=("auto", "mura", "dicom"), default="auto",
                        help="data layout (default: whichever DATA_ROOT holds)")
    parser.add_argument("--train-split", default="train", help="split trained on (default: train)")
    parser.add_argument("--valid-split", default="valid", help="split validated on (default: valid)")
    parser.add_argument("--name", help="model name on the card (default: radtriage-ARCH)")
    parser.add_argument("--version", default="0.1.0", help="model version on the card (default: 0.1.0)")
    parser.add_argument("--half", action="store_true", help="store best.pt and last.pt as float16")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="training steps in fp32 (default) or under bf16 autocast (about 2x "
                             "faster on AVX-512 BF16 CPUs and CUDA); validation is fp32")
    parser.add_argument("--max-steps", type=_count(1), metavar="N",
                        help="at most N training steps an epoch (smoke tests)")
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def train_cli(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run :func:`train` from parsed arguments; one line on ``out`` when done, on ``err`` when not.
    Progress bars go to ``err``."""
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        print(f"radtriage: cannot train: {data_root}: no such folder", file=err)
        return EXIT_USAGE
    try:
        prep = Preprocessing(size=args.size, resize=args.resize, crop=args.crop, clahe=args.clahe)
        result = train(
            data_root, args.out, split_train=args.train_split, split_valid=args.valid_split,
            study_types=args.study_types, layout=args.layout, arch=args.arch, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, rotation=args.rotation, flip=args.flip,
            preprocessing=prep, initial_weights=args.initial_weights, resume=args.resume,
            seed=args.seed, deterministic=args.deterministic, device=args.device,
            workers=args.workers, cache_mb=args.cache_mb, max_steps=args.max_steps, name=args.name,
            version=args.version, half=args.half, precision=args.precision, progress=err)
    except (DatasetError, ValueError) as exc:
        print(f"radtriage: cannot train: {_one_line(exc)}", file=err)
        return EXIT_USAGE
    except (CheckpointError, TrainingError) as exc:
        print(f"radtriage: cannot train: {_one_line(exc)}", file=err)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"radtriage: training interrupted; {Path(args.out) / STATE} holds the last finished "
              "epoch: continue with --resume", file=err)
        return EXIT_FAILURE
    card = result["card"] or {}
    m = card.get("metrics", {})

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"best epoch {result['best_epoch']} of {len(result['history'])}: valid loss "
          f"{num(result['best_valid_loss'])}, AUROC {num(m.get('auroc'))}, kappa {num(m.get('kappa'))}; "
          f"checkpoint: {result['best']}", file=out)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover - the lead wires ``radtriage train``
    _parser = add_arguments(argparse.ArgumentParser(prog="radtriage train"))
    sys.exit(train_cli(_parser.parse_args(), sys.stdout, sys.stderr))
