"""Zero-shot and retrieval evaluation end to end, the classifier cache, `clipkd eval` and the training hook."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from open_clip import SIMPLE_IMAGENET_TEMPLATES
from PIL import Image

from clipkd.cli import main
from clipkd.config import BenchmarkSpec
from clipkd.eval.runner import Benchmark
from clipkd.eval.zeroshot import classification_metrics, zeroshot_classifier
from clipkd.models.encoders import ClipEncoder

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


class ColourEncoder(ClipEncoder):
    """A hand-made CLIP: images embed as their mean colour, texts as the colour word they contain."""

    def __init__(self):
        super().__init__()
        self.embed_dim, self.image_size = 3, (8, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.preprocess_val = self.preprocess_train = lambda im: torch.tensor(
            list(im.resize((8, 8)).getdata()), dtype=torch.float32).T.reshape(3, 8, 8) / 255
        self.tokenizer = lambda texts: torch.tensor([[i for i, c in enumerate(COLOURS) if c in t][0] for t in texts])
        self.text_calls = 0

    def encode_image(self, images, normalize=True):
        return F.normalize(images.mean(dim=(2, 3)), dim=-1)

    def encode_text(self, text, normalize=True):
        self.text_calls += 1
        return F.one_hot(text, 3).float()


@pytest.fixture
def colour_folder(tmp_path):
    root = tmp_path / "colours"
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), tuple(max(0, v - 10 * i) for v in rgb)).save(root / name / f"{i}.png")
    # one mislabelled image: a blue square filed under red
    Image.new("RGB", (20, 20), COLOURS["blue"]).save(root / "red" / "odd.png")
    return root


def test_zeroshot_known_answer(colour_folder, tmp_path):
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of something {}\n{}\n")
    spec = BenchmarkSpec(name="colours", task="zeroshot", format="folder", path=str(colour_folder),
                         templates=str(templates), batch_size=4)
    m = Benchmark(spec).evaluate(ColourEncoder())
    assert m["acc1"] == pytest.approx(12 / 13)  # everything but the mislabelled image
    assert "acc5" not in m  # only 3 classes: top-5 always contains the label (100% by construction)
    assert m["mean_per_class_recall"] == pytest.approx((4 / 5 + 1 + 1) / 3)


def test_classifier_is_mean_of_normalised_prompts_and_cached(tmp_path):
    enc = ColourEncoder()
    w = zeroshot_classifier(enc, ["red", "blue"], ["{}", "a {} cat"], cache_dir=tmp_path, model_key="m")
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    calls = enc.text_calls
    again = zeroshot_classifier(enc, ["red", "blue"], ["{}", "a {} cat"], cache_dir=tmp_path, model_key="m")
    assert enc.text_calls == calls and torch.equal(w, again)  # served from the cache
    zeroshot_classifier(enc, ["red", "blue"], ["{}"], cache_dir=tmp_path, model_key="m")
    assert enc.text_calls > calls  # other prompts, other cache entry
    assert len(list(tmp_path.glob("zeroshot-*.pt"))) == 2


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 2, 1, 0, 0, 0], [0, 3, 2, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    m = classification_metrics(logits, torch.tensor([0, 2, 0]), 6)
    assert m["acc1"] == pytest.approx(1 / 3) and m["acc5"] == pytest.approx(2 / 3)
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 0.0) / 2)


def _karpathy(tmp_path, n_images=6):
    from clipkd.data.synthetic import shape_samples

    images = []
    for i, s in enumerate(shape_samples(n_images, size=40, seed=3)):
        s.image.save(tmp_path / f"img{i}.png")
        images.append({"filename": f"img{i}.png", "split": "test" if i < n_images - 1 else "train",
                       "sentences": [{"raw": s.caption}, {"raw": f"picture {i}"}]})
    path = tmp_path / "dataset_tiny.json"
    path.write_text(json.dumps({"images": images}))
    return path


def test_cli_eval_end_to_end(colour_folder, tmp_path, capsys):
    karpathy = _karpathy(tmp_path)
    out = tmp_path / "results"
    args = ["eval", "--model", "clipkd-tiny-vit", "--zeroshot", f"folder:{colour_folder}", "--templates",
            "imagenet-simple", "--retrieval", f"karpathy:{karpathy}", "--out", str(out), "--batch-size", "4",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out.glob("*.json"))
    assert len(names) == 2
    # <task>_<benchmark>_<model-short>-<8 hex of the model identity>.json
    assert re.fullmatch(r"retrieval_dataset-tiny_clipkd-tiny-vit-[0-9a-f]{8}\.json", names[0]), names
    assert re.fullmatch(r"zeroshot_colours_clipkd-tiny-vit-[0-9a-f]{8}\.json", names[1]), names
    assert names[0][-14:] == names[1][-14:]  # the same model: the same identity
    zs = json.loads((out / names[1]).read_text())
    assert zs["task"] == "zeroshot_classification" and zs["model"] == "clipkd-tiny-vit"
    assert set(zs["metrics"]) == {"acc1", "mean_per_class_recall"}  # 3 classes: no acc5
    assert zs["templates"] == [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]  # what was used, as text
    assert zs["classnames"] == ["blue", "green", "red"]  # the folder names, sorted
    assert zs["images"] == 13 and zs["skipped"]["count"] == 0
    rt = json.loads((out / names[0]).read_text())
    assert rt["task"] == "zeroshot_retrieval" and rt["protocol"].startswith("all_captions")
    for k in (1, 5, 10):
        assert 0.0 <= rt["metrics"][f"image_retrieval_recall@{k}"] <= 1.0
    assert rt["metrics"]["image_retrieval_recall@5"] == 1.0  # 5 test images: any top-5 holds them all
    assert rt["metrics"]["text_retrieval_recall@10"] == 1.0  # 10 test captions: any top-10 holds them all
    assert "colours" in printed and "clipkd-tiny-vit" in printed
    assert list((tmp_path / "cache").glob("zeroshot-*.pt"))


def test_cli_eval_errors(capsys, tmp_path):
    assert main(["eval", "--model", "clipkd-tiny-vit"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", "--model", "clipkd-tiny-vit", "--retrieval", f"folder:{tmp_path}"]) == 2
    assert "not available for task 'retrieval'" in capsys.readouterr().err


def test_cli_report(tmp_path, capsys):
    paths = []
    for model, acc in (("teacher", 0.9), ("baseline", 0.7), ("clipkd", 0.8)):
        p = tmp_path / f"{model}.json"
        p.write_text(json.dumps({"dataset": "fmnist", "model": model, "pretrained": None,
                                 "task": "zeroshot_classification", "metrics": {"acc1": acc}}))
        paths.append(str(p))
    assert main(["report", *paths, "--out", str(tmp_path / "rep")]) == 0
    assert "80.00" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.png").stat().st_size > 0


def test_training_runs_benchmarks_and_diagnostics_then_eval_run_dir(colour_folder, tmp_path, capsys):
    from clipkd.config import load_config
    from clipkd.data.synthetic import write_csv
    from clipkd.engine.logger import read_metrics
    from clipkd.commands.train import make_trainer
    from test_train import base_overrides

    csv = write_csv(tmp_path / "pairs", 48, size=40)
    bench = {"name": "colours", "task": "zeroshot", "format": "folder", "path": str(colour_folder), "batch_size": 8}
    val = {"format": "csv", "train": csv, "batch_size": 16, "workers": 0}
    extra = {"data.format": "csv", "data.train": csv, "optim.steps": 2, "eval.every_steps": 1,
             "eval.benchmarks": json.dumps([bench]), "eval.val_data": json.dumps(val), "eval.val_batches": 2}
    run = tmp_path / "run"
    make_trainer(load_config(None, base_overrides(run, tmp_path, "csv", **extra))).fit()
    zs = read_metrics(run, "eval/colours")
    assert [r["step"] for r in zs] == [1, 2] and "eval/colours/acc1" in zs[0]
    val_rows = read_metrics(run, "eval/val")
    for key in ("loss", "fd", "image_cka", "text_cka", "similarity_kl", "image_cosine", "text_cosine"):
        assert f"eval/val/{key}" in val_rows[-1], key
    assert -1.0 <= val_rows[-1]["eval/val/image_cosine"] <= 1.0
    assert val_rows[-1]["eval/val/pairs"] == 32 and val_rows[-1]["eval/val/skipped"] == 0  # 2 batches of 16
    # the run directory evaluates as a model: student from the latest checkpoint, or the teacher
    out = tmp_path / "res"
    assert main(["eval", "--run", str(run), "--zeroshot", f"folder:{colour_folder}", "--out", str(out),
                 "--diagnostics"]) == 0
    printed = capsys.readouterr().out
    assert "image_cka" in printed and len(list(out.glob("*.json"))) == 2
    diag = json.loads(next(out.glob("diagnostics_*.json")).read_text())
    assert diag["task"] == "distillation_diagnostics" and 0.0 <= diag["metrics"]["image_cka"] <= 1.0
    assert main(["eval", "--run", str(run), "--side", "teacher", "--zeroshot", f"folder:{colour_folder}",
                 "--out", str(out)]) == 0
    teacher = [p for p in out.glob("zeroshot_*.json") if "clipkd-tiny-teacher" in p.name]
    assert len(teacher) == 1 and json.loads(teacher[0].read_text())["side"] == "teacher"


def test_result_names_are_short_stable_and_unique():
    """One name per (task, benchmark, model identity): the same identity -> the same name; another checkpoint,
    tag or side -> another name; a long checkpoint path stays out of the name."""
    from clipkd.eval.runner import result_name

    def name(**kw):
        base = {"dataset": "imagenet", "task": "zeroshot_classification", "model": "clipkd-tiny-vit",
                "pretrained": "/very/long/path/to/runs/vit/checkpoints/step_00000060/student.safetensors"}
        return result_name({**base, **kw})

    first = name()
    assert re.fullmatch(r"zeroshot_imagenet_clipkd-tiny-vit-[0-9a-f]{8}\.json", first) and len(first) < 60
    assert name() == first
    others = [name(pretrained="/very/long/path/to/runs/vit/checkpoints/step_00000070/student.safetensors"),
              name(pretrained=None), name(pretrained="openai"), name(side="teacher"), name(model="ViT-B-32")]
    assert len({first, *others}) == 6
    assert name(task="zeroshot_retrieval", dataset="coco").startswith("retrieval_coco_clipkd-tiny-vit-")
    assert re.fullmatch(r"[\w.-]+-[0-9a-f]{8}\.json", name(model="/cfgs/my_vit.json"))
    assert name(model="/cfgs/my_vit.json").startswith("zeroshot_imagenet_my-vit-")
