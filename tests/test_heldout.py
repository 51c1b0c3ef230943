"""Held-out evaluation: every pair exactly once, in eval mode, independent of the held-out batch size."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipkd.cli import main
from clipkd.config import load_config
from clipkd.data.sources import CsvSource, ShardSource, read_csv_rows
from clipkd.data.synthetic import write_csv
from clipkd.commands.train import make_trainer
from test_train import base_overrides

STUDENT_BN = "clipkd-tiny-mobilenet"  # timm MobileNetV3 image tower: BatchNorm
DIAG_KEYS = ("image_cosine", "text_cosine", "image_cka", "text_cka", "similarity_kl")


@pytest.fixture(scope="module")
def bn_run(module_tmp, data_dir):
    """A 1-step clipkd run with a BatchNorm student (its checkpoint is what `clipkd eval --run` loads)."""
    run = module_tmp("bn") / "run"
    extra = {"student.model": STUDENT_BN, "optim.steps": 1, "checkpoint.every_steps": 1, "optim.warmup_steps": 0}
    make_trainer(load_config(None, base_overrides(run, data_dir, "csv", **extra))).fit()
    return run


@pytest.fixture(scope="module")
def pairs(module_tmp):
    """Held-out CSVs of 100 and 20 pairs."""
    root = module_tmp("heldout")
    return {n: write_csv(root / f"p{n}", n, size=40, seed=7) for n in (100, 20)}


def cli_diagnostics(run: Path, csv: str, batch_size: int, out: Path) -> dict:
    """`clipkd eval --run RUN --diagnostics --pairs csv:CSV --batch-size N` -> its metrics."""
    assert main(["eval", "--run", str(run), "--diagnostics", "--pairs", f"csv:{csv}",
                 "--batch-size", str(batch_size), "--out", str(out)]) == 0
    return json.loads(next(out.glob("diagnostics_*.json")).read_text())["metrics"]


def test_diagnostics_of_batchnorm_student_do_not_depend_on_batch_size(bn_run, pairs, tmp_path):
    """Eval mode (BatchNorm running statistics) and no padding: the same embeddings at any batch size."""
    big = cli_diagnostics(bn_run, pairs[100], 100, tmp_path / "b100")
    small = cli_diagnostics(bn_run, pairs[100], 10, tmp_path / "b10")
    for key in DIAG_KEYS:
        assert small[key] == pytest.approx(big[key], rel=1e-5, abs=1e-6), key


def _clip_loss_float64(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE by explicit loops in float64: mean over both directions of -log softmax(diag)."""
    img, txt = img.double().tolist(), txt.double().tolist()
    n = len(img)
    logits = [[scale * sum(a * b for a, b in zip(img[i], txt[j])) for j in range(n)] for i in range(n)]

    def ce(rows: list[list[float]]) -> float:
        total = 0.0
        for i, row in enumerate(rows):
            m = max(row)
            total += m + math.log(sum(math.exp(v - m) for v in row)) - row[i]
        return total / n

    columns = [[logits[i][j] for i in range(n)] for j in range(n)]
    return 0.5 * (ce(logits) + ce(columns))


def test_task_loss_of_small_heldout_set_is_its_clip_loss(bn_run, pairs, tmp_path):
    """20 pairs at batch size 256: one batch of exactly those 20 pairs, nothing repeated."""
    from clipkd.engine.checkpoint import resolve_resume
    from clipkd.models.open_clip_adapter import create_open_clip_encoder

    got = cli_diagnostics(bn_run, pairs[20], 256, tmp_path / "b256")
    weights = resolve_resume("latest", str(bn_run)) / "student.safetensors"
    enc = create_open_clip_encoder(STUDENT_BN, str(weights)).eval()
    rows = read_csv_rows(Path(pairs[20]), ",", ("filepath", "title"))
    root = Path(pairs[20]).parent
    images = torch.stack([enc.preprocess_val(Image.open(root / r["filepath"]).convert("RGB")) for r in rows])
    with torch.no_grad():
        img = enc.encode_image(images)
        txt = enc.encode_text(enc.tokenize([r["title"] for r in rows]))
        scale = float(enc.scale())
    assert len(rows) == 20
    assert got["task"] == pytest.approx(_clip_loss_float64(img, txt, scale), rel=1e-4)


# -- HeldOutPairs: the held-out reader ---------------------------------------------------------------------

def _views():
    from clipkd.data.views import PairedViews
    from conftest import STUDENT, TEACHER, make_encoder

    return PairedViews(make_encoder(STUDENT), make_encoder(TEACHER), None)


def test_every_csv_pair_exactly_once_in_order_with_partial_last_batch(data_dir):
    from clipkd.data.heldout import HeldOutPairs

    pairs = HeldOutPairs(CsvSource(data_dir / "csv" / "data.csv"), _views(), batch_size=10)
    batches = list(pairs)
    assert [len(b) for b in batches] == [10] * 6 + [4]  # 64 pairs
    assert [k for b in batches for k in b.keys] == [str(i) for i in range(64)]
    assert pairs.pairs == 64 and dict(pairs.skipped) == {}
    again = [k for b in pairs for k in b.keys]  # a second pass: the same pairs in the same order
    assert again == [str(i) for i in range(64)]


def test_every_shard_pair_exactly_once_in_shard_order(data_dir):
    from clipkd.data.heldout import HeldOutPairs

    source = ShardSource(str(data_dir / "wds" / "shard-{00000..00002}.tar"))
    batches = list(HeldOutPairs(source, _views(), batch_size=25))
    assert [len(b) for b in batches] == [25, 25, 25, 21]  # 96 pairs
    keys = [k for b in batches for k in b.keys]
    assert keys == [r.key for r in source.records()] and len(set(keys)) == 96
    assert batches[0].student_images.shape[0] == batches[0].teacher_images.shape[0] == 25


def test_max_batches_caps_and_batch_larger_than_set(data_dir):
    from clipkd.data.heldout import HeldOutPairs

    source = CsvSource(data_dir / "csv" / "data.csv")
    assert [len(b) for b in HeldOutPairs(source, _views(), batch_size=10, max_batches=2)] == [10, 10]
    assert [len(b) for b in HeldOutPairs(source, _views(), batch_size=1000)] == [64]
    with pytest.raises(ValueError, match="batch_size"):
        HeldOutPairs(source, _views(), batch_size=0)
    with pytest.raises(ValueError, match="max_batches"):
        HeldOutPairs(source, _views(), batch_size=4, max_batches=0)


def test_unusable_records_are_skipped_and_counted(tmp_path):
    from clipkd.data.heldout import HeldOutPairs

    csv = Path(write_csv(tmp_path / "p", 8, size=40))
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",   "  # row 1: blank caption
    lines[4] = "images/missing.jpg," + lines[4].split(",", 1)[1]  # row 3: no such file
    csv.write_text("\n".join(lines) + "\n")
    (csv.parent / "images" / "000005.jpg").write_bytes(b"not a jpeg")  # row 5: undecodable
    pairs = HeldOutPairs(CsvSource(csv), _views(), batch_size=3)
    batches = list(pairs)
    assert [k for b in batches for k in b.keys] == ["0", "2", "4", "6", "7"]
    assert [len(b) for b in batches] == [3, 2]
    assert dict(pairs.skipped) == {"empty_caption": 1, "missing_file": 1, "bad_image": 1} and pairs.pairs == 5
    tiny = HeldOutPairs(CsvSource(csv), _views(), batch_size=3, max_image_pixels=40 * 40 - 1)  # images: 40x40
    assert list(tiny) == [] and tiny.skipped["too_large"] == 5


# -- ValLossHook ---------------------------------------------------------------------------------------------

def _bn_distiller():
    from clipkd.distill import build_distiller
    from conftest import TEACHER, make_encoder

    return build_distiller(make_encoder(STUDENT_BN, seed=3), make_encoder(TEACHER, seed=4), {"task": 1.0})


def test_hook_weights_batches_by_size_and_restores_mode(data_dir):
    """64 pairs at batch 10: task = sum_b n_b * clip_loss(batch b) / 64, from embeddings computed here."""
    from clipkd.data.heldout import HeldOutPairs
    from clipkd.data.views import PairedViews
    from clipkd.eval.val_loss import ValLossHook

    distiller = _bn_distiller()
    enc = distiller.student.encoder
    views = PairedViews(enc, distiller.teacher.encoder, None)
    csv = data_dir / "csv" / "data.csv"
    hook = ValLossHook(HeldOutPairs(CsvSource(csv), views, batch_size=10), torch.device("cpu"))
    bn = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    stats = bn.running_mean.clone()
    distiller.student.train()
    got = hook(distiller, 0)
    assert distiller.student.training and enc.training  # mode restored
    assert torch.equal(bn.running_mean, stats)  # eval mode inside: BatchNorm statistics untouched
    distiller.student.eval()
    ValLossHook(HeldOutPairs(CsvSource(csv), views, batch_size=4, max_batches=1), torch.device("cpu"))(distiller, 0)
    assert not distiller.student.training

    rows = read_csv_rows(csv, ",", ("filepath", "title"))
    with torch.no_grad():
        images = torch.stack([enc.preprocess_val(Image.open(csv.parent / r["filepath"]).convert("RGB")) for r in rows])
        img, txt = enc.encode_image(images), enc.encode_text(enc.tokenize([r["title"] for r in rows]))
        scale = float(enc.scale())
    want = sum(len(img[i:i + 10]) * _clip_loss_float64(img[i:i + 10], txt[i:i + 10], scale)
               for i in range(0, 64, 10)) / 64
    assert got["task"] == pytest.approx(want, rel=1e-4)
    assert got["loss"] == pytest.approx(want, rel=1e-4)
    assert got["pairs"] == 64 and got["skipped"] == 0


def test_val_batches_defaults_to_all_pairs():
    from clipkd.config import EvalConfig

    assert EvalConfig().val_batches is None
    assert EvalConfig(val_batches=3).val_batches == 3
    with pytest.raises(ValueError):
        EvalConfig(val_batches=0)


def test_a_trainer_without_eval_hooks_says_it_will_not_evaluate(data_dir, tmp_path, caplog):
    """The engine builds no evaluation hooks itself: a Trainer made directly (not through make_trainer) with
    eval.val_data set warns that it will not evaluate, and logs no eval/* metric; make_trainer's does."""
    from clipkd.engine.logger import read_metrics
    from clipkd.engine.trainer import Trainer

    val = f"{{format: csv, train: '{data_dir}/csv/data.csv', batch_size: 8, workers: 0}}"
    extra = {"optim.steps": 1, "optim.warmup_steps": 0, "eval.val_batches": 1}
    with caplog.at_level("WARNING", logger="clipkd.engine.trainer"):
        Trainer(load_config(None, base_overrides(tmp_path / "bare", data_dir, "csv", **extra) +
                            [f"eval.val_data={val}"])).fit()
    assert "no eval_hooks were given: not evaluated" in caplog.text
    assert read_metrics(tmp_path / "bare", "eval") == []
    make_trainer(load_config(None, base_overrides(tmp_path / "made", data_dir, "csv", **extra) +
                             [f"eval.val_data={val}"])).fit()
    assert any("eval/val/loss" in row for row in read_metrics(tmp_path / "made", "eval"))
