"""DenseNet classifiers with one output, radtriage checkpoints and batched scoring.

A radtriage checkpoint is a ``torch.save`` of a plain dict, loadable with
``weights_only=True`` (docs/models.md is the full description)::

    {"format": "radtriage-checkpoint/2",
     "arch": "densenet169",
     "card": {"name": ..., "version": ..., "arch": ..., "trained": bool, "description": ...,
              "preprocessing": {"size": 224, "mean": [...], "std": [...], ...},
              "threshold": 0.5, "training_data": ..., "metrics": {...},
              "sha256": "<64 hex digits: weights_sha256(state_dict)>"},
     "state_dict": {...}}           # float32, or float16 to halve the file

The card travels with the weights: outputs name the model by it, and a checkpoint whose card
says ``trained: false`` is refused unless the caller allows it explicitly. The card's ``sha256``
is verified on every load (:func:`weights_sha256` says exactly what it covers). Files in the
older ``radtriage-checkpoint/1`` format (cards without threshold, training data, metrics or
sha256) still load, unverified; a ``/2`` file without a sha256 is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision import models as tv_models

from inference.errors import ChecksumError, CheckpointError, UntrainedModelError, WeightsMismatchError

log = logging.getLogger(__name__)

FORMAT = "radtriage-checkpoint/2"
#: The format written before cards carried threshold, training data, metrics and sha256.
FORMAT_V1 = "radtriage-checkpoint/1"
READABLE_FORMATS = (FORMAT_V1, FORMAT)
ARCHITECTURES = {
    "densenet121": tv_models.densenet121,
    "densenet169": tv_models.densenet169,
    "densenet201": tv_models.densenet201,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: How many keys of each kind a WeightsMismatchError message names (the error holds them all).
LIST_LIMIT = 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _check_json_like(value: Any, where: str) -> None:
    """Card values must survive ``torch.load(weights_only=True)`` and read well as JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, not a finite number")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json_like(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has a key {k!r} that is not a string")
            _check_json_like(v, f"{where}.{k}")
        return
    raise ValueError(f"{where} holds a {type(value).__name__}; use numbers, strings, "
                     "booleans, lists and mappings")


def default_preprocessing() -> dict[str, Any]:
    """A card's preprocessing when none is given: every key of ``dicom_io.pixels.Preprocessing``
    at its default, written out (a card that leaves a key out means the pipeline from before
    that key existed: no crop, no CLAHE, squashed). A test keeps the two in step."""
    return {"size": 224, "resize": "squash", "crop": True, "clahe": False, "clahe_clip_limit": 2.0,
            "clahe_tile_grid": 8, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


#: Said by every output (SR, summary, start-up log, ``radtriage score``, evaluation reports) of a
#: model whose card has ``demo: true``.
DEMO_NOTICE = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"


@dataclass(frozen=True)
class ModelCard:
    """What a model is: named on every output it contributes to.

    Fields added with ``radtriage-checkpoint/2`` have defaults, so older cards still load.
    ``sha256`` is a stamp of the weights file, set by :func:`save_checkpoint`; it is left out of
    ``==`` (two cards that say the same about a model are equal whatever file they came from).
    """

    name: str
    version: str
    arch: str = "densenet169"
    trained: bool = True
    description: str = ""
    #: What a view must go through before the model sees it; keys as
    #: ``dicom_io.pixels.Preprocessing.to_card`` writes them (size, resize, crop, clahe,
    #: clahe_clip_limit, clahe_tile_grid, mean, std). Keys it lacks mean the defaults.
    #: The single source of truth for the input size (:attr:`input_size`).
    preprocessing: dict[str, Any] = field(default_factory=lambda: default_preprocessing())
    #: The operating point its maker chose: a probability (the sigmoid of the logit) at or
    #: above which a study is called abnormal, and at which ``metrics`` were measured. In (0, 1).
    threshold: float = 0.5
    #: Free text: which data it was trained on (e.g. "MURA v1.1 train, all study types").
    training_data: str = ""
    #: Free-form validation results, e.g. ``{"kappa": 0.705, "auc": 0.93, "set": "MURA valid"}``:
    #: a mapping of strings to numbers, strings, booleans, lists or mappings of the same.
    metrics: dict[str, Any] = field(default_factory=dict)
    #: ``weights_sha256`` of the state dict stored beside this card; "" on cards not yet saved
    #: (and on radtriage-checkpoint/1 cards).
    sha256: str = field(default="", compare=False)
    #: Trained on synthetic radiographs (``radtriage phantoms``) only: every output made with it
    #: carries :data:`DEMO_NOTICE`. ``radtriage train`` sets it when its data are phantoms.
    demo: bool = False

    def __post_init__(self) -> None:
        for key in ("name", "version"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"card {key} must be a non-empty string, not {value!r}")
        for key in ("arch", "description", "training_data"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(f"card {key} must be a string, not {getattr(self, key)!r}")
        for key in ("trained", "demo"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"card {key} must be true or false, not {getattr(self, key)!r}")
        if not isinstance(self.preprocessing, Mapping):
            raise TypeError(f"card preprocessing must be a mapping, not {self.preprocessing!r}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0:
            raise ValueError(f"card threshold must be a probability in (0, 1), not {t!r}")
        object.__setattr__(self, "threshold", float(t))
        if not isinstance(self.metrics, Mapping):
            raise TypeError(f"card metrics must be a mapping, not {self.metrics!r}")
        _check_json_like(self.metrics, "card metrics")
        _check_json_like(self.preprocessing, "card preprocessing")
        if not isinstance(self.sha256, str) or (self.sha256 and not _SHA256_RE.fullmatch(self.sha256)):
            raise ValueError(f"card sha256 must be 64 lowercase hex digits, not {self.sha256!r}")

    @property
    def display_name(self) -> str:
        return self.name if self.trained else f"{self.name} (UNTRAINED)"

    @property
    def notice(self) -> str | None:
        """What every output made with this model must say about it, or None."""
        return DEMO_NOTICE if self.demo else None

    @property
    def input_size(self) -> int:
        """Model input is input_size x input_size pixels (``preprocessing["size"]``, default 224)."""
        return int(self.preprocessing.get("size", 224))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelCard":
        """The card a checkpoint stores. Raises TypeError or ValueError naming what is wrong
        (unknown keys included: a card from a newer radtriage is not silently misread)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"the card is a {type(data).__name__}, not a mapping")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- weights ------------------------------------------------------------------------------------


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the canonical serialisation of a state dict, exactly as stored.

    Tensors in sorted key order (Python string order, i.e. by Unicode code point); for each,
    the UTF-8 bytes of ``f"{key}\\0{dtype}\\0{shape}\\0{nbytes}\\0"`` followed by its raw bytes,
    where ``dtype`` is torch's name without ``torch.`` (``float32``, ``float16``, ``int64``),
    ``shape`` the sizes joined by commas (empty for a 0-d tensor), ``nbytes`` the byte count
    of the data, and the raw bytes the elements in C (row-major) order, little-endian.
    The dtype is the stored one: the same weights stored as float16 have another sha256.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_quantized:
            raise CheckpointError(f"{key} is not a dense tensor ({type(t).__name__}); "
                                  "a state dict must hold dense tensors only")
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        dtype = str(state[key].dtype).removeprefix("torch.")
        shape = ",".join(str(d) for d in state[key].shape)
        h.update(f"{key}\0{dtype}\0{shape}\0{data.nbytes}\0".encode("utf-8"))
        h.update(memoryview(data))
    return h.hexdigest()


@lru_cache(maxsize=None)
def reference_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``arch`` with one output (built on the meta device: no memory)."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise CheckpointError(
            f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None
    with torch.device("meta"):
        model = factory(weights=None, num_classes=1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _listing(items: Sequence[str], what: str) -> str:
    head = ", ".join(items[:LIST_LIMIT])
    more = f" (and {len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else ""
    return f"\n  {len(items)} {what}: {head}{more}"


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fit_state_dict(
    state: Mapping[str, Any], arch: str, *, where: str = "", fill_batches_tracked: bool = False,
    renamed: str = "",
) -> dict[str, torch.Tensor]:
    """Check that ``state`` has exactly the keys and shapes of torchvision's ``arch`` with one
    output, and return it as a plain dict.

    ``fill_batches_tracked`` supplies the BatchNorm ``num_batches_tracked`` counters that state
    dicts from before torch 0.4.1 lack (they do not change an eval-mode output). Raises
    WeightsMismatchError listing the missing keys, the unexpected keys and the shape mismatches
    (the first LIST_LIMIT of each in the message, with counts; all of them in its attributes),
    prefixed by ``where`` (a path and ": "); ``renamed`` says which renames were applied first.
    """
    ref = reference_shapes(arch)
    out: dict[str, torch.Tensor] = {}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = [k for k in ref if k not in state]
    if fill_batches_tracked and missing and all(k.endswith(".num_batches_tracked") for k in missing):
        out.update({k: torch.tensor(0, dtype=torch.long) for k in missing})
        missing = []
    unexpected = sorted(k for k in state if k not in ref and k not in not_tensors)
    mismatched = [(k, tuple(state[k].shape), ref[k]) for k in ref
                  if isinstance(state.get(k), torch.Tensor) and tuple(state[k].shape) != ref[k]]
    if missing or unexpected or mismatched or not_tensors:
        parts = [f"{where}the weights do not fit torchvision {arch} with one output"
                 + (f" (key names after {renamed})" if renamed else "") + ":"]
        if missing:
            parts.append(_listing(missing, "missing key(s)"))
        if unexpected:
            parts.append(_listing(unexpected, "unexpected key(s)"))
        if mismatched:
            parts.append(_listing([f"{k} file {_shape(a)} vs model {_shape(b)}" for k, a, b in mismatched],
                                  "shape mismatch(es)"))
        if not_tensors:
            parts.append(_listing(not_tensors, "value(s) that are not tensors"))
        head = state.get("classifier.weight")
        if isinstance(head, torch.Tensor) and head.ndim == 2 and head.shape[0] != 1:
            parts.append(f"\n  the classifier has {head.shape[0]} outputs; radtriage needs one logit "
                         "(the MURA recipe: Linear(features, 1), sigmoid applied by radtriage)")
        raise WeightsMismatchError("".join(parts), missing=missing, unexpected=unexpected,
                                   mismatched=mismatched)
    out.update({k: state[k] for k in ref if k not in out})
    return out


def _half(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if v.is_floating_point() and v.dtype != torch.float16:
            h = v.to(torch.float16)
            if bool(torch.isfinite(v).all()) and not bool(torch.isfinite(h).all()):
                raise CheckpointError(f"cannot store the weights as float16: {k} has values "
                                      "beyond +-65504; save them as float32")
            v = h
        out[k] = v
    return out


def build_model(arch: str = "densenet169") -> nn.Module:
    """torchvision's DenseNet with a single-logit head (the MURA recipe), random weights."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise CheckpointError(
            f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None
    return factory(weights=None, num_classes=1)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy a fitted state dict into ``model``, each tensor cast to the model's dtype (float16
    weights load into a float32 model)."""
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return model


def save_checkpoint(
    path: Path | str, model: nn.Module, card: ModelCard, *, half: bool = False,
) -> ModelCard:
    """Write ``model`` with ``card`` as a radtriage checkpoint and return the card as stored
    (its ``sha256`` set to the weights written; whatever sha256 ``card`` had is replaced).

    ``half`` stores floating-point tensors as float16 (half the file; they load back into a
    float32 model). The file is written beside its final name, synced and renamed into place,
    so a reader never sees half a checkpoint. Raises CheckpointError when the weights do not fit
    ``card.arch``: a checkpoint that cannot be loaded is never written.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state = fit_state_dict(state, card.arch)
    if half:
        state = _half(state)
    card = replace(card, sha256=weights_sha256(state))
    blob = {"format": FORMAT, "arch": card.arch, "card": card.to_dict(), "state_dict": state}
    atomic_write(path, lambda f: torch.save(blob, f))
    return card


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """``write(file)`` into a temporary file beside ``path``, synced, then renamed onto it: a
    reader sees the old file or the whole new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Checkpoint:
    """A radtriage checkpoint as read from disk, verified but not yet in a model."""

    path: Path
    format: str
    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    #: Whether the weights were checked against the card's sha256 (False only for format /1).
    verified: bool


def read_checkpoint(path: Path | str) -> Checkpoint:
    """Read and verify a radtriage checkpoint without building a model.

    Checks, in order: the file exists and is a torch file readable with ``weights_only=True``;
    it is a dict in a format radtriage reads; the card is well formed; the weights are the ones
    the card's sha256 names (ChecksumError otherwise; a ``/1`` file has no sha256 and is read
    unverified); the keys and shapes fit the architecture (WeightsMismatchError). Every error
    names the path.
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
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return checkpoint_from_blob(path, blob)


def checkpoint_from_blob(path: Path, blob: Any) -> Checkpoint:
    """:func:`read_checkpoint` of what ``torch.load(path, weights_only=True)`` returned."""
    if not isinstance(blob, dict) or blob.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path}: not a radtriage checkpoint (expected a dict with format "
            f"{' or '.join(repr(f) for f in READABLE_FORMATS)}); to convert another model file "
            "use radtriage import-model (docs/models.md)"
        )
    fmt = blob["format"]
    try:
        card = ModelCard.from_dict(blob["card"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the model card is missing or malformed ({exc})") from exc
    arch = blob.get("arch", card.arch)
    if arch != card.arch:
        raise CheckpointError(f"{path}: the file says {arch} but its card says {card.arch}")
    state = blob.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the checkpoint has no state_dict")
    if card.sha256:
        try:
            actual = weights_sha256(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        if actual != card.sha256:
            raise ChecksumError(
                f"{path}: the weights are not the ones the card of {card.name} {card.version} "
                f"names (card sha256 {card.sha256[:16]}..., weights {actual[:16]}...): the file "
                "was altered or damaged after it was written; get a good copy or import the "
                "model again"
            )
    elif fmt != FORMAT_V1:
        raise ChecksumError(f"{path}: the card of {card.name} {card.version} has no sha256, "
                            f"which {fmt} requires; import the model again")
    else:
        log.info("%s: %s checkpoint without a sha256; weights not verified", path, fmt)
    try:
        reference_shapes(card.arch)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    state = fit_state_dict(state, card.arch, where=f"{path}: ")
    return Checkpoint(path=path, format=fmt, card=card, state_dict=state, verified=bool(card.sha256))


def load_checkpoint(path: Path | str, *, allow_untrained: bool = False) -> tuple[nn.Module, ModelCard]:
    """Load a radtriage checkpoint into a fresh float32 model (on the CPU, eval mode).

    Raises CheckpointError naming the path and what is wrong: missing, unreadable, not a
    radtriage checkpoint, weights that are not the ones its card's sha256 names (ChecksumError),
    weights that do not fit the architecture it names (WeightsMismatchError), or a card that
    says untrained when that is not allowed (UntrainedModelError).
    """
    ckpt = read_checkpoint(path)
    card = ckpt.card
    if not card.trained and not allow_untrained:
        raise UntrainedModelError(
            f"{ckpt.path}: the card of {card.name} {card.version} says it was never trained; "
            "set model.allow_untrained: true only to test the plumbing"
        )
    model = load_weights(build_model(card.arch), ckpt.state_dict)
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


#: What ``model.precision`` may say: ``auto`` is bf16 autocast on a CUDA GPU that has it (fp16
#: on older ones) and float32 on the CPU.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``torch.compile`` modes ``model.compile`` may name, besides ``auto`` and ``off``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: What ``model.compile: auto`` uses on CUDA (``benchmarks/model.py --compile-modes`` measures
#: the others); on the CPU ``auto`` is eager.
AUTO_COMPILE_MODE = "default"


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None is plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_compile(mode: str, device: torch.device) -> str | None:
    """The torch.compile mode for ``model.compile`` on ``device``; None: eager."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return AUTO_COMPILE_MODE
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; auto, off or one of {', '.join(COMPILE_MODES)}")
    return mode


def _buckets(batch_size: int) -> list[int]:
    """Batch shapes a compiled model is warmed up for: powers of two below batch_size, and it."""
    sizes = [1 << k for k in range(batch_size.bit_length()) if (1 << k) < batch_size]
    return sizes + [batch_size]


class Scorer:
    """Scores prepared views (float32 arrays, 3xHxW, normalised) in batches on one device.

    Both devices use channels_last. On CUDA: autocast at ``precision`` (bf16 where the GPU has
    it), host batches in pinned memory copied without blocking, optionally ``torch.compile``
    (``compile``: a mode, or None) of the convolutional trunk with batches padded to a few
    fixed shapes so nothing recompiles while serving, and a compile that fails falls back to
    eager with a warning. On CUDA out-of-memory the batch is halved and the work goes on; the
    smaller size is kept. On the CPU: ``cpu_threads`` torch threads (0: torch's default).
    """

    def __init__(
        self, model: nn.Module, card: ModelCard, *, device: torch.device,
        batch_size: int = 16, cpu_threads: int = 0, precision: str = "auto",
        compile: str | None = None,
    ) -> None:
        if device.type == "cpu" and cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.card = card
        self.device = device
        self.batch_size = batch_size
        self.autocast_dtype = resolve_precision(precision, device)
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        #: the largest batch that fits: batch_size until an out-of-memory error halves it
        self.fits = batch_size
        self._pinned: torch.Tensor | None = None
        self.compile_mode: str | None = None
        self._eager_features: nn.Module | None = None
        if compile:
            self._compile(compile)

    # -- set-up ------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def describe(self) -> str:
        mode = f"torch.compile {self.compile_mode}" if self.compile_mode else "eager"
        threads = f", {torch.get_num_threads()} thread(s)" if self.device.type == "cpu" else ""
        return f"{self.device}, {self.precision}, channels_last, {mode}, batch {self.batch_size}{threads}"

    def _compile(self, mode: str) -> None:
        features = getattr(self.model, "features", None)
        if features is None:
            log.warning("model.compile: the model has no features trunk; serving it eager")
            return
        self._eager_features = features
        self.model.features = torch.compile(features, mode=mode, dynamic=False)
        self.compile_mode = mode

    def _uncompile(self, exc: BaseException) -> None:
        log.warning("torch.compile (%s) is not available here (%s: %s); serving the model eager",
                    self.compile_mode, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        self.model.features = self._eager_features
        self.compile_mode = None
        self._eager_features = None

    def warm_up(self) -> float:
        """Run the batch shapes the daemon will use once, so the first study is not slow (and a
        compile that fails is found now, not on a patient's study). Returns seconds."""
        size = self.card.input_size
        start = time.perf_counter()
        shapes = _buckets(self.batch_size) if self.compile_mode else [1, self.batch_size]
        for n in dict.fromkeys(shapes):
            views = [np.zeros((3, size, size), np.float32)] * n
            try:
                self.score_with_heatmaps(views)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # a compiler or backend that cannot build this model
                if not self.compile_mode:
                    raise
                self._uncompile(exc)
                return self.warm_up() + (time.perf_counter() - start)
        return time.perf_counter() - start

    # -- scoring -----------------------------------------------------------------------------

    def _padded(self, n: int) -> int:
        if not self.compile_mode:
            return n
        return next(b for b in _buckets(self.batch_size) if b >= n)

    def _to_device(self, views: Sequence[np.ndarray]) -> torch.Tensor:
        n = len(views)
        rows = self._padded(n)
        chunk = np.stack(views).astype(np.float32, copy=False)
        if self.device.type == "cuda":
            shape = (self.batch_size,) + chunk.shape[1:]
            if self._pinned is None or tuple(self._pinned.shape) != shape:
                self._pinned = torch.empty(shape, dtype=torch.float32).pin_memory()
            host = self._pinned[:rows]
            host[:n].copy_(torch.from_numpy(chunk))
            if rows > n:
                host[n:].zero_()
            # safe to reuse the pinned buffer: results are read back (a sync) before the next batch
            batch = host.to(self.device, non_blocking=True)
        else:
            batch = torch.from_numpy(chunk)
            if rows > n:
                batch = torch.cat([batch, batch.new_zeros((rows - n,) + tuple(batch.shape[1:]))])
        return batch.contiguous(memory_format=torch.channels_last)

    def _autocast(self):  # type: ignore[no-untyped-def]
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _in_batches(self, views: Sequence[np.ndarray], run: Callable[[torch.Tensor, int], list]
                    ) -> list:
        """``run(batch, n)`` over the views in batches of at most :attr:`fits`; on CUDA out of
        memory the batch halves (down to one view, which then raises) and the work goes on."""
        out: list = []
        i = 0
        while i < len(views):
            n = min(self.fits, self.batch_size, len(views) - i)
            try:
                with self._autocast():
                    out.extend(run(self._to_device(views[i:i + n]), n))
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self.fits = max(1, n // 2)
                if self.compile_mode:  # keep to the warmed-up shapes
                    self.fits = max(b for b in _buckets(self.batch_size) if b <= self.fits)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                log.warning("out of memory on %s at a batch of %d view(s); batches of %d from now on",
                            self.device, n, self.fits)
                continue
            i += n
        return out

    @torch.inference_mode()
    def score(self, views: Sequence[np.ndarray]) -> list[float]:
        """Probability of abnormality for each view, in order."""
        def run(batch: torch.Tensor, n: int) -> list[float]:
            logits = self.model(batch).float().reshape(-1)[:n]
            return torch.sigmoid(logits).cpu().tolist()
        return self._in_batches(views, run)

    @torch.inference_mode()
    def score_with_heatmaps(self, views: Sequence[np.ndarray], method: str = "cam"
                            ) -> list[tuple[float, np.ndarray]]:
        """(probability, heatmap) for each view, in order, from the pass that scores it: the
        heatmap is the class activation map (``cam``, logit units; its mean is the logit) or
        Grad-CAM (``gradcam``), float32 on the last feature grid (7 x 7 at 224 px)."""
        from inference.cam import forward_with_heatmap

        def run(batch: torch.Tensor, n: int) -> list[tuple[float, np.ndarray]]:
            logits, maps = forward_with_heatmap(self.model, batch, method)  # type: ignore[arg-type]
            probs = torch.sigmoid(logits[:n].float()).cpu().tolist()
            arrays = maps[:n].float().cpu().numpy()
            return [(float(p), arrays[i].copy()) for i, p in enumerate(probs)]
        return self._in_batches(views, run)
