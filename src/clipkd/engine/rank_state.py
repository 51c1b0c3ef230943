"""What each process must carry across a checkpoint on its own: data position, RNG states, counters.

The model, optimizer and scheduler are the same on every rank and are saved once (by rank 0); these differ
per rank, so rank 0 gathers them and the checkpoint holds one entry per rank. A resumed run must use the
same number of processes and loader workers, because the data splits are defined by them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from clipkd.data.stream import BatchInfo, DataPosition
from clipkd.errors import ConfigError


def rng_state() -> dict:
    """This process's global RNG states (torch CPU/CUDA, Python, NumPy) as tensors and plain values only, so a
    checkpoint holding them loads with ``torch.load(weights_only=True)``."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


MAX_EXAMPLES = 5


def mask_seed(seed: int, rank: int) -> int:
    """Seed of a rank's MFD mask generator (rank 0: ``seed + 1``, as in a single process)."""
    return seed + 1 + 1_000_003 * rank


@dataclass
class RankState:
    """One process's resumable state."""

    mask_gen: torch.Generator
    position: DataPosition = field(default_factory=DataPosition)
    skipped: Counter = field(default_factory=Counter)
    consumed: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # first unusable records of each reason

    def account(self, info: BatchInfo) -> None:
        """Count a delivered micro-batch: raw records consumed and skipped, and the resume position (a batch of
        the next epoch starts that epoch's position)."""
        if info.epoch != self.position.epoch:
            self.position = DataPosition(info.epoch)
        self.consumed += info.consumed - self.position.consumed.get(info.split, 0)
        self.skipped.update(info.skipped)
        for reason, keys in info.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(keys[:MAX_EXAMPLES - len(kept)])
        self.position.advance(info)

    def describe_skips(self) -> str:
        """``reason: count (e.g. key, key)`` for each reason of this process."""
        parts = []
        for reason, count in sorted(self.skipped.items()):
            seen = self.examples.get(reason)
            parts.append(f"{reason}: {count}" + (f" (e.g. {', '.join(seen)})" if seen else ""))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position.to_dict(), "mask_gen": self.mask_gen.get_state(), "rng": rng_state(),
                "skipped": dict(self.skipped), "consumed": self.consumed, "examples": self.examples}

    def load(self, d: dict[str, Any]) -> None:
        self.mask_gen.set_state(d["mask_gen"])
        set_rng_state(d["rng"])
        self.position = DataPosition.from_dict(d["position"])
        self.skipped, self.consumed = Counter(d["skipped"]), int(d["consumed"])
        self.examples = {k: list(v) for k, v in d.get("examples", {}).items()}


def pick_rank_state(state: dict[str, Any], rank: int, world_size: int, workers: int, path: Optional[str]) -> dict:
    """This rank's entry of a checkpoint's state, after checking the layout matches this run."""
    saved = (state.get("world_size"), state.get("workers"))
    if saved != (world_size, workers):
        raise ConfigError(f"checkpoint {path} was written by {saved[0]} process(es) with data.workers={saved[1]}; "
                          f"resume it with the same (this run: {world_size} process(es), data.workers={workers}), "
                          "because the data splits are defined by them")
    return state["ranks"][rank]
