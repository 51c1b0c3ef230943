"""Tokenizer files for an exported (ONNX) text encoder, and a torch-free loader that reproduces the ids.

open_clip's CLIP BPE ``SimpleTokenizer`` becomes a Hugging Face ``tokenizer.json`` (BPE, its regex pre-split,
byte-level alphabet, start/end tokens, truncation and zero padding, and a normalizer that redoes open_clip's text
cleaning); transformers tokenizers are saved with ``save_pretrained``. ``tokenizer_spec.json`` says which inputs
the encoder takes and how to tokenise with the files.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clipkd.errors import ExportError

SPEC_FILE, BPE_FILE, CLEAN_FILE = "tokenizer_spec.json", "tokenizer.json", "text_clean.json"
BPE_LIMITS = ("not reproduced: ftfy's mojibake repair (e.g. 'cafÃ©' -> 'café') and surrogate fixing; HTML "
              "entities other than &amp; &lt; &gt; &quot; &apos; &nbsp; &#39; &#34; (and their upper-case/hex forms) "
              "and entities without the final ';' stay as typed; in text containing '<' open_clip unescapes nested "
              "'&amp;amp;...' only twice; a special-token string typed right after punctuation; code points newer "
              "than Python's Unicode tables (and U+0345) may split differently.")
HF_LIMITS = "none: the saved transformers tokenizer is the one the model was trained with."
_ENTITIES = (("&(?:amp;|AMP;)+", "&"), ("&(?:lt|LT);", "<"), ("&(?:gt|GT);", ">"),  # '&' first: nested
             ("&(?:quot|QUOT|#0*34|#[xX]0*22);", '"'), ("&(?:apos|#0*39|#[xX]0*27);", "'"), ("&nbsp;", "\xa0"))
_CASED = r"[\p{Cased}&&\P{Case_Ignorable}]"  # Python's str.lower() final-sigma rule, as a regex:
_SIGMA = rf"(?<={_CASED}\p{{Case_Ignorable}}*)Σ(?!\p{{Case_Ignorable}}*{_CASED})"


def _instance_of(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` without importing ``module`` (an instance implies it is loaded)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def write_tokenizer_files(tokenizer: Any, out_dir: Path) -> list[Path]:
    """Write the files a runtime needs to reproduce ``tokenizer``'s ids; return their paths (spec last).

    open_clip ``SimpleTokenizer`` -> ``tokenizer.json`` (``kind`` "clip-bpe", input ``text``); open_clip
    ``HFTokenizer`` -> ``save_pretrained`` files + ``text_clean.json`` (its ftfy/whitespace cleaning) (input
    ``text``); clipkd ``HFTokenizer`` -> ``save_pretrained`` files (inputs ``input_ids``, ``attention_mask``).
    open_clip's cleaning is redone by a ``tokenizers`` normalizer: NFC, whitespace collapse and strip, lower case
    (with Python's final-sigma rule), and ftfy's per-character fixes (curly quotes, Latin ligatures, full/half
    width forms, C1 controls as Windows-1252, control characters, terminal escapes) and common HTML entities.
    Not reproduced (see the spec's ``limitations``): ftfy's mojibake repair, rarer HTML entities.
    Raises ``ExportError`` for other tokenizers and for settings that cannot be reproduced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _instance_of(tokenizer, "open_clip.tokenizer", "SimpleTokenizer"):
        files, spec = _write_clip_bpe(tokenizer, out_dir)
    elif _instance_of(tokenizer, "open_clip.tokenizer", "HFTokenizer"):
        files, spec = _write_open_clip_hf(tokenizer, out_dir)
    elif _instance_of(tokenizer, "clipkd.models.composite", "HFTokenizer"):
        files = _save_pretrained(tokenizer.tokenizer, out_dir)
        spec = _hf_spec(tokenizer, ["input_ids", "attention_mask"], HF_LIMITS)
        spec["how"] += ", return_token_type_ids=False): feed input_ids and attention_mask"
    else:
        cls = type(tokenizer)
        raise ExportError(f"tokenizer {cls.__module__}.{cls.__qualname__} cannot be exported: only open_clip's "
                          "SimpleTokenizer / HFTokenizer and clipkd's HFTokenizer are supported")
    spec["files"] = [p.name for p in files]
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return files + [out_dir / SPEC_FILE]


def _context_length(tokenizer: Any) -> int:
    ctx = getattr(tokenizer, "context_length", None)
    if not isinstance(ctx, int) or ctx < 2:
        raise ExportError(f"tokenizer {type(tokenizer).__name__} has no usable context_length ({ctx!r})")
    return ctx


def _clean_mode(tokenizer: Any) -> str:
    """open_clip's clean mode ('lower', 'whitespace', 'canonicalize') from its clean function."""
    name = getattr(getattr(tokenizer, "clean_fn", None), "__name__", "")
    modes = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}
    if name not in modes:
        raise ExportError(f"open_clip tokenizer text cleaning {name or '?'!r} cannot be exported")
    return modes[name]


def _write_clip_bpe(tok: Any, out_dir: Path) -> tuple[list[Path], dict]:
    if getattr(tok, "reduction_fn", None) is not None:
        raise ExportError("a SimpleTokenizer with a reduction_mask (random/shuffle/syntax token reduction) is "
                          "training-only and cannot be exported: build it with reduction_mask='' for export")
    ctx, mode = _context_length(tok), _clean_mode(tok)
    path = out_dir / BPE_FILE
    _clip_bpe_tokenizer(tok, ctx, mode).save(str(path))
    return [path], {"kind": "clip-bpe", "context_length": ctx, "inputs": ["text"], "pad_id": 0, "clean": mode,
                    "how": f"tokenizers.Tokenizer.from_file('{BPE_FILE}').encode_batch(texts): cleaning, "
                           f"start/end tokens, truncation and zero padding to {ctx} are in the file",
                    "limitations": BPE_LIMITS}


def _clip_bpe_tokenizer(tok: Any, ctx: int, mode: str):
    """A ``tokenizers.Tokenizer`` giving ``tok``'s ids: same vocab, merges, regex split and byte alphabet."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors

    n_plain = 512 + len(tok.bpe_ranks)  # 256 bytes, the same with '</w>', one token per merge; then specials
    specials = sorted((t for t, i in tok.encoder.items() if i >= n_plain), key=tok.encoder.get)
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    out = Tokenizer(models.BPE(vocab=dict(tok.encoder), merges=merges, end_of_word_suffix="</w>"))
    out.normalizer = clean_normalizer(mode)
    flags = "(?i)" if tok.pat.flags & 2 else ""  # re.IGNORECASE == regex.IGNORECASE == 2
    out.pre_tokenizer = pre_tokenizers.Sequence([  # keep what open_clip's re.findall finds, drop the rest
        pre_tokenizers.Split(Regex(flags + tok.pat.pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    reachable = [t for t in specials if out.normalizer.normalize_str(t) == t]  # cleaning keeps it intact
    out.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in reachable])
    sot, eot = tok.decoder[tok.sot_token_id], tok.decoder[tok.eot_token_id]
    out.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)])
    out.enable_truncation(max_length=ctx)  # keeps [sot] + ids[:ctx-2] + [eot], as open_clip does
    out.enable_padding(length=ctx, pad_id=0, pad_token=tok.decoder[0])
    return out


def _char_class(codepoints: Sequence[int]) -> str:
    return "[" + "".join(f"\\x{{{c:x}}}" for c in sorted(codepoints)) + "]"


def clean_normalizer(mode: str):
    """A ``tokenizers`` normalizer redoing open_clip's ``get_clean_fn(mode)`` (ftfy-lite, see the limitations)."""
    import ftfy.chardata as cd
    from ftfy.fixes import fix_c1_controls
    from tokenizers import Regex
    from tokenizers import normalizers as N

    table = {c: fix_c1_controls(chr(c)) for c in range(0x80, 0xA0)}  # ftfy's fixer order
    table.update({**cd.LIGATURES, **cd.WIDTH_MAP})
    steps = [N.Replace(chr(c), s) for c, s in table.items() if s != chr(c)]
    steps += [N.Replace(Regex(cd.DOUBLE_QUOTE_RE.pattern), '"'), N.Replace(Regex(cd.SINGLE_QUOTE_RE.pattern), "'"),
              N.Replace(Regex(r"\x1b\[(?:\p{Nd}|;)*[a-zA-Z]"), ""), N.Replace(Regex(_char_class(cd.CONTROL_CHARS)), "")]
    steps += [N.Replace(Regex(pattern), text) for pattern, text in _ENTITIES] + [N.NFC()]
    spaces = N.Replace(Regex(_char_class([c for c in range(0x3000 + 1) if chr(c).isspace()]) + "+"), " ")  # str.split()
    lower = [N.Replace(Regex(_SIGMA), "ς"), N.Lowercase()]
    if mode == "lower":
        steps += [spaces, N.Strip(), *lower]
    elif mode == "whitespace":
        steps += [spaces, N.Strip()]
    elif mode == "canonicalize":
        punct = N.Replace(Regex(_char_class([ord(c) for c in string.punctuation])), "")
        steps += [N.Replace("_", " "), punct, *lower, spaces, N.Strip()]
    else:
        raise ExportError(f"open_clip text cleaning {mode!r} cannot be exported")
    return N.Sequence(steps)


def _save_pretrained(hf_tokenizer: Any, out_dir: Path) -> list[Path]:
    saved = hf_tokenizer.save_pretrained(str(out_dir))
    return sorted({Path(p) for p in saved if Path(p).is_file()})


def _hf_spec(tok: Any, inputs: list[str], limits: str) -> dict:
    ctx, inner = _context_length(tok), tok.tokenizer
    return {"kind": "huggingface", "context_length": ctx, "inputs": inputs, "pad_id": int(inner.pad_token_id or 0),
            "how": f"transformers.AutoTokenizer.from_pretrained(dir)(texts, padding='max_length', truncation=True, "
                   f"max_length={ctx}", "limitations": limits}


def _write_open_clip_hf(tok: Any, out_dir: Path) -> tuple[list[Path], dict]:
    if getattr(tok, "tokenizer_mode", "") not in ("", None):
        raise ExportError(f"open_clip HFTokenizer tokenizer_mode={tok.tokenizer_mode!r} cannot be exported")
    mode = _clean_mode(tok)
    files = _save_pretrained(tok.tokenizer, out_dir)
    clean = _clean_only_tokenizer(mode)
    clean.save(str(out_dir / CLEAN_FILE))
    spec = _hf_spec(tok, ["text"], "text cleaning as for clip-bpe: " + BPE_LIMITS)
    spec["how"] = (f"clean each text with tokenizers.Tokenizer.from_file('{CLEAN_FILE}').normalizer.normalize_str, "
                   f"then {spec['how']}).input_ids" + (", then set sep_token_id ids to 0" * bool(tok.strip_sep_token)))
    spec.update(clean=mode, strip_sep_token=bool(tok.strip_sep_token), sep_token_id=tok.tokenizer.sep_token_id)
    return files + [out_dir / CLEAN_FILE], spec


def _clean_only_tokenizer(mode: str):
    """A vocabulary-less ``tokenizers.Tokenizer`` that carries only the cleaning normalizer (a portable file)."""
    from tokenizers import Tokenizer, models

    out = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    out.normalizer = clean_normalizer(mode)
    return out


def load_exported_tokenizer(out_dir: Path) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
    """``texts -> {input name: int64 [N, context_length]}`` from the exported files only (no torch)."""
    out_dir = Path(out_dir)
    spec = json.loads((out_dir / SPEC_FILE).read_text(encoding="utf-8"))
    if spec.get("kind") == "clip-bpe":
        return _load_clip_bpe(out_dir, spec)
    if spec.get("kind") == "huggingface":
        return _load_hf(out_dir, spec)
    raise ExportError(f"{out_dir / SPEC_FILE}: unknown tokenizer kind {spec.get('kind')!r}")


def _load_clip_bpe(out_dir: Path, spec: dict) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
    from tokenizers import Tokenizer

    tok, name = Tokenizer.from_file(str(out_dir / BPE_FILE)), spec["inputs"][0]

    def encode(texts: Sequence[str]) -> dict[str, np.ndarray]:
        ids = [e.ids for e in tok.encode_batch(_as_list(texts))]
        return {name: np.asarray(ids, dtype=np.int64).reshape(len(ids), spec["context_length"])}

    return encode


def _load_hf(out_dir: Path, spec: dict) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
    from transformers import AutoTokenizer

    tok, ctx = AutoTokenizer.from_pretrained(str(out_dir)), spec["context_length"]
    clean = None
    if spec.get("clean"):
        from tokenizers import Tokenizer

        clean = Tokenizer.from_file(str(out_dir / CLEAN_FILE)).normalizer

    def encode(texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = [clean.normalize_str(t) for t in _as_list(texts)] if clean else _as_list(texts)
        enc = tok(texts, padding="max_length", truncation=True, max_length=ctx, return_token_type_ids=False) \
            if texts else {"input_ids": [], "attention_mask": []}
        out = {k: np.asarray(enc[k], dtype=np.int64).reshape(len(texts), ctx)
               for k in ("input_ids", "attention_mask")}
        if spec.get("strip_sep_token"):
            out["input_ids"][out["input_ids"] == spec["sep_token_id"]] = 0
        if spec["inputs"] == ["text"]:
            return {"text": out["input_ids"]}
        return {k: out[k] for k in spec["inputs"]}

    return encode


def _as_list(texts: Sequence[str] | str) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)
