"""A result's inputs are identified by their content: files, folders, hub models, data, reinforced data.

Expected digests are computed here with hashlib; the stale inputs are made by replacing files in place, as a user
re-exporting a model or rebuilding data under the same name would.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from clipkd.identity import IdentityUnavailable, changed, content_sha256, data_file_digest, model_identity
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
    monkeypatch.setattr(identity, "RACY_S", 0.0)  # remember a file written just now (see the next test)
    path = tmp_path / "teacher.bin"
    path.write_bytes(b"weights")
    assert content_sha256(path) == _sha(b"weights")
    code = ("import clipkd.identity as i, sys\n"
            "i.RACY_S = 0.0\n"
            "i._sha256 = lambda p: sys.exit('read the file again')\n"
            f"print(i.content_sha256({str(path)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**identity.os.environ, "CLIPKD_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _sha(b"weights")


def test_a_file_changed_just_now_is_not_remembered(tmp_path, monkeypatch):
    """A same-size rewrite within one timestamp tick keeps the file's key: a digest is remembered only for a file
    unchanged for RACY_S seconds (git's racy-clean rule), so such a rewrite is never served a stale digest."""
    import clipkd.identity as identity

    path = tmp_path / "w.bin"
    path.write_bytes(b"aaaa")
    assert content_sha256(path) == _sha(b"aaaa")
    assert not any(k[1] == str(path.resolve()) for k in identity._MEMO)
    monkeypatch.setattr(identity, "_stat_key", lambda p: ((str(p), 4, 1, 1, 1, 1), True))  # the same key
    path.write_bytes(b"bbbb")
    assert content_sha256(path) == _sha(b"bbbb")


def test_large_data_files_by_size_head_and_tail(tmp_path, monkeypatch):
    import clipkd.identity as identity

    monkeypatch.setattr(identity, "FULL_HASH_BYTES", 100)
    path = tmp_path / "shard.tar"
    body = bytes(range(256)) * 1000
    path.write_bytes(body)
    span = identity.QUICK_SPAN
    want = hashlib.sha256(str(len(body)).encode() + body[:span] + body[-span:]).hexdigest()
    assert data_file_digest(path) == "quick:" + want


def test_a_model_folder_is_what_open_clip_reads_from_it(tmp_path):
    """Config, weights and tokenizer files, by name and full SHA-256, the same anywhere; a README, a model card,
    hidden files and sub-folders (.git with LFS copies, .cache/huggingface/download metadata) play no part."""
    from clipkd.identity import model_folder_digest

    a = tmp_path / "a"
    a.mkdir()
    (a / "open_clip_config.json").write_text('{"model_cfg": {}}')
    (a / "open_clip_model.safetensors").write_bytes(b"123")
    want = hashlib.sha256(json.dumps([["open_clip_config.json", _sha(b'{"model_cfg": {}}')],
                                      ["open_clip_model.safetensors", _sha(b"123")]],
                                     sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert model_folder_digest(a) == want
    b = shutil.copytree(a, tmp_path / "b")
    (b / "README.md").write_text("a card")
    (b / ".gitattributes").write_text("*.safetensors lfs")
    (b / ".cache" / "huggingface").mkdir(parents=True)
    (b / ".cache" / "huggingface" / "x.metadata").write_text("etag")
    assert model_folder_digest(b) == want
    (b / "tokenizer.json").write_text("{}")  # a tokenizer file is read: another model
    assert model_folder_digest(b) != want
    (b / "tokenizer.json").unlink()
    (b / "open_clip_model.safetensors").write_bytes(b"124")
    assert model_folder_digest(b) != want


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
    """One revision of an open_clip hub repository in the Hugging Face cache layout: blobs named by their content
    id (here their SHA-256, as for LFS files), the snapshot's files linking to them, ``refs/main`` on it."""
    base = cache / f"models--{repo.replace('/', '--')}"
    made = _open_clip_folder(cache / "staging" / commit, seed)
    snapshot = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for f in made.iterdir():
        blob = base / "blobs" / _sha(f.read_bytes())
        shutil.move(str(f), blob) if not blob.exists() else f.unlink()
        (snapshot / f.name).symlink_to(blob)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snapshot


def test_hf_hub_model_is_identified_by_its_files_content(tmp_path, monkeypatch):
    """By the hub's content ids of the config and weights open_clip loads (the cache's blob names; nothing is
    downloaded), not by the revision: a commit that changes neither file is the same model."""
    import huggingface_hub.constants as hub

    from clipkd.models.factory import create_encoder

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    snap = _fake_hub(tmp_path / "hub", "org/tiny", "a" * 40, seed=2)
    first = model_identity("hf-hub:org/tiny", None)
    want = "hf-hub:sha256:" + hashlib.sha256(json.dumps(
        [_sha((snap / "open_clip_config.json").read_bytes()), _sha((snap / "open_clip_model.safetensors").read_bytes())],
        separators=(",", ":")).encode()).hexdigest()
    assert first == {"model": "hf-hub:", "weights": want, "model_config_sha256": None, "image_mean": None,
                     "image_std": None}
    assert create_encoder("hf-hub:org/tiny").embed_dim == 384  # open_clip loads the same cached files
    _fake_hub(tmp_path / "hub", "org/tiny", "c" * 40, seed=2)  # a new commit, the same files (a README edit)
    assert model_identity("hf-hub:org/tiny", None) == first
    _fake_hub(tmp_path / "hub", "org/tiny", "b" * 40, seed=5)  # new weights on main
    assert changed(first, model_identity("hf-hub:org/tiny", None)) == ["weights"]
    with pytest.raises(IdentityUnavailable, match=r"cannot load hf-hub:org/missing: the model hub is unreachable "
                                                  r"\(HF_HUB_OFFLINE is set\) and the model is not in the local cache"):
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
