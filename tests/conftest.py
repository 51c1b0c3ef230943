import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_OWN_CACHE = None if "CLIPKD_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="clipkd-test-cache-")
os.environ.setdefault("CLIPKD_CACHE_DIR", _OWN_CACHE or "")  # the digest table: not the user's ~/.cache
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `clipkd` command sets it (runtime/threads.py)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

from clipkd.models.open_clip_adapter import create_open_clip_encoder  # noqa: E402

STUDENT = "clipkd-tiny-vit"  # 32 px, ctx 32, embed 256, OpenAI normalisation
TEACHER = "clipkd-tiny-teacher"  # 48 px, ctx 24, embed 384, ImageNet normalisation, bilinear


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Generated training data: ``wds/shard-{00000..00002}.tar`` (96 pairs), ``csv/`` (64), ``tsv/`` (40)."""
    from clipkd.data.synthetic import write_csv, write_shards

    root = tmp_path_factory.mktemp("data")
    write_shards(root / "wds", 96, per_shard=32, size=48)
    write_csv(root / "csv", 64, size=48)
    write_csv(root / "tsv", 40, size=48, separator="\t")
    return root


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``tmp_path_factory.mktemp`` for a module's shared fixtures; the folders go at the module's end unless a test
    failed after the first of them was made (its evidence stays).

    With ``tmp_path_retention_policy = "failed"`` (pyproject.toml) a passing test's ``tmp_path`` goes at once: kept,
    the suite's checkpoints filled 22 GB of /tmp and CI's disk.
    """
    made, failed_before = [], request.session.testsfailed

    def mktemp(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_encoder(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_open_clip_encoder(name, **kwargs)


@pytest.fixture
def student_encoder():
    return make_encoder(STUDENT, seed=1)


@pytest.fixture
def teacher_encoder():
    return make_encoder(TEACHER, seed=2)


def random_batch(student, teacher, n: int = 8, seed: int = 0):
    """A DistillBatch where each side has its own resolution and tokenizer."""
    from clipkd.data.batch import DistillBatch

    g = torch.Generator().manual_seed(seed)
    captions = [f"a photo of object number {i} in colour {i % 3}" for i in range(n)]
    return DistillBatch(
        student_images=torch.randn(n, 3, *student.image_size, generator=g),
        student_text=student.tokenize(captions),
        teacher_images=torch.randn(n, 3, *teacher.image_size, generator=g),
        teacher_text=teacher.tokenize(captions),
    )


# Results that must not depend on the CPU's kernels (BLAS, ATen, oneDNN, onnxruntime): run again by `make test` under
# other instruction sets (ATEN_CPU_CAPABILITY=avx2 with MKL/oneDNN capped at AVX2, as on an AMD EPYC; and the
# generic `default` kernels). A node ID or a file: every test in it.
KERNEL_TESTS = (
    "test_retrieval_metrics.py", "test_ties.py", "test_functional.py", "test_diagnostics.py",
    "test_loss_precision.py", "test_masking.py", "test_causal_text.py", "test_device_views.py",
    "test_sigmoid_losses.py", "test_reinforced_training.py::test_views_made_on_the_device_replay_the_stored_crop",
    "test_ensemble.py::test_one_teacher_ensemble_is_exactly_the_single_teacher",
    "test_ensemble.py::test_one_teacher_distill_loss_is_exactly_the_single_teacher_loss",
    "test_ensemble.py::test_ensemble_terms_under_bf16_autocast_equal_float32",
    "test_heldout.py::test_diagnostics_of_batchnorm_student_do_not_depend_on_batch_size",
    "test_reinforce.py::test_csv_build_stores_the_teachers_embeddings_of_the_replayed_views",
    "test_reinforce.py::test_views_do_not_depend_on_the_sidecar_layout",
    "test_distributed.py::test_accumulation_equals_one_big_batch",
    "test_distributed.py::test_gradcache_replays_masks_and_matches_one_graph",
    "test_eval_errors.py::test_cli_zeroshot_metrics_are_those_of_the_usable_images",
    "test_eval_errors.py::test_cli_retrieval_metrics_are_those_of_the_usable_images",
    "test_export.py::test_variants_report_drift_and_accuracy_change",
    "test_export.py::test_drift_does_not_depend_on_how_the_inputs_are_batched",
    "test_export.py::test_onnx_encoders_match_pytorch_and_files_suffice",
)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        name = f"{path}::{item.originalname}"
        if path in KERNEL_TESTS or name in KERNEL_TESTS:
            item.add_marker(pytest.mark.kernels)
