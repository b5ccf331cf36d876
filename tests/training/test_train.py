"""training.train on a tiny MURA layout drawn here, on the CPU.

DenseNet-121 at 64 px, batch 4: an abnormal study's views carry a bright round blob, which a
network learns in a few steps. What is tested: the loss goes down; best.pt is a radtriage
checkpoint whose card says how it was made; runs are deterministic (same seed twice, and a
resumed run against an uninterrupted one: identical weights); the MURA class weights; initial
weights (a classifier of another width re-initialised, what does not fit listed); the command
line's exit codes; and that training sees exactly the daemon's tensors.
"""
from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from dicom_io.bodypart import SelectionRules  # noqa: E402
from dicom_io.pixels import DecodeOptions, Preprocessing  # noqa: E402
from dicom_io.prepare import PreparePool  # noqa: E402
from inference.errors import WeightsMismatchError  # noqa: E402
from inference.model import build_model, load_checkpoint, read_checkpoint, weights_sha256  # noqa: E402
from training.datasets import View, load, prepare_path, read_mura  # noqa: E402
from training.train import (  # noqa: E402
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ClassWeights,
    LossWeights,
    PreparedSplit,
    Progress,
    add_arguments,
    augment,
    batches,
    black,
    load_initial_weights,
    stream_views,
    train,
    train_cli,
    weighted_bce,
)

PREP = Preprocessing(size=64)
ARCH = "densenet121"
#: (split, study type, patient, label, views)
STUDIES = [
    ("train", "WRIST", "patient00001", 1, 2),
    ("train", "WRIST", "patient00002", 0, 2),
    ("train", "WRIST", "patient00003", 1, 1),
    ("train", "WRIST", "patient00004", 0, 1),
    ("train", "HAND", "patient00005", 1, 2),
    ("train", "HAND", "patient00006", 0, 1),
    ("train", "HAND", "patient00007", 0, 2),
    ("train", "HAND", "patient00008", 1, 1),
    ("valid", "WRIST", "patient00009", 1, 1),
    ("valid", "WRIST", "patient00010", 0, 2),
    ("valid", "HAND", "patient00011", 1, 2),
    ("valid", "HAND", "patient00012", 0, 1),
]


@pytest.fixture(autouse=True, scope="module")
def two_threads() -> Iterator[None]:
    """Torch on two threads at most (CI machines have two cores), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def radiograph(seed: int, abnormal: bool, h: int = 96, w: int = 80) -> np.ndarray:
    """A displayed 8-bit view: dark background, a 'bone', noise; abnormal: a bright round blob."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 20, np.float32)
    x0 = int(w * (0.3 + 0.2 * rng.random()))
    img[int(h * 0.1):int(h * 0.9), x0:x0 + w // 5] = 140
    if abnormal:
        cy, cx = int(h * (0.3 + 0.4 * rng.random())), int(w * (0.3 + 0.4 * rng.random()))
        cv2.circle(img, (cx, cy), 13, 255, -1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mura")
    listed: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "valid": ([], [])}
    for n, (split, study_type, patient, label, views) in enumerate(STUDIES):
        folder = f"MURA-v1.1/{split}/XR_{study_type}/{patient}/study1_{'positive' if label else 'negative'}"
        (root / folder).mkdir(parents=True)
        listed[split][1].append(f"{folder}/,{label}")
        for v in range(views):
            cv2.imwrite(str(root / folder / f"image{v + 1}.png"), radiograph(10 * n + v, bool(label)))
            listed[split][0].append(f"{folder}/image{v + 1}.png")
    for split, (paths, labelled) in listed.items():
        (root / "MURA-v1.1" / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
        (root / "MURA-v1.1" / f"{split}_labeled_studies.csv").write_text("\n".join(labelled) + "\n")
    return root


def run(root: Path, out: Path, **kwargs):  # type: ignore[no-untyped-def]
    options = dict(arch=ARCH, preprocessing=PREP, batch_size=4, epochs=2, device="cpu", workers=1,
                   name="train-test", version="0.0.1")
    options.update(kwargs)
    return train(root, out, **options)


def state_of(path: Path) -> dict:
    return read_checkpoint(path).state_dict


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- pure parts ------------------------------------------------------------------------------------


def test_class_weights_by_hand() -> None:
    def view(n: int, label: int, study_type: str | None) -> View:
        return View(Path(f"{n}.png"), f"study{n}", label, study_type)

    views = [view(1, 1, "WRIST"), view(1, 1, "WRIST"), view(2, 1, "WRIST"), view(3, 0, "WRIST"),
             view(4, 0, "HAND"), view(5, 0, "HAND"), view(6, 1, None), view(7, 0, None)]
    w = LossWeights.from_views(views)
    # WRIST: A = 3 images, N = 1 -> w_abnormal = N / (A + N) = 1/4, w_normal = A / (A + N) = 3/4
    assert w.by_type["WRIST"] == ClassWeights(0.25, 0.75, 3, 1)
    assert w.by_type["HAND"] == ClassWeights(1.0, 0.0, 0, 2)  # one class only: normals weigh 0
    assert w.by_type[None] == ClassWeights(0.5, 0.5, 1, 1)
    assert w.overall == ClassWeights(0.5, 0.5, 4, 4)
    assert [w.weight(v) for v in views[:4]] == [0.25, 0.25, 0.25, 0.75]
    assert w.weight(view(9, 1, "ELBOW")) == 0.5  # a type the training split lacks: overall
    assert w.one_class_types() == ["HAND"]
    assert list(w.to_json()["by_study_type"]) == ["HAND", "WRIST", "UNKNOWN"]


def test_weighted_bce_by_hand() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 0.0])
    weights = torch.tensor([0.25, 0.75, 0.75])
    expected = (0.25 * math.log(2) + 0.75 * math.log(1 + math.exp(2.0))
                + 0.75 * math.log(1 + math.exp(-1.0))) / 3
    assert float(weighted_bce(logits, labels, weights)) == pytest.approx(expected, rel=1e-6)


def test_augment() -> None:
    x = torch.randn(3, 3, 16, 16)
    fill = black(PREP)
    none = torch.zeros(3, dtype=torch.bool)
    assert torch.equal(augment(x, none, torch.zeros(3), fill), x)
    flipped = augment(x, torch.tensor([True, False, True]), torch.zeros(3), fill)
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    turned = augment(x, none, torch.tensor([45.0, 0.0, -30.0]), fill)
    assert torch.allclose(turned[0, :, 0, 0], torch.tensor(fill), atol=1e-6)  # corners come in black
    assert torch.allclose(turned[1], x[1], atol=1e-5)
    assert torch.equal(turned, augment(x, none, torch.tensor([45.0, 0.0, -30.0]), fill))


def test_progress_line_has_an_eta() -> None:
    now = [0.0]
    bar = Progress(io.StringIO(), "epoch 1/3 train", 10, "steps", clock=lambda: now[0])
    now[0] = 20.0
    line = bar.line(4, "loss 0.6931")
    assert "4/10" in line and "ETA 0:00:30" in line and "0.2 steps/s" in line and "loss 0.6931" in line
    bar.update(4)
    bar.close()
    assert bar.stream.getvalue().count("\n") == 1  # not a terminal: no line before PROGRESS_EVERY_S


# -- the data path ---------------------------------------------------------------------------------


def test_training_sees_the_daemons_tensors(mura_root: Path) -> None:
    views = read_mura(mura_root, "train")
    expected = [load(v, PREP) for v in views]
    with PreparePool(PREP, DecodeOptions(), SelectionRules(), workers=2) as pool:
        pool.task = prepare_path  # in worker processes, as the daemon prepares
        for cache in (False, True):
            split = PreparedSplit(views, pool, PREP, cache=cache)
            for _ in range(2):  # the second time from the cache, where there is one
                got = split.get(list(range(len(views))))
                assert all(g.shape == (1, 3, 64, 64) and np.array_equal(g[0], e)
                           for g, e in zip(got, expected))
            assert (split.cached_bytes == len(views) * 64 * 64) is cache  # 8 bit, restored exactly


def test_batches_do_not_depend_on_preparation_chunks(mura_root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    views = read_mura(mura_root, "train")
    views = views + [View(mura_root / "gone.png", "gone", 0, "HAND")]  # skipped, with its reason
    pool = PreparePool(PREP, DecodeOptions(), SelectionRules(), workers=1)
    pool.task = prepare_path
    order = list(np.random.default_rng(3).permutation(len(views)))
    with ThreadPoolExecutor(1) as executor:
        cut = []
        for chunk in (3, 32):
            split = PreparedSplit(views, pool, PREP, cache=False)
            cut.append([(x, owners) for x, owners in batches(stream_views(split, order, chunk, executor), 4)])
    assert [o for _, o in cut[0]] == [o for _, o in cut[1]]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(*cut))
    assert sum(len(o) for _, o in cut[0]) == len(views) - 1
    assert "no such file" in split.errors[len(views) - 1]


# -- training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(mura_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("run")
    progress = io.StringIO()
    result = run(mura_root, out, epochs=4, lr=1e-3, progress=progress)
    return result, out, progress.getvalue()


def test_training_lowers_the_loss(trained: tuple[dict, Path, str]) -> None:
    result, out, progress = trained
    losses = [r["train_loss"] for r in result["history"]]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0], losses
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3, 4]
    for key in ("train_loss", "valid_loss", "auroc", "kappa", "lr", "seconds", "images_per_s"):
        assert key in history["epochs"][0], key
    assert history["epochs"][0]["lr"] == 1e-3 and history["epochs"][0]["train_images"] == 12
    assert "epoch 4/4 train [" in progress and "ETA" in progress and "valid loss" in progress


def test_best_checkpoint_carries_its_card(trained: tuple[dict, Path, str], mura_root: Path) -> None:
    result, out, _ = trained
    best = min(result["history"], key=lambda r: r["valid_loss"])
    model, card = load_checkpoint(out / "best.pt")
    assert card.trained and card.name == "train-test" and card.arch == ARCH
    assert not card.demo and card.notice is None  # real (here: hand-drawn) data, not phantoms
    assert card.preprocessing == PREP.to_card()
    assert card.threshold == 0.5
    assert str(mura_root) in card.training_data and "split train (12 views, 8 studies" in card.training_data
    assert card.metrics["epoch"] == best["epoch"] == result["best_epoch"]
    assert card.metrics["valid_loss"] == best["valid_loss"]
    for key in ("auroc", "kappa", "accuracy", "train_loss", "by_study_type"):
        assert key in card.metrics
    assert card.sha256 == weights_sha256(state_of(out / "best.pt"))
    assert result["card"]["sha256"] == card.sha256
    assert result["loss_weights"]["by_study_type"]["WRIST"] == {
        "abnormal": 0.5, "normal": 0.5, "abnormal_images": 3, "normal_images": 3}
    last = read_checkpoint(out / "last.pt")
    assert last.card.metrics["epoch"] == 4 and last.card.sha256 == result["history"][-1]["last_sha256"]


def test_a_model_trained_on_phantoms_is_a_demo_model(tmp_path: Path) -> None:
    from training.phantoms import generate

    generate(tmp_path / "phantoms", studies=6, seed=3, formats=("mura",), size=96, workers=1)
    run(tmp_path / "phantoms", tmp_path / "run", epochs=1, max_steps=1)
    card = read_checkpoint(tmp_path / "run/best.pt").card
    assert card.demo and card.training_data.startswith("radtriage phantoms --seed 3 (6 studies, generator ")
    assert card.notice == "DEMO MODEL - trained on synthetic radiographs - not for clinical use"


def test_bf16_autocast_trains(mura_root: Path, tmp_path: Path) -> None:
    result = run(mura_root, tmp_path / "bf16", epochs=1, precision="bf16")
    assert math.isfinite(result["history"][0]["train_loss"])
    card = read_checkpoint(tmp_path / "bf16/best.pt").card
    assert card.description.endswith(", bf16); epoch 1")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        run(mura_root, tmp_path / "fp8", precision="fp8")


def test_seeded_runs_and_resume_are_identical(mura_root: Path, tmp_path: Path) -> None:
    straight = run(mura_root, tmp_path / "straight", epochs=2)
    first = run(mura_root, tmp_path / "resumed", epochs=1)
    resumed = run(mura_root, tmp_path / "resumed", epochs=2, resume=True)
    # the same seed twice: the same weights after epoch 1
    assert first["history"][0]["last_sha256"] == straight["history"][0]["last_sha256"]
    # 1 epoch + resume 1 = 2 epochs straight: weights, and everything else in the history
    assert resumed["resumed_from_epoch"] == 1
    assert same_weights(state_of(tmp_path / "straight/last.pt"), state_of(tmp_path / "resumed/last.pt"))
    assert same_weights(state_of(tmp_path / "straight/best.pt"), state_of(tmp_path / "resumed/best.pt"))
    for a, b in zip(straight["history"], resumed["history"]):
        for key in ("train_loss", "valid_loss", "auroc", "lr", "last_sha256", "best"):
            assert a[key] == b[key], key
    other = run(mura_root, tmp_path / "other", epochs=1, seed=1, max_steps=1)
    assert other["history"][0]["last_sha256"] != straight["history"][0]["last_sha256"]
    # nothing left to do: the state is returned as it is
    again = run(mura_root, tmp_path / "straight", epochs=2, resume=True)
    assert again["history"] == straight["history"]


# -- initial weights -------------------------------------------------------------------------------


def test_initial_weights_with_another_classifier(tmp_path: Path) -> None:
    torch.manual_seed(11)
    imagenet = torchvision_densenet121(num_classes=1000).state_dict()
    # the torchvision-0.2 names of the ImageNet files torchvision publishes, without counters
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
              for k, v in imagenet.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "imagenet.pth"
    torch.save(legacy, path)
    torch.manual_seed(0)
    model = build_model(ARCH)
    fresh_head = model.classifier.weight.detach().clone()
    info = load_initial_weights(model, path, ARCH)
    assert "re-initialised to one output (the file's: 1000 outputs)" in info["classifier"]
    assert "torchvision-0.2 layer names" in info["source"]
    assert torch.equal(model.features.conv0.weight, imagenet["features.conv0.weight"])
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       imagenet["features.denseblock1.denselayer1.norm1.weight"])
    assert model.classifier.weight.shape == (1, 1024) and torch.equal(model.classifier.weight, fresh_head)


def test_initial_weights_that_do_not_fit_are_listed(tmp_path: Path) -> None:
    state = torchvision_densenet121(num_classes=1000).state_dict()
    state["features.conv0.weight"] = torch.zeros(64, 3, 5, 5)
    del state["features.norm5.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsMismatchError) as caught:
        load_initial_weights(build_model(ARCH), tmp_path / "bad.pt", ARCH)
    text = str(caught.value)
    assert "features.conv0.weight file [64, 3, 5, 5] vs model [64, 3, 7, 7]" in text
    assert "missing key(s): features.norm5.bias" in text and "unexpected key(s): extra.weight" in text
    torch.save(build_model("densenet169").state_dict(), tmp_path / "169.pt")
    with pytest.raises(WeightsMismatchError, match="the file holds densenet169 weights"):
        load_initial_weights(build_model(ARCH), tmp_path / "169.pt", ARCH)


def torchvision_densenet121(num_classes: int) -> torch.nn.Module:
    from torchvision.models import densenet121

    return densenet121(weights=None, num_classes=num_classes)


# -- command line ----------------------------------------------------------------------------------


def cli(*argv: str) -> tuple[int, str, str]:
    parser = add_arguments(argparse.ArgumentParser(prog="radtriage train"))
    out, err = io.StringIO(), io.StringIO()
    code = train_cli(parser.parse_args(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()


COMMON = ("--arch", ARCH, "--size", "64", "--batch-size", "4", "--epochs", "1", "--max-steps", "1",
          "--device", "cpu", "--workers", "1")


def test_cli_trains_from_initial_weights(mura_root: Path, tmp_path: Path) -> None:
    torch.save(torchvision_densenet121(num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    code, out, err = cli(str(mura_root), "--out", str(tmp_path / "run"), *COMMON, "--study-types", "wrist",
                         "--initial-weights", str(tmp_path / "imagenet.pth"), "--half", "--name", "wrist")
    assert code == EXIT_OK, err
    assert out.count("\n") == 1 and out.startswith("best epoch 1 of 1: valid loss ")
    card = read_checkpoint(tmp_path / "run/best.pt").card
    assert card.name == "wrist" and "study types WRIST" in card.training_data
    assert "initial weights imagenet.pth" in card.training_data
    assert read_checkpoint(tmp_path / "run/best.pt").state_dict["classifier.weight"].dtype == torch.float16
    assert "epoch 1/1 train [" in err


@pytest.mark.parametrize("case, expected, message", [
    ("missing folder", EXIT_USAGE, "no such folder"),
    ("unknown type", EXIT_USAGE, "unknown study type 'KNEE'"),
    ("no studies", EXIT_USAGE, "no study found in split 'train' of type ELBOW"),
    ("nothing to resume", EXIT_USAGE, "nothing to resume"),
    ("existing run", EXIT_USAGE, "already holds a training run (state.pt, best.pt, last.pt)"),
    ("other settings", EXIT_USAGE, "the run was started with other settings (batch_size: 4 then, 2 now"),
    ("bad weights", EXIT_FAILURE, "the weights do not fit torchvision densenet121"),
    ("no weights file", EXIT_FAILURE, "no such file"),
])
def test_cli_errors(case: str, expected: int, message: str, mura_root: Path, tmp_path: Path,
                    trained: tuple[dict, Path, str]) -> None:
    root, out, extra = str(mura_root), str(tmp_path / "out"), []
    args = list(COMMON)
    if case == "missing folder":
        root = str(tmp_path / "nowhere")
    elif case == "unknown type":
        extra = ["--study-types", "KNEE"]
    elif case == "no studies":
        extra = ["--study-types", "ELBOW"]
    elif case == "nothing to resume":
        extra = ["--resume"]
    elif case == "existing run":
        out = str(trained[1])
    elif case == "other settings":
        out, args[args.index("--batch-size") + 1] = str(trained[1]), "2"
        extra = ["--resume"]
    elif case == "bad weights":
        torch.save({"features.conv0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
        extra = ["--initial-weights", str(tmp_path / "bad.pt")]
    elif case == "no weights file":
        extra = ["--initial-weights", str(tmp_path / "none.pt")]
    code, stdout, err = cli(root, "--out", out, *args, *extra)
    assert code == expected, err
    assert stdout == ""
    lines = [line for line in err.splitlines() if line.startswith("radtriage: ")]
    assert len(lines) == 1 and lines[0].startswith("radtriage: cannot train: ") and message in lines[0], err
