"""`clipkd eval` with bad inputs: unusable images are skipped, counted and named; model-hub failures, unknown
models and missing paths end as one clean line, before (or instead of) a model build."""

import io
import json
import re
import shutil
import tarfile

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipkd.cli import main
from clipkd.config import BenchmarkSpec
from clipkd.eval.runner import Benchmark
from conftest import STUDENT, make_encoder
from test_eval import COLOURS, ColourEncoder, colour_folder  # noqa: F401 - colour_folder is a fixture

GARBAGE = b"this is not an image at all"


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()[:120]  # a JPEG header, then nothing


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), rgb).save(buf, "PNG")
    return buf.getvalue()


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"(WARNING|INFO) ", line)]
    assert len(lines) == 1 and lines[0].startswith("clipkd: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def student_weights(module_tmp):
    """The tiny student's weights as a file: every `clipkd eval` call of a test gets the same model."""
    path = module_tmp("weights") / "student.safetensors"
    save_file({k: v.contiguous() for k, v in make_encoder(STUDENT, seed=3).model.state_dict().items()}, str(path))
    return str(path)


def _eval(argv, out):
    assert main(["eval", *argv, "--out", str(out)]) == 0
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


# --- unusable images --------------------------------------------------------------------------------------------


def test_zeroshot_folder_skips_and_names_unusable_images(colour_folder, caplog):  # noqa: F811
    """The colour folder has 13 usable images, 12 classified right by hand (the blue square filed under red is
    wrong); two broken files are skipped, counted and named, and do not change the metrics."""
    (colour_folder / "red" / "broken.jpg").write_bytes(_truncated_jpeg())
    (colour_folder / "green" / "notes.png").write_bytes(GARBAGE)
    spec = BenchmarkSpec(name="colours", task="zeroshot", format="folder", path=str(colour_folder), batch_size=4,
                         workers=2)
    bench = Benchmark(spec)
    with caplog.at_level("WARNING", logger="clipkd.eval.runner"):
        m = bench.evaluate(ColourEncoder())
    assert m["acc1"] == pytest.approx(12 / 13)
    assert m["mean_per_class_recall"] == pytest.approx((4 / 5 + 1 + 1) / 3)
    assert bench.images == 13
    assert bench.skipped.to_dict() == {
        "count": 2, "reasons": {"bad_image": 1, "truncated_image": 1},
        "examples": [{"image": str(colour_folder / "green" / "notes.png"), "reason": "bad_image"},
                     {"image": str(colour_folder / "red" / "broken.jpg"), "reason": "truncated_image"}]}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "skipped 2 of 15 images" in warnings[0] and str(colour_folder / "red" / "broken.jpg") in warnings[0]
    bench.evaluate(ColourEncoder())
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1  # warned once, not per evaluation


def test_cli_zeroshot_metrics_are_those_of_the_usable_images(colour_folder, student_weights, tmp_path,  # noqa: F811
                                                             caplog):
    """A folder with a broken image gives exactly the metrics of the same folder without it."""
    clean = tmp_path / "clean" / "colours"
    shutil.copytree(colour_folder, clean)
    (colour_folder / "blue" / "zz-broken.jpg").write_bytes(_truncated_jpeg())
    common = ["--model", STUDENT, "--pretrained", student_weights, "--batch-size", "1"]  # the same computation
    with caplog.at_level("WARNING", logger="clipkd.eval.runner"):
        broken = _eval(common + ["--zeroshot", f"folder:{colour_folder}"], tmp_path / "broken")
    expected = _eval(common + ["--zeroshot", f"folder:{clean}"], tmp_path / "clean-out")
    assert broken["metrics"] == pytest.approx(expected["metrics"])
    assert broken["images"] == expected["images"] == 13
    assert broken["skipped"]["count"] == 1
    assert broken["skipped"]["examples"] == [{"image": str(colour_folder / "blue" / "zz-broken.jpg"),
                                              "reason": "truncated_image"}]
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]
    assert len(warning) == 1 and str(colour_folder / "blue" / "zz-broken.jpg") in warning[0]


def _colour_square(path, colour):
    Image.new("RGB", (20, 20), COLOURS[colour]).save(path)


def test_retrieval_csv_drops_an_unusable_image_with_its_captions(tmp_path):
    """Three colour squares, two captions each, all retrieved at R@1 by the colour encoder. The broken fourth
    image's captions say "red": were they kept, their text->image queries would miss."""
    rows = ["img,text"]
    for colour in COLOURS:
        _colour_square(tmp_path / f"{colour}.png", colour)
        rows += [f"{colour}.png,a {colour} square", f"{colour}.png,{colour}"]
    (tmp_path / "broken.png").write_bytes(GARBAGE)
    rows += ["broken.png,a red thing", "broken.png,red again"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    spec = BenchmarkSpec(name="colours", task="retrieval", format="csv", path=str(tmp_path / "pairs.csv"),
                         image_key="img", caption_key="text", batch_size=2)
    bench = Benchmark(spec)
    m = bench.evaluate(ColourEncoder())
    assert {k: v for k, v in m.items()} == {**{f"{d}_retrieval_recall@{k}": 1.0 for d in ("image", "text")
                                               for k in (1, 5, 10)}, "mean_recall": 1.0}
    assert bench.images == 3
    assert bench.skipped.to_dict() == {"count": 1, "reasons": {"bad_image": 1},
                                       "examples": [{"image": str(tmp_path / "broken.png"), "reason": "bad_image"}]}
    first = Benchmark(spec.model_copy(update={"first_caption_only": True}))
    assert first.evaluate(ColourEncoder())["mean_recall"] == 1.0


def test_cli_retrieval_metrics_are_those_of_the_usable_images(student_weights, tmp_path):
    """A retrieval CSV with a broken image gives exactly the metrics of the CSV without that image's rows."""
    from clipkd.data.synthetic import shape_samples

    lines = []
    for i, s in enumerate(shape_samples(6, size=40, seed=5)):
        s.image.save(tmp_path / f"{i}.png")
        lines += [(f"{i}.png", s.caption), (f"{i}.png", f"picture number {i}")]
    (tmp_path / "2.png").write_bytes(_truncated_jpeg())
    write = lambda name, keep: (tmp_path / name).write_text(  # noqa: E731
        "image,caption\n" + "".join(f"{a},{b}\n" for a, b in lines if keep(a)))
    write("all.csv", lambda a: True)
    write("clean.csv", lambda a: a != "2.png")
    common = ["--model", STUDENT, "--pretrained", student_weights, "--image-key", "image", "--caption-key",
              "caption", "--batch-size", "1"]  # each image embedded alone both times: the same computation
    broken = _eval(common + ["--retrieval", f"csv:{tmp_path}/all.csv"], tmp_path / "broken")
    expected = _eval(common + ["--retrieval", f"csv:{tmp_path}/clean.csv"], tmp_path / "clean")
    assert broken["metrics"] == pytest.approx(expected["metrics"])
    assert broken["images"] == 5 and broken["skipped"]["count"] == 1
    assert broken["skipped"]["examples"] == [{"image": str(tmp_path / "2.png"), "reason": "truncated_image"}]


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_webdataset_zeroshot_skips_and_names_unusable_samples(tmp_path):
    """Shard samples: 4 usable (one mislabelled), one undecodable and one without an image: acc1 = 3/4."""
    samples = [("s0", {"png": _png(COLOURS["red"]), "cls": b"0"}),
               ("s1", {"png": _png(COLOURS["green"]), "cls": b"1"}),
               ("s2", {"png": GARBAGE, "cls": b"2"}),
               ("s3", {"png": _png(COLOURS["blue"]), "cls": b"2"}),
               ("s4", {"cls": b"1"}),
               ("s5", {"png": _png(COLOURS["blue"]), "cls": b"0"})]  # a blue square labelled red
    shard = _shard(tmp_path / "test.tar", samples)
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    spec = BenchmarkSpec(name="wds", task="zeroshot", format="webdataset", path=shard, label_key="cls",
                         classnames=str(tmp_path / "classes.txt"), batch_size=2)
    bench = Benchmark(spec)
    m = bench.evaluate(ColourEncoder())
    assert m["acc1"] == pytest.approx(3 / 4)
    assert bench.images == 4
    assert bench.skipped.to_dict() == {"count": 2, "reasons": {"bad_image": 1, "missing_image": 1},
                                       "examples": [{"image": f"{shard}/s4", "reason": "missing_image"},
                                                    {"image": f"{shard}/s2", "reason": "bad_image"}]}


def test_webdataset_image_key_picks_the_member(tmp_path):
    """--image-key png takes the png member although a (broken) jpg comes first in the default order."""
    samples = [(f"s{i}", {"jpg": GARBAGE, "png": _png(rgb), "cls": str(i).encode()})
               for i, rgb in enumerate(COLOURS.values())]
    shard = _shard(tmp_path / "test.tar", samples)
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    spec = dict(name="wds", task="zeroshot", format="webdataset", path=shard, label_key="cls",
                classnames=str(tmp_path / "classes.txt"))
    bench = Benchmark(BenchmarkSpec(**spec, image_key="png"))
    assert bench.evaluate(ColourEncoder())["acc1"] == 1.0 and bench.skipped.count == 0
    default = Benchmark(BenchmarkSpec(**spec, batch_size=2))
    with pytest.raises(Exception, match="no usable image"):
        default.evaluate(ColourEncoder())


def test_every_image_unusable_is_one_clean_error_naming_the_first(tmp_path, student_weights, capsys):
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
    (tmp_path / "set" / "a" / "0.jpg").write_bytes(_truncated_jpeg())
    (tmp_path / "set" / "b" / "0.png").write_bytes(GARBAGE)
    args = ["eval", "--model", STUDENT, "--pretrained", student_weights, "--zeroshot", f"folder:{tmp_path}/set",
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "benchmark 'set': no usable image: all 2 were skipped (bad_image: 1, truncated_image: 1)" in line
    assert f"the first: {tmp_path}/set/a/0.jpg (truncated_image)" in line
    assert not list((tmp_path / "out").glob("*.json"))


def test_retrieval_with_every_image_unusable_is_a_clean_error(tmp_path, student_weights, capsys):
    (tmp_path / "x.png").write_bytes(GARBAGE)
    (tmp_path / "pairs.csv").write_text("filepath,title\nx.png,a caption\nmissing.png,another\n")
    assert main(["eval", "--model", STUDENT, "--pretrained", student_weights, "--retrieval",
                 f"csv:{tmp_path}/pairs.csv", "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no usable image: all 2 were skipped (bad_image: 1, missing_file: 1)" in line
    assert f"the first: {tmp_path}/x.png (bad_image)" in line


# --- the model ----------------------------------------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE (set for every test by conftest) and an empty Hugging Face cache: downloads fail at once."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_pretrained_tag_that_cannot_be_downloaded_is_one_clean_line(colour_folder, tmp_path,  # noqa: F811
                                                                     empty_hub_cache, monkeypatch, capsys):
    """Whatever open_clip raises when the download fails at model creation (here: the check before it passed,
    as when the hub goes away in between) ends as one line saying how to pass a local checkpoint."""
    import clipkd.build.checks
    import clipkd.build.models

    monkeypatch.setattr(clipkd.build.checks, "pretrained_tag_problem", lambda *a, **k: None)
    assert main(["eval", "--model", "ViT-B-32", "--pretrained", "openai", "--zeroshot", f"folder:{colour_folder}",
                 "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("clipkd: error: --model ViT-B-32 --pretrained openai: cannot download the pretrained "
                           "weights 'openai': the model hub is unreachable (HF_HUB_OFFLINE is set)")
    assert "--pretrained /path/to/weights.safetensors (or .pt/.bin)" in line
    assert not (tmp_path / "out").exists()


def test_hf_hub_model_that_cannot_be_downloaded_is_one_clean_line(colour_folder, tmp_path,  # noqa: F811
                                                                   empty_hub_cache, capsys):
    assert main(["eval", "--model", "hf-hub:nobody/no-such-model", "--zeroshot", f"folder:{colour_folder}",
                 "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--model hf-hub:nobody/no-such-model: cannot download the model's config and weights: the model hub " \
           "is unreachable (HF_HUB_OFFLINE is set)" in line
    assert "--model /path/to/open_clip_config.json --pretrained /path/to/weights.safetensors" in line


@pytest.fixture
def no_models(monkeypatch):
    """Any model construction fails the test."""
    import clipkd.build.checks
    import clipkd.build.models
    import clipkd.models.factory
    import clipkd.models.open_clip_adapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were rejected")

    for module, name in ((clipkd.build.models, "build_encoder"), (clipkd.build.models, "create_encoder"),
                         (clipkd.models.factory, "create_encoder"),
                         (clipkd.models.factory, "create_open_clip_encoder"),
                         (clipkd.models.open_clip_adapter, "create_open_clip_encoder"),
                         (clipkd.models.open_clip_adapter.open_clip, "create_model_and_transforms")):
        monkeypatch.setattr(module, name, refuse)


def test_unknown_model_and_missing_paths_are_reported_together(tmp_path, no_models, capsys):
    """`--model ViT-Nope` with a missing folder, class-name file and checkpoint: every problem in one line,
    the unknown model with train's message, and nothing built."""
    argv = ["eval", "--model", "ViT-Nope", "--pretrained", f"{tmp_path}/weights.safetensors", "--zeroshot",
            f"folder:{tmp_path}/nowhere", "--classnames", f"{tmp_path}/names.txt", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    from clipkd.build.checks import check_model

    for problem in (f"--zeroshot folder:{tmp_path}/nowhere: folder not found: {tmp_path}/nowhere",
                    f"--classnames: file not found: {tmp_path}/names.txt",
                    *check_model("--model", "ViT-Nope", None, "--pretrained"),  # train's message
                    f"--pretrained: checkpoint file not found: {tmp_path}/weights.safetensors"):
        assert problem in line, problem
    assert "unknown model 'ViT-Nope'" in line


def test_run_problems_and_data_problems_are_reported_together(tmp_path, no_models, capsys):
    assert main(["eval", "--run", f"{tmp_path}/no-run", "--retrieval", f"karpathy:{tmp_path}/none.json",
                 "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "Karpathy split file not found" in line and f"--run: folder not found: {tmp_path}/no-run" in line


def test_data_index_problems_come_before_the_model_is_built(tmp_path, no_models, capsys):
    """A CSV whose labels are not class indices, a webdataset without the label key: found by reading the
    data's index, before any model is built."""
    (tmp_path / "labels.csv").write_text("filepath,label\na.png,cat\n")
    shard = _shard(tmp_path / "s.tar", [("k0", {"png": _png((1, 2, 3)), "cls": b"0"})])
    assert main(["eval", "--model", STUDENT, "--zeroshot", f"csv:{tmp_path}/labels.csv", "--zeroshot",
                 f"webdataset:{shard}", "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "labels.csv, row 1: label 'label' must be a class index (0, 1, ...), got 'cat'" in line
    assert f"--zeroshot webdataset:{shard}: {shard}: no sample with an image and a 'label' key" in line


def test_result_json_records_classnames_and_templates(tmp_path, colour_folder, student_weights):  # noqa: F811
    (tmp_path / "t.txt").write_text("a photo of a {}.\n{c}, in colour\n")
    (tmp_path / "names.txt").write_text("blue thing\ngreen thing\nred thing\n")
    result = _eval(["--model", STUDENT, "--pretrained", student_weights, "--zeroshot", f"folder:{colour_folder}",
                    "--templates", str(tmp_path / "t.txt"), "--classnames", str(tmp_path / "names.txt")],
                   tmp_path / "out")
    assert result["templates"] == ["a photo of a {}.", "{}, in colour"]
    assert result["classnames"] == ["blue thing", "green thing", "red thing"]
    default = _eval(["--model", STUDENT, "--pretrained", student_weights, "--zeroshot", f"folder:{colour_folder}"],
                    tmp_path / "out-default")
    assert default["templates"] == ["{}"] and default["classnames"] == ["blue", "green", "red"]


def test_benchmark_still_evaluates_plain_loaders():
    """zeroshot_evaluate keeps taking a plain (images, targets) loader (the throughput benchmark's and
    open_clip's layout)."""
    from torch.utils.data import DataLoader, TensorDataset

    from clipkd.eval.zeroshot import zeroshot_evaluate

    images = torch.zeros(3, 3, 8, 8)
    for i in range(3):
        images[i, i] = 1.0  # pure red, green, blue
    classifier = torch.eye(3)
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 1, 1])), batch_size=2)
    assert zeroshot_evaluate(ColourEncoder(), loader, classifier)["acc1"] == pytest.approx(2 / 3)
