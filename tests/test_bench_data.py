"""`clipkd bench-data`: the training data path as `clipkd train` runs it, measured without the model step.

Its figures are accounted, not guessed: every stage's CPU seconds add up to the total, the batches and samples are
those read, the stages present are the ones the path has (``sidecar`` only with reinforced data), and the cores
one GPU needs are the step rate times the CPU per sample.
"""

import json

import pytest

from clipkd.build.reinforce import run_build
from clipkd.cli import main
from clipkd.config import load_config
from clipkd.data.stages import STAGES
from clipkd.reinforce.settings import BuildOptions
from test_train import base_overrides


def _bench(tmp_path, overrides, *flags) -> dict:
    out = tmp_path / "bench.json"
    assert main(["bench-data", *flags, "--json", str(out), *overrides]) == 0
    return json.loads(out.read_text())


def _accounted(figures: dict) -> None:
    """Every stage present and non-negative, and the stages sum to the CPU per sample over all processes."""
    stages = figures["stages"]
    assert set(STAGES) | {"other"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    assert sum(stages.values()) == pytest.approx(figures["cpu_s_per_sample"], rel=1e-6)
    assert stages["decode"] > 0 and stages["preprocess"] > 0 and stages["read"] > 0


@pytest.mark.parametrize("fmt,workers", [("csv", 2), ("webdataset", 1), ("csv", 0)])
def test_online_teacher_views(fmt, workers, data_dir, tmp_path, capsys):
    """12 batches of 8 over a 64-pair CSV (8 per epoch, so two epochs; 2 workers, or none: the loader in this
    process) or 96-pair shards (one worker: 12 batches, one epoch)."""
    overrides = base_overrides(tmp_path / "run", data_dir, fmt, **{"data.batch_size": 8, "data.workers": workers})
    figures = _bench(tmp_path, overrides, "--batches", "12", "--step-rate", "1000")
    assert (figures["batches"], figures["samples"], figures["workers"]) == (12, 96, workers)
    _accounted(figures)
    assert figures["stages"]["consumer"] >= 0  # the main process's own share outside the producers' clocks
    assert figures["stages"]["sidecar"] == 0  # no reinforced data
    epochs = 2 if fmt == "csv" else 1  # 64 pairs: 8 batches of 8 per epoch with 1 or 2 splits; 96 pairs: 12
    assert len(figures["first_batch_s"]) == epochs
    assert figures["cores_per_gpu"] == pytest.approx(1000 * figures["cpu_s_per_sample"])
    assert figures["step_rate_source"] == "given"
    printed = capsys.readouterr().out
    assert "12 batches (96 samples)" in printed and "cores for its data" in printed


def test_reinforced_data_and_a_measured_step(data_dir, tmp_path, capsys):
    """From stored views: the sidecar stage appears (fingerprint check, crop and teacher rows), no teacher is
    built, and without --step-rate the student step is measured on the configured device."""
    overrides = base_overrides(tmp_path / "run", data_dir, "webdataset",
                               **{"data.batch_size": 8, "data.workers": 1, "data.crop_scale": [0.5, 1.0],
                                  "distill.recipe": "fd"})
    run_build(load_config(None, overrides), BuildOptions(out=tmp_path / "cache", views=2, dtype="fp32", batch_size=8))
    figures = _bench(tmp_path, overrides + [f"distill.teacher_cache={tmp_path / 'cache'}"], "--batches", "3")
    assert (figures["batches"], figures["samples"]) == (3, 24)
    _accounted(figures)
    assert figures["stages"]["sidecar"] > 0
    assert "reinforced data" in figures["config"]
    assert figures["step_rate"] > 0 and figures["step_rate_source"] == "measured on cpu"
    assert figures["cores_per_gpu"] == pytest.approx(figures["step_rate"] * figures["cpu_s_per_sample"])


def test_bad_arguments_are_one_line(data_dir, tmp_path, capsys):
    assert main(["bench-data", "--batches", "0", *base_overrides(tmp_path / "r", data_dir)]) == 2
    assert "--batches: must be >= 1" in capsys.readouterr().err
    assert main(["bench-data", *base_overrides(tmp_path / "r", data_dir), "data.train=/nowhere/x.tar"]) == 2
    assert "data.train: 1 of 1 shards not found" in capsys.readouterr().err


def test_a_resume_at_an_epochs_end_reads_nothing_of_that_epoch(data_dir, monkeypatch):
    """A checkpoint taken after the last batch of an epoch: resuming reads no record of it again (it skipped
    every one of them before, without decoding, to yield nothing) and goes on with the next epoch."""
    import clipkd.data.stream as stream_module
    from clipkd.data.sources import CsvSource
    from clipkd.data.stream import DataPosition, DistillStream, make_loader
    from clipkd.data.views import PairedViews
    from conftest import STUDENT, make_encoder

    student = make_encoder(STUDENT)
    stream = DistillStream(CsvSource(data_dir / "csv" / "data.csv"), PairedViews(student, student, None), 8)
    reads = []
    real = stream_module._next
    monkeypatch.setattr(stream_module, "_next", lambda it, consumed: reads.append(1) or real(it, consumed))
    stream.start(DataPosition(0, stream.batches_per_epoch, {0: 64}), endless=True)
    batch, info = next(iter(make_loader(stream, 0)))
    assert info.epoch == 1 and len(reads) == info.consumed == 8
