"""shmipc.torch.DataLoader: the same batches as torch's own loader, without fd passing or
/dev/shm, with back-pressure and clear errors."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from torch_extras import require

require("torch")

import torch  # noqa: E402
from torch.utils.data import DataLoader as TorchLoader  # noqa: E402

from shmipc.torch import DataLoader  # noqa: E402

import workers_torch as wt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def assert_same_batches(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_batches_are_the_same_as_torchs_own_loader(context: str) -> None:
    ds = wt.Deterministic(n=50)
    kw: dict[str, Any] = dict(batch_size=8, num_workers=2, multiprocessing_context=context)
    ref = list(TorchLoader(ds, **kw))
    got = list(DataLoader(ds, shm_size=32 << 20, **kw))
    assert_same_batches(ref, got)
    assert got[0]["img"].dtype == torch.float32 and got[0]["half"].dtype == torch.bfloat16


def test_a_custom_collate_fn_and_shuffling_with_a_seed_give_torchs_batches() -> None:
    ds = wt.Deterministic(n=40)

    def make(cls: Any, **extra: Any) -> list[Any]:
        g = torch.Generator().manual_seed(3)
        kw = dict(batch_size=6, num_workers=2, multiprocessing_context="spawn", shuffle=True)
        return list(cls(ds, collate_fn=wt.pairs_collate, generator=g, **kw, **extra))

    assert_same_batches(make(TorchLoader), make(DataLoader, shm_size=32 << 20))


def test_tensors_view_the_heap_and_the_heap_is_back_to_baseline_after_an_epoch() -> None:
    loader = DataLoader(
        wt.Big(n=12, nbytes=1 << 20),
        batch_size=3,
        num_workers=2,
        multiprocessing_context="spawn",
        shm_size=32 << 20,
    )
    for epoch in range(2):
        it = iter(loader)
        base = it.heap.stats()["allocations"]
        batches = list(it)
        assert [float(b[0, 0]) for b in batches] == [0.0, 3.0, 6.0, 9.0]
        assert it.heap.stats()["allocations"] == base + 4
        del batches
        gc.collect()
        assert it.heap.stats()["allocations"] == base, f"epoch {epoch}"
    assert iter(loader).heap is it.heap  # an empty heap is reused by the next epoch


def test_an_epoch_cut_short_with_persistent_workers_leaves_nothing_in_the_heap() -> None:
    loader = DataLoader(
        wt.Big(n=40, nbytes=1 << 20),
        batch_size=2,
        num_workers=2,
        multiprocessing_context="spawn",
        shm_size=64 << 20,
        persistent_workers=True,
        prefetch_factor=4,
    )
    it = iter(loader)
    base = it.heap.stats()["allocations"]
    first = next(it)
    assert float(first[1, 0]) == 1.0
    del first
    full = [float(b[0, 0]) for b in loader]  # the next epoch: torch drops the rest of this one
    assert full == [2.0 * i for i in range(20)]
    gc.collect()
    assert it.heap.stats()["allocations"] == base


def test_a_full_heap_is_back_pressure_not_an_error() -> None:
    # 4 MiB batches, room for two, a worker allowed 4 ahead: it waits for the main process to
    # drop a batch before it collates the next one.
    loader = DataLoader(
        wt.Big(n=24, nbytes=1 << 20),
        batch_size=4,
        num_workers=1,
        multiprocessing_context="spawn",
        shm_size=9 << 20,
        prefetch_factor=4,
        shm_wait=120,
    )
    seen = [float(b[3, 0]) for b in loader]
    assert seen == [4.0 * i + 3 for i in range(6)]


def test_a_batch_larger_than_the_heap_is_a_clear_memory_error() -> None:
    loader = DataLoader(
        wt.Big(n=4, nbytes=4 << 20),
        batch_size=4,
        num_workers=1,
        multiprocessing_context="spawn",
        shm_size=8 << 20,
        shm_wait=1,
    )
    with pytest.raises(MemoryError, match="shm_size"):
        next(iter(loader))


def test_a_sigkilled_worker_is_a_clear_error_not_a_hang() -> None:
    loader = DataLoader(
        wt.KillsItsWorker(),
        batch_size=2,
        num_workers=2,
        multiprocessing_context="spawn",
        shm_size=16 << 20,
        timeout=60,
    )
    with pytest.raises(RuntimeError, match="(?i)worker"):
        for _ in loader:
            pass


def test_no_workers_is_torchs_own_loader() -> None:
    ds = wt.Deterministic(n=10)
    assert_same_batches(list(TorchLoader(ds, batch_size=4)), list(DataLoader(ds, batch_size=4)))


def run_isolated(args: list[str], prefix: list[str] | None = None) -> dict[str, Any]:
    cmd = [*(prefix or []), sys.executable, os.path.join(HERE, "run_loader.py"), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def test_300_tensors_per_batch_work_under_rlimit_nofile_256() -> None:
    out = run_isolated(["nofile", "shmipc"])
    assert out["batches"] == 4


def test_8_mib_batches_work_with_a_64_mib_dev_shm_in_a_private_mount_namespace() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a private 64 MiB /dev/shm")
    script = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"'
    out = run_isolated(["small_shm", "shmipc"], prefix=["unshare", "-m", "sh", "-c", script, "sh"])
    assert out["shm_bytes"] == 64 << 20
    assert out["batches"] == 16
    assert out["max_dev_shm_used"] < 1 << 20  # nothing but multiprocessing's semaphores
