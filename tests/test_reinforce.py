"""`clipkd reinforce`: stored views replay training's augmentation, stored embeddings are the teacher's,
builds resume and split over processes without changing a byte, and a stale cache is named.

Expected values are computed here independently: fingerprints and view seeds with hashlib, records read with
csv/tarfile, images decoded with PIL, embeddings from a teacher built here from the same weights file.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clipkd.cli import main
from clipkd.config import load_config
from clipkd.data.sources import CsvSource, ShardSource
from clipkd.data.synthetic import write_csv, write_shards
from clipkd.data.views import PairedViews, crop_region as replay, sample_crop
from clipkd.errors import ConfigError
from clipkd.build.reinforce import run_build
from clipkd.reinforce.check import fingerprint_problem, manifest_problems
from clipkd.reinforce.manifest import load_manifest, open_reader
from clipkd.reinforce.settings import BuildOptions
from clipkd.reinforce.views import view_boxes, view_seed
from conftest import STUDENT, TEACHER, make_encoder

SCALE = (0.5, 1.0)
SEED = 3


def expected_fingerprint(image: bytes, caption: str) -> bytes:
    text = caption.encode("utf-8")
    data = len(image).to_bytes(8, "big") + image + len(text).to_bytes(8, "big") + text
    return hashlib.sha256(data).digest()[:16]


def expected_view_seed(seed: int, fp: bytes, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"clipkd-view:{seed}:".encode() + fp + k.to_bytes(4, "big")).digest()[:8],
                          "big")


def _jpeg(seed: int, size=(56, 40)) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(module_tmp):
    """CSV (40 rows; row 3 a corrupt image, row 7 a missing file) and 3 shards (16 + 16 + 4 records; the
    last holds a corrupt image and a record without caption)."""
    root = module_tmp("reinforce-data")
    csv_path = Path(write_csv(root / "csv", 40, size=48))
    (root / "csv" / "images" / "000003.jpg").write_bytes(b"not a jpeg at all")
    (root / "csv" / "images" / "000007.jpg").unlink()
    write_shards(root / "wds", 32, per_shard=16, size=48)
    with tarfile.open(root / "wds" / "shard-00002.tar", "w") as tar:
        for key, files in [("a", {"jpg": _jpeg(1), "txt": b"a noisy picture"}),
                           ("b", {"jpg": b"broken bytes", "txt": b"broken"}),
                           ("c", {"jpg": _jpeg(2)}),
                           ("d", {"jpg": _jpeg(3, (40, 64)), "txt": b"a tall noisy picture"})]:
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return {"csv": csv_path, "webdataset": str(root / "wds" / "shard-{00000..00002}.tar")}


@pytest.fixture(scope="module")
def weights(module_tmp):
    """Two teacher weight files (different seeds)."""
    root = module_tmp("weights")
    out = []
    for seed in (2, 5):
        enc = make_encoder(TEACHER, seed=seed)
        path = root / f"teacher-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(path))
        out.append(path)
    return out


def overrides(data, weights_file, fmt="csv", **extra):
    items = {"run_dir": "unused", "seed": SEED, "device": "cpu", "student.model": STUDENT, "teacher.model": TEACHER,
             "teacher.pretrained": str(weights_file), "data.format": fmt, "data.train": str(data[fmt]),
             "data.crop_scale": list(SCALE), "optim.steps": 1, "logging.progress": False}
    items.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()]


@contextlib.contextmanager
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def build(out, data, weights_file, fmt="csv", views=2, dtype="fp32", rows=16, **kw):
    cfg = load_config(None, overrides(data, weights_file, fmt))
    with one_thread():
        return run_build(cfg, BuildOptions(out=out, views=views, dtype=dtype, batch_size=8, rows_per_shard=rows), **kw)


@pytest.fixture(scope="module")
def csv_fp32(data, weights, module_tmp):
    out = module_tmp("csv-fp32") / "cache"
    return out, build(out, data, weights[0])


@pytest.fixture(scope="module")
def wds_fp32(data, weights, module_tmp):
    out = module_tmp("wds-fp32") / "cache"
    return out, build(out, data, weights[0], fmt="webdataset")


@pytest.fixture(scope="module")
def csv_bf16(data, weights, module_tmp):
    out = module_tmp("csv-bf16") / "cache"
    return out, build(out, data, weights[0], dtype="bf16")


@pytest.fixture(scope="module")
def teacher(weights):
    enc = make_encoder(TEACHER, pretrained=str(weights[0]))
    return enc.eval()


def csv_records(path: Path):
    """(image bytes or b"", caption) per row, read with the csv module."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        file = path.parent / row["filepath"]
        out.append((file.read_bytes() if file.is_file() else b"", row["title"]))
    return out


def shard_records(pattern: str):
    """Per shard: (image bytes, caption or None) per record, read with tarfile."""
    shards = sorted(Path(pattern.split("shard-")[0]).glob("shard-*.tar"))
    out = []
    for shard in shards:
        records: dict = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.rsplit(".", 1)
                records.setdefault(key, {})[ext] = tar.extractfile(m).read()
        out.append([(r.get("jpg", b""), r["txt"].decode() if "txt" in r else None) for r in records.values()])
    return out


def sidecars(out: Path) -> list[dict]:
    return [load_file(str(p)) for p in sorted(out.glob("sidecar-*.safetensors"))]


def reference_row(teacher, image_bytes: bytes, caption: str, views: int):
    """(crop boxes, image embeddings [K, D], text embedding [D]) computed here, from PIL and the teacher."""
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    fp = expected_fingerprint(image_bytes, caption)
    boxes = [sample_crop(image, SCALE, random.Random(expected_view_seed(SEED, fp, k))) for k in range(views)]
    crops = [image.crop((left, top, left + w, top + h)) for top, left, h, w in boxes]
    with torch.no_grad(), one_thread():
        img = teacher.encode_image(torch.stack([teacher.preprocess_val(c) for c in crops]), normalize=True)
        txt = teacher.encode_text(teacher.tokenizer([caption]), normalize=True)[0]
    return boxes, img, txt


def check_against_reference(stored: dict, records: list, teacher, tol: dict) -> None:
    assert stored["usable"].shape == (len(records),)
    for i, (image_bytes, caption) in enumerate(records):
        assert bytes(stored["fingerprint"][i].tolist()) == expected_fingerprint(image_bytes, caption or ""), i
        try:
            boxes, img, txt = reference_row(teacher, image_bytes, caption, 2) if caption else (None,) * 3
        except Exception:  # noqa: BLE001 - not an image: the row must be marked unusable
            boxes = None
        if boxes is None:
            assert stored["usable"][i] == 0 and not stored["teacher0.image"][i].any(), i
            assert not stored["teacher0.text"][i].any() and not stored["crop"][i].any(), i
            continue
        assert stored["usable"][i] == 1, i
        assert stored["crop"][i].tolist() == [list(b) for b in boxes], i
        torch.testing.assert_close(stored["teacher0.image"][i], img.to(stored["teacher0.image"].dtype), **tol)
        torch.testing.assert_close(stored["teacher0.text"][i], txt.to(stored["teacher0.text"].dtype), **tol)


def test_csv_row_ranges_and_one_shards_records_equal_the_sources(data):
    every = list(CsvSource(data["csv"]).records())
    assert [r.origin for r in every] == [(0, i) for i in range(40)]
    assert list(CsvSource(data["csv"]).records(5, 12)) == every[5:12]
    shards = ShardSource(data["webdataset"])
    per_shard = [list(shards.shard_records(i)) for i in range(3)]
    assert [len(p) for p in per_shard] == [16, 16, 4]
    assert [r for p in per_shard for r in p] == list(shards.records())


# --- augmentation records ---------------------------------------------------------------------------------


def test_replay_then_preprocess_equals_paired_views_for_the_same_box(student_encoder, teacher_encoder):
    image = Image.open(io.BytesIO(_jpeg(7, (71, 45)))).convert("RGB")  # not square: top/left cannot swap
    views = PairedViews(student_encoder, teacher_encoder, SCALE)
    for s in range(5):
        produced = views(image, "a caption", random.Random(s))
        box = sample_crop(image, SCALE, random.Random(s))
        top, left, h, w = box
        assert produced.crop == box and (h, w) != (image.height, image.width)
        by_hand = image.crop((left, top, left + w, top + h))
        for pp, side in ((student_encoder.preprocess_val, produced.student_image),
                         (teacher_encoder.preprocess_val, produced.teacher_image)):
            assert torch.equal(pp(replay(image, box)), side)
            assert torch.equal(pp(by_hand), side)


def test_view_seed_is_the_documented_hash_and_boxes_follow_it():
    fp = bytes(range(16))
    assert view_seed(7, fp, 3) == expected_view_seed(7, fp, 3)
    assert len({view_seed(s, f, k) for s in (0, 1) for f in (fp, fp[::-1]) for k in (0, 1)}) == 8
    image = Image.open(io.BytesIO(_jpeg(8))).convert("RGB")
    boxes = view_boxes(image, SCALE, 7, fp, 3)
    assert boxes == [sample_crop(image, SCALE, random.Random(expected_view_seed(7, fp, k))) for k in range(3)]
    assert view_boxes(image, SCALE, 7, fp, 3) == boxes  # drawing again (another order, process) changes nothing
    assert view_boxes(image, None, 7, fp, 1) == [(0, 0, image.height, image.width)]
    assert torch.equal(torch.tensor(list(replay(image, boxes[0]).getdata())),
                       torch.tensor(list(image.crop((boxes[0][1], boxes[0][0], boxes[0][1] + boxes[0][3],
                                                     boxes[0][0] + boxes[0][2])).getdata())))
    with pytest.raises(ValueError, match="one \\(un-augmented\\) view per sample, not 2"):
        view_boxes(image, None, 7, fp, 2)


# --- stored values ----------------------------------------------------------------------------------------


def test_csv_build_stores_the_teachers_embeddings_of_the_replayed_views(csv_fp32, data, teacher):
    out, result = csv_fp32
    records = csv_records(data["csv"])
    stored = sidecars(out)
    assert [s["usable"].shape[0] for s in stored] == [16, 16, 8]
    merged = {k: torch.cat([s[k] for s in stored]) for k in stored[0] if k != "teacher0.scale"}
    check_against_reference(merged, records, teacher, {"rtol": 0, "atol": 1e-6})
    assert merged["usable"][[3, 7]].tolist() == [0, 0] and int(merged["usable"].sum()) == 38
    manifest = result.manifest
    assert manifest["unusable"] == {"bad_image": 1, "missing_file": 1} and manifest["usable"] == 38
    assert [e["unusable"] for e in manifest["data"]["sidecars"]] == [{"bad_image": 1, "missing_file": 1}, {}, {}]
    assert stored[0]["teacher0.scale"].item() == pytest.approx(teacher.scale().item(), rel=1e-6)


def test_the_teacher_sees_a_batch_of_records_worth_of_views_per_pass(teacher_encoder, monkeypatch):
    """On a CPU, K views of b records go through the image tower b at a time (one pass of all b x K ran at half
    the speed per image); each row's embeddings are those of its own views, in order."""
    from clipkd.reinforce.encode import encode_rows
    from clipkd.reinforce.rows import PreparedRow

    teacher, views = teacher_encoder.eval(), 3
    rows = [PreparedRow(bytes(16), images=[torch.randn(views, 3, *teacher.image_size)],
                        tokens=[teacher.tokenize([f"caption {i}"])[0]]) for i in range(3)]
    rows.insert(1, PreparedRow(bytes(16), reason="bad_image"))
    own, passes = teacher.encode_image, []
    monkeypatch.setattr(teacher, "encode_image", lambda x, normalize=True: passes.append(len(x)) or own(x, normalize))
    [(img, txt)] = encode_rows(rows, [teacher], torch.device("cpu"))
    assert passes == [4, 4, 1]  # 9 views of the 3 usable rows, 4 rows in the batch: passes cross rows
    with torch.no_grad():
        expected = torch.stack([own(r.images[0], True) for r in rows if r.reason is None])  # a pass per row
        expected_text = torch.cat([teacher.encode_text(r.tokens[0][None], normalize=True)
                                   for r in rows if r.reason is None])
    torch.testing.assert_close(img, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(txt, expected_text, rtol=0, atol=1e-5)


def test_webdataset_build_one_sidecar_per_shard_in_file_order(wds_fp32, data, teacher):
    out, result = wds_fp32
    per_shard = shard_records(data["webdataset"])
    stored = sidecars(out)
    assert [s["usable"].shape[0] for s in stored] == [16, 16, 4]
    for shard, records in zip(stored, per_shard):
        check_against_reference(shard, records, teacher, {"rtol": 0, "atol": 1e-6})
    assert stored[2]["usable"].tolist() == [1, 0, 0, 1]
    assert result.manifest["unusable"] == {"bad_image": 1, "missing_caption": 1}
    sources = [e["source"] for e in result.manifest["data"]["sidecars"]]
    assert [Path(s).name for s in sources] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]


def test_truncated_shard_keeps_the_rows_before_the_break_and_counts_it(data, weights, tmp_path):
    intact = Path(data["webdataset"].split("{")[0] + "00000.tar")
    with tarfile.open(intact) as tar:
        members = tar.getmembers()
    (tmp_path / "cut").mkdir()
    cut = tmp_path / "cut" / "shard-00000.tar"
    cut.write_bytes(intact.read_bytes()[:members[16].offset_data + 100])  # inside record 5's image
    started = set()
    with contextlib.suppress(tarfile.TarError, OSError), tarfile.open(cut) as tar:
        for m in tar:
            started.add(m.name.rsplit(".", 1)[0])
    result = build(tmp_path / "cache", {**data, "webdataset": str(cut)}, weights[0], fmt="webdataset", views=1)
    (stored,) = sidecars(tmp_path / "cache")
    assert stored["usable"].shape[0] == len(started) == 6  # rows are records: the error itself is no row
    assert stored["usable"][:5].tolist() == [1] * 5 and result.manifest["usable"] == 5
    first = shard_records(data["webdataset"])[0][:5]
    assert [bytes(f.tolist()) for f in stored["fingerprint"][:5]] == [expected_fingerprint(*r) for r in first]
    assert result.manifest["unusable"].get("shard_error", 0) >= 1


def test_bf16_storage_within_bf16_tolerance(csv_bf16, data, teacher):
    out, _ = csv_bf16
    stored = sidecars(out)
    assert stored[0]["teacher0.image"].dtype == torch.bfloat16
    merged = {k: torch.cat([s[k] for s in stored]) for k in stored[0] if k != "teacher0.scale"}
    check_against_reference(merged, csv_records(data["csv"]), teacher, {"rtol": 2 ** -8, "atol": 2 ** -9})


def test_reader_returns_one_record_without_loading_the_file(csv_fp32):
    out, _ = csv_fp32
    reader = open_reader(out, max_open=1)
    full = load_file(str(out / "sidecar-00001.safetensors"))
    assert len(reader) == 3 and reader.num_records(2) == 8 and reader.meta(1)["source"] == "rows 16-31"
    for sidecar, index in ((0, 5), (1, 3), (2, 7), (1, 0)):
        rec = reader.record(sidecar, index)
        ref = load_file(str(out / f"sidecar-{sidecar:05d}.safetensors"))
        assert rec.fingerprint == bytes(ref["fingerprint"][index].tolist()) and rec.usable
        assert rec.crops == [tuple(b) for b in ref["crop"][index].tolist()]
        assert torch.equal(rec.images[0], ref["teacher0.image"][index])
        assert torch.equal(rec.texts[0], ref["teacher0.text"][index])
    assert torch.equal(reader.record(1, 3).images[0], full["teacher0.image"][3])
    assert not reader.record(0, 3).usable
    with pytest.raises(IndexError, match="holds 8"):
        reader.record(2, 8)


def test_views_do_not_depend_on_the_sidecar_layout(csv_fp32, data, weights, tmp_path):
    """One sidecar of 40 rows instead of 16 + 16 + 8: the same crops, fingerprints and embeddings per row."""
    one = build(tmp_path / "one", data, weights[0], rows=40)
    assert len(one.manifest["data"]["sidecars"]) == 1
    single = sidecars(tmp_path / "one")[0]
    split = sidecars(csv_fp32[0])
    for key in ("fingerprint", "usable", "crop", "teacher0.image", "teacher0.text"):
        assert torch.equal(single[key], torch.cat([s[key] for s in split])), key


# --- resume, settings, processes ----------------------------------------------------------------------------


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


class Stop(Exception):
    pass


def test_interrupted_build_resumes_to_identical_files(csv_bf16, data, weights, tmp_path):
    reference, _ = csv_bf16
    out = tmp_path / "cache"

    def stop(index):
        raise Stop(index)

    with pytest.raises(Stop):
        build(out, data, weights[0], dtype="bf16", after_sidecar=stop)
    assert sorted(p.name for p in out.glob("sidecar-*")) == ["sidecar-00000.safetensors"]
    assert not (out / "manifest.json").exists()
    (out / ".tmp-sidecar-00001.safetensors-99999").write_bytes(b"left by a crash")  # removed on resume
    resumed = build(out, data, weights[0], dtype="bf16")
    assert resumed.built == [1, 2] and resumed.skipped == 1
    assert _files(out) == _files(reference)
    (out / "sidecar-00001.safetensors").unlink()  # a lost sidecar is rebuilt, the others are kept
    (out / "manifest.json").unlink()
    again = build(out, data, weights[0], dtype="bf16")
    assert again.built == [1] and _files(out) == _files(reference)


def test_a_shard_replaced_under_its_name_is_built_again_and_then_trains(data, weights, tmp_path):
    """A re-run after a shard was rewritten in place (the demo rewrites its shards when its splits change) must not
    call the stale sidecar finished: training from it would be refused."""
    from clipkd.commands.train import make_trainer

    shards = tmp_path / "wds"
    shutil.copytree(Path(data["webdataset"]).parent, shards)
    local = {**data, "webdataset": str(shards / "shard-{00000..00002}.tar")}
    out = tmp_path / "cache"
    assert build(out, local, weights[0], fmt="webdataset", views=1).built == [0, 1, 2]
    with tarfile.open(shards / "shard-00001.tar", "a") as tar:  # the same name, new bytes
        info = tarfile.TarInfo("zz.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"extra"))
    again = build(out, local, weights[0], fmt="webdataset", views=1)
    assert again.built == [1] and again.skipped == 2
    make_trainer(load_config(None, overrides(local, weights[0], "webdataset", **{
        "run_dir": str(tmp_path / "run"), "distill.teacher_cache": str(out), "data.max_skip_fraction": 1.0})))


@pytest.mark.parametrize("change, named", [
    ({"views": 3}, "views: 2 -> 3"),
    ({"dtype": "fp16"}, "dtype: 'bf16' -> 'fp16'"),
    ({"weights": 1}, "teachers.0.weights: 'sha256:"),
])
def test_rerun_with_other_settings_is_refused(csv_bf16, data, weights, change, named):
    out, _ = csv_bf16
    before = _files(out)
    kw = {"views": change.get("views", 2), "dtype": change.get("dtype", "bf16")}
    with pytest.raises(ConfigError, match="holds a reinforce build with other settings") as err:
        build(out, data, weights[change.get("weights", 0)], **kw)
    assert named in str(err.value)
    assert _files(out) == before


def test_nproc_refuses_another_builds_folder_before_launching(csv_bf16, data, weights, capsys):
    argv = ["--nproc", "2", "--views", "3", "--out", str(csv_bf16[0]), *overrides(data, weights[0])]
    code, err = _cli(capsys, *argv)
    assert code == 2 and "holds a reinforce build with other settings" in err and "views: 2 -> 3" in err


def test_two_processes_equal_one_process(csv_fp32, data, weights, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "clipkd", "reinforce", "--nproc", "2", "--views", "2", "--out", str(out),
           "--dtype", "fp32", "--batch-size", "8", "--rows-per-shard", "16", *overrides(data, weights[0])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done: 3 sidecars, 40 records (38 usable" in done.stdout
    one, two = sidecars(csv_fp32[0]), sidecars(out)
    for a, b in zip(one, two, strict=True):
        for key in ("fingerprint", "usable", "crop", "teacher0.image", "teacher0.text", "teacher0.scale"):
            assert torch.equal(a[key], b[key]), key  # exact: the same batches through the same teacher
    assert load_manifest(out) == csv_fp32[1].manifest


# --- stale caches -------------------------------------------------------------------------------------------


def _problems(manifest, data, weights_file, fmt="csv", views=2, **extra):
    cfg = load_config(None, overrides(data, weights_file, fmt, **extra))
    return manifest_problems(manifest, [cfg.teacher], cfg.data, views)


def test_manifest_problems_names_each_change(csv_fp32, data, weights):
    manifest = load_manifest(csv_fp32[0])
    assert _problems(manifest, data, weights[0]) == []
    (weights_problem,) = _problems(manifest, data, weights[1])
    assert weights_problem.startswith(f"teacher 0 ({TEACHER}): weights: sha256:")
    mean = _problems(manifest, data, weights[0], **{"teacher.image_mean": [0.5, 0.5, 0.5]})
    assert "image_mean: None in the cache, [0.5, 0.5, 0.5] now" in mean[0]
    assert "built with preprocessing Compose(" in mean[1] and "0.485" in mean[1]
    assert _problems(manifest, data, weights[0], views=3) == ["views: the cache holds 2 per sample, 3 asked for"]
    assert _problems(manifest, data, weights[0], **{"data.crop_scale": [0.9, 1.0]}) == [
        "data.crop_scale: [0.5, 1.0] in the cache, [0.9, 1.0] now"]


def test_edited_csv_row_is_named(csv_fp32, data, weights):
    manifest = load_manifest(csv_fp32[0])
    edited = data["csv"].with_name("edited.csv")
    with data["csv"].open(newline="") as f:
        rows = list(csv.reader(f))
    rows[1 + 20][1] = "an edited " + rows[1 + 20][1]  # row 20: sidecar 1, record 4
    with edited.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (problem,) = _problems(manifest, {**data, "csv": edited}, weights[0])
    assert problem.startswith(f"data.train: CSV {edited} changed since the cache was built")
    reader = open_reader(csv_fp32[0], manifest)
    rows = list(CsvSource(edited).records(19, 22))
    assert fingerprint_problem(reader, 1, 3, rows[0]) is None and fingerprint_problem(reader, 1, 5, rows[2]) is None
    message = fingerprint_problem(reader, 1, 4, rows[1])
    assert message.startswith("row 20: ") and "sidecar 1, record 4" in message


def test_replaced_or_missing_shard_is_named(wds_fp32, data, weights, tmp_path):
    manifest = load_manifest(wds_fp32[0])
    assert _problems(manifest, data, weights[0], "webdataset") == []
    shard = Path(manifest["data"]["sidecars"][1]["source"])
    original = shard.read_bytes()
    other = write_shards(tmp_path / "other", 16, per_shard=16, size=48, seed=9)[0]
    try:
        shutil.copyfile(other, shard)
        assert _problems(manifest, data, weights[0], "webdataset") == [
            f"data shard {shard}: replaced or changed since the cache was built (shard 1: {shard})"]
    finally:
        shard.write_bytes(original)
    fewer = {**data, "webdataset": data["webdataset"].replace("00002", "00001")}
    (problem,) = _problems(manifest, fewer, weights[0], "webdataset")
    assert problem == "data.train: 2 shards now, the cache mirrors 3"


# --- command line -------------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main(["reinforce", *argv])
    return code, capsys.readouterr().err


def test_cli_refuses_bad_requests_before_any_compute(data, weights, tmp_path, capsys):
    base = ["--views", "2", "--out", str(tmp_path / "out")]
    code, err = _cli(capsys, *base, *overrides(data, weights[0], **{"data.crop_scale": None}))
    assert code == 2 and "--views 2: data.crop_scale is null" in err
    no_teacher = [o for o in overrides(data, weights[0], **{"distill.recipe": "baseline"}) if
                  not o.startswith("teacher.")]
    code, err = _cli(capsys, *base, *no_teacher)
    assert code == 2 and "teacher: required by `clipkd reinforce`" in err
    code, err = _cli(capsys, *base, *overrides(data, weights[0], **{"data.train": str(tmp_path / "no.csv")}))
    assert code == 2 and f"data.train: CSV file not found: {tmp_path / 'no.csv'}" in err
    code, err = _cli(capsys, *base, *overrides(data, tmp_path / "nothing.safetensors"))
    assert code == 2 and "teacher.pretrained: checkpoint file not found" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, err = _cli(capsys, *base, *overrides(data, weights[0]))
    assert code == 2 and "exists and is not a reinforce build folder" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit):
        main(["reinforce", "--views", "0", "--out", "x"])
    assert "argument --views: must be >= 1, got 0" in capsys.readouterr().err


def test_help_and_config_errors_load_no_torch(tmp_path):
    from test_startup import run_clipkd

    rc, heavy, out, _ = run_clipkd(tmp_path, "reinforce", "--help")
    assert rc == 0 and heavy == [] and "(default: bf16)" in " ".join(out.split())
    rc, heavy, _, err = run_clipkd(tmp_path, "reinforce", "--views", "3", "--out", "o", "run_dir=x",
                                   "student.model=m", "teacher.model=t", "data.format=csv", "data.train=d.csv",
                                   "optim.steps=1", "data.crop_scale=null")
    assert rc == 2 and heavy == [] and "--views 3: data.crop_scale is null" in err


def test_an_unfinished_build_is_named_once_by_the_caller(tmp_path):
    """The run's check prefixes the folder; the problem itself must not repeat it."""
    from clipkd.reinforce.check import cache_problems

    manifest, problems = cache_problems(tmp_path, [], None, None)
    assert manifest is None and problems == [
        "not a `clipkd reinforce` build (no manifest.json); make one with `clipkd reinforce -c run.yaml --views K "
        "--out DIR`"]
    assert str(tmp_path) not in problems[0]


@pytest.mark.parametrize("fixture", ["csv_fp32", "csv_bf16"])
def test_the_reader_gives_every_row_as_safetensors_loads_it(fixture, request):
    """The reader's memory-mapped rows (offsets from each file's header) equal the tensors safetensors loads whole,
    every field, every row, with and without a view, in a random order over more sidecars than it keeps open."""
    import random

    from clipkd.reinforce.format import SidecarReader

    out, _ = request.getfixturevalue(fixture)
    files = sorted(p.name for p in out.glob("sidecar-*.safetensors"))
    loaded = sidecars(out)
    assert len(files) > 2
    reader = SidecarReader(out, files, max_open=2)
    cells = [(s, name, i) for s, tensors in enumerate(loaded) for name, t in tensors.items() if name.endswith(
        ("fingerprint", "usable", "crop", ".image", ".text")) for i in range(t.shape[0])]
    for s, name, i in random.Random(0).sample(cells, len(cells)):
        whole = loaded[s][name]
        got = reader.row(s, name, i)
        assert got.dtype == whole.dtype and torch.equal(got, whole[i]), (s, name, i)
        if whole.dim() >= 3:
            for k in range(whole.shape[1]):
                assert torch.equal(reader.row(s, name, i, k), whole[i, k])
    with pytest.raises(IndexError):
        reader.row(0, "usable", loaded[0]["usable"].shape[0])
