"""The student's training step before and after trimming the text tower and fusing AdamW (issue 14: runtime).

Side by side in one process, interleaved, on the same batch: one optimizer step of a recipe from stored teacher
embeddings (reinforced data: no teacher forward), through the Trainer's own GlobalBatchStep, gradient clipping
and AdamW included, with
  - ``open_clip + loop AdamW``: the text tower run on all ``context_length`` positions (open_clip's own
    ``encode_text``) and AdamW's per-tensor loops (clipkd before this change);
  - ``trimmed text``: the causal text tower run only up to the last pooled (end-of-text) token (the encoder's
    ``trim_text`` switch, which the trainable student turns on and which acts in training mode only);
  - ``fused AdamW``: torch's one-kernel AdamW;
  - ``both`` (clipkd now).
Captions are the demo's (Fashion-MNIST templates and class names: 5-16 tokens of the student's 32). Prints each
variant's median step time and its speed-up over the first, and checks that all four give the same loss.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import OtherLoad, interleaved_medians  # noqa: E402
from recipe_cost import recipe_step, seeded_student, stored_batch  # noqa: E402

from clipkd.demo.fmnist import TRAIN_PAIR_TEMPLATES, TRAIN_TEMPLATES, make_split  # noqa: E402


def demo_captions(n: int, seed: int = 0) -> list[str]:
    """Captions drawn by the demo's own split builder (one item, or 30% two-item scenes), on blank images."""
    samples = make_split(np.zeros((n, 28, 28), np.uint8), np.arange(n) % 10, count=n, scene_fraction=0.3,
                         templates=TRAIN_TEMPLATES, pair_templates=TRAIN_PAIR_TEMPLATES, seed=seed, key_prefix="b")
    return [s.caption for s in samples]


def variant_step(recipe: str, student: str, batch, dim: int, trim: bool, fused: bool):
    """One optimizer step of ``recipe`` with or without each change, as a callable, and the losses it returned."""
    enc = seeded_student(student)
    step = recipe_step(recipe, enc, batch, dim, fused=None if fused else False)
    enc.trim_text = trim  # the training-only switch DistillStudent turned on; off: open_clip's full forward
    losses: list[float] = []
    return (lambda: losses.append(step())), losses


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
    enc = seeded_student(args.student)
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
