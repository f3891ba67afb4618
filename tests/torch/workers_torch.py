"""Datasets of the shmipc.torch tests (importable, for the spawn start method)."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class Deterministic(Dataset[Any]):
    """Sample i: a float image, an int label, a numpy array and a dict: all derived from i."""

    def __init__(self, n: int = 64, side: int = 64) -> None:
        self.n, self.side = n, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        g = torch.Generator().manual_seed(i)
        img = torch.rand((3, self.side, self.side), generator=g)
        return {
            "img": img,
            "label": i % 10,
            "np": np.full((128, 128), i, dtype=np.int16),
            "pair": (torch.tensor([i, -i]), float(i) / 2),
            "half": torch.full((4, 64, 64), i, dtype=torch.bfloat16),
        }


class Big(Dataset[Any]):
    """Samples of `nbytes` bytes each (float32), value = index."""

    def __init__(self, n: int, nbytes: int) -> None:
        self.n, self.numel = n, nbytes // 4

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((self.numel,), float(i), dtype=torch.float32)


class ManyTensors(Dataset[Any]):
    """Each sample is a list of `k` tensors of 64 KiB (so a batch has k large tensors)."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return [torch.full((16384,), float(i * 1000 + j)) for j in range(self.k)]


class KillsItsWorker(Dataset[Any]):
    """Sample 5 SIGKILLs the worker process that loads it."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> torch.Tensor:
        from torch.utils.data import get_worker_info

        if i == 5 and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(1 << 16)


def pairs_collate(batch: list[Any]) -> tuple[torch.Tensor, list[int]]:
    """A custom collate_fn: its tensors are copied into the heap."""
    return torch.stack([b["img"] for b in batch]) * 2, [int(b["label"]) for b in batch]
