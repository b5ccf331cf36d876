"""Model throughput: radtriage's inference engine against plain eager torchvision, one run.

    .venv/bin/python benchmarks/model.py [--checkpoint models/radtriage-demo.pt]
        [--batches 1,8,32,256] [--images N] [--device auto] [--threads 0]
        [--precision auto] [--compile auto] [--compile-modes] [--cpu-bf16] [--json PATH] [--check]

What runs, on the device chosen, with the same weights (the checkpoint's, DenseNet-169 for the
demo model) and the same input (prepared views: random float32 tensors, 3 x 224 x 224, already
in memory, so decoding is not measured here: ``benchmarks/e2e.py`` measures the whole path):

* **Baseline**: plain eager torchvision, one image at a time: ``model.eval()``, ``torch.no_grad()``,
  ``sigmoid(model(x[None]))`` for each view, NCHW float32 on the device, ``.item()`` per view.
  This is what the seed projects' upload pages did for every image.
* **Engine**: ``inference.engine.InferenceEngine`` over ``inference.model.Scorer`` (loaded and
  warmed up in the engine thread), as the daemon
  runs it (``model.precision``/``model.compile`` as given, default auto; channels_last;
  ``inference_mode``; the class activation map computed in the same pass), with
  ``model.batch_size`` set to each of ``--batches`` and ``max_wait_ms`` 10: all views submitted
  at once, as a burst of studies would, and images/s = views / seconds until the last future
  resolved. Warm-up (the daemon's own ``Scorer.warm_up``) is not timed.

Every measurement runs in a fresh Python process (no thread pool, cache or allocator state
carries over from one to the next). Each figure is printed with its ratio to the baseline. The CPU target is 1.5x the baseline.
On CUDA it also prints bf16 at batch 256 against the issue's 8,000 images/s target (H100/H200),
and that throughput as a fraction of the memory-bandwidth bound: the bytes one image moves
(every layer's input and output activations at the autocast width, plus the weights once per
batch, counted with forward hooks) against the device's copy bandwidth measured in the same run.
``--compile-modes`` times every ``torch.compile`` mode at the largest batch (how
``model.compile: auto`` was chosen); ``--cpu-bf16`` adds a CPU bf16-autocast row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from inference.engine import InferenceEngine  # noqa: E402
from inference.model import (  # noqa: E402
    COMPILE_MODES, Scorer, load_checkpoint, resolve_compile, select_device)

ROOT = Path(__file__).resolve().parents[1]
CPU_TARGET = 1.5
CUDA_TARGET = 8000.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _views(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = [rng.standard_normal((3, size, size)).astype(np.float32) for _ in range(min(n, 64))]
    return [base[i % len(base)] for i in range(n)]


def baseline(checkpoint: Path, views: list[np.ndarray], device: torch.device) -> float:
    """images/s of plain eager torchvision, one view at a time."""
    model, _ = load_checkpoint(checkpoint, allow_untrained=True)
    model = model.to(device).eval()
    with torch.no_grad():
        for v in views[:3]:  # warm-up, as the engine gets
            torch.sigmoid(model(torch.from_numpy(v)[None].to(device))).item()
        _sync(device)
        start = time.perf_counter()
        for v in views:
            torch.sigmoid(model(torch.from_numpy(v)[None].to(device))).item()
        _sync(device)
    return len(views) / (time.perf_counter() - start)


def engine_rate(checkpoint: Path, views: list[np.ndarray], device: torch.device, batch: int,
                precision: str, compile_mode: str | None) -> tuple[float, Scorer]:
    def make() -> Scorer:  # in the engine thread, as the daemon does (inference.engine)
        model, card = load_checkpoint(checkpoint, allow_untrained=True)
        scorer = Scorer(model, card, device=device, batch_size=batch, precision=precision,
                        compile=compile_mode)
        scorer.warm_up()
        return scorer

    engine = InferenceEngine(factory=make, batch_size=batch, max_wait_ms=10,
                             queue_views=len(views)).start()
    scorer = engine.backend
    try:
        start = time.perf_counter()
        futures = engine.submit(views, heatmap="cam")
        for f in futures:
            f.result()
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    return len(views) / seconds, scorer


def measure(spec: dict) -> dict:
    """One measurement, in this process: ``{"kind": "baseline" | "engine", ...}``."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    checkpoint = Path(spec["checkpoint"])
    views = _views(spec["images"], spec["size"])
    if spec["kind"] == "baseline":
        return {"images_per_s": baseline(checkpoint, views, device), "precision": "fp32",
                "compile": None, "threads": torch.get_num_threads()}
    rate, scorer = engine_rate(checkpoint, views, device, spec["batch"], spec["precision"],
                               spec["compile"])
    return {"images_per_s": rate, "precision": scorer.precision, "compile": scorer.compile_mode,
            "threads": torch.get_num_threads()}


def isolated(spec: dict) -> dict:
    """:func:`measure` in a fresh Python process, so no measurement inherits another's thread
    pools, caches or allocator state (and the engine's thread is the only one using torch)."""
    import subprocess

    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the measurement {spec} failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip()[-2000:]}")


def bytes_per_image(checkpoint: Path, size: int, batch: int, element_bytes: int) -> float:
    """Activation bytes every leaf layer reads and writes for one image, plus the weights once
    per batch: the traffic a perfectly fused-free, cache-free forward pass needs."""
    model, _ = load_checkpoint(checkpoint, allow_untrained=True)
    model.eval()
    total = [0]

    def hook(module: nn.Module, inputs, output) -> None:  # type: ignore[no-untyped-def]
        n = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
        n += output.numel() if isinstance(output, torch.Tensor) else 0
        total[0] += n

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    weights = sum(p.numel() for p in model.parameters())
    return (total[0] + weights / batch) * element_bytes


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a device-to-device copy of 1 GiB (read + write)."""
    x = torch.empty(1 << 28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(device)
    return 10 * 2 * x.numel() * 4 / (time.perf_counter() - start)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {len(os.sched_getaffinity(0))} core(s), {torch.get_num_threads()} torch "
            f"thread(s), torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "radtriage-demo.pt")
    ap.add_argument("--batches", default="1,8,32,256")
    ap.add_argument("--images", type=int, default=0,
                    help="views per measurement; 0: max(2 x batch, 64) on the CPU, 20 x batch on CUDA")
    ap.add_argument("--baseline-images", type=int, default=0, help="0: 64 on the CPU, 1000 on CUDA")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", default="auto", choices=["auto", "off", *COMPILE_MODES])
    ap.add_argument("--compile-modes", action="store_true", help="time every torch.compile mode")
    ap.add_argument("--cpu-bf16", action="store_true", help="add a CPU bf16 autocast row")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(json.loads(args.one))), flush=True)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    size = load_checkpoint(args.checkpoint, allow_untrained=True)[1].input_size
    compile_mode = resolve_compile(args.compile, device)
    print(f"device: {machine(device)}")
    print(f"model: {args.checkpoint.name}, {size} px; engine precision {args.precision}, "
          f"compile {compile_mode or 'off'}")

    common = {"device": str(device), "checkpoint": str(args.checkpoint), "size": size,
              "threads": args.threads}
    n_base = args.baseline_images or (1000 if device.type == "cuda" else 64)
    base = isolated({**common, "kind": "baseline", "images": n_base})["images_per_s"]
    rows = [{"what": "plain eager torchvision, one image at a time", "batch": 1,
             "images_per_s": base, "ratio": 1.0}]
    print(f"\n{'what':<52} {'batch':>5} {'images/s':>10} {'x baseline':>10}")
    print(f"{rows[0]['what']:<52} {1:>5} {base:>10.1f} {1.0:>10.2f}")
    precision_used = None
    for b in batches:
        n = args.images or (20 * b if device.type == "cuda" else max(2 * b, 64))
        got = isolated({**common, "kind": "engine", "images": n, "batch": b,
                        "precision": args.precision, "compile": compile_mode})
        rate = got["images_per_s"]
        precision_used = got["precision"]
        what = f"engine ({got['precision']}, {got['compile'] or 'eager'}, channels_last)"
        rows.append({"what": what, "batch": b, "images_per_s": rate, "ratio": rate / base})
        print(f"{what:<52} {b:>5} {rate:>10.1f} {rate / base:>10.2f}")
    if args.cpu_bf16 and device.type == "cpu":
        b = max(batches)
        n = args.images or max(2 * b, 64)
        rate = isolated({**common, "kind": "engine", "images": n, "batch": b,
                         "precision": "bf16", "compile": None})["images_per_s"]
        rows.append({"what": "engine (bf16 autocast on the CPU)", "batch": b, "images_per_s": rate,
                     "ratio": rate / base})
        print(f"{'engine (bf16 autocast on the CPU)':<52} {b:>5} {rate:>10.1f} {rate / base:>10.2f}")
    if args.compile_modes:
        b = max(batches)
        n = args.images or (20 * b if device.type == "cuda" else max(2 * b, 64))
        for mode in ("off", *COMPILE_MODES):
            try:
                got = isolated({**common, "kind": "engine", "images": n, "batch": b,
                                "precision": args.precision,
                                "compile": None if mode == "off" else mode})
            except RuntimeError as exc:  # a mode this machine cannot build: reported, not fatal
                print(f"compile {mode}: failed: {exc}")
                continue
            rate = got["images_per_s"]
            what = f"engine, compile {mode} ({got['compile'] or 'eager'})"
            rows.append({"what": what, "batch": b, "images_per_s": rate, "ratio": rate / base})
            print(f"{what:<52} {b:>5} {rate:>10.1f} {rate / base:>10.2f}")

    engine_rows = [r for r in rows[1:] if r["what"].startswith("engine (")]
    best = max(engine_rows, key=lambda r: r["images_per_s"])
    verdicts = []
    if device.type == "cpu":
        ok = best["ratio"] >= CPU_TARGET
        verdicts.append(ok)
        print(f"\nCPU: best engine {best['images_per_s']:.1f} images/s at batch {best['batch']} = "
              f"{best['ratio']:.2f}x the eager baseline; target {CPU_TARGET}x: "
              f"{'PASS' if ok else 'FAIL'}")
    else:
        at256 = next((r for r in engine_rows if r["batch"] == 256), best)
        element = 2 if precision_used in ("bf16", "fp16") else 4
        per_image = bytes_per_image(args.checkpoint, size, at256["batch"], element)
        bandwidth = copy_bandwidth(device)
        bound = bandwidth / per_image
        ok = at256["images_per_s"] >= CUDA_TARGET
        verdicts.append(ok)
        print(f"\nCUDA: {at256['images_per_s']:.0f} images/s at batch {at256['batch']} "
              f"({precision_used}); target {CUDA_TARGET:.0f} on an H100/H200: {'PASS' if ok else 'FAIL'}")
        print(f"memory-bandwidth bound: {per_image / 1e6:.1f} MB an image, copy bandwidth "
              f"{bandwidth / 1e9:.0f} GB/s -> {bound:.0f} images/s; achieved "
              f"{at256['images_per_s'] / bound:.0%} of it")
        rows.append({"what": "memory-bandwidth bound", "bytes_per_image": per_image,
                     "copy_bandwidth_bytes_per_s": bandwidth, "images_per_s": bound,
                     "fraction_achieved": at256["images_per_s"] / bound})
    if args.json:
        args.json.write_text(json.dumps({"device": machine(device), "rows": rows}, indent=2))
    return 0 if (all(verdicts) or not args.check) else 1


if __name__ == "__main__":
    raise SystemExit(main())
