"""Which JPEG decoder (issue: feed the GPU): the candidates side by side on the same files, one thread.

Photo-like JPEGs (:func:`clipkd.data.synthetic.natural_jpeg` with a camera's grain: about 75 KB at 500x375, 300 KB
at 1024x768), decoded to 8-bit RGB, full size and at 1/2 scale (libjpeg-turbo's scaled IDCT), by
  - PIL (decoded, then as a numpy array; ``draft`` for 1/2), clipkd's host path (which keeps the PIL image);
  - simplejpeg (libjpeg-turbo straight into a numpy array), clipkd's ``data.preprocess: device`` path;
  - ``torchvision.io.decode_jpeg`` on the CPU;
  - NVIDIA DALI's CPU decoder (``fn.decoders.image``, device "cpu"), when ``nvidia-dali-cuda120`` is installed;
  - with a GPU: ``torchvision.io.decode_jpeg`` on CUDA (nvJPEG, a batch per call) and DALI's "mixed" decoder
    (nvJPEG, host Huffman + GPU IDCT, or the A100/H100 hardware decoder), host CPU and wall per image.
Prints CPU ms per image (process time over all threads) and, for the GPU rows, wall ms per image.

    python benchmarks/jpeg_decoders.py [--images 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipkd.data.synthetic import natural_jpeg  # noqa: E402


def pil(data: bytes, half: bool):
    im = Image.open(io.BytesIO(data))
    if half:
        im.draft("RGB", (im.width // 2, im.height // 2))
    im.load()
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # as an array: what the device path ships


def turbo(data: bytes, half: bool):
    if not half:
        return simplejpeg.decode_jpeg(data, "rgb")
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    return simplejpeg.decode_jpeg(data, "rgb", min_height=(h + 1) // 2, min_width=(w + 1) // 2, min_factor=2)


def tv_cpu(data: bytes, half: bool):
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def per_image(fn, files: list[bytes], rounds: int) -> tuple[float, float]:
    """Median CPU and wall ms per image of ``fn(files)`` over ``rounds`` (after one warm-up)."""
    fn(files)
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        fn(files)
        cpu.append((time.process_time() - c0) / len(files) * 1e3)
        wall.append((time.perf_counter() - w0) / len(files) * 1e3)
    return statistics.median(cpu), statistics.median(wall)


def dali_decoder(files: list[bytes], device: str):
    """A DALI pipeline decoding ``files`` as one batch on ``device`` ("cpu" or "mixed"), or None without DALI."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None
    arrays = [np.frombuffer(f, np.uint8) for f in files]

    @pipeline_def(batch_size=len(files), num_threads=1, device_id=0 if device == "mixed" else None)
    def pipe():
        jpegs = fn.external_source(source=lambda: arrays, batch=True, dtype=types.UINT8)
        return fn.decoders.image(jpegs, device=device, output_type=types.RGB)

    p = pipe()
    p.build()

    def run(_files):
        out = p.run()
        if device == "mixed":
            torch.cuda.synchronize()
        return out
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {args.images} images per size, median of {args.rounds} rounds, 1 thread")
    for w, h in ((500, 375), (1024, 768)):
        files = [natural_jpeg(w, h, seed=i, grain=10.0) for i in range(args.images)]
        print(f"\n== {w}x{h} photo-like ({sum(map(len, files)) // len(files) // 1024} KB), CPU ms per image")
        rows = {f"PIL {s}": (lambda fs, half=half: [pil(f, half) for f in fs]) for s, half in (("full", 0), ("1/2", 1))}
        rows.update({f"simplejpeg {s}": (lambda fs, half=half: [turbo(f, half) for f in fs])
                     for s, half in (("full", 0), ("1/2", 1))})
        rows["torchvision.io cpu full"] = lambda fs: [tv_cpu(f, False) for f in fs]
        dali = dali_decoder(files, "cpu")
        if dali is not None:
            rows["DALI cpu full"] = dali
        base = None
        for name, fn in rows.items():
            cpu, _ = per_image(fn, files, args.rounds)
            base = base or cpu
            print(f"  {name:<26} {cpu:6.2f}   RATIO /PIL full {cpu / base:.2f}")
        if torch.cuda.is_available():
            from torchvision.io import ImageReadMode, decode_jpeg

            tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
            gpu = {"torchvision.io cuda": lambda fs: (decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cuda"),
                                                      torch.cuda.synchronize())}
            mixed = dali_decoder(files, "mixed")
            if mixed is not None:
                gpu["DALI mixed"] = mixed
            for name, fn in gpu.items():
                cpu, wall = per_image(fn, files, args.rounds)
                print(f"  {name:<26} {cpu:6.2f}   RATIO /PIL full {cpu / base:.2f}   wall {wall:.3f} ms per image")


if __name__ == "__main__":
    main()
