"""Generator speed benchmark: RCAN generator presets side by side with the standard pix2pix U-Net, 64x64.

One process, one machine, one run. For each generator (``tiny``, ``default`` and pix2pix's ``UnetGenerator``
with 6 levels, ngf 64, batch norm and dropout, ~29M parameters) it measures:

1. Parameters and multiply-adds per 64x64 frame, counted analytically with forward hooks on every
   Conv2d / ConvTranspose2d / Linear (GFLOPs = 2 x MACs).
2. Inference latency at batch 1 (``torch.inference_mode``, after warm-up; median and best of many runs)
   with 1 and 2 threads, and the achieved GFLOP/s; the goal is <= 5 ms per frame for ``default``.
3. Training throughput: pairs/s of a full step (G forward, D update on real and generated images, G update
   with the equality losses and the GAN loss) at batch 16, with its paired discriminator (ours: multi-scale
   PatchGAN; pix2pix: its 70x70 PatchGAN), for 1 and 2 threads.
4. This machine's matmul GFLOP/s (``torch.mm`` of 1024x1024 float32) as the yardstick, and the load average
   before and after (the machine is shared: numbers from a busy machine are pessimistic).

Prints a markdown table on stdout (progress on stderr); ``--json PATH`` writes every number. ``--quick``
is a smoke run of well under a minute.

    .venv/bin/python benchmarks/bench_generator.py --json /tmp/bench_generator.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from rcan.adapt.args import make_args  # noqa: E402
from rcan.adapt.networks import count_parameters, define_G  # noqa: E402
from rcan.adapt.pairs import make_batch  # noqa: E402
from rcan.adapt.train import Trainer  # noqa: E402

SIZE = 64
LATENCY_GOAL_MS = 5.0
MODELS = (  # (label, generator preset, discriminator preset)
    ("rcan tiny", "tiny", "tiny"),
    ("rcan default", "default", "default"),
    ("pix2pix unet (6 levels, ngf 64)", "pix2pix", "pix2pix"),
)


def log(msg: str) -> None:
    print(f"[bench_generator] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass: conv/linear layers only (norms, activations, resampling ignored)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += inputs[0].numel() * module.out_channels // module.groups * kh * kw
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def matmul_gflops(threads: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9


def latency_ms(model: nn.Module, threads: int, runs: int, budget_s: float) -> tuple[float, float]:
    """(median, best) milliseconds per 64x64 frame at batch 1; stops early after ``budget_s`` seconds."""
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        start = time.perf_counter()
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
            if t0 - start > budget_s and len(times) >= 10:
                break
    return 1000 * statistics.median(times), 1000 * min(times)


def train_pairs_per_s(
    g: str, d: str, threads: int, steps: int, warmup: int, budget_s: float, batch: int = 16
) -> tuple[float, int]:
    """Pairs/s of full G+D training steps at ``batch``; also the forward MACs of one step (G once, D 3x)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = batch * 2
    arrays = {
        "randomized": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "canonical": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "segmentation": rng.integers(0, 5, (n, SIZE, SIZE), dtype=np.uint8),
        "depth": rng.uniform(0.3, 2.5, (n, SIZE, SIZE)).astype(np.float32),
    }
    trainer = Trainer(make_args(generator=g, discriminator=d, batch_size=batch), SIZE)
    batches = [
        make_batch(arrays, np.arange(i * batch, (i + 1) * batch), trainer.depth_scale) for i in range(2)
    ]
    for i in range(warmup):
        trainer.step(batches[i % 2])
    t0 = time.perf_counter()
    done = 0
    while done < steps and (done < 2 or time.perf_counter() - t0 < budget_s):
        trainer.step(batches[done % 2])
        done += 1
    rate = done * batch / (time.perf_counter() - t0)
    x = batches[0]["x"]
    macs = count_macs(trainer.G, x) + 3 * count_macs(trainer.D, x)
    return rate, macs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every number as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repetitions")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model and thread count")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="timed training steps (pix2pix: a third)"
    )
    opts = parser.parse_args(argv)
    runs = opts.runs or (50 if opts.quick else 500)
    train_steps = opts.train_steps or (4 if opts.quick else 30)
    budget = (
        2.0 if opts.quick else 8.0
    )  # seconds per latency measurement (x4 per training one), busy machines
    threads_list = [t for t in (1, 2) if t <= (os.cpu_count() or 1)]

    info = machine_info()
    info["loadavg_before"] = os.getloadavg()
    log(f"machine: {info}")
    results: dict[str, Any] = {
        "machine": info,
        "size": SIZE,
        "latency_goal_ms": LATENCY_GOAL_MS,
        "models": {},
    }
    results["matmul_gflops"] = {t: matmul_gflops(t, 0.5 if opts.quick else 2.0) for t in threads_list}
    log(f"matmul GFLOP/s: {results['matmul_gflops']}")

    for label, g, d in MODELS:
        torch.manual_seed(0)
        model = define_G(g)
        macs = count_macs(model.eval(), torch.zeros(1, 3, SIZE, SIZE))
        row: dict[str, Any] = {
            "generator": g,
            "discriminator": d,
            "params": count_parameters(model),
            "macs": macs,
        }
        for t in threads_list:
            med, best = latency_ms(model, t, runs, budget_s=budget)
            row[f"latency_ms_{t}t"] = med
            row[f"latency_best_ms_{t}t"] = best
            row[f"gflops_{t}t"] = 2 * macs / (med / 1000) / 1e9
            log(f"{label}: {t} thread(s) {med:.2f} ms median, {best:.2f} ms best")
        for t in threads_list:
            steps = max(2, train_steps // 3) if g == "pix2pix" else train_steps
            rate, step_macs = train_pairs_per_s(
                g, d, t, steps, warmup=1 if opts.quick else 2, budget_s=4 * budget
            )
            row[f"train_pairs_per_s_{t}t"] = rate
            # backward costs about twice the forward: a step is ~3x the forward MACs of its passes
            row[f"train_gflops_{t}t"] = 3 * 2 * step_macs * rate / 16 / 1e9
            log(f"{label}: training {rate:.1f} pairs/s with {t} thread(s)")
        results["models"][label] = row
    info["loadavg_after"] = os.getloadavg()

    print(
        f"\nGenerator benchmark, {SIZE}x{SIZE}: {info['cpu']}, {info['nproc']} cores, torch {info['torch']}; "
        f"load average before {fmt_load(info['loadavg_before'])}, after {fmt_load(info['loadavg_after'])}\n"
    )
    mm = results["matmul_gflops"]
    print(
        "matmul 1024x1024 float32: "
        + ", ".join(f"{mm[t]:.1f} GFLOP/s ({t} thread{'s' if t > 1 else ''})" for t in threads_list)
        + "\n"
    )
    head = ["model", "params", "GFLOPs/frame"]
    for t in threads_list:
        head += [f"infer ms ({t}t)", f"GFLOP/s ({t}t)"]
    for t in threads_list:
        head += [f"train pairs/s ({t}t)"]
    head.append(f"<= {LATENCY_GOAL_MS:g} ms (median / best)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, r in results["models"].items():
        cells = [label, f"{r['params'] / 1e6:.2f}M", f"{2 * r['macs'] / 1e9:.3f}"]
        for t in threads_list:
            cells += [
                f"{r[f'latency_ms_{t}t']:.2f} (best {r[f'latency_best_ms_{t}t']:.2f})",
                f"{r[f'gflops_{t}t']:.1f}",
            ]
        for t in threads_list:
            cells += [f"{r[f'train_pairs_per_s_{t}t']:.0f}"]
        ok_med = all(r[f"latency_ms_{t}t"] <= LATENCY_GOAL_MS for t in threads_list)
        ok_best = all(r[f"latency_best_ms_{t}t"] <= LATENCY_GOAL_MS for t in threads_list)
        r["goal_median"], r["goal_best"] = ok_med, ok_best
        cells.append(f"{'PASS' if ok_med else 'FAIL'} / {'PASS' if ok_best else 'FAIL'}")
        print("| " + " | ".join(cells) + " |")
    print(
        "\nLatency: batch 1, torch.inference_mode, median (best) over "
        f"up to {runs} runs (or {budget:g} s) after warm-up; on a busy machine the best is the uncontended speed. Training: G+D step at batch 16 (G forward, D update on real and "
        "generated, G update with MPSE + RGB L2 + segmentation L2 + depth L2 + GAN); training GFLOP/s are "
        "estimated as 3x the forward MACs of the step's passes. GFLOPs = 2 x multiply-adds of conv/linear layers."
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {opts.json}")
    return 0


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    sys.exit(main())
