"""Data sources, paired views and the stream: formats, skip-and-count, splits, shared crops."""

import json

import pytest
import torch
import webdataset as wds
from PIL import Image

from clipkd.cli import main
from clipkd.data.sources import CsvSource, ShardSource, count_shard_samples, expand_shards
from clipkd.data.stream import DataPosition, DistillStream, make_loader
from clipkd.data.synthetic import _jpeg, shape_samples, write_csv, write_shards
from clipkd.data.views import PairedViews
from conftest import STUDENT, TEACHER, make_encoder
from test_train import base_overrides


@pytest.fixture(scope="module")
def encoders():
    return make_encoder(STUDENT), make_encoder(TEACHER)


def write_corrupt_shard(path, good: int = 40):
    """A shard with ``good`` usable samples and one of each kind of unusable record."""
    samples = list(shape_samples(good + 3, size=48, seed=5))
    jpg = _jpeg(samples[0].image)
    bad = [
        {"jpg": b"definitely not an image", "txt": "bytes"},
        {"jpg": jpg[: len(jpg) // 2], "txt": "truncated jpeg"},
        {"jpg": _jpeg(samples[1].image), "txt": "   "},
        {"jpg": _jpeg(samples[2].image)},
        {"txt": "a caption without an image"},
    ]
    with wds.TarWriter(str(path)) as sink:
        for i, s in enumerate(samples[3:]):
            sink.write({"__key__": f"g{i:04d}", "jpg": _jpeg(s.image), "txt": s.caption})
            if i % 8 == 0 and bad:
                sink.write({"__key__": f"b{i:04d}", **bad.pop(0)})
    return path


def _count_skips(source, batches, encoders):
    stream = DistillStream(source, PairedViews(*encoders), batch_size=1, batches_per_split=batches)
    skipped = {}
    for _, info in make_loader(stream, 0):
        for k, v in info.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return skipped


def test_corrupt_records_are_skipped_and_counted(tmp_path, encoders):
    shard = write_corrupt_shard(tmp_path / "c.tar", good=40)  # exactly one pass: 40 good records
    skipped = _count_skips(ShardSource([str(shard)], shuffle_buffer=1), 40, encoders)
    assert skipped == {"bad_image": 1, "truncated_image": 1, "empty_caption": 1, "missing_caption": 1,
                       "missing_image": 1}


def test_truncated_shard_is_skipped_and_counted(tmp_path, encoders):
    clean = write_shards(tmp_path / "clean", 20, per_shard=20, size=48)[0]
    broken = tmp_path / "broken.tar"
    with open(clean, "rb") as f:
        broken.write_bytes(f.read()[:20000])
    readable = sum(1 for r in ShardSource([str(broken)]).records() if r.error is None)
    assert 0 < readable < 20
    skipped = _count_skips(ShardSource([str(broken)], shuffle_buffer=1), readable, encoders)
    # the sample cut by the truncation keeps its image but lost its caption
    assert skipped == {"shard_error": 1, "missing_caption": 1}


def test_cli_reports_skips_and_aborts_above_the_limit(tmp_path, capsys):
    shard = write_corrupt_shard(tmp_path / "c.tar")
    extra = {"data.train": str(shard), "data.num_samples": 45, "data.batch_size": 8, "optim.steps": 5,
             "data.max_skip_fraction": 0.2}
    assert main(["train", *base_overrides(tmp_path / "ok", tmp_path, **extra)]) == 0
    assert "skipped records" in capsys.readouterr().out
    rows = [json.loads(l) for l in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/skipped"] == 5
    strict = {**extra, "data.max_skip_fraction": 0.01}
    assert main(["train", *base_overrides(tmp_path / "strict", tmp_path, **strict)]) == 2
    err = capsys.readouterr().err
    assert "were unusable" in err and "data.max_skip_fraction=0.01" in err and "bad_image: 1" in err


def test_expand_and_count_shards(tmp_path):
    paths = write_shards(tmp_path, 70, per_shard=32, size=16)
    assert expand_shards(str(tmp_path / "shard-{00000..00002}.tar")) == paths
    assert count_shard_samples(paths) == 70
    with pytest.raises(ValueError, match="not a local file"):
        count_shard_samples(["pipe:cat x.tar"])


def test_splits_are_disjoint_and_cover_a_pass(tmp_path):
    paths = write_shards(tmp_path / "few", 48, per_shard=48, size=16)  # 1 shard, 3 splits: split by sample
    many = write_shards(tmp_path / "many", 48, per_shard=8, size=16)  # 6 shards, 3 splits: split by shard
    for shards in (paths, many):
        src = ShardSource(shards, shuffle_buffer=4)
        keys = [[next(it).key for _ in range(16)] for it in (src.passes(0, s, 3, 0) for s in range(3))]
        flat = [k for ks in keys for k in ks]
        assert len(set(flat)) == 48
    csv = CsvSource(write_csv(tmp_path / "c", 30, size=16))
    keys = [[next(csv.passes(1, s, 3, 7)).key] for s in range(3)]
    assert len({k[0] for k in keys}) == 3


def test_epochs_reshuffle(tmp_path):
    src = CsvSource(write_csv(tmp_path / "c", 30, size=16))
    a = [next(src.passes(0, 0, 1, 0)).key for _ in range(1)]
    orders = [[r.key for _, r in zip(range(30), src.passes(e, 0, 1, 0))] for e in (0, 1)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1] and a[0] == orders[0][0]


def test_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        CsvSource(tmp_path / "none.csv")
    (tmp_path / "x.csv").write_text("path,text\na.jpg,hello\n")
    with pytest.raises(ValueError, match=r"column\(s\) \['filepath', 'title'\] not found"):
        CsvSource(tmp_path / "x.csv")


def test_paired_views_share_the_crop_and_dedupe_identical_sides():
    student, teacher = make_encoder(STUDENT), make_encoder(TEACHER)
    img = Image.new("RGB", (96, 96))
    for x in range(96):
        for y in range(96):
            img.putpixel((x, y), (x * 2, y * 2, 0))
    import random

    v = PairedViews(student, teacher, crop_scale=(0.3, 0.3))
    out = v(img, "a caption", random.Random(0))
    top, left, h, w = out.crop
    # both views show the same region: compare the mean red/green (x/y gradients) after un-normalising
    s = out.student_image * torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) \
        + torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    t = out.teacher_image * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) \
        + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    assert s[0].mean().item() == pytest.approx(t[0].mean().item(), abs=0.02)
    assert s[1].mean().item() == pytest.approx(t[1].mean().item(), abs=0.02)
    assert s[0].mean().item() == pytest.approx((left + w / 2) * 2 / 255, abs=0.05)
    assert out.student_text.shape == (32,) and out.teacher_text.shape == (24,)
    same = PairedViews(student, make_encoder(STUDENT))(img, "x", random.Random(0))
    assert same.teacher_image is same.student_image


def test_stream_batches_share_identical_images(tmp_path):
    student = make_encoder(STUDENT)
    src = CsvSource(write_csv(tmp_path / "c", 16, size=16))
    stream = DistillStream(src, PairedViews(student, make_encoder(STUDENT)), batch_size=8)
    batch, info = next(iter(make_loader(stream, 0)))
    assert batch.teacher_images is batch.student_images and info.consumed == 8


def test_data_position_round_trip():
    p = DataPosition(2, 5, {0: 40, 1: 32})
    assert DataPosition.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_sample_crop_touches_only_the_cpu_generator_and_keeps_its_boxes(monkeypatch):
    """A crop draw must not reseed the CUDA generators (torch.manual_seed does, and records a stack trace on a
    CUDA build each time), must restore the CPU generator, and must keep drawing the boxes reinforced data
    already stores (pinned here)."""
    import random

    from PIL import Image

    from clipkd.data.views import sample_crop

    cuda_seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda_seeds.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: cuda_seeds.append(seed))
    image = Image.new("RGB", (56, 40))
    before = torch.random.get_rng_state()
    boxes = [sample_crop(image, (0.5, 1.0), random.Random(seed)) for seed in range(3)]
    assert torch.equal(torch.random.get_rng_state(), before) and cuda_seeds == []
    assert boxes == [(0, 0, 40, 52), (7, 9, 32, 36), (1, 3, 37, 40)]  # as drawn before the fix


def test_csv_source_reads_each_row_as_dictreader_does_without_holding_the_rows(tmp_path):
    """Rows come back from a byte-range index exactly as csv.DictReader reads them (quoted newlines and quotes,
    CRLF, blank lines, short rows, bytes that are not UTF-8, a TSV), and memory holds 16 bytes per row."""
    import csv
    import tracemalloc

    from clipkd.data.sources import CsvSource

    text = ('filepath,title,extra\r\n'
            'a.jpg,"a caption\nover two lines",x\r\n'
            '\r\n'
            'b.jpg,"she said ""hi""",\r\n'
            'c.jpg,a 5" screen\r\n'
            'd.jpg\r\n'
            ',no image,y\n'
            'e.jpg,caf\xe9 \u00e9t\u00e9,z\n').encode("utf-8") + b'f.jpg,bad \xff byte,w\n'
    path = tmp_path / "rows.csv"
    path.write_bytes(text)
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        expected = list(csv.DictReader(f))
    source = CsvSource(path)
    assert len(source) == len(expected) == 7
    assert [source.row(i) for i in range(len(source))] == [dict(r, **{k: None for k in ("title", "extra")
                                                                       if k not in r}) for r in expected]
    assert [r.caption for r in source.records()][:2] == ["a caption\nover two lines", 'she said "hi"']
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("filepath\ttitle\nx.jpg\ta, b\n")
    assert CsvSource(tsv, separator="\t").row(0) == {"filepath": "x.jpg", "title": "a, b"}

    big = tmp_path / "big.csv"
    big.write_text("filepath,title\n" + "".join(f"images/{i:07d}.jpg,a caption for image number {i}\n"
                                                for i in range(100_000)))
    tracemalloc.start()
    try:
        source = CsvSource(big)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(source) == 100_000 and source.row(99_999)["title"] == "a caption for image number 99999"
    assert held < 2_500_000  # the index: 1.6 MB; the rows as Python objects would take ~25 MB
