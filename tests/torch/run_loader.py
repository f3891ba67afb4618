"""Runs one loader in a process of its own (for tests that change limits or namespaces):
python run_loader.py KIND [args...]; prints one JSON line with what it saw."""

from __future__ import annotations

import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import workers_torch as wt  # noqa: E402


def loader_class(which: str) -> type:
    if which == "shmipc":
        from shmipc.torch import DataLoader

        return DataLoader
    return torch.utils.data.DataLoader


def main() -> None:
    kind, which = sys.argv[1], sys.argv[2]
    cls = loader_class(which)
    extra = {"shm_size": 128 << 20} if which == "shmipc" else {}
    out: dict[str, object] = {"kind": kind, "which": which}
    if kind == "nofile":
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        ds = wt.ManyTensors(n=8, k=300)
        loader = cls(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn", **extra)
        batches = 0
        for batch in loader:
            assert len(batch) == 300 and batch[0].shape == (2, 16384)
            assert float(batch[299][1, 0]) == float((batches * 2 + 1) * 1000 + 299)
            batches += 1
        out["batches"] = batches
    elif kind == "small_shm":
        # 8 MiB batches (2 samples of 4 MiB) in a namespace whose /dev/shm holds 64 MiB.
        st = os.statvfs("/dev/shm")
        out["shm_bytes"] = st.f_blocks * st.f_frsize
        ds = wt.Big(n=32, nbytes=4 << 20)
        loader = cls(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn", **extra)
        used = 0
        batches = 0
        for i, batch in enumerate(loader):
            assert batch.shape == (2, 1 << 20) and float(batch[1, -1]) == 2 * i + 1
            st = os.statvfs("/dev/shm")
            used = max(used, (st.f_blocks - st.f_bfree) * st.f_frsize)
            batches += 1
        out["batches"] = batches
        out["max_dev_shm_used"] = used
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
