"""Reading a record's stored view from reinforced data (issue: feed the GPU): per-field safetensors slices through
four open handles (before) against one memory map per sidecar with each field's offset from its header (now).

`clipkd reinforce` builds a cache over a CSV (2,000 pairs, 100 rows per sidecar: 20 sidecars; 4 views; the tiny
teacher, fp32), then every record's fields as training reads them (fingerprint, usable, the view's crop, the
view's teacher image embedding, the text embedding) are read in file order and in a random order (a shuffled CSV
visits the sidecars at random), each way side by side, interleaved rounds; microseconds per record.

    python benchmarks/sidecar_reads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipkd.build.reinforce import run_build  # noqa: E402
from clipkd.config import load_config  # noqa: E402
from clipkd.data.synthetic import write_csv  # noqa: E402
from clipkd.reinforce.format import SidecarReader, image_field, text_field  # noqa: E402
from clipkd.reinforce.settings import BuildOptions  # noqa: E402

FIELDS = ("fingerprint", "usable", "crop", image_field(0), text_field(0))
VIEWED = {"crop", image_field(0)}


class SliceReader:
    """The reader as it was: a safetensors handle per sidecar (4 open, least recently used closed), each field's
    row through ``get_slice``."""

    def __init__(self, folder: Path, files: list[str]):
        self.folder, self.files, self.open = folder, files, OrderedDict()

    def row(self, sidecar: int, name: str, index: int, view=None):
        from safetensors import safe_open

        if sidecar not in self.open:
            self.open[sidecar] = safe_open(str(self.folder / self.files[sidecar]), framework="pt")
            while len(self.open) > 4:
                self.open.popitem(last=False)
        self.open.move_to_end(sidecar)
        part = self.open[sidecar].get_slice(name)
        return part[index:index + 1][0] if view is None else part[index:index + 1, view:view + 1][0, 0]


def read_all(reader, order: list[tuple[int, int]]) -> float:
    start = time.perf_counter()
    for sidecar, row in order:
        for name in FIELDS:
            reader.row(sidecar, name, row, 1 if name in VIEWED else None)
    return (time.perf_counter() - start) / len(order)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_csv(Path(tmp) / "data", 2000, size=32)
        cfg = load_config(None, [f"run_dir={tmp}/run", "teacher.model=clipkd-tiny-teacher",
                                 "student.model=clipkd-tiny-vit", "data.format=csv", f"data.train={csv}",
                                 "data.crop_scale=[0.5,1.0]", "optim.steps=1", "logging.progress=false"])
        out = Path(tmp) / "cache"
        run_build(cfg, BuildOptions(out=out, views=4, dtype="fp32", batch_size=64, rows_per_shard=100))
        files = sorted(p.name for p in out.glob("sidecar-*.safetensors"))
        in_order = [(s, r) for s in range(len(files)) for r in range(100)]
        shuffled = random.Random(0).sample(in_order, len(in_order))
        times: dict = {}
        for _ in range(args.rounds):
            for label, order in (("file order", in_order), ("random order", shuffled)):
                for name, make in (("slices, 4 handles (before)", lambda: SliceReader(out, files)),
                                   ("one memory map per sidecar", lambda: SidecarReader(out, files))):
                    times.setdefault((label, name), []).append(read_all(make(), order))
    print(f"{len(files)} sidecars x 100 records, 4 views, fields {', '.join(FIELDS)}; us per record, "
          f"median of {args.rounds}")
    for label in ("file order", "random order"):
        before = statistics.median(times[(label, "slices, 4 handles (before)")])
        now = statistics.median(times[(label, "one memory map per sidecar")])
        print(f"  {label:<13} before {1e6 * before:7.1f}   now {1e6 * now:7.1f}   RATIO now/before {now / before:.2f}")


if __name__ == "__main__":
    main()
