"""inference.checkpoints: importing every source form, and the checkpoint card, sha256 and fp16.

Each legacy form is built from a network of our own (a DenseNet-121 with randomised weights and
BatchNorm statistics, so a wrongly mapped tensor shows in the output): the seeds' key names, a
``{"state_dict": ...}`` wrapper, DataParallel prefixes, TorchScript archives and whole pickled
modules. The import must give identical outputs: our logit's sigmoid equals the seeds' output.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchvision import models as tv_models  # noqa: E402

from inference import errors  # noqa: E402
from inference.checkpoints import (  # noqa: E402
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    detect_arch,
    import_model,
    import_model_cli,
    normalise_keys,
    run_import,
)
from inference.errors import (  # noqa: E402
    ChecksumError,
    CheckpointError,
    UnsafePickleError,
    WeightsMismatchError,
)
from inference.model import (  # noqa: E402
    DEMO_NOTICE,
    FORMAT,
    FORMAT_V1,
    ModelCard,
    build_model,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)

ATOL = 1e-6  # "identical outputs": the same weights through the same operations


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small DenseNets on a shared machine: one thread is the fastest and the most repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ours() -> nn.Module:
    """torchvision's DenseNet-121 with one output, every weight and BatchNorm statistic random."""
    torch.manual_seed(7)
    model = build_model("densenet121")
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(1234)
        for name, p in model.named_parameters():
            if ".norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """One 224 px view: the seeds' forward pools with a fixed 7x7 kernel, so 224 px only."""
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).reshape(-1)


class MuraDenseNet(nn.Module):
    """The seeds' network (DenseNet-MURA-PyTorch and DeepRadiology ``densenet.py``) made from
    ours: the same features, a head named ``fc``, ReLU, 7x7 average pooling and the sigmoid
    inside forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.features = copy.deepcopy(model.features)
        self.fc = copy.deepcopy(model.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.avg_pool2d(out, kernel_size=7, stride=1).view(features.size(0), -1)
        return torch.sigmoid(self.fc(out))


@pytest.fixture(scope="module")
def mura(ours: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The seeds' network and its output (a probability) for ``x``."""
    net = MuraDenseNet(ours).eval()
    with torch.no_grad():
        out = net(x).reshape(-1)
    assert torch.allclose(out, torch.sigmoid(logit(ours, x)), atol=ATOL, rtol=0)  # by construction
    return net, out


def legacy_state(model: nn.Module) -> OrderedDict:
    """The seeds' state dict: torchvision-0.2 layer names, ``fc``, no num_batches_tracked."""
    out = OrderedDict()
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        k = re.sub(r"(\.denselayer\d+\.)(norm|relu|conv)([12])\.", r"\1\2.\3.", k)
        k = re.sub(r"^classifier\.", "fc.", k)
        out[k] = v.clone()
    return out


def assert_same_weights(model: nn.Module, reference: nn.Module) -> None:
    a, b = model.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], b[k]), k


def import_and_load(src: Path, tmp_path: Path, **kwargs) -> tuple[nn.Module, ModelCard]:  # type: ignore[no-untyped-def]
    out = tmp_path / "imported.pt"
    card = import_model(src, out, name="mura-seed", version="2.2", **kwargs)
    model, loaded = load_checkpoint(out)
    assert loaded == card and loaded.sha256 == card.sha256
    return model, card


# -- the seeds' forms: identical outputs ----------------------------------------------------------


def test_the_legacy_state_dict_has_the_seeds_key_names(ours: nn.Module) -> None:
    state = legacy_state(ours)
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    assert "features.denseblock1.denselayer1.conv.2.weight" in state
    assert "fc.weight" in state and "classifier.weight" not in state
    assert not any("num_batches_tracked" in k for k in state)


def _legacy_file(tmp_path: Path, ours: nn.Module) -> Path:
    p = tmp_path / "v2.2.pth"
    torch.save(legacy_state(ours), p, _use_new_zipfile_serialization=False)  # as torch < 1.6 wrote
    return p


def _wrapped(tmp_path: Path, ours: nn.Module) -> Path:
    p = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 12, "best_kappa": 0.71, "state_dict": legacy_state(ours)}, p)
    return p


def _data_parallel(tmp_path: Path, ours: nn.Module) -> Path:
    p = tmp_path / "dp.pth"
    torch.save(nn.DataParallel(MuraDenseNet(ours)).state_dict(), p)
    return p


def _data_parallel_legacy(tmp_path: Path, ours: nn.Module) -> Path:
    p = tmp_path / "dp_legacy.pth"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in legacy_state(ours).items())}, p)
    return p


@pytest.mark.parametrize("make", [_legacy_file, _wrapped, _data_parallel, _data_parallel_legacy],
                         ids=lambda f: f.__name__.strip("_"))
def test_the_seeds_state_dicts_import_with_identical_outputs(make, tmp_path: Path, ours: nn.Module,  # type: ignore[no-untyped-def]
                                                             mura, x: torch.Tensor) -> None:
    src = make(tmp_path, ours)
    model, card = import_and_load(src, tmp_path)  # the architecture is detected
    assert card.arch == "densenet121" and card.trained
    assert_same_weights(model, ours)
    _, seeds_output = mura
    assert torch.allclose(torch.sigmoid(logit(model, x)), seeds_output, atol=ATOL, rtol=0)


def test_a_torchvision_state_dict_imports_unchanged(tmp_path: Path, ours: nn.Module, x: torch.Tensor) -> None:
    src = tmp_path / "tv.pt"
    torch.save(ours.state_dict(), src)
    model, card = import_and_load(src, tmp_path, arch="densenet121", threshold=0.42,
                                  training_data="MURA v1.1 train", metrics={"kappa": 0.7})
    assert (card.threshold, card.training_data, card.metrics) == (0.42, "MURA v1.1 train", {"kappa": 0.7})
    a, b = model.state_dict(), ours.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)  # num_batches_tracked kept too
    assert torch.equal(logit(model, x), logit(ours, x))


def _trace(module: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        # torch 2.14 deprecates torch.jit; TorchScript archives are a form others give us
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        return torch.jit.trace(copy.deepcopy(module).eval(), x, check_trace=False)


def _script(module: nn.Module):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        return torch.jit.script(copy.deepcopy(module).eval())


def test_torchscript_of_the_seeds_network(tmp_path: Path, ours: nn.Module, mura, x: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    net, seeds_output = mura
    src = tmp_path / "seeds.torchscript.pt"
    _trace(net, x).save(str(src))
    result = run_import(src, tmp_path / "out.pt", name="ts", version="1")
    assert result.source.startswith("TorchScript archive")
    assert "sigmoid of the imported logit" in result.outputs  # checked at import, by running both
    model, _ = load_checkpoint(tmp_path / "out.pt")
    assert_same_weights(model, ours)
    assert torch.allclose(torch.sigmoid(logit(model, x)), seeds_output, atol=ATOL, rtol=0)


def test_torchscript_of_torchvisions_densenet(tmp_path: Path, ours: nn.Module, x: torch.Tensor) -> None:
    src = tmp_path / "tv.torchscript.pt"
    _script(ours).save(str(src))
    result = run_import(src, tmp_path / "out.pt", name="ts", version="1")
    assert "the imported logit" in result.outputs and "sigmoid" not in result.outputs
    model, _ = load_checkpoint(tmp_path / "out.pt")
    assert torch.allclose(logit(model, x), logit(ours, x), atol=ATOL, rtol=0)


def test_torchscript_that_is_no_densenet_is_named_as_such(tmp_path: Path) -> None:
    src = tmp_path / "other.torchscript.pt"
    _script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())).save(str(src))
    with pytest.raises(CheckpointError, match=r"TorchScript archive\): cannot tell which DenseNet.*"
                                              r"no DenseNet keys"):
        import_model(src, tmp_path / "out.pt", name="ts", version="1")
    assert not (tmp_path / "out.pt").exists()


def test_a_pickled_module_needs_trust(tmp_path: Path, ours: nn.Module, mura, x: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    net, seeds_output = mura
    src = tmp_path / "whole_model.pth"
    torch.save(net, src)
    out = tmp_path / "out.pt"
    with pytest.raises(UnsafePickleError) as info:
        import_model(src, out, name="pickled", version="1")
    message = str(info.value)
    assert str(src) in message and "arbitrary code" in message and "--trust-pickle" in message
    assert any(g.endswith("MuraDenseNet") for g in info.value.globals)
    assert not out.exists()

    result = run_import(src, out, name="pickled", version="1", trust_pickle=True)
    assert result.source.startswith("pickled module")
    assert "sigmoid of the imported logit" in result.outputs
    model, _ = load_checkpoint(out)
    assert torch.allclose(torch.sigmoid(logit(model, x)), seeds_output, atol=ATOL, rtol=0)


class Halved(MuraDenseNet):
    """The seeds' network with something after the sigmoid that torchvision's DenseNet lacks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0.5


def test_a_pickled_module_whose_forward_differs_is_refused(tmp_path: Path, ours: nn.Module) -> None:
    src = tmp_path / "halved.pth"
    torch.save(Halved(ours), src)
    with pytest.raises(CheckpointError, match="neither the imported logit .* nor its sigmoid"):
        import_model(src, tmp_path / "out.pt", name="d", version="1", trust_pickle=True)
    assert not (tmp_path / "out.pt").exists()


# -- what does not fit ----------------------------------------------------------------------------


def test_fourteen_outputs_are_a_shape_mismatch(tmp_path: Path) -> None:
    """CheXNet's form: module.densenet121. prefix, classifier = Sequential(Linear(1024, 14), Sigmoid)."""
    class CheXNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.densenet121 = tv_models.densenet121(weights=None)
            self.densenet121.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())

    src = tmp_path / "chexnet.pth.tar"
    torch.save({"state_dict": nn.DataParallel(CheXNet()).state_dict()}, src)
    with pytest.raises(WeightsMismatchError) as info:
        import_model(src, tmp_path / "out.pt", name="x", version="1")
    e = info.value
    assert e.missing == [] and e.unexpected == []
    assert e.mismatched == [("classifier.weight", (14, 1024), (1, 1024)), ("classifier.bias", (14,), (1,))]
    message = str(e)
    assert "2 shape mismatch(es): classifier.weight file [14, 1024] vs model [1, 1024]" in message
    assert "the classifier has 14 outputs; radtriage needs one logit" in message
    assert "'module.' prefix stripped" in message and "'densenet121.' stripped" in message


def test_missing_and_unexpected_keys_are_listed_with_counts(tmp_path: Path, ours: nn.Module) -> None:
    state = dict(ours.state_dict())
    gone = sorted(k for k in state if k.endswith("conv2.weight"))[:25]
    for k in gone:
        del state[k]
    state["aux.weight"] = torch.zeros(3)
    state["features.extra.bias"] = torch.zeros(2)
    src = tmp_path / "broken.pt"
    torch.save(state, src)
    with pytest.raises(WeightsMismatchError) as info:
        import_model(src, tmp_path / "out.pt", name="x", version="1")
    e = info.value
    assert sorted(e.missing) == gone and e.unexpected == ["aux.weight", "features.extra.bias"]
    message = str(e)
    assert str(src) in message
    assert "25 missing key(s): " + ", ".join(e.missing[:20]) + " (and 5 more)" in message
    assert "2 unexpected key(s): aux.weight, features.extra.bias" in message


def test_an_arch_the_weights_contradict_is_refused(tmp_path: Path, ours: nn.Module) -> None:
    src = tmp_path / "tv.pt"
    torch.save(ours.state_dict(), src)
    with pytest.raises(CheckpointError, match="are a densenet121 .*6, 12, 24, 16.*not the densenet169"):
        import_model(src, tmp_path / "out.pt", name="x", version="1", arch="densenet169")


def test_an_unknown_densenet_is_named() -> None:
    tiny = tv_models.DenseNet(growth_rate=4, block_config=(2, 3, 2, 2), num_init_features=8, num_classes=1)
    arch, why = detect_arch(tiny.state_dict())
    assert arch is None and "2, 3, 2, 2" in why and "densenet169" in why
    densenet161_keys = {f"features.denseblock{b}.denselayer{n}.conv1.weight": None
                        for b, layers in enumerate((6, 12, 36, 24), 1) for n in range(1, layers + 1)}
    arch, why = detect_arch(densenet161_keys)
    assert arch is None and "densenet161, which radtriage does not serve" in why


def test_key_normalisation_in_words() -> None:
    state = {"module.model.features.conv0.weight": 1,
             "module.model.features.denseblock1.denselayer1.norm.1.weight": 2,
             "module.model.classifier.0.weight": 3, "module.model.classifier.0.bias": 4}
    out, notes = normalise_keys(state)
    assert out == {"features.conv0.weight": 1, "features.denseblock1.denselayer1.norm1.weight": 2,
                   "classifier.weight": 3, "classifier.bias": 4}
    assert len(notes) == 4


def _garbage(tmp_path: Path) -> Path:
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"this is not a torch file\x00\x01" * 50)
    return p


def _a_list(tmp_path: Path) -> Path:
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    return p


def _no_weights_in_dict(tmp_path: Path) -> Path:
    p = tmp_path / "dict.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, p)
    return p


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p / "nope.pt", "no such file"),
    (_garbage, "not a readable torch file"),
    (_a_list, "holds a list, not weights"),
    (_no_weights_in_dict, "keys 'epoch', 'optimizer' and no state dict"),
], ids=["missing", "garbage", "list", "dict"])
def test_unreadable_sources_name_the_path(make, words: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make(tmp_path)
    with pytest.raises(CheckpointError) as info:
        import_model(src, tmp_path / "out.pt", name="x", version="1")
    assert str(src) in str(info.value) and words in str(info.value)


# -- radtriage checkpoints: card, sha256, fp16, old formats -------------------------------------


def canonical_sha256(state: dict) -> str:
    """docs/models.md's definition, written again from the text."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].contiguous()
        raw = t.numpy().tobytes(order="C")
        dtype = str(t.dtype).split(".")[1]
        shape = ",".join(map(str, t.shape))
        h.update(f"{key}\x00{dtype}\x00{shape}\x00{len(raw)}\x00".encode())
        h.update(raw)
    return h.hexdigest()


@pytest.fixture(scope="module")
def saved(ours: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "ours.pt"
    save_checkpoint(path, ours, ModelCard(name="ours", version="1.0", arch="densenet121",
                                          preprocessing={"size": 224, "crop": False},
                                          threshold=0.4, training_data="phantoms",
                                          metrics={"auc": 0.9, "per_type": {"wrist": 0.8}}))
    return path


def test_the_sha256_covers_the_canonical_serialisation(saved: Path) -> None:
    blob = torch.load(saved, weights_only=True)
    assert blob["format"] == FORMAT
    assert blob["card"]["sha256"] == canonical_sha256(blob["state_dict"]) == weights_sha256(blob["state_dict"])
    _, card = load_checkpoint(saved)
    assert card.sha256 == blob["card"]["sha256"]
    assert (card.threshold, card.training_data, card.input_size) == (0.4, "phantoms", 224)
    assert card.metrics == {"auc": 0.9, "per_type": {"wrist": 0.8}}


def test_a_tampered_weight_is_refused(saved: Path, tmp_path: Path) -> None:
    blob = torch.load(saved, weights_only=True)
    blob["state_dict"]["features.conv0.weight"][0, 0, 0, 0] += 1e-3
    tampered = tmp_path / "tampered.pt"
    torch.save(blob, tampered)
    with pytest.raises(ChecksumError) as info:
        load_checkpoint(tampered)
    assert str(tampered) in str(info.value) and "altered or damaged" in str(info.value)
    with pytest.raises(ChecksumError):  # the importer verifies too
        import_model(tampered, tmp_path / "out.pt", name="x", version="1")


def test_a_format_2_card_without_sha256_is_refused(saved: Path, tmp_path: Path) -> None:
    blob = torch.load(saved, weights_only=True)
    del blob["card"]["sha256"]
    path = tmp_path / "nosha.pt"
    torch.save(blob, path)
    with pytest.raises(ChecksumError, match="has no sha256"):
        load_checkpoint(path)


def test_format_1_cards_still_load(saved: Path, tmp_path: Path, ours: nn.Module) -> None:
    blob = torch.load(saved, weights_only=True)
    old = {"format": FORMAT_V1, "arch": "densenet121",
           "card": {"name": "old", "version": "0.9", "arch": "densenet121", "trained": True,
                    "description": "before sha256", "preprocessing": {"size": 224}},
           "state_dict": blob["state_dict"]}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    model, card = load_checkpoint(path)
    assert card == ModelCard(name="old", version="0.9", arch="densenet121", description="before sha256",
                             preprocessing={"size": 224})
    assert (card.threshold, card.training_data, card.metrics, card.sha256) == (0.5, "", {}, "")
    assert_same_weights(model, ours)
    # importing it stamps a sha256
    new = import_model(path, tmp_path / "new.pt", name="old", version="1.0")
    assert new.sha256 == weights_sha256(torch.load(tmp_path / "new.pt", weights_only=True)["state_dict"])
    assert new.description == "before sha256" and new.preprocessing == {"size": 224}


def test_float16_storage_round_trip(ours: nn.Module, tmp_path: Path, x: torch.Tensor) -> None:
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    card = ModelCard(name="demo", version="1", arch="densenet121")
    save_checkpoint(full, ours, card)
    stamped = save_checkpoint(half, ours, card, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    blob = torch.load(half, weights_only=True)
    state = blob["state_dict"]
    assert state["features.conv0.weight"].dtype == torch.float16
    assert state["features.norm0.num_batches_tracked"].dtype == torch.int64
    assert stamped.sha256 == blob["card"]["sha256"] == canonical_sha256(state)
    model, loaded = load_checkpoint(half)
    assert loaded.sha256 == stamped.sha256
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k
    assert torch.allclose(torch.sigmoid(logit(model, x)), torch.sigmoid(logit(ours, x)), atol=1e-2, rtol=0)


def test_a_radtriage_checkpoint_is_restamped(saved: Path, tmp_path: Path) -> None:
    result = run_import(saved, tmp_path / "restamped.pt", name="renamed", version="2.0", threshold=0.6)
    assert result.source == "radtriage checkpoint (sha256 verified)"
    card = result.card
    _, old = load_checkpoint(saved)
    assert (card.name, card.version, card.threshold) == ("renamed", "2.0", 0.6)
    assert (card.preprocessing, card.training_data, card.metrics) == (old.preprocessing, old.training_data,
                                                                      old.metrics)
    assert card.sha256 == old.sha256  # the same weights, the same dtype
    with pytest.raises(CheckpointError, match="is a densenet121, not the densenet201"):
        import_model(saved, tmp_path / "x.pt", name="r", version="3", arch="densenet201")


def test_the_demo_mark_is_set_kept_and_cleared(saved: Path, tmp_path: Path) -> None:
    assert not load_checkpoint(saved)[1].demo  # a card written before the field existed: False
    demo = import_model(saved, tmp_path / "demo.pt", name="d", version="1", demo=True)
    assert demo.demo and demo.notice == DEMO_NOTICE
    assert load_checkpoint(tmp_path / "demo.pt")[1].notice == DEMO_NOTICE
    kept = import_model(tmp_path / "demo.pt", tmp_path / "kept.pt", name="d", version="2")
    assert kept.demo  # restamping a demo model keeps it a demo model
    cleared = import_model(tmp_path / "demo.pt", tmp_path / "clear.pt", name="d", version="3", demo=False)
    assert not cleared.demo and cleared.notice is None and cleared.sha256 == demo.sha256
    out, err = io.StringIO(), io.StringIO()
    assert import_model_cli(args(src=str(saved), out=str(tmp_path / "cli.pt"), demo=True), out, err) == EXIT_OK
    assert "(densenet121, DEMO) from radtriage checkpoint" in out.getvalue()
    with pytest.raises(TypeError, match="card demo must be true or false"):
        ModelCard(name="m", version="1", demo="yes")  # type: ignore[arg-type]


def test_an_existing_output_is_kept_unless_overwritten(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.pt"
    out.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="exists"):
        import_model(saved, out, name="a", version="1")
    assert out.read_bytes() == b"precious"
    import_model(saved, out, name="a", version="1", overwrite=True)
    assert load_checkpoint(out)[1].name == "a"


@pytest.mark.parametrize("kwargs", [
    {"threshold": 1.5}, {"threshold": 0.0}, {"name": ""}, {"metrics": {"roc": object()}},
    {"metrics": {"auc": float("nan")}}, {"sha256": "abc"},
], ids=["threshold>1", "threshold0", "no-name", "object-metric", "nan-metric", "bad-sha"])
def test_bad_card_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ModelCard(**{"name": "m", "version": "1", **kwargs})


def test_the_error_hierarchy() -> None:
    for cls in (errors.UntrainedModelError, errors.ChecksumError, errors.WeightsMismatchError,
                errors.UnsafePickleError):
        assert issubclass(cls, errors.CheckpointError) and issubclass(cls, errors.InferenceError)


# -- the command line -----------------------------------------------------------------------------


def args(**kw) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    base = dict(src=None, out=None, name="cli-model", version="3.1", arch=None, threshold=None,
                training_data=None, trust_pickle=False, untrained=False)
    return argparse.Namespace(**{**base, **kw})


def test_cli_prints_one_line(saved: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    dst = tmp_path / "cli.pt"
    code = import_model_cli(args(src=str(saved), out=str(dst), untrained=True,
                                 metrics='{"kappa": 0.7}'), out, err)
    assert code == EXIT_OK, err.getvalue()
    line = out.getvalue()
    assert line.count("\n") == 1 and err.getvalue() == ""
    card = load_checkpoint(dst, allow_untrained=True)[1]
    assert line.startswith(f"{dst}: cli-model 3.1 (densenet121, UNTRAINED) from radtriage checkpoint")
    assert f"sha256 {card.sha256[:12]}" in line and card.metrics == {"kappa": 0.7}


@pytest.mark.parametrize(("kw", "code", "words"), [
    ({"threshold": 2.0}, EXIT_USAGE, "threshold must be a probability"),
    ({"preprocessing": "{size: 1}"}, EXIT_USAGE, "--preprocessing: not valid JSON"),
    ({"preprocessing": '{"size": 8}'}, EXIT_USAGE, "size must be an integer in 32-2048"),
    ({"arch": "resnet50"}, EXIT_USAGE, "unknown architecture 'resnet50'"),
    ({"src": "/nonexistent/model.pth"}, EXIT_FAILURE, "no such file"),
], ids=["threshold", "json", "size", "arch", "missing"])
def test_cli_errors(kw: dict, code: int, words: str, saved: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert import_model_cli(args(**{"src": str(saved), "out": str(tmp_path / "o.pt"), **kw}), out, err) == code
    assert words in err.getvalue() and err.getvalue().startswith("radtriage: ")
    assert out.getvalue() == "" and not (tmp_path / "o.pt").exists()
