"""The demo teacher's image tower in a reinforced build (issue 27), ratios measured side by side in one run.

`clipkd reinforce` runs the teacher over B records x K views. Four ways to push those B x K images through the
demo teacher's EfficientNet-Lite0 tower (`lit-effnetlite0-minilm`, untrained heads: speed does not depend on them)
at the demo teacher's resolution, interleaved, the order rotating every repeat, medians:

- ``one pass, NCHW``: all B x K images at once, the tower in PyTorch's default layout (the build before issue 27);
- ``B per pass, NCHW``: K passes of B images (``clipkd.reinforce.encode.encode_rows`` now);
- ``one pass, NHWC`` and ``B per pass, NHWC``: the same, the tower and its input channels-last (the tower now).

Targets (demo: B=128, K=16, 64 px, 2 threads): now / before (B per pass NHWC / one pass NCHW) >= 2.

    python benchmarks/teacher_forward.py [--records 128 --views 16 --repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _common import OtherLoad  # noqa: E402


def towers() -> dict:
    """The demo teacher's trunk in both layouts (the same weights), and its resolution (``px``)."""
    from clipkd.commands.demo import SIZES
    from clipkd.models.composite import create_lit_encoder

    enc = create_lit_encoder(image_size=SIZES["full"]["teacher_px"]).eval()
    nhwc = enc.image_tower.net
    nchw = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format)
    return {"NCHW": nchw, "NHWC": nhwc, "px": enc.image_size[0]}


@torch.inference_mode()
def run(net: torch.nn.Module, images: torch.Tensor, per_pass: int, layout: str) -> float:
    """Seconds to push ``images`` through ``net`` ``per_pass`` at a time, pooled as the tower pools."""
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    t0 = time.perf_counter()
    for chunk in images.split(per_pass):
        net.extract_features(chunk.contiguous(memory_format=fmt)).mean(dim=(2, 3))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = OtherLoad()
    nets = towers()
    n = args.records * args.views
    images = torch.randn(n, 3, nets["px"], nets["px"], generator=torch.Generator().manual_seed(0))
    variants = [(f"{label}, {layout}", layout, per) for layout in ("NCHW", "NHWC")
                for label, per in (("one pass", n), (f"{args.records} per pass", args.records))]
    for _, layout, per in variants:  # warm-up
        run(nets[layout], images[: 2 * args.records], min(per, 2 * args.records), layout)
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for r in range(args.repeats):
        for name, layout, per in variants[r % len(variants):] + variants[: r % len(variants)]:
            times[name].append(run(nets[layout], images, per, layout))
    print(f"{args.records} records x {args.views} views = {n} images at {nets['px']} px, {torch.get_num_threads()} "
          f"threads, median of {args.repeats}")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"  {name:<24} {1000 * t / n:6.2f} ms per image   (runs: {', '.join(f'{x:.2f}' for x in times[name])} s)")
    before, now = med["one pass, NCHW"], med[f"{args.records} per pass, NHWC"]
    print(f"RATIO B per pass / one pass (NCHW): {med['one pass, NCHW'] / med[f'{args.records} per pass, NCHW']:.2f}x")
    print(f"RATIO NHWC / NCHW (B per pass): {med[f'{args.records} per pass, NCHW'] / now:.2f}x")
    print(f"RATIO now / before: {before / now:.2f}x faster  (target >= 2): {'PASS' if before / now >= 2 else 'FAIL'}")
    print(load.report())


if __name__ == "__main__":
    main()
