"""Fashion-MNIST demo data: idx loading, caption templates, splits and cached shard writing."""

from __future__ import annotations

import gzip
import itertools
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clipkd.data.sources import ShardSource
from clipkd.data.decode import open_image
from clipkd.demo import fmnist
from clipkd.demo.fmnist import (CLASSNAMES, DEFAULT_SOURCE, PROMPT_TEMPLATES, TEST_PAIR_TEMPLATES, TEST_TEMPLATES,
                                TRAIN_PAIR_TEMPLATES, TRAIN_TEMPLATES, SourceMissing, build_splits, load_split,
                                make_split, prepare_dataset)

needs_source = pytest.mark.skipif(not DEFAULT_SOURCE.is_dir(), reason="apt-get install -y dataset-fashion-mnist")


@pytest.fixture(scope="module")
def t10k():
    if not DEFAULT_SOURCE.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    return load_split(None, "test")


def numbered(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic items whose pixels all equal index + 1, so rendered samples reveal which item they used."""
    images = np.repeat(np.arange(1, n + 1, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
    return images, np.arange(n, dtype=np.int64) % 10


def used(sample: fmnist.Sample) -> list[int]:
    px = np.asarray(sample.image)[..., 0]
    return [int(px[28, 14]) - 1, int(px[28, 42]) - 1] if sample.scene else [int(px[28, 28]) - 1]


def train_captions() -> set[str]:
    """Every caption the train templates can produce."""
    singles = {t.format(c) for t in TRAIN_TEMPLATES for c in CLASSNAMES}
    pairs = {t.format(a=a, b=b) for t in TRAIN_PAIR_TEMPLATES for a in CLASSNAMES for b in CLASSNAMES}
    return singles | pairs


@needs_source
def test_load_split_shapes_and_labels():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_split(DEFAULT_SOURCE, split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert set(np.unique(labels)) == set(range(10))


def write_idx(path: Path, magic: int, dims: tuple[int, ...], body: bytes, gz: bool) -> None:
    data = struct.pack(f">I{len(dims)}I", magic, *dims) + body
    path.write_bytes(gzip.compress(data) if gz else data)


def test_plain_idx_files_and_bad_magic(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, (2, 28, 28), bytes(2 * 784), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, (2,), bytes([3, 9]), gz=True)
    images, labels = load_split(tmp_path, "test")
    assert images.shape == (2, 28, 28) and labels.tolist() == [3, 9]
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 2049, (2, 28, 28), bytes(2 * 784), gz=False)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        load_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, (3, 28, 28), bytes(2 * 784), gz=False)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*size"):
        load_split(tmp_path, "test")


def test_missing_source_says_how_to_get_it(tmp_path):
    with pytest.raises(SourceMissing) as info:
        load_split(tmp_path / "nowhere", "train")
    assert isinstance(info.value, FileNotFoundError)
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value) and "--source" in str(info.value)


def test_template_sets_are_disjoint():
    assert len(TRAIN_TEMPLATES) >= 8 and len(TEST_TEMPLATES) >= 4 and len(PROMPT_TEMPLATES) >= 3
    assert not set(TRAIN_TEMPLATES) & (set(TEST_TEMPLATES) | set(PROMPT_TEMPLATES))
    assert not set(TRAIN_PAIR_TEMPLATES) & set(TEST_PAIR_TEMPLATES)
    assert all("{}" in t for t in TRAIN_TEMPLATES + TEST_TEMPLATES + PROMPT_TEMPLATES)
    assert all("{a}" in t and "{b}" in t for t in TRAIN_PAIR_TEMPLATES + TEST_PAIR_TEMPLATES)


def split(images, labels, seed=0, **kw):
    args = dict(count=40, scene_fraction=0.3, templates=TRAIN_TEMPLATES, pair_templates=TRAIN_PAIR_TEMPLATES,
                key_prefix="x")
    return make_split(images, labels, seed=seed, **{**args, **kw})


def test_make_split_is_deterministic(t10k):
    a, b, c = split(*t10k), split(*t10k), split(*t10k, seed=1)
    assert [(s.key, s.caption, s.label) for s in a] == [(s.key, s.caption, s.label) for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert [s.caption for s in a] != [s.caption for s in c]
    assert len({s.key for s in a}) == len(a)


def test_scenes_fraction_order_and_images(t10k):
    samples = split(*t10k, count=100, scene_fraction=0.3)
    scenes = [s for s in samples if s.scene is not None]
    assert len(scenes) == 30
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (56, 56)
        if s.scene is None:
            assert 0 <= s.label < 10 and s.caption in {t.format(CLASSNAMES[s.label]) for t in TRAIN_TEMPLATES}
            continue
        a, b = s.scene
        assert s.label == -1 and a != b
        assert s.caption in {t.format(a=CLASSNAMES[a], b=CLASSNAMES[b]) for t in TRAIN_PAIR_TEMPLATES}
        assert s.caption not in {t.format(a=CLASSNAMES[b], b=CLASSNAMES[a]) for t in TRAIN_PAIR_TEMPLATES}
        px = np.asarray(s.image)
        assert px[:, :28].any() and px[:, 28:].any() and not px[:14].any() and not px[42:].any()


def test_make_split_draws_without_replacement_from_start():
    images, labels = numbered(40)
    samples = split(images, labels, count=20, scene_fraction=0.5, start=10)
    items = [i for s in samples for i in used(s)]
    assert sorted(items) == list(range(10, 40))  # 10 singles + 10 scenes use the 30 pool items once each
    for s in samples:
        idx = used(s)
        assert (s.label == labels[idx[0]]) if s.scene is None else s.scene == tuple(labels[idx].tolist())
    assert len(split(images, labels, count=50, scene_fraction=0.0, start=35)) == 50  # pool reused when exhausted


@needs_source
def test_build_splits_hold_out_templates_and_ranges():
    splits = build_splits(None, train=64, val=16, test=32, seed=0, teacher=200, test_zeroshot=40)
    assert {k: len(v) for k, v in splits.items()} == {"train": 64, "teacher": 200, "val": 16, "val_zeroshot": 16,
                                                      "test": 32, "test_zeroshot": 40}
    seen = train_captions()
    assert all(s.caption in seen for s in splits["teacher"]) and any(s.scene for s in splits["teacher"])
    assert {s.key for s in splits["teacher"]}.isdisjoint(s.key for s in splits["train"])
    for name in ("val", "val_zeroshot", "test", "test_zeroshot"):
        assert not {s.caption for s in splits[name]} & seen, name
    assert all(s.caption in seen for s in splits["train"])
    for name in ("val_zeroshot", "test_zeroshot"):  # single items, a class each: zero-shot benchmarks
        assert all(s.scene is None and 0 <= s.label < 10 for s in splits[name]), name
    assert any(s.scene for s in splits["val"]) and any(s.scene for s in splits["test"])


def read_members(shard: str) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    with tarfile.open(shard) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            members.setdefault(key, set()).add(ext)
    return members


@needs_source
def test_prepare_dataset_writes_readable_shards_and_caches(tmp_path, monkeypatch):
    out = tmp_path / "fmnist"
    shards = prepare_dataset(out, None, train=64, val=16, test=32, seed=0, teacher=100)
    assert set(shards) == {"train", "teacher", "val", "val_zeroshot", "test", "test_zeroshot"}
    assert len(ShardSource(shards["teacher"], shuffle_buffer=1)) == 100
    source = ShardSource(shards["train"], shuffle_buffer=1)
    assert len(source) == 64
    for record in itertools.islice(source.passes(0, 0, 1, 0), 5):
        assert open_image(record.image).size == (56, 56) and record.caption
    members = read_members(shards["test"][0])
    assert {"png", "txt"} <= set.intersection(*members.values())
    assert any("cls" not in exts for exts in members.values()) and any("cls" in e for e in members.values())
    assert all("cls" in exts for exts in read_members(shards["test_zeroshot"][0]).values())
    assert (out / "classnames.txt").read_text().splitlines() == CLASSNAMES
    assert (out / "prompts.txt").read_text().splitlines() == PROMPT_TEMPLATES
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["seed"] == 0 and manifest["params"]["train"] == 64

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(fmnist, "build_splits", fail)
    assert prepare_dataset(out, None, train=64, val=16, test=32, seed=0, teacher=100) == shards
    with pytest.raises(AssertionError, match="rebuilt"):
        prepare_dataset(out, None, train=64, val=16, test=32, seed=1, teacher=100)  # other parameters: rebuild
    assert not (out / "manifest.json").exists()  # the failed build left no manifest behind


@needs_source
def test_the_teacher_split_covers_every_training_item_but_vals_and_the_zero_shot_test_all_of_t10k():
    """The defaults the full demo uses: teacher pairs = every training item not held out for val (each once as a
    single item or in a scene, over the pool), the zero-shot test = each of the 10,000 t10k items once."""
    splits = build_splits(None, train=8, val=500, test=8, seed=0, test_zeroshot=10000)
    assert len(splits["teacher"]) == 60000 - 500
    assert len(splits["test_zeroshot"]) == 10000
    _, labels = load_split(None, "test")
    counts = np.bincount([s.label for s in splits["test_zeroshot"]], minlength=10)
    assert counts.tolist() == np.bincount(labels, minlength=10).tolist()  # every item once: 1000 per class
