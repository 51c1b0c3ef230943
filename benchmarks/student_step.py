"""The student's training step before and after trimming the text tower and fusing AdamW (issue 14: runtime).

Side by side in one process, interleaved, on the same batch: one optimizer step of a recipe from stored teacher
embeddings (reinforced data: no teacher forward), through the Trainer's own GlobalBatchStep, gradient clipping
and AdamW included, with
  - ``open_clip + loop AdamW``: the text tower run on all ``context_length`` positions (open_clip's own
    ``encode_text``) and AdamW's per-tensor loops (clipkd before this change);
  - ``trimmed text``: the causal text tower run only up to the last pooled (end-of-text) token;
  - ``fused AdamW``: torch's one-kernel AdamW;
  - ``both`` (clipkd now).
Captions are the demo's (Fashion-MNIST templates and class names: 5-16 tokens of the student's 32). Prints each
variant's median step time and its speed-up over the first, and checks that all four give the same loss.
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import OtherLoad, interleaved_medians  # noqa: E402
from recipe_cost import stored_batch  # noqa: E402

from clipkd.demo.fmnist import CLASSNAMES, TRAIN_PAIR_TEMPLATES, TRAIN_TEMPLATES  # noqa: E402
from clipkd.distill import build_distiller  # noqa: E402
from clipkd.engine import optim  # noqa: E402
from clipkd.engine.distributed import DistEnv  # noqa: E402
from clipkd.engine.gradcache import GlobalBatchStep  # noqa: E402
from clipkd.losses.recipes import get_recipe, resolve_weights  # noqa: E402
from clipkd.models import create_open_clip_encoder  # noqa: E402


def demo_captions(n: int, seed: int = 0) -> list[str]:
    """Captions drawn as the demo draws its training captions: one item, or (30%) a pair."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(CLASSNAMES, 2)
        out.append(rng.choice(TRAIN_PAIR_TEMPLATES).format(a=a, b=b) if rng.random() < 0.3
                   else rng.choice(TRAIN_TEMPLATES).format(a))
    return out


def variant_step(recipe: str, student: str, batch, dim: int, trim: bool, fused: bool):
    """One optimizer step of ``recipe`` with or without each change, as a callable (and its last loss)."""
    torch.manual_seed(0)
    enc = create_open_clip_encoder(student)
    if not trim:  # open_clip's full forward, as before
        enc.encode_text = lambda text, normalize=True: enc.model.encode_text(text, normalize=normalize)
    d = build_distiller(enc, None, resolve_weights(recipe, None, len(batch), dim), get_recipe(recipe).mask_ratio,
                        stored_teacher_dims=[dim])
    d.student.train()
    devices = optim.FUSED_DEVICES
    optim.FUSED_DEVICES = devices if fused else ()
    try:
        opt = optim.create_optimizer(d.student, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    finally:
        optim.FUSED_DEVICES = devices
    grad_step, gen = GlobalBatchStep(d, d.student, DistEnv(), torch.device("cpu")), torch.Generator().manual_seed(0)
    losses: list[float] = []

    def step():
        opt.zero_grad(set_to_none=True)
        losses.append(float(grad_step([batch], gen)["loss"]))
        torch.nn.utils.clip_grad_norm_(d.student.parameters(), 1.0)
        opt.step()
        optim.clamp_logit_scales(d.student)

    return step, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--recipe", default="clipkd")
    ap.add_argument("--student", default="clipkd-tiny-vit")
    ap.add_argument("--teacher-dim", type=int, default=256, help="the stored teacher embedding size (demo: 256)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    enc = create_open_clip_encoder(args.student)
    batch = stored_batch(enc, args.batch, args.teacher_dim)
    batch.student_text = batch.teacher_text = enc.tokenize(demo_captions(args.batch))
    longest = int((batch.student_text != 0).sum(1).max())
    names = {"open_clip + loop AdamW": (False, False), "trimmed text": (True, False), "fused AdamW": (False, True),
             "both (clipkd now)": (True, True)}
    made = {name: variant_step(args.recipe, args.student, batch, args.teacher_dim, *how) for name, how in names.items()}
    load = OtherLoad()
    med = interleaved_medians({name: step for name, (step, _) in made.items()}, args.repeats)
    first = next(iter(med.values()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, recipe {args.recipe}, batch {args.batch}, "
          f"{args.student}: captions of at most {longest} of {batch.student_text.shape[1]} tokens, "
          f"{args.repeats} interleaved repeats (median)")
    for name, t in med.items():
        print(f"  {name:<24} {t * 1000:7.1f} ms   x{first / t:.2f} faster")
    losses = [made[name][1] for name in names]
    drift = max(abs(a - b) for run in losses[1:] for a, b in zip(losses[0], run))
    print(f"largest loss difference between the variants over {len(losses[0])} steps: {drift:.2e}")
    print(load.report())


if __name__ == "__main__":
    main()
