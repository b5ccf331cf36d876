"""Training and evaluation throughput: ``radtriage train`` and ``radtriage evaluate`` on phantoms.

    .venv/bin/python benchmarks/training.py [--studies 24] [--steps 12] [--arch densenet169]
                                            [--size 224] [--batch-size 8] [--device auto]
                                            [--workers 0] [--keep DIR] [--json PATH]

What runs, all in this process and its preparation workers, on the device chosen:

1. ``training.phantoms.generate``: ``--studies`` synthetic studies (seed 7, DICOM only, 512 px),
   the same generator as the demo model's data. Reported as studies/s and views/s.
2. ``training.train.train`` for two epochs of at most ``--steps`` steps each (the MURA recipe:
   augmentation, class-weighted BCE, Adam) with ``--batch-size``. Epoch 1 prepares every view
   it trains on through the daemon's pixel path (read, decode, window, crop, resize) and caches
   it; epoch 2 trains from the cache. images/s = training images / training seconds of that
   epoch (validation not included), as ``history.json`` records it.
3. The baseline, measured in the same run: a plain eager torchvision training step (the same
   architecture, the same batches of random tensors already in memory, BCE with logits, Adam),
   the loop the seed projects ran without data loading. The ratio epoch 2 / baseline says what
   radtriage's loop (augmentation on the tensor, weights per view, bookkeeping) costs.
4. ``training.evaluate.evaluate`` of the trained ``best.pt`` on the training split (all views:
   decoded, prepared, scored, metrics, plots, report), and the model alone in eval mode on the
   same number of random tensors (the inference ceiling), both as views/s.

The checks: the training loss is finite, every view was prepared, evaluation scored every
study. Figures are printed as a table (and written as JSON with ``--json``). CUDA is used when
``--device auto`` finds it; the device is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dicom_io.pixels import Preprocessing  # noqa: E402
from inference.model import build_model, select_device  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.phantoms import generate  # noqa: E402
from training.train import train  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_training(arch: str, size: int, batch: int, steps: int, device: torch.device) -> float:
    """images/s of a bare eager training loop on in-memory tensors (the baseline)."""
    torch.manual_seed(0)
    model = build_model(arch).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, device=device) < 0.5).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, kernels
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


def plain_inference(arch: str, size: int, batch: int, views: int, device: torch.device) -> float:
    """views/s of the model alone in eval mode on in-memory tensors."""
    model = build_model(arch).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        model(x)
        _sync(device)
        started = time.perf_counter()
        done = 0
        while done < views:
            model(x)
            done += batch
        _sync(device)
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12, help="training steps an epoch (two epochs)")
    parser.add_argument("--arch", default="densenet169")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=0, help="preparation processes (0: one per core)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    device = select_device(args.device)
    work = args.keep or Path(tempfile.mkdtemp(prefix="radtriage-bench-training-"))
    work.mkdir(parents=True, exist_ok=True)
    data, run, report = work / "phantoms", work / "run", work / "evaluation"
    figures: dict[str, object] = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "arch": args.arch, "size": args.size, "batch_size": args.batch_size,
    }
    print(f"machine: {figures['machine']}; device {figures['device']}", flush=True)

    if not (data / "phantoms.json").is_file():
        started = time.perf_counter()
        summary = generate(data, studies=args.studies, seed=7, formats=("dicom",), workers=args.workers)
        seconds = time.perf_counter() - started
        figures["phantoms"] = {"studies": summary.studies, "views": summary.views, "seconds": round(seconds, 2),
                               "studies_per_s": round(summary.studies / seconds, 2),
                               "views_per_s": round(summary.views / seconds, 2)}
    if run.exists():
        for name in ("best.pt", "last.pt", "state.pt", "history.json"):
            (run / name).unlink(missing_ok=True)

    result = train(data, run, arch=args.arch, epochs=2, max_steps=args.steps, batch_size=args.batch_size,
                   preprocessing=Preprocessing(size=args.size), device=args.device, workers=args.workers,
                   deterministic=device.type == "cpu", progress=io.StringIO())
    history = result["history"]
    for record in history:
        if not (record["train_loss"] == record["train_loss"]):  # NaN
            print(f"FAIL: epoch {record['epoch']} loss is not finite", file=sys.stderr)
            return 1
    if history[0]["train_views_not_prepared"]:
        print(f"FAIL: {history[0]['train_views_not_prepared']} views could not be prepared", file=sys.stderr)
        return 1
    baseline = plain_training(args.arch, args.size, args.batch_size, args.steps, device)

    started = time.perf_counter()
    evaluated = evaluate(run / "best.pt", data, report, split="train", device=args.device, workers=args.workers,
                         batch_size=max(16, args.batch_size))
    eval_seconds = time.perf_counter() - started
    views = evaluated["data"]["views"]
    if evaluated["data"]["studies_not_analysed"]:
        print(f"FAIL: {evaluated['data']['studies_not_analysed']} studies not analysed", file=sys.stderr)
        return 1
    ceiling = plain_inference(args.arch, args.size, max(16, args.batch_size), max(views, 32), device)

    figures["training"] = {
        "epoch1_prepare_and_train_images_per_s": history[0]["images_per_s"],
        "epoch2_cached_images_per_s": history[1]["images_per_s"],
        "plain_eager_images_per_s": round(baseline, 3),
        "ratio_epoch2_to_plain": round(history[1]["images_per_s"] / baseline, 3),
        "images_per_epoch": history[1]["train_images"],
    }
    figures["evaluation"] = {"views": views, "seconds": round(eval_seconds, 2),
                             "views_per_s": round(views / eval_seconds, 3),
                             "model_alone_views_per_s": round(ceiling, 3)}

    rows = []
    if "phantoms" in figures:
        p = figures["phantoms"]
        rows.append(("phantoms (generate, DICOM)", f"{p['views_per_s']:.2f} views/s",
                     f"{p['studies']} studies, {p['views']} views"))
    t, e = figures["training"], figures["evaluation"]
    rows += [
        ("train, epoch 1 (prepare + train)", f"{t['epoch1_prepare_and_train_images_per_s']:.2f} images/s",
         "views prepared through the daemon's pixel path"),
        ("train, epoch 2 (from the cache)", f"{t['epoch2_cached_images_per_s']:.2f} images/s",
         f"{t['ratio_epoch2_to_plain']:.2f}x the plain eager loop"),
        ("plain eager training step (baseline)", f"{t['plain_eager_images_per_s']:.2f} images/s",
         "random tensors in memory"),
        ("evaluate (decode + prepare + score + report)", f"{e['views_per_s']:.2f} views/s",
         f"{e['views']} views in {e['seconds']:.1f} s"),
        ("model alone, eval mode (ceiling)", f"{e['model_alone_views_per_s']:.2f} views/s", ""),
    ]
    print(f"{args.arch}, {args.size} px, batch {args.batch_size}, {args.steps} steps an epoch")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>18}  {note}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
