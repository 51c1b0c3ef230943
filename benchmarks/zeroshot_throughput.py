"""Zero-shot evaluation throughput: clipkd's path vs open_clip's own (open_clip_train.zero_shot.run).

Writes an image folder (N images of S px over C classes), builds one classifier with open_clip's
build_zero_shot_classifier, then times, interleaved on the SAME DataLoader and model:
  A. clipkd.eval.zeroshot.zeroshot_evaluate(encoder, loader, classifier)
  B. open_clip_train.zero_shot.run(model, classifier, loader, args)   (what open_clip's trainer runs)
Target: images/s of A >= images/s of B. Also checks both give the same top-1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip_train.zero_shot as oc_zero_shot  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from clipkd.data.synthetic import shape_samples  # noqa: E402
from clipkd.eval.datasets import zeroshot_dataset  # noqa: E402
from clipkd.eval.zeroshot import zeroshot_classifier, zeroshot_evaluate  # noqa: E402
from clipkd.models import create_open_clip_encoder  # noqa: E402


def _accuracy(output, target, topk=(1,)):
    """open_clip_train's accuracy() with ``.item()``: its ``float(ndarray[1])`` fails under numpy >= 2.x here."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() for k in topk]


oc_zero_shot.accuracy = _accuracy  # the rest of open_clip's loop (run) is used unchanged


def write_folder(root: Path, n: int, size: int) -> None:
    for i, s in enumerate(shape_samples(n, size=size, seed=0)):
        d = root / f"class_{s.label:02d}"
        d.mkdir(parents=True, exist_ok=True)
        s.image.save(d / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="clipkd-tiny-vit-64")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="clipkd-zs-"))
    write_folder(root, args.images, args.size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = create_open_clip_encoder(args.model).to(device).eval()
    data = zeroshot_dataset("folder", str(root))
    classifier = zeroshot_classifier(encoder, data.classnames, ["a photo of a {}.", "a {}."], device)
    loader = DataLoader(data.dataset(encoder.preprocess_val), batch_size=args.batch, num_workers=args.workers)
    oc_args = SimpleNamespace(device=device, precision="fp32", batch_size=args.batch)
    ours = lambda: zeroshot_evaluate(encoder, loader, classifier, device)["acc1"]  # noqa: E731
    theirs = lambda: oc_zero_shot.run(encoder.model, classifier, loader, oc_args)[0]  # noqa: E731
    ours(), theirs()  # warm-up
    times = {"clipkd": [], "open_clip": []}
    acc = {}
    for _ in range(args.repeats):
        for name, fn in (("clipkd", ours), ("open_clip", theirs)):
            t0 = time.perf_counter()
            acc[name] = fn()
            times[name].append(time.perf_counter() - t0)
    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; {args.model}; "
          f"{args.images} images of {args.size} px, batch {args.batch}, {args.workers} workers; "
          f"{args.repeats} interleaved repeats (median)")
    for k in times:
        print(f"  {k:<10} {rate[k]:8.1f} images/s   top-1 {acc[k]:.4f}   runs: "
              + ", ".join(f"{args.images / t:.0f}" for t in times[k]))
    assert abs(acc["clipkd"] - acc["open_clip"]) < 1e-6, "the two paths disagree"
    ratio = rate["clipkd"] / rate["open_clip"]
    print(f"ratio clipkd / open_clip = {ratio:.3f}  (target >= 1): {'PASS' if ratio >= 1.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
