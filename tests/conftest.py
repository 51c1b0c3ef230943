import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPKD_CACHE_DIR", tempfile.mkdtemp(prefix="clipkd-test-cache-"))  # digests, not ~/.cache
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `clipkd` command sets it (engine/threads.py)

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
    from clipkd.distill import DistillBatch

    g = torch.Generator().manual_seed(seed)
    captions = [f"a photo of object number {i} in colour {i % 3}" for i in range(n)]
    return DistillBatch(
        student_images=torch.randn(n, 3, *student.image_size, generator=g),
        student_text=student.tokenize(captions),
        teacher_images=torch.randn(n, 3, *teacher.image_size, generator=g),
        teacher_text=teacher.tokenize(captions),
    )
