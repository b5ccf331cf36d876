"""Import model files made elsewhere as radtriage checkpoints (``radtriage import-model``).

:func:`import_model` reads a source file, works out what it is, maps its weights onto
torchvision's DenseNet with one output, and writes a radtriage checkpoint with a card
(:mod:`inference.model`; docs/models.md). Sources it reads:

* a radtriage checkpoint (``radtriage-checkpoint/1`` or ``/2``): verified and re-stamped with a
  new card (fields not given are kept from the old card);
* a torchvision DenseNet-121/169/201 state dict with a one-output ``classifier``;
* the seeds' form (DeepRadiology, DenseNet-MURA-PyTorch): torchvision-0.2 layer names
  (``features.denseblock1.denselayer1.norm.1.weight``), a head named ``fc``, no
  ``num_batches_tracked`` counters, and the sigmoid inside ``forward``;
* any of those under DataParallel's ``module.`` prefix, a common wrapper prefix (``model.``),
  inside a dict (``{"state_dict": ..., "epoch": ...}``), or saved in torch's pre-1.6 format;
* a whole pickled module, only with ``trust_pickle=True`` (unpickling runs code from the file);
* a TorchScript archive (``torch.jit.save``): its state dict, when its keys fit.

When the source can be run (a pickled module, a TorchScript archive), the imported model is
run beside it on the same input and must give the same output: either the source's output is
our logit, or (the seeds, with the sigmoid inside forward) it is the sigmoid of our logit.
Keys or shapes that do not fit raise :class:`~inference.errors.WeightsMismatchError` listing
them. Bad argument values (threshold, name, preprocessing) raise ValueError or TypeError.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TextIO

import torch
from torch import nn

from inference.errors import CheckpointError, UnsafePickleError
from inference.model import (
    ARCHITECTURES,
    FORMAT_V1,
    READABLE_FORMATS,
    ModelCard,
    build_model,
    checkpoint_from_blob,
    default_preprocessing,
    fit_state_dict,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Dense-block layer counts of the torchvision DenseNets radtriage serves.
BLOCK_CONFIGS = {
    (6, 12, 24, 16): "densenet121",
    (6, 12, 32, 32): "densenet169",
    (6, 12, 48, 32): "densenet201",
}
#: Ones it recognises to say why it refuses them.
UNSUPPORTED_BLOCK_CONFIGS = {(6, 12, 36, 24): "densenet161"}
#: Keys of a dict under which training scripts commonly keep the weights, tried in order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")

_LEGACY_LAYER = re.compile(r"(\.denselayer\d+\.)(norm|relu|conv)\.([12])\.")
_DENSE_KEY = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.")
_SEQUENTIAL_HEAD = re.compile(r"^classifier\.(\d+)\.(weight|bias)$")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
#: Source outputs equal to sigmoid(our logit) within this (the seeds' probabilities) ...
PROBABILITY_ATOL = 1e-5
#: ... or equal to our logit within this (relative and absolute).
LOGIT_TOL = 1e-4


@dataclass
class Source:
    """What a source file turned out to hold."""

    path: Path
    #: "radtriage checkpoint", "state dict", "pickled module" or "TorchScript archive".
    kind: str
    #: Weights under torchvision's key names (after :func:`normalise_keys`).
    state_dict: dict[str, torch.Tensor]
    #: What was done to get there, in words (prefixes stripped, names mapped, ...).
    notes: list[str] = field(default_factory=list)
    #: The source model itself, when it can be run to compare outputs.
    runnable: Any = None
    #: The card of a radtriage checkpoint.
    card: ModelCard | None = None

    def describe(self) -> str:
        return "; ".join([self.kind, *self.notes])


@dataclass(frozen=True)
class ImportResult:
    card: ModelCard
    path: Path
    #: The source's form and what was done to it (Source.describe()).
    source: str
    #: How the imported model's outputs were checked against the source's, in words.
    outputs: str


# -- reading a source ----------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``constants.pkl`` record (torch.save's has none)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch deprecates torch.jit in favour of torch.export; TorchScript archives are a
            # format we read from others, and the warning would only confuse whoever imports one.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit raises RuntimeError and friends for a damaged archive
        raise CheckpointError(f"{path}: a TorchScript archive torch cannot load "
                              f"({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    """The Python names a weights_only load refused (all of them for zip-format files)."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a pre-1.6 (non-zip) file: torch can only name the first, in its message
        found = []
    return found or _UNSAFE_GLOBAL.findall(str(exc))


def _torch_load(path: Path, *, trust_pickle: bool) -> tuple[Any, bool]:
    """The unpickled object, and whether it needed a full (trusted) unpickling."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: not a readable torch file ({type(exc).__name__}: "
                                  f"{_first_line(exc)})") from exc
        names = _unsafe_globals(path, exc)
        if not trust_pickle:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise UnsafePickleError(
                f"{path}: holds pickled Python objects ({shown or 'unnamed'}), not only weights. "
                "Unpickling them runs whatever code the file names (arbitrary code execution), "
                "so radtriage does not by default. If you trust where the file came from, "
                "import it with --trust-pickle (import_model(trust_pickle=True)); better, have "
                "its maker save model.state_dict() instead",
                globals_=names,
            ) from exc
    log.warning("%s: unpickling with full trust, as asked (--trust-pickle)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: the pickled objects need Python code that is not importable here "
            f"({type(exc).__name__}: {_first_line(exc)}); run the import where the code that "
            "saved them is importable (PYTHONPATH), or load the model there and save "
            "torch.save(model.state_dict(), 'weights.pt') to import instead"
        ) from exc
    except Exception as exc:  # anything the file's own pickled code raises
        raise CheckpointError(f"{path}: cannot unpickle ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(path: Path, obj: Any, notes: list[str]) -> tuple[Mapping[str, Any], Any]:
    """The state dict inside what torch.load returned, and a runnable module if there was one."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), obj
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module) or _is_state_dict(inner):
                others = sorted(str(k) for k in obj if k != key)
                notes.append(f"weights from the {key!r} entry of a dict"
                             + (f" (also: {', '.join(others[:8])})" if others else ""))
                return (inner.state_dict(), inner) if isinstance(inner, nn.Module) else (inner, None)
        keys = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(
            f"{path}: a dict with keys {keys or '(none)'} and no state dict in it: expected "
            f"tensors by name, or one of them under {', '.join(repr(k) for k in WRAPPER_KEYS)}")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not weights (expected a state "
                          "dict, a module or a dict with a 'state_dict' entry)")


def normalise_keys(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map a DenseNet state dict's key names onto torchvision's; return it and notes in words.

    In order: DataParallel's ``module.`` prefix stripped (repeatedly); a common wrapper prefix
    before ``features.`` stripped (``model.``, ``densenet121.``); torchvision-0.2 layer names
    mapped (``denselayerN.norm.1.`` -> ``denselayerN.norm1.``, likewise relu/conv, 1 and 2); a
    head named ``fc`` or ``classifier.N`` (one Linear in a Sequential) renamed ``classifier``.
    Anything else is left as it is, for :func:`inference.model.fit_state_dict` to list.
    """
    notes: list[str] = []
    out = dict(state)

    def rename(fn: Any) -> int:
        nonlocal out
        new: dict[str, Any] = {}
        changed = 0
        for k, v in out.items():
            nk = fn(k)
            changed += nk != k
            if nk in new:
                raise CheckpointError(f"two keys map onto {nk!r} (one of them {k!r}); "
                                      "the weights are not a DenseNet radtriage can read")
            new[nk] = v
        out = new
        return changed

    while out and all(k.startswith("module.") for k in out):
        rename(lambda k: k[len("module."):])
        if "DataParallel 'module.' prefix stripped" not in notes:
            notes.append("DataParallel 'module.' prefix stripped")
    if not any(k.startswith("features.") for k in out):
        anchors = {k[: -len("features.conv0.weight")] for k in out if k.endswith(".features.conv0.weight")}
        if len(anchors) == 1:
            prefix = anchors.pop()
            n = rename(lambda k: k[len(prefix):] if k.startswith(prefix) else k)
            notes.append(f"prefix {prefix!r} stripped ({n} keys)")
    n = rename(lambda k: _LEGACY_LAYER.sub(r"\1\2\3.", k))
    if n:
        notes.append(f"torchvision-0.2 layer names (norm.1, relu.1, conv.1, ...) mapped ({n} keys)")
    if not any(k.startswith("classifier.") for k in out) and any(k.startswith("fc.") for k in out):
        rename(lambda k: "classifier." + k[len("fc."):] if k.startswith("fc.") else k)
        notes.append("head 'fc' renamed 'classifier'")
    elif "classifier.weight" not in out:
        heads = {m.group(1) for k in out if (m := _SEQUENTIAL_HEAD.match(k))}
        others = [k for k in out if k.startswith("classifier.") and not _SEQUENTIAL_HEAD.match(k)]
        if len(heads) == 1 and not others:
            index = heads.pop()
            rename(lambda k: "classifier." + k[len(f"classifier.{index}."):]
                   if k.startswith(f"classifier.{index}.") else k)
            notes.append(f"head 'classifier.{index}' (in a Sequential) renamed 'classifier'")
    return out, notes


def detect_arch(state: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(arch, why)``: the torchvision DenseNet whose dense blocks these keys have, or None and
    why not, from the number of layers in each dense block."""
    layers: dict[int, int] = {}
    for k in state:
        m = _DENSE_KEY.match(k)
        if m:
            block, layer = int(m.group(1)), int(m.group(2))
            layers[block] = max(layers.get(block, 0), layer)
    if not layers:
        first = ", ".join(list(state)[:5])
        return None, f"no DenseNet keys (features.denseblockN.denselayerM.*) among {first or 'no keys'}"
    config = tuple(layers[b] for b in sorted(layers))
    if config in BLOCK_CONFIGS:
        return BLOCK_CONFIGS[config], f"dense blocks of {', '.join(map(str, config))} layers"
    other = UNSUPPORTED_BLOCK_CONFIGS.get(config)
    known = ", ".join(ARCHITECTURES)
    if other:
        return None, f"the weights are a {other}, which radtriage does not serve (it serves {known})"
    return None, (f"dense blocks of {', '.join(map(str, config))} layers match no torchvision "
                  f"DenseNet radtriage serves ({known})")


def read_source(src: Path | str, *, trust_pickle: bool = False) -> Source:
    """Read a model file of any supported form (module docstring) into a :class:`Source`."""
    path = Path(src)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if _is_torchscript(path):
        module = _load_torchscript(path)
        state, notes = normalise_keys(dict(module.state_dict()))
        return Source(path, "TorchScript archive", state, notes, runnable=module)
    obj, pickled = _torch_load(path, trust_pickle=trust_pickle)
    if isinstance(obj, Mapping) and obj.get("format") in READABLE_FORMATS:
        ckpt = checkpoint_from_blob(path, obj)  # verifies the sha256 and the fit
        kind = "radtriage checkpoint" + (" (format /1, no sha256 to verify)"
                                         if ckpt.format == FORMAT_V1 else " (sha256 verified)")
        return Source(path, kind, dict(ckpt.state_dict), [], card=ckpt.card)
    notes: list[str] = []
    raw, runnable = _unwrap(path, obj, notes)
    kind = ("pickled module (trusted)" if runnable is not None
            else "state dict" + (" (unpickled with trust)" if pickled else ""))
    try:
        state, more = normalise_keys(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return Source(path, kind, state, notes + more, runnable=runnable)


# -- checking outputs ----------------------------------------------------------------------------


def _run(module: Any, x: torch.Tensor) -> torch.Tensor:
    # one run of a TorchScript module: its profiling optimiser would only cost time
    with torch.no_grad(), torch.jit.optimized_execution(False):
        y = module(x.clone())
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"it returned a {type(y).__name__}, not a tensor")
    return y.detach().float().reshape(-1)


def check_outputs(source: Any, model: nn.Module, size: int = 224) -> str:
    """Run the source model and ours on the same input; say how they agree, in words.

    Agreement is either ``source(x) == sigmoid(model(x))`` within PROBABILITY_ATOL (the seeds
    apply the sigmoid inside forward; radtriage applies it to the logit) or ``source(x) ==
    model(x)`` within LOGIT_TOL. Tries ``size`` px, then 224 (the seeds' forward pools with a
    fixed 7x7 kernel: it runs at 224 only). Raises CheckpointError when the source runs and
    agrees with neither; returns "not checked: ..." when the source cannot be run.
    """
    model.eval()
    try:
        source.eval()
        source.float()
    except Exception as exc:  # a foreign module: whatever its eval/float raise
        return f"not checked: the source model cannot be prepared ({type(exc).__name__}: {_first_line(exc)})"
    failure = ""
    for px in dict.fromkeys((size, 224)):
        x = torch.randn(2, 3, px, px, generator=torch.Generator().manual_seed(0))
        try:
            theirs = _run(source, x)
        except Exception as exc:  # the foreign forward's own errors
            failure = f"{type(exc).__name__}: {_first_line(exc)}"
            continue
        ours = _run(model, x)
        if theirs.shape != ours.shape:
            raise CheckpointError(f"the source model gives {theirs.numel()} outputs for 2 images, "
                                  "not one each")
        prob_diff = float((theirs - torch.sigmoid(ours)).abs().max())
        if bool(((theirs >= 0) & (theirs <= 1)).all()) and prob_diff <= PROBABILITY_ATOL:
            return (f"checked at {px} px: the source's outputs are the sigmoid of the imported "
                    f"logit (largest difference {prob_diff:.1e})")
        if torch.allclose(theirs, ours, rtol=LOGIT_TOL, atol=LOGIT_TOL):
            diff = float((theirs - ours).abs().max())
            return f"checked at {px} px: the source's outputs are the imported logit (largest difference {diff:.1e})"
        logit_diff = float((theirs - ours).abs().max())
        raise CheckpointError(
            f"the source model's outputs at {px} px are neither the imported logit (largest "
            f"difference {logit_diff:.3g}) nor its sigmoid ({prob_diff:.3g}): its forward does "
            "something torchvision's DenseNet does not (another pooling, extra layers, another "
            "head), so radtriage cannot serve it faithfully")
    return f"not checked: the source model does not run ({failure})"


# -- importing -----------------------------------------------------------------------------------


def foreign_preprocessing() -> dict[str, Any]:
    """What a model from outside radtriage was trained with unless told otherwise: the MURA
    recipe of the seeds, the whole view squashed to 224 px, no crop, no CLAHE, ImageNet mean/std."""
    return {**default_preprocessing(), "resize": "squash", "crop": False, "clahe": False}


def _check_preprocessing(p: Mapping[str, Any]) -> None:
    """A light check of what can be checked here; the daemon checks every key at start-up."""
    if not isinstance(p, Mapping):
        raise TypeError(f"preprocessing must be a mapping, not {p!r}")
    size = p.get("size", 224)
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 2048:
        raise ValueError(f"preprocessing size must be an integer in 32-2048, not {size!r}")
    for key in ("mean", "std"):
        if key in p:
            v = p[key]
            if (not isinstance(v, (list, tuple)) or len(v) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise ValueError(f"preprocessing {key} must be three numbers, not {v!r}")
            if key == "std" and not all(x > 0 for x in v):
                raise ValueError(f"preprocessing std must be positive, not {v!r}")


def check_import_arguments(
    *, name: str, version: str, arch: str | None = None, threshold: float | None = None,
    training_data: str | None = None, preprocessing: Mapping[str, Any] | None = None,
    trained: bool | None = None, description: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> None:
    """Raise ValueError or TypeError for argument values no import could accept (before any
    file is read)."""
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if preprocessing is not None:
        _check_preprocessing(preprocessing)
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping, not {metrics!r}")
    ModelCard(name=name, version=version, threshold=0.5 if threshold is None else threshold,
              training_data="" if training_data is None else training_data,
              description="" if description is None else description,
              metrics=dict(metrics or {}), trained=True if trained is None else trained)


def _pick(given: Any, base: ModelCard | None, attr: str, default: Any) -> Any:
    if given is not None:
        return given
    return getattr(base, attr) if base is not None else default


def run_import(
    src: Path | str,
    out: Path | str,
    *,
    name: str,
    version: str,
    arch: str | None = None,
    threshold: float | None = None,
    training_data: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    trained: bool | None = None,
    description: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    demo: bool | None = None,
    held_out: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    half: bool = False,
    overwrite: bool = False,
) -> ImportResult:
    """:func:`import_model`, returning also what the source was and how outputs were checked."""
    src, out = Path(src), Path(out)
    check_import_arguments(name=name, version=version, arch=arch, threshold=threshold,
                           training_data=training_data, preprocessing=preprocessing, trained=trained,
                           description=description, metrics=metrics)
    if out.is_dir():
        raise CheckpointError(f"{out}: is a folder; give the checkpoint's file name")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: exists; choose another path or overwrite it explicitly (--force)")

    source = read_source(src, trust_pickle=trust_pickle)
    base = source.card
    if base is not None:
        if arch is not None and arch != base.arch:
            raise CheckpointError(f"{src}: the checkpoint is a {base.arch}, not the {arch} asked for")
        arch = base.arch
    else:
        detected, why = detect_arch(source.state_dict)
        if arch is None:
            if detected is None:
                raise CheckpointError(f"{src} ({source.kind}): cannot tell which DenseNet this "
                                      f"is: {why}")
            arch = detected
        elif detected is not None and detected != arch:
            raise CheckpointError(f"{src}: the weights are a {detected} ({why}), not the {arch} asked for")
    state = fit_state_dict(source.state_dict, arch, where=f"{src} ({source.kind}): ",
                           fill_batches_tracked=True,
                           renamed="; ".join(source.notes))
    if any(k.endswith("num_batches_tracked") and k not in source.state_dict for k in state):
        source.notes.append("BatchNorm num_batches_tracked counters added (absent before torch 0.4.1)")

    model = load_weights(build_model(arch), state).eval()
    card = ModelCard(
        name=name, version=version, arch=arch,
        trained=_pick(trained, base, "trained", True),
        description=_pick(description, base, "description", f"imported from {src.name}"),
        preprocessing=dict(_pick(preprocessing, base, "preprocessing", foreign_preprocessing())),
        threshold=_pick(threshold, base, "threshold", 0.5),
        training_data=_pick(training_data, base, "training_data", ""),
        metrics={**_pick(metrics, base, "metrics", {}), **({"held_out": dict(held_out)} if held_out else {})},
        demo=_pick(demo, base, "demo", False),
    )
    if source.runnable is not None:
        try:
            outputs = check_outputs(source.runnable, model, card.input_size)
        except CheckpointError as exc:
            raise CheckpointError(f"{src}: {exc}") from exc
    elif base is not None:
        outputs = "the same weights (a radtriage checkpoint)"
    else:
        outputs = "not checked: the source holds weights only"
    try:
        card = save_checkpoint(out, model, card, half=half)
    except OSError as exc:
        raise CheckpointError(f"{out}: cannot write the checkpoint ({exc.strerror or exc})") from exc
    written = read_checkpoint(out)  # what is on disk loads and carries the same sha256
    if written.card.sha256 != card.sha256:
        raise CheckpointError(f"{out}: the file written does not read back the same")
    log.info("imported %s (%s) as %s %s %s into %s, sha256 %s; outputs %s", src, source.describe(),
             card.name, card.version, card.arch, out, card.sha256, outputs)
    return ImportResult(card=card, path=out, source=source.describe(), outputs=outputs)


def import_model(
    src: Path | str,
    out: Path | str,
    *,
    name: str,
    version: str,
    arch: str | None = None,
    threshold: float | None = None,
    training_data: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    trained: bool | None = None,
    description: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    demo: bool | None = None,
    held_out: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    half: bool = False,
    overwrite: bool = False,
) -> ModelCard:
    """Read ``src`` (any form in the module docstring), write a radtriage checkpoint to ``out``
    and return its card (with the sha256 of the weights written).

    ``arch``: densenet121/169/201; None detects it from the dense blocks' layer counts (an arch
    given that the weights contradict is an error). ``threshold``, ``training_data``,
    ``preprocessing``, ``trained``, ``description`` and ``metrics`` left None take the source
    card's values when the source is a radtriage checkpoint, else 0.5, "",
    :func:`foreign_preprocessing` (the seeds' recipe: 224 px squashed, no crop, no CLAHE,
    ImageNet mean/std), True, "imported from SRC" and {}. ``preprocessing`` must be what the
    model was trained with. ``trust_pickle`` allows
    unpickling Python objects (a whole pickled module): only for files from a trusted source.
    ``half`` stores the weights as float16. ``overwrite`` replaces an existing ``out``.
    ``demo``: the model was trained on synthetic radiographs only (every output then says
    ``DEMO_NOTICE``); None keeps a radtriage checkpoint's value, else False. ``held_out``: an
    evaluation's figures (``training.evaluate.held_out_metrics``), stored as the card's
    ``metrics["held_out"]`` beside the other metrics.

    Raises CheckpointError (and its subclasses: UnsafePickleError, WeightsMismatchError listing
    keys and shapes, ChecksumError) for a source that cannot be imported or an output that
    cannot be written; ValueError or TypeError for bad argument values, before any file is read.
    """
    return run_import(src, out, name=name, version=version, arch=arch, threshold=threshold,
                      training_data=training_data, preprocessing=preprocessing, trained=trained,
                      description=description, metrics=metrics, demo=demo, held_out=held_out,
                      trust_pickle=trust_pickle, half=half, overwrite=overwrite).card


# -- command line --------------------------------------------------------------------------------


def _json_option(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option}: not valid JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{option}: must be a JSON object, like {{\"size\": 224}}")
    return value


def import_model_cli(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``radtriage import-model``: the CLI face of :func:`import_model`. Returns an exit code:
    0 imported (one line on ``out``), 1 the source cannot be imported or the output cannot be
    written, 2 bad argument values (messages on ``err``, prefixed ``radtriage:``).

    The argparse spec it expects (daemon/cli.py; import this module lazily inside the command,
    it imports torch)::

        p = sub.add_parser("import-model", help="convert a model file into a radtriage checkpoint")
        p.add_argument("src", metavar="SRC", help="the model file to import")
        p.add_argument("--out", required=True, metavar="DST", help="the checkpoint to write")
        p.add_argument("--name", required=True, help="model name, shown on every output")
        p.add_argument("--version", required=True, help="model version, shown on every output")
        p.add_argument("--arch", choices=["densenet121", "densenet169", "densenet201"],
                       default=None, help="default: detected from the weights")
        p.add_argument("--threshold", type=float, default=None,
                       help="operating point, a probability in (0, 1); default 0.5")
        p.add_argument("--training-data", default=None, metavar="TEXT",
                       help="what it was trained on")
        p.add_argument("--trust-pickle", action="store_true",
                       help="unpickle Python objects (runs code from the file): trusted files only")
        p.add_argument("--untrained", action="store_true",
                       help="mark the model untrained (plumbing tests only)")
        # optional; an attribute the namespace lacks takes the default shown
        p.add_argument("--description", default=None, metavar="TEXT")        # "imported from SRC"
        p.add_argument("--preprocessing", default=None, metavar="JSON")      # foreign_preprocessing()
        p.add_argument("--metrics", default=None, metavar="JSON")            # {}
        p.add_argument("--demo", action=argparse.BooleanOptionalAction, default=None)
                                                        # trained on synthetic radiographs only
        p.add_argument("--half", action="store_true")   # store float16 weights
        p.add_argument("--force", action="store_true")  # overwrite DST

    Without ``--untrained`` a radtriage checkpoint keeps its card's ``trained``; anything else is
    marked trained. On success it prints ``DST: NAME VERSION (ARCH[, UNTRAINED]) from KIND,
    sha256 PREFIX; OUTPUTS`` on one line.
    """
    try:
        values = dict(
            name=args.name, version=args.version,
            arch=getattr(args, "arch", None), threshold=getattr(args, "threshold", None),
            training_data=getattr(args, "training_data", None),
            preprocessing=_json_option(getattr(args, "preprocessing", None), "--preprocessing"),
            trained=False if getattr(args, "untrained", False) else None,
            description=getattr(args, "description", None),
            metrics=_json_option(getattr(args, "metrics", None), "--metrics"),
        )
        check_import_arguments(**values)
        values["demo"] = getattr(args, "demo", None)
        values["held_out"] = getattr(args, "held_out", None)
    except (ValueError, TypeError) as exc:
        print(f"radtriage: import-model: {exc}", file=err)
        return EXIT_USAGE
    try:
        result = run_import(
            args.src, args.out, **values,
            trust_pickle=bool(getattr(args, "trust_pickle", False)),
            half=bool(getattr(args, "half", False)), overwrite=bool(getattr(args, "force", False)),
        )
    except CheckpointError as exc:
        print(f"radtriage: import-model: {exc}", file=err)
        return EXIT_FAILURE
    card = result.card
    kind = result.source.split(";")[0]
    untrained = ("" if card.trained else ", UNTRAINED") + (", DEMO" if card.demo else "")
    print(f"{result.path}: {card.name} {card.version} ({card.arch}{untrained}) from {kind}, "
          f"sha256 {card.sha256[:12]}; outputs {result.outputs}", file=out)
    return EXIT_OK
