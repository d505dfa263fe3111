"""Can one critic act like a snapshot ensemble, at one critic's CEM cost? (issue 4)

A run's last checkpoints, acting on their mean logit (``--set ensemble_members=3``), close better once
than the final critic alone (+4.9 and +5.5 points on two seeds) and, with the grasp check, add ~2 points
over 30 object sets, but three critics cost three times the CEM time (18 ms per control step against the
issue's 10 ms goal). This probe distils the ensemble into one network with ``rcan.qtopt.distill`` (what
``--set distill_steps=N`` does after training) on a finished run's saved replay file, and prints how
close the distilled critic comes to the ensemble on held-out replay states. No simulator, no new data.
Writes ``OUT/agent.safetensors`` (one critic, the ensemble file's acting settings), which
``eval_object_sets.py OUT`` then evaluates.

    .venv/bin/python benchmarks/probe_distill.py runs/e2e-s7-ens3/agent.safetensors \\
        runs/e2e-s7/replay-000011.npz --out runs/distill --steps 4000 --focus 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rcan.common.checkpoint import load_safetensors
from rcan.qtopt.agent import AGENT_FORMAT, load_networks, save_agent
from rcan.qtopt.cem import CEMConfig
from rcan.qtopt.distill import distill, distill_candidates, ensemble_logits
from rcan.qtopt.network import QNetwork

KEPT = ("view_shifts", "rerank", "camera", "args", "grad_steps", "env_steps", "episodes")
"""Metadata of the ensemble's file the distilled agent keeps (its acting settings and provenance)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "ensemble", type=Path, help="an agent file with ensemble members (--set ensemble_members=3)"
    )
    p.add_argument("replay", type=Path, help="the run's replay file (RUN/replay-*.npz)")
    p.add_argument("--out", type=Path, required=True, help="directory for the distilled agent.safetensors")
    p.add_argument(
        "--buffer", default="policy", choices=("policy", "scripted"), help="replay buffer to draw from"
    )
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32, help="states per step")
    p.add_argument("--cands", type=int, default=32, help="candidate actions per state")
    p.add_argument(
        "--focus", type=int, default=16, help="of those, drawn around the teacher's best (0: none)"
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--aug-pad", type=int, default=4, help="random shift in pixels, as in training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the validation curve here")
    a = p.parse_args(argv)
    if not 0 <= a.focus <= a.cands or a.cands < 4 or a.steps < 1 or a.batch < 1:
        p.error("need cands >= 4, 0 <= focus <= cands, steps >= 1, batch >= 1")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    nets, _ = load_networks(a.ensemble)
    if len(nets) < 2:
        p.error(f"{a.ensemble} has no ensemble members")
    teachers = [n.eval() for n in nets]
    try:
        z = np.load(a.replay, allow_pickle=False)
        images, states = z[f"{a.buffer}/images"], z[f"{a.buffer}/states"]
        actions, valid = z[f"{a.buffer}/actions"], z[f"{a.buffer}/valid"]
    except (OSError, KeyError, ValueError) as err:
        p.error(f"{a.replay} is not a replay file with a {a.buffer!r} buffer ({err})")
    rows = np.flatnonzero(valid)
    rng.shuffle(rows)
    held_out, train_rows = np.sort(rows[:256]), rows[512:]

    def sample(n: int) -> dict[str, np.ndarray]:
        r = np.sort(rng.choice(train_rows, n, replace=False))
        return {"images": images[r], "states": states[r], "actions": actions[r]}

    v_img, v_st = torch.from_numpy(images[held_out]), torch.from_numpy(states[held_out])
    v_c = distill_candidates(np.random.default_rng(a.seed + 1), teachers, v_img, v_st, actions[held_out])
    v_t = ensemble_logits(teachers, v_img, v_st, v_c)
    start = time.time()

    def validate(step: int, net: QNetwork) -> dict[str, float]:
        with torch.no_grad():
            out = net.head(net.features(v_img), v_st, v_c)
        mse, same = float(((out - v_t) ** 2).mean()), float((out.argmax(1) == v_t.argmax(1)).float().mean())
        row = {"step": step, "mse": mse, "same_best": same, "seconds": time.time() - start}
        print(f"| {step} | {mse:.4f} | {same:.3f} | {row['seconds']:.0f} |", flush=True)
        return row

    print("| step | logit MSE to the ensemble | same best candidate | seconds |\n|---|---|---|---|")
    curve = [validate(0, nets[0])]

    def on_step(step: int, loss: float, student: QNetwork) -> None:
        if step % 500 == 0 or step == a.steps:
            curve.append(validate(step, student))

    kw = {"batch": a.batch, "cands": a.cands, "focus": a.focus, "lr": a.lr, "aug_pad": a.aug_pad}
    student = distill(teachers, sample, a.steps, seed=a.seed, on_step=on_step, **kw)
    _, metadata = load_safetensors(a.ensemble, expect_format=AGENT_FORMAT)
    extra = {k: metadata[k] for k in KEPT if k in metadata}
    extra["distilled_from"] = str(a.ensemble)
    cem = CEMConfig(**json.loads(metadata["cem"]))
    path = save_agent(a.out / "agent.safetensors", student, metadata["input_mode"], cem, extra=extra)
    print(f"wrote {path}", file=sys.stderr)
    if a.json:
        a.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "curve": curve}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
