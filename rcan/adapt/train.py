"""Train the RCAN generator on paired randomized/canonical images (paper section 4.2).

One run directory holds everything:

* ``config.json``: the :class:`TrainArgs` of the run (for people; the checkpoint carries its own copy);
* ``tb/``: TensorBoard scalars (losses, D's mean outputs on real and generated images, validation metrics);
* ``grids/step_XXXXXX.png``: held-out samples, columns input | generated RGB | target | generated mask |
  generated depth;
* ``train_state.safetensors``: G and D weights, both Adam states, RNG states, step and data-order state;
* ``generator.safetensors``: G's weights and architecture only (what inference loads).

Kill safety: both checkpoint files are written atomically, the training state first, and the training state
is self-contained (it has G too). A kill between the two writes leaves a generator file one checkpoint
behind; ``--resume`` trusts the state file and rewrites the generator file. Resume is exact: the data order
is a function of (seed, epoch), RNG states are restored and deterministic algorithms are on, so N straight
steps and N/2 + resume + N/2 give bitwise-identical weights on CPU (same thread count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rcan.adapt import losses as L
from rcan.adapt.args import (
    CONFIG_FILE,
    RESUMABLE,
    STATE_FILE,
    STATE_FORMAT,
    TrainArgs,
    args_from_json,
    validate_args,
)
from rcan.adapt.inference import GENERATOR_FILE, GENERATOR_FORMAT, save_generator
from rcan.adapt.networks import (
    config_to_json,
    count_parameters,
    define_D,
    define_G,
    generator_config,
    images_to_input,
    output_to_images,
)
from rcan.adapt.pairs import (
    BatchOrder,
    fingerprint,
    load_arrays,
    make_batch,
    split_indices,
    validate_arrays,
)
from rcan.common.atomic import write_json_atomic
from rcan.common.checkpoint import (
    load_optimizer_state,
    load_rng_state,
    load_safetensors,
    optimizer_state_to_tensors,
    read_metadata,
    rng_state_to_tensors,
    save_safetensors_atomic,
)
from rcan.common.images import save_figure


# -- the loop ------------------------------------------------------------------------------------------
class Trainer:
    """G, D, their optimizers and one training step; separate from I/O so tests and benchmarks can drive it."""

    def __init__(self, args: TrainArgs, image_size: int) -> None:
        self.args = args
        gcfg = dataclasses.replace(generator_config(args.generator), image_size=image_size)
        self.G = define_G(gcfg)
        self.D = define_D(args.discriminator)
        betas = (args.beta1, args.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=betas)
        self.use_gan = args.lambda_gan > 0

    @property
    def depth_scale(self) -> float:
        return self.G.config.depth_scale

    def step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One D update (if the GAN term is on) then one G update; returns the scalars to log."""
        a = self.args
        self.G.train()
        self.D.train()
        out = self.G(batch["x"])
        logs: dict[str, float] = {}
        if self.use_gan:
            self.D.requires_grad_(True)
            self.opt_D.zero_grad(set_to_none=True)
            real, fake = self.D(batch["rgb"]), self.D(out.rgb.detach())
            loss_d = L.discriminator_loss(real, fake)
            loss_d.backward()
            self.opt_D.step()
            logs.update(
                loss_D=loss_d.item(), D_real=L.mean_probability(real), D_fake=L.mean_probability(fake)
            )
            self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        eq = L.equality_losses(out, batch["rgb"], batch["seg"], batch["depth"])
        total = (
            a.lambda_x * eq["mpse"]
            + a.lambda_rgb_l2 * eq["rgb_l2"]
            + a.lambda_m * eq["seg_l2"]
            + a.lambda_d * eq["depth_l2"]
        )
        if self.use_gan:
            gan_g = L.gan_loss(self.D(out.rgb), real=True)
            total = total + a.lambda_gan * gan_g
            logs["gan_G"] = gan_g.item()
        total.backward()
        self.opt_G.step()
        logs.update({k: v.item() for k, v in eq.items()}, loss_G=total.item())
        return logs

    @torch.no_grad()
    def evaluate(
        self, arrays: Mapping[str, np.ndarray], idx: np.ndarray, batch_size: int = 64
    ) -> dict[str, float]:
        """Held-out losses plus interpretable metrics (pixel accuracy, depth MAE in metres, mean colour offset)."""
        self.G.eval()
        sums: dict[str, float] = {}
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            b = make_batch(arrays, part, self.depth_scale)
            out = self.G(b["x"])
            eq = L.equality_losses(out, b["rgb"], b["seg"], b["depth"])
            m = {k: v.item() for k, v in eq.items()}
            m["seg_accuracy"] = (out.segmentation.argmax(1) == b["seg"]).float().mean().item()
            m["depth_mae_m"] = ((out.depth - b["depth"]).abs().mean() * self.depth_scale).item()
            m["rgb_mae_255"] = ((out.rgb - b["rgb"]).abs().mean() * 127.5).item()
            # MPSE cannot see this: |mean(generated) - mean(target)| per image and channel, in 0..255 units
            m["rgb_mean_offset_255"] = ((out.rgb - b["rgb"]).mean((2, 3)).abs().mean() * 127.5).item()
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v * len(part)
        self.G.train()
        return {k: v / len(idx) for k, v in sums.items()}

    # -- checkpoint state --
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, str] = {}
        tensors.update({f"G.{k}": v for k, v in self.G.state_dict().items()})
        tensors.update({f"D.{k}": v for k, v in self.D.state_dict().items()})
        for prefix, opt in (("optG.", self.opt_G), ("optD.", self.opt_D)):
            t, m = optimizer_state_to_tensors(opt, prefix)
            tensors.update(t)
            meta.update(m)
        t, m = rng_state_to_tensors()
        tensors.update(t)
        meta.update(m)
        meta["generator_config"] = config_to_json(self.G.config)
        meta["discriminator_config"] = config_to_json(self.D.config)
        return tensors, meta

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> None:
        if meta.get("generator_config") != config_to_json(self.G.config):
            raise ValueError("checkpoint generator architecture differs from this run's")
        if meta.get("discriminator_config") != config_to_json(self.D.config):
            raise ValueError("checkpoint discriminator architecture differs from this run's")
        for prefix, module in (("G.", self.G), ("D.", self.D)):
            sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(sd, strict=True)
            except RuntimeError as err:
                raise ValueError(f"checkpoint weights do not fit ({str(err).splitlines()[0]})") from None
        load_optimizer_state(self.opt_G, tensors, meta, "optG.")
        load_optimizer_state(self.opt_D, tensors, meta, "optD.")
        load_rng_state(tensors, meta)


def save_checkpoint(
    out: Path, trainer: Trainer, step: int, args: TrainArgs, data_fp: str, order: BatchOrder
) -> None:
    """State file first, then the generator file (see the module docstring for why this order)."""
    tensors, meta = trainer.state_tensors()
    epoch, index = order.position(step)
    meta.update(
        format=STATE_FORMAT,
        version="1",
        step=str(step),
        args=json.dumps(dataclasses.asdict(args), sort_keys=True),
        data=data_fp,
        threads=str(torch.get_num_threads()),
        data_order=json.dumps(
            {"epoch": epoch, "batch_in_epoch": index, "batch_size": order.batch_size, "seed": order.seed}
        ),
    )
    save_safetensors_atomic(out / STATE_FILE, tensors, meta)
    save_generator(out / GENERATOR_FILE, trainer.G, step, {"state_step": str(step)})


def auto_threads() -> int:
    """Default torch threads: half the logical CPUs (leaves room for others; small convs scale poorly), 1..8."""
    return min(8, max(1, (os.cpu_count() or 1) // 2))


@contextlib.contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Deterministic algorithms and the requested thread count for the duration of a run, then restored."""
    old_det, old_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


@contextlib.contextmanager
def _stop_requests() -> Iterator[dict[str, int]]:
    """Turn Ctrl-C / SIGTERM into a flag the loop checks at step boundaries (then it checkpoints and stops)."""
    flag: dict[str, int] = {}
    old: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag:  # a second signal: stop now
            raise KeyboardInterrupt
        flag["signal"] = signum

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers, a signal acts as usual
        pass
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def train(
    args: TrainArgs, arrays: Mapping[str, np.ndarray] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary (final step, last validation metrics, file paths).

    ``arrays`` (the four paired arrays) replaces ``args.data`` when given. Raises ValueError or
    FileNotFoundError for the user's mistakes (bad options, missing data, missing or unexpected checkpoint).
    """
    validate_args(args)
    out = Path(args.out)
    state_path, gen_path = out / STATE_FILE, out / GENERATOR_FILE
    if args.resume and not state_path.is_file():
        raise FileNotFoundError(
            f"nothing to resume: {state_path} does not exist (run without --resume to start)"
        )
    if not args.resume and (state_path.exists() or gen_path.exists()):
        raise ValueError(
            f"{out} already has a checkpoint; pass --resume to continue it, or choose another --out"
        )
    if arrays is None:
        arrays = load_arrays(args.data)
    n, size = validate_arrays(arrays)
    n_train, n_val = split_indices(n, args.val_fraction)
    order = BatchOrder(n_train, args.batch_size, args.seed)
    val_idx = np.arange(n_train, n_train + min(n_val, args.val_max)) if args.val_max else np.arange(0)
    grid_idx = (val_idx if len(val_idx) else np.arange(n_train))[: args.grid_samples]
    data_fp = fingerprint(arrays)

    threads = args.threads
    if threads == 0 and args.resume:  # keep the thread count of the run being resumed: exactness needs it
        threads = int(read_metadata(state_path).get("threads", "0"))
    with _deterministic(threads or auto_threads()), _stop_requests() as stop:
        torch.manual_seed(args.seed)
        np.random.seed(args.seed % 2**32)  # noqa: NPY002 (for any third-party code drawing from it)
        trainer = Trainer(args, size)
        step = 0
        if args.resume:
            step = _resume(trainer, args, state_path, gen_path, data_fp, log)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_FILE, dataclasses.asdict(args), sort_keys=True)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run logged after its last checkpoint (or, on a fresh start,
        # events of an attempt that died before its first checkpoint)
        writer = SummaryWriter(str(out / "tb"), purge_step=step + 1 if args.resume else 0)
        try:
            if not args.resume:
                writer.add_text("args", "```\n" + json.dumps(dataclasses.asdict(args), indent=2) + "\n```", 0)
                log(
                    f"training {args.generator} generator ({count_parameters(trainer.G):,} params) and "
                    f"{args.discriminator} discriminator ({count_parameters(trainer.D):,} params) on {n_train} pairs "
                    f"({n_val} held out) at {size}x{size}, {args.steps} steps of {args.batch_size}"
                )
            summary = _loop(trainer, args, arrays, order, step, val_idx, grid_idx, data_fp, writer, stop, log)
        finally:
            writer.close()
    if stop:
        raise KeyboardInterrupt
    summary.update(generator=str(gen_path), state=str(state_path), out=str(out))
    return summary


def _resume(
    trainer: Trainer,
    args: TrainArgs,
    state_path: Path,
    gen_path: Path,
    data_fp: str,
    log: Callable[[str], None],
) -> int:
    tensors, meta = load_safetensors(state_path, expect_format=STATE_FORMAT)
    saved = args_from_json(meta["args"])
    diffs = [
        f"{f.name} {getattr(saved, f.name)!r} -> {getattr(args, f.name)!r}"
        for f in dataclasses.fields(TrainArgs)
        if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(args, f.name)
    ]
    if diffs:
        raise ValueError(f"cannot resume with changed settings ({'; '.join(diffs)})")
    if meta.get("data") != data_fp:
        raise ValueError(
            f"the data differs from the data this run was trained on ({meta.get('data')} vs {data_fp})"
        )
    trainer.load_state(tensors, meta)
    step = int(meta["step"])
    gen_step = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        gen_meta = read_metadata(gen_path)
        if gen_meta.get("format") == GENERATOR_FORMAT:
            gen_step = int(gen_meta.get("step", "-1"))
    if gen_step != step:  # killed between the two writes: the state file is authoritative
        save_generator(gen_path, trainer.G, step, {"state_step": str(step)})
        log(f"rewrote {gen_path} from the training state (it was at step {gen_step})")
    log(f"resumed {args.out} at step {step}")
    return step


def _loop(
    trainer: Trainer,
    args: TrainArgs,
    arrays: Mapping[str, np.ndarray],
    order: BatchOrder,
    step: int,
    val_idx: np.ndarray,
    grid_idx: np.ndarray,
    data_fp: str,
    writer: Any,
    stop: dict[str, int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    out = Path(args.out)
    sums: dict[str, float] = {}
    count, busy, t_start, start = 0, 0.0, time.perf_counter(), step
    last_val: dict[str, float] = {}
    saved_at = step
    bar = tqdm(total=args.steps, initial=step, unit="step", desc=f"train-generator {out.name}")
    emit = bar.write if log is print else log  # log lines go above the bar, not through it
    while step < args.steps and not stop:
        t0 = time.perf_counter()
        batch = make_batch(arrays, order.batch(step), trainer.depth_scale)
        logs = trainer.step(batch)
        busy += time.perf_counter() - t0  # training time only: evaluation and I/O are excluded
        step += 1
        bar.update(1)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if not all(math.isfinite(v) for v in logs.values()):
            raise RuntimeError(f"non-finite loss at step {step}: {logs}")
        if step % args.log_every == 0 or step == args.steps:
            rate = count * args.batch_size / max(busy, 1e-9)
            for k, v in sums.items():
                group = "D" if k in ("D_real", "D_fake") else "loss"
                writer.add_scalar(f"{group}/{k}", v / count, step)
            writer.add_scalar("perf/pairs_per_s", rate, step)
            bar.set_postfix_str(f"G {sums['loss_G'] / count:.4f}, {rate:.0f} pairs/s", refresh=False)
            emit(
                f"step {step}/{args.steps}  G {sums['loss_G'] / count:.4f}  mpse {sums['mpse'] / count:.4f}  "
                f"seg {sums['seg_l2'] / count:.4f}  depth {sums['depth_l2'] / count:.4f}"
                + (f"  D {sums['loss_D'] / count:.3f}" if "loss_D" in sums else "")
                + f"  {rate:.0f} pairs/s"
            )
            sums, count, busy = {}, 0, 0.0
        last = step == args.steps or bool(stop)
        if len(val_idx) and (step % args.eval_every == 0 or last):
            last_val = trainer.evaluate(arrays, val_idx)
            for k, v in last_val.items():
                writer.add_scalar(f"val/{k}", v, step)
        if len(grid_idx) and (step % args.grid_every == 0 or last):
            save_grid(trainer, arrays, grid_idx, out / "grids" / f"step_{step:06d}.png")
        if step % args.checkpoint_every == 0 or last:
            save_checkpoint(out, trainer, step, args, data_fp, order)
            saved_at = step
            writer.flush()
    bar.close()
    if step == start:
        log(f"already at step {step} (target {args.steps}); nothing to do")
    if saved_at != step:
        save_checkpoint(out, trainer, step, args, data_fp, order)
    elapsed = time.perf_counter() - t_start
    if stop:
        log(f"stopped by signal at step {step}; checkpoint saved, continue with --resume")
    return {
        "step": step,
        "steps_run": step - start,
        "seconds": elapsed,
        "pairs_per_s": (step - start) * args.batch_size / max(elapsed, 1e-9),
        "val": last_val,
    }


# -- image grid ----------------------------------------------------------------------------------------
GRID_COLUMNS = ("input", "generated RGB", "target", "generated mask", "generated depth")


def grid_image(trainer: Trainer, arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows of samples, columns ``GRID_COLUMNS``, as one uint8 RGB image (1-pixel white separators)."""
    import matplotlib

    from rcan.common.images import colour_segmentation

    trainer.G.eval()
    with torch.no_grad():
        out = trainer.G(images_to_input(arrays["randomized"][idx]))
    trainer.G.train()
    rgb = output_to_images(out.rgb)
    seg = out.segmentation.argmax(1).to(torch.uint8).numpy()
    depth = out.depth[:, 0].numpy() * trainer.depth_scale
    target_depth = np.asarray(arrays["depth"][idx], dtype=np.float32)
    lo, hi = np.percentile(target_depth, [1, 99])
    cmap = matplotlib.colormaps["viridis"]
    depth_rgb = (cmap(np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1))[..., :3] * 255).astype(np.uint8)
    rows = []
    for r in range(len(idx)):
        tiles = [
            arrays["randomized"][idx[r]],
            rgb[r],
            arrays["canonical"][idx[r]],
            colour_segmentation(seg[r]),
            depth_rgb[r],
        ]
        rows.append(
            np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], axis=1)
        )
    return np.concatenate(rows, axis=0)


def save_grid(trainer: Trainer, arrays: Mapping[str, np.ndarray], idx: np.ndarray, path: Path) -> Path:
    """Write the grid PNG (matplotlib, Agg) with column titles, atomically; the step is in the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = grid_image(trainer, arrays, idx)
    tile = img.shape[1] // len(GRID_COLUMNS)
    scale = max(1, math.ceil(128 / tile))  # enlarge small tiles (nearest) so a 64 px image is readable
    img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = img.shape[:2]
    dpi, header = 100, 24  # header height in pixels
    fig = plt.figure(figsize=(w / dpi, (h + header) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, h / (h + header)))
    ax.imshow(img, interpolation="nearest")
    ax.axis("off")
    y = 1 - 0.5 * header / (h + header)
    for i, name in enumerate(GRID_COLUMNS):
        fig.text((i + 0.5) / len(GRID_COLUMNS), y, name, ha="center", va="center", fontsize=9)
    return save_figure(fig, path, dpi=dpi)
