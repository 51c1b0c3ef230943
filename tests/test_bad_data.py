"""Bad training data: every kind of unusable record is converted or skipped and counted by reason, on both the
CSV and the webdataset paths; hopeless data stops with a clear message instead of waiting forever."""

from __future__ import annotations

import io
import logging
import os
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

from clipkd.data.sources import CsvSource, ShardSource
from clipkd.data.decode import open_image
from clipkd.data.stream import DistillStream, make_loader
from clipkd.data.synthetic import _jpeg, shape_samples, write_shards
from clipkd.data.views import PairedViews
from clipkd.errors import DataQualityError
from conftest import STUDENT, TEACHER, make_encoder
from test_orphans import children
from test_train import base_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoders():
    return make_encoder(STUDENT), make_encoder(TEACHER)


def run_with_timeout(fn: Callable, seconds: float):
    """``fn()``'s result or exception; fails the test (instead of hanging it) when it takes longer."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds}s (hangs)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- image and caption payloads --------------------------------------------------------------------------------
def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(mode: str = "RGB", size: int = 40) -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _truncated_jpeg() -> bytes:
    data = _encode(_noise(), "JPEG")
    return data[: len(data) * 2 // 3]


def _rgba_png() -> bytes:
    im = _noise().convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(im.size))
    return _encode(im, "PNG")


def _palette_png() -> bytes:
    return _encode(_noise().convert("P"), "PNG", transparency=0)


def png16(value: int = 32768) -> bytes:
    return _encode(Image.fromarray(np.full((24, 24), value, dtype=np.uint16)), "PNG")


def bomb_png(side: int = 40000) -> bytes:
    """A PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb; the data is never read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


LONG_CAPTION = " ".join(f"word{i} and a very long description" for i in range(3000))


@dataclass
class Case:
    """One bad record: its image (bytes; None = no image) and caption (str or raw bytes; None = none)."""

    image: Optional[bytes]
    caption: object
    expected: Optional[str]  # the skip reason, or None when the record is used
    paths: tuple = ("csv", "webdataset")


CASES = {
    "undecodable_bytes": Case(b"definitely not an image", "bytes", "bad_image"),
    "truncated_jpeg": Case(_truncated_jpeg(), "truncated", "truncated_image"),
    "zero_byte_file": Case(b"", "empty", "empty_file"),
    "cmyk_jpeg": Case(_encode(_noise("CMYK"), "JPEG"), "cmyk", None),
    "rgba_png": Case(_rgba_png(), "rgba", None),
    "palette_png": Case(_palette_png(), "palette", None),
    "png_16bit": Case(png16(), "sixteen bits", None),
    "grayscale_jpeg": Case(_encode(_noise("L"), "JPEG"), "grey", None),
    "decompression_bomb": Case(bomb_png(), "bomb", "too_large"),
    "empty_caption": Case(_jpeg(_noise()), "", "empty_caption"),
    "whitespace_caption": Case(_jpeg(_noise()), " \t  ", "empty_caption"),
    "long_caption": Case(_jpeg(_noise()), LONG_CAPTION, None),
    "non_utf8_caption": Case(_jpeg(_noise()), b"caf\xe9 \xff\xfe au lait", "bad_caption"),
    "missing_file": Case(None, "a missing image file", "missing_file", ("csv",)),
    "missing_image_member": Case(None, "a caption without an image", "missing_image", ("webdataset",)),
    "missing_caption": Case(_jpeg(_noise()), None, "missing_caption", ("webdataset",)),
    "bad_json_caption": Case(_jpeg(_noise()), b"{not json", "bad_caption", ("webdataset",)),
}
PARAMS = [(name, path) for name, case in CASES.items() for path in case.paths]
GOOD = 3


def _good() -> list[tuple[bytes, str]]:
    return [(_jpeg(s.image), s.caption) for s in shape_samples(GOOD, size=40, seed=3)]


def _bytes(text) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def write_csv_case(root: Path, case: Case) -> tuple[Path, str]:
    """A CSV (written as raw bytes) with ``GOOD`` good rows and the case's row; returns it and the case's key."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [b"filepath,title"]
    for i, (img, caption) in enumerate(_good()):
        (root / f"good{i}.jpg").write_bytes(img)
        lines.append(_bytes(f"good{i}.jpg,{caption}"))
    if case.image is not None:
        (root / "case.img").write_bytes(case.image)
    caption = b"" if case.caption is None else _bytes(case.caption)
    lines.append(b'case.img,"' + caption + b'"')
    path = root / "data.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, str(GOOD)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar_case(root: Path, case: Case) -> tuple[Path, str]:
    """A shard with ``GOOD`` good samples and the case's sample; returns it and the case's key."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "case.tar"
    with tarfile.open(path, "w") as tar:
        for i, (img, caption) in enumerate(_good()):
            _add(tar, f"good{i}.jpg", img)
            _add(tar, f"good{i}.txt", caption.encode())
        if case.image is not None:
            _add(tar, "case.png", case.image)
        if case.caption is not None:
            ext = "json" if isinstance(case.caption, bytes) and case.caption.startswith(b"{") else "txt"
            _add(tar, f"case.{ext}", _bytes(case.caption))
    return path, f"{path}/case"


def read_all(source, encoders, batches: int, limit: float = 1.0, batch_size: int = 1, workers: int = 0):
    """Keys used, counts skipped and examples over ``batches`` batches of the stream."""
    stream = DistillStream(source, PairedViews(*encoders), batch_size=batch_size, batches_per_split=batches,
                           workers=workers, max_skip_fraction=limit)
    used, skipped, examples = [], {}, {}
    for batch, info in make_loader(stream, workers):
        assert all(t.isfinite().all() for t in (batch.student_images, batch.teacher_images))
        used += batch.keys
        for k, v in info.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        for k, v in info.examples.items():
            examples.setdefault(k, []).extend(v)
    return used, skipped, examples


@pytest.mark.parametrize("name,path", PARAMS)
def test_each_kind_of_bad_record_is_converted_or_skipped_by_reason(name, path, tmp_path, encoders):
    case = CASES[name]
    if path == "csv":
        file, key = write_csv_case(tmp_path, case)
        source = CsvSource(file)
    else:
        file, key = write_tar_case(tmp_path, case)
        source = ShardSource([str(file)], shuffle_buffer=1)
    usable = GOOD + (case.expected is None)
    # one full pass and the first batch of the next: every record is read at least once
    used, skipped, examples = run_with_timeout(lambda: read_all(source, encoders, usable + 1), 60)
    if case.expected is None:
        assert key in used and not skipped
    else:
        assert key not in used
        assert set(skipped) == {case.expected} and skipped[case.expected] >= 1
        assert any(key in e or "case.img" in e for e in examples[case.expected])


def test_long_captions_are_truncated_by_both_tokenizers(encoders):
    views = PairedViews(*encoders)(Image.new("RGB", (40, 40)), LONG_CAPTION, None)
    assert views.student_text.shape == (32,) and views.teacher_text.shape == (24,)
    transformers = pytest.importorskip("transformers")
    from clipkd.models.composite import HFTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "word", "and", "a", "very", "long", "description"]
    with open(Path(os.environ.get("TMPDIR", "/tmp")) / f"vocab-{os.getpid()}.txt", "w") as f:
        f.write("\n".join(vocab))
    tok = HFTokenizer(transformers.BertTokenizerFast(f.name), context_length=16)
    out = tok([LONG_CAPTION])
    assert out["input_ids"].shape == (1, 16) and out["input_ids"][0, -1].item() == 3  # ends with [SEP]


def test_16_bit_and_transparent_images_convert_sensibly():
    grey = open_image(png16(32768))
    assert grey.mode == "RGB" and abs(grey.getpixel((0, 0))[0] - 128) <= 1
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert open_image(_encode(clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)  # composited on white


def test_image_pixel_limit_is_configurable(tmp_path, encoders):
    assert open_image(_jpeg(_noise()), max_pixels=40 * 40).size == (40, 40)
    file, key = write_csv_case(tmp_path, Case(_jpeg(_noise(size=64)), "big", None))
    stream = DistillStream(CsvSource(file), PairedViews(*encoders), batch_size=1, batches_per_split=GOOD + 1,
                           max_skip_fraction=1.0, max_image_pixels=50 * 50)
    skipped = {}
    for _, info in make_loader(stream, 0):
        for k, v in info.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    assert set(skipped) == {"too_large"}


def test_truncated_tar_member_is_a_shard_error(tmp_path, encoders):
    clean = write_shards(tmp_path / "clean", 20, per_shard=20, size=48)[0]
    broken = tmp_path / "broken.tar"
    broken.write_bytes(Path(clean).read_bytes()[:20000])
    readable = sum(1 for r in ShardSource([str(broken)]).records() if r.error is None and r.caption)
    used, skipped, examples = read_all(ShardSource([str(broken)], shuffle_buffer=1), encoders, readable + 1)
    assert skipped.get("shard_error", 0) >= 1 and str(broken) in examples["shard_error"][0]


def test_skip_limit_applies_to_a_mix_of_bad_kinds(tmp_path, encoders):
    bad = [c for c in CASES.values() if c.expected and "csv" in c.paths]
    root = tmp_path / "mix"
    root.mkdir()
    lines = [b"filepath,title"]
    for i, case in enumerate(bad * 10):
        if case.image is not None:
            (root / f"{i}.img").write_bytes(case.image)
        lines.append(f"{i}.img,\"".encode() + _bytes(case.caption) + b'"')
    for i, (img, caption) in enumerate(_good() * 40):
        (root / f"g{i}.jpg").write_bytes(img)
        lines.append(_bytes(f"g{i}.jpg,{caption}"))
    (root / "data.csv").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataQualityError) as err:
        run_with_timeout(lambda: read_all(CsvSource(root / "data.csv"), encoders, 100, limit=0.1), 120)
    message = str(err.value)
    assert "data.max_skip_fraction=0.1" in message and "check the training data" in message
    for reason in {c.expected for c in bad}:
        assert f"{reason}: " in message


def test_examples_of_each_reason_are_logged(tmp_path, encoders, caplog):
    file, key = write_csv_case(tmp_path, CASES["missing_file"])
    with caplog.at_level(logging.WARNING, logger="clipkd.data.stream"):
        read_all(CsvSource(file), encoders, GOOD + 1)
    assert "missing_file" in caplog.text and "case.img" in caplog.text


# -- data that can never fill a batch ----------------------------------------------------------------------------
def _missing_files_csv(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "missing.csv"
    path.write_text("filepath,title\n" + "".join(f"nope/{i}.jpg,caption {i}\n" for i in range(rows)))
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_no_usable_record_stops_with_the_limit_message(tmp_path, encoders, workers):
    source = CsvSource(_missing_files_csv(tmp_path, 30))
    with pytest.raises(DataQualityError) as err:
        run_with_timeout(lambda: read_all(source, encoders, 4, limit=0.1, batch_size=4, workers=workers), 90)
    message = str(err.value)
    assert "missing_file: " in message and "data.max_skip_fraction=0.1" in message
    assert "check the training data" in message and "Traceback" not in message


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pass_without_any_usable_record_stops_even_without_a_limit(tmp_path, encoders, workers):
    source = CsvSource(_missing_files_csv(tmp_path, 30))
    with pytest.raises(DataQualityError, match="no usable record"):
        run_with_timeout(lambda: read_all(source, encoders, 4, limit=1.0, batch_size=4, workers=workers), 90)


def test_a_split_without_records_stops(tmp_path, encoders):
    source = CsvSource(_missing_files_csv(tmp_path, 1))
    with pytest.raises(DataQualityError, match="no record"):
        run_with_timeout(lambda: next(source.passes(0, 1, 2, 0)), 30)


def test_an_empty_shard_stops(tmp_path, encoders):
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(DataQualityError, match="no record"):
        run_with_timeout(lambda: next(ShardSource([str(empty)], num_samples=10).passes(0, 0, 1, 0)), 30)
    with pytest.raises(DataQualityError, match="no record"):
        DistillStream(ShardSource([str(empty)]), PairedViews(*encoders), batch_size=2)


def test_an_unreadable_csv_encoding_does_not_crash(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("filepath,title\na.jpg,caf\xe9\n".encode("latin-1"))
    record = next(CsvSource(path).passes(0, 0, 1, 0))
    assert record.error == "bad_caption"


@pytest.mark.parametrize("workers", [0, 2])
def test_cli_stops_within_seconds_when_no_record_is_usable(data_dir, tmp_path, workers):
    """A `data.root` without the images used to keep the run (and its loader workers) busy forever, silently."""
    (tmp_path / "elsewhere").mkdir()
    args = base_overrides(tmp_path / "run", data_dir, "csv", **{"data.root": str(tmp_path / "elsewhere"),
                                                                  "data.workers": workers})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipkd", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        _, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        workers = children(proc.pid)
        for pid in [proc.pid, *workers]:
            os.kill(pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("training on data without a usable record did not stop")
    assert proc.returncode == 2, err[-3000:]
    assert "clipkd: error:" in err and "missing_file: " in err and "check the training data" in err
    assert "Traceback" not in err


def test_an_epoch_without_any_batch_is_an_error(tmp_path, encoders):
    class Silent(DistillStream):
        def __iter__(self):
            return iter(())

    stream = Silent(CsvSource(_missing_files_csv(tmp_path, 4)), PairedViews(*encoders), batch_size=2)
    with pytest.raises(DataQualityError, match="no batch"):
        list(make_loader(stream, 0))


def test_training_reports_each_reason_with_examples(data_dir, tmp_path, caplog):
    """The end-of-run summary names the first offending rows of each reason, so a user can find them."""
    from clipkd.config import load_config
    from clipkd.commands.train import make_trainer

    rows = (data_dir / "csv" / "data.csv").read_text().splitlines()
    bad = [f"gone/missing_{i}.jpg,a lost picture" for i in range(8)]
    csv = tmp_path / "mixed.csv"
    csv.write_text("\n".join([rows[0]] + [r for pair in zip(rows[1:9], bad) for r in pair] + rows[9:]) + "\n")
    extra = {"data.train": str(csv), "data.root": str(data_dir / "csv"), "optim.steps": 2, "data.batch_size": 8,
             "data.max_skip_fraction": 0.9}
    with caplog.at_level(logging.WARNING, logger="clipkd.engine.trainer"):
        result = make_trainer(load_config(None, base_overrides(tmp_path / "r", data_dir, "csv", **extra))).fit()
    assert result.skipped["missing_file"] >= 1
    summary = [r.getMessage() for r in caplog.records if "unusable records" in r.getMessage()]
    assert summary and "missing_file: " in summary[0] and "missing_" in summary[0].split("e.g.")[1]
