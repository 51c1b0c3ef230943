"""acc5 on a task of at most 5 classes is 100% whatever the model (its top 5 holds every class): it is left out of
the metrics (result JSONs, training logs) and out of report tables and charts; from 6 classes on it is reported."""

import pytest
import torch
from PIL import Image

from clipkd.config import BenchmarkSpec
from clipkd.eval.report import markdown_table
from clipkd.eval.runner import Benchmark
from clipkd.eval.zeroshot import ACC5_MIN_CLASSES, classification_metrics
from test_eval import COLOURS, ColourEncoder


def test_acc5_needs_more_than_five_classes():
    from clipkd.eval import report

    assert ACC5_MIN_CLASSES == report.ACC5_MIN_CLASSES == 6  # one constant, in the torch-free report module
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    six = classification_metrics(logits, torch.tensor([5, 5, 0]), 6)
    # row 0: label 5 ranked 6th (a miss); row 1: ranked 1st; row 2: ranked 1st -> 2/3 in the top 5
    assert six["acc5"] == pytest.approx(2 / 3) and six["acc1"] == pytest.approx(2 / 3)
    five = classification_metrics(logits[:, :5], torch.tensor([4, 4, 0]), 5)
    assert set(five) == {"acc1", "mean_per_class_recall"}
    assert five["acc1"] == pytest.approx(2 / 3)  # the rest as before: row 0 ranks label 4 last
    three = classification_metrics(logits[:, :3], torch.tensor([0, 2, 1]), 3)
    assert set(three) == {"acc1", "mean_per_class_recall"}


def test_a_three_class_benchmark_reports_no_acc5(tmp_path):
    for name, rgb in COLOURS.items():
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 20), rgb).save(tmp_path / name / "0.png")
    bench = Benchmark(BenchmarkSpec(name="colours", task="zeroshot", format="folder", path=str(tmp_path)))
    metrics = bench.evaluate(ColourEncoder())
    assert metrics == {"acc1": 1.0, "mean_per_class_recall": 1.0}
    assert set(bench.result(metrics, "m", None)["metrics"]) == {"acc1", "mean_per_class_recall"}


def _result(model, dataset, metrics, classes=None):
    out = {"dataset": dataset, "model": model, "pretrained": None, "task": "zeroshot_classification",
           "metrics": metrics}
    if classes is not None:
        out["classnames"] = [f"c{i}" for i in range(classes)]
    return out


def test_reports_leave_out_acc5_of_results_with_at_most_five_classes():
    """A result written before acc5 was left out (acc5 = 1.0 on 3 classes) shows no acc5 column; one of 10 classes,
    and a result that does not list its classes (clip_benchmark's), keep theirs."""
    table = markdown_table([_result("a", "colours", {"acc1": 0.5, "acc5": 1.0}, classes=3),
                            _result("a", "fmnist", {"acc1": 0.25, "acc5": 0.75}, classes=10),
                            _result("a", "cifar10", {"acc1": 0.125, "acc5": 0.5})])
    header = table.splitlines()[0]
    assert header == "| Model | colours acc1 | fmnist acc1 | fmnist acc5 | cifar10 acc1 | cifar10 acc5 |"
    assert table.splitlines()[2] == "| a | 50.00 | 25.00 | 75.00 | 12.50 | 50.00 |"


def test_the_training_log_has_no_acc5_for_three_classes(tmp_path, data_dir):
    from clipkd.config import load_config
    from clipkd.engine.logger import read_metrics
    from clipkd.commands.train import make_trainer
    from test_train import base_overrides

    for name, rgb in COLOURS.items():
        (tmp_path / "colours" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), rgb).save(tmp_path / "colours" / name / "0.png")
    bench = {"name": "colours", "task": "zeroshot", "format": "folder", "path": str(tmp_path / "colours")}
    cfg = load_config(None, base_overrides(tmp_path / "run", data_dir, **{
        "optim.steps": 1, "eval.benchmarks": [bench]}))
    make_trainer(cfg).fit()
    rows = [r for r in read_metrics(tmp_path / "run", "eval") if "eval/colours/acc1" in r]
    assert rows and not any("eval/colours/acc5" in r for r in rows)
