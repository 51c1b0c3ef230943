"""A build's settings (``build.json``, written before anything else) and the refusal of a different re-run.

Everything that changes a byte of the output is a setting: views, dtype, seed, crop scale, batch size, pixel
limit, the teacher's identity and the data. The number of processes is not (it changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkd.config import TrainConfig, teacher_list
from clipkd.config_diff import flatten
from clipkd.errors import ConfigError
from clipkd.files import read_json, write_json
from clipkd.identity import MANIFEST_FILE, config_identity, digest_of  # noqa: F401  (MANIFEST_FILE: for the build)

FORMAT_VERSION = 2  # 2: each sidecar's metadata names its build (build_digest)
DTYPE_NAMES = ("bf16", "fp16", "fp32")
SETTINGS_FILE = "build.json"
RECEIPTS_DIR = "done"


@dataclass(frozen=True)
class BuildOptions:
    """The command's own settings (the run config gives the teacher, the data and the seed)."""

    out: Path
    views: int
    dtype: str = "bf16"
    batch_size: int = 64
    rows_per_shard: int = 10000

    def __post_init__(self):
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"--dtype: one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        for name in ("views", "batch_size", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")


def check_request(cfg: TrainConfig, opts: BuildOptions) -> None:
    """What a build needs from the run config, before any file is read: a teacher, and K=1 without crops."""
    if not teacher_list(cfg.teacher):
        raise ConfigError("invalid config:\n  teacher: required by `clipkd reinforce` (the model whose outputs "
                          "are stored); add a teacher section (teacher.model, teacher.pretrained)")
    if cfg.data.crop_scale is None and opts.views != 1:
        raise ConfigError(f"--views {opts.views}: data.crop_scale is null (no augmentation), so each sample has one "
                          "view; use --views 1 or set data.crop_scale")


def build_settings(cfg: TrainConfig, opts: BuildOptions, data_identity: dict[str, Any]) -> dict[str, Any]:
    """The settings that define a build's output."""
    return {"format": "clipkd-reinforced", "format_version": FORMAT_VERSION, "views": opts.views,
            "dtype": opts.dtype, "seed": cfg.seed, "batch_size": opts.batch_size,
            "crop_scale": list(cfg.data.crop_scale) if cfg.data.crop_scale else None,
            "max_image_pixels": cfg.data.max_image_pixels,
            "teachers": [config_identity(mc) for mc in teacher_list(cfg.teacher)],
            "data": data_identity}


def build_digest(settings: dict[str, Any]) -> str:
    """SHA-256 of a build's settings (teachers' identities, data, K, dtype, seed, ...): stored in every sidecar's
    metadata and in the manifest, so a sidecar copied in from another build is found by its header alone."""
    return digest_of(settings)


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each setting that differs (lists compared whole)."""
    old, new = flatten(_listed(saved)), flatten(_listed(current))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _listed(tree: Any) -> Any:
    """Lists of sections as ``{"0": ..., "1": ...}``, so that a difference names the item that differs."""
    if isinstance(tree, dict):
        return {k: _listed(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and any(isinstance(v, dict) for v in tree):
        return {str(i): _listed(v) for i, v in enumerate(tree)}
    return list(tree) if isinstance(tree, tuple) else tree


def check_folder(out: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out`` already holds a build with these settings (True) or is new/empty (False); raises
    :class:`ConfigError` for another build's folder, listing what differs, or a folder of something else."""
    path = out / SETTINGS_FILE
    if path.is_file():
        changed = differences(read_json(path), settings)
        if changed:
            raise ConfigError(f"{out} holds a reinforce build with other settings; use another --out, or delete "
                              "it to rebuild. Differences (folder -> now):\n" + "\n".join(f"  {c}" for c in changed))
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not a reinforce build folder (no {SETTINGS_FILE}); "
                          "choose an empty or new folder")
    return False


def claim_folder(out: Path, settings: dict[str, Any]) -> None:
    """Create ``out`` with its ``build.json`` (or accept the same build's folder, to resume it)."""
    if not check_folder(out, settings):
        (out / RECEIPTS_DIR).mkdir(parents=True, exist_ok=True)
        write_json(out / SETTINGS_FILE, settings)
