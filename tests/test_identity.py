"""A result's inputs are identified by their content: files, folders, hub models, data, reinforced data.

Expected digests are computed here with hashlib; the stale inputs are made by replacing files in place, as a user
re-exporting a model or rebuilding data under the same name would.
"""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from clipkd.identity import (IdentityUnavailable, changed, content_sha256, data_file_digest, model_identity,
                             tree_digest)
from clipkd.models.open_clip_adapter import CONFIG_DIR
from conftest import TEACHER, make_encoder


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_file_digest_is_its_content_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"first")
    assert content_sha256(path) == _sha(b"first") and data_file_digest(path) == "sha256:" + _sha(b"first")
    path.write_bytes(b"second")  # same name, new content: not served from the remembered digest
    assert content_sha256(path) == _sha(b"second")
    other = tmp_path / "elsewhere.bin"
    other.write_bytes(b"second")
    assert content_sha256(other) == content_sha256(path)  # the place plays no part


def test_digests_are_remembered_across_processes(tmp_path, monkeypatch):
    """A second process finds a file's digest in the table instead of reading the file (a big teacher is read
    once): the remembered value is returned even though the process could not have computed it otherwise."""
    import clipkd.identity as identity

    monkeypatch.setenv("CLIPKD_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "teacher.bin"
    path.write_bytes(b"weights")
    assert content_sha256(path) == _sha(b"weights")
    code = ("import clipkd.identity as i, sys\n"
            "i._sha256 = lambda p: sys.exit('read the file again')\n"
            f"print(i.content_sha256({str(path)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**identity.os.environ, "CLIPKD_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _sha(b"weights")


def test_large_data_files_by_size_head_and_tail(tmp_path, monkeypatch):
    import clipkd.identity as identity

    monkeypatch.setattr(identity, "FULL_HASH_BYTES", 100)
    path = tmp_path / "shard.tar"
    body = bytes(range(256)) * 1000
    path.write_bytes(body)
    span = identity.QUICK_SPAN
    want = hashlib.sha256(str(len(body)).encode() + body[:span] + body[-span:]).hexdigest()
    assert data_file_digest(path) == "quick:" + want


def test_tree_digest_is_content_not_place(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "config.json").write_text('{"x": 1}')
    (a / "sub" / "w.bin").write_bytes(b"123")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert tree_digest(a) == tree_digest(b)
    (b / "sub" / "w.bin").write_bytes(b"124")
    assert tree_digest(a) != tree_digest(b)
    shutil.rmtree(b)
    shutil.copytree(a, b)
    (b / "config.json").rename(b / "config2.json")  # a renamed file is another folder
    assert tree_digest(a) != tree_digest(b)


def _open_clip_folder(folder: Path, seed: int) -> Path:
    """An open_clip ``local-dir:`` folder (as `clipkd export` and open_clip's hub layout write it)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG_DIR / f"{TEACHER}.json", folder / "open_clip_config.json")
    enc = make_encoder(TEACHER, seed=seed)
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def test_local_dir_model_is_identified_by_its_files(tmp_path):
    folder = _open_clip_folder(tmp_path / "teacher", seed=2)
    first = model_identity(f"local-dir:{folder}", None)
    moved = shutil.copytree(folder, tmp_path / "moved")
    assert model_identity(f"local-dir:{moved}", None) == first  # same content elsewhere: the same model
    _open_clip_folder(folder, seed=5)  # another export into the same folder
    again = model_identity(f"local-dir:{folder}", None)
    assert changed(first, again) == ["weights"]
    assert again["weights"].startswith("folder-sha256:") and first["weights"] != again["weights"]


def _fake_hub(cache: Path, repo: str, commit: str, seed: int) -> Path:
    """The Hugging Face cache layout of one revision of an open_clip hub repository, ``refs/main`` on it."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = _open_clip_folder(base / "snapshots" / commit, seed)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snapshot


def test_hf_hub_model_is_identified_by_revision_and_files(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from clipkd.models.factory import create_encoder

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    _fake_hub(tmp_path / "hub", "org/tiny", "a" * 40, seed=2)
    first = model_identity("hf-hub:org/tiny", None)
    assert first["model"] == "hf-hub:" and first["weights"].startswith(f"hf-hub@{'a' * 40}:sha256:")
    assert create_encoder("hf-hub:org/tiny").embed_dim == 384  # open_clip loads the same cached files
    _fake_hub(tmp_path / "hub", "org/tiny", "b" * 40, seed=5)  # a new revision on main
    assert changed(first, model_identity("hf-hub:org/tiny", None)) == ["weights"]
    with pytest.raises(IdentityUnavailable, match=r"hf-hub:org/missing: cannot read its files.*local Hugging Face "
                                                  "cache"):
        model_identity("hf-hub:org/missing", None)


def test_weights_file_and_tags(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"not really weights")
    assert model_identity(TEACHER, str(path))["weights"] == "sha256:" + _sha(b"not really weights")
    assert model_identity("ViT-B-32", "openai")["weights"] == "tag:openai"
    assert model_identity(TEACHER, None)["weights"] == "random"
    config = (CONFIG_DIR / f"{TEACHER}.json").read_bytes()  # architecture and preprocessing settings
    assert model_identity(TEACHER, None)["model_config_sha256"] == _sha(config)


def test_changed_names_the_keys():
    assert changed({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 3]}, "d": 0}) == ["a.c", "d"]
    assert changed({"x": 1}, {"x": 1}) == []
