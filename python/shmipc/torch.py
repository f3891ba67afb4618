"""A PyTorch DataLoader whose workers collate into shared memory (API.md §11).

``shmipc.torch.DataLoader`` takes the arguments of ``torch.utils.data.DataLoader`` plus
``shm_size``. With ``num_workers > 0`` the workers collate each batch straight into an anonymous
shmipc heap (a memfd that reached them once, when they started): the default collation stacks
every tensor into a heap block, a custom ``collate_fn``'s tensors are copied into one. Only small
handles (offset, dtype, shape) cross to the main process, where the tensors view the heap
(``torch.frombuffer``) and free their block when they are garbage-collected.

So there is no per-tensor fd passing (no "received 0 items of ancdata", no "too many open
files"), nothing in ``/dev/shm`` (the heap is a memfd: a 64 MiB /dev/shm is no limit), a killed
worker's blocks are reclaimed by the heap, and a full heap makes workers wait for the main
process to drop batches (back-pressure, ``MemoryError`` after ``shm_wait`` seconds) instead of a
Bus error. Tensors under 64 KiB travel in the handle itself (a copy is cheaper than a block).

With ``num_workers=0`` it is torch's own loader.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data._utils.collate import collate, default_collate, default_collate_fn_map

from ._heap import Heap

__all__ = ["DataLoader"]

SMALL = 64 << 10  # bytes: smaller tensors travel inside the handle
_DEFAULT_SHM = 512 << 20


class _TensorRef:
    """A tensor of the batch, in a block of the heap held for the main process."""

    __slots__ = ("offset", "nbytes", "dtype", "shape")

    def __init__(self, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]):
        self.offset, self.nbytes, self.dtype, self.shape = offset, nbytes, dtype, shape

    def __reduce__(self) -> Any:
        return (_TensorRef, (self.offset, self.nbytes, self.dtype, self.shape))


class _SmallTensor:
    """A small tensor's bytes, inside the handle."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, data: bytes, dtype: torch.dtype, shape: tuple[int, ...]):
        self.data, self.dtype, self.shape = data, dtype, shape

    def __reduce__(self) -> Any:
        return (_SmallTensor, (self.data, self.dtype, self.shape))


def _bytes_of(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def _walk(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Applies ``fn`` to the leaves of the structures collation makes (dicts, lists, tuples,
    namedtuples); ``fn`` returns the leaf or its replacement."""
    t = type(obj)
    if isinstance(obj, Mapping) and t is dict:
        return {k: _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return t(*(_walk(v, fn) for v in obj))
    if t is tuple:
        return tuple(_walk(v, fn) for v in obj)
    if t is list:
        return [_walk(v, fn) for v in obj]
    return fn(obj)


class _ShmCollate:
    """The collate_fn the workers run: collates into the heap, returns handles."""

    def __init__(self, user: Callable[[Any], Any] | None, heap: Heap, wait: float) -> None:
        self.user = user  # None: torch's default collation, straight into the heap
        self.heap = heap
        self.wait = wait

    def __call__(self, batch: Sequence[Any]) -> Any:
        if self.user is None:
            blocks: dict[int, Any] = {}
            fmap = dict(default_collate_fn_map)

            def collate_tensor(b: Sequence[torch.Tensor], *, collate_fn_map: Any = None) -> Any:
                return self._stack(b, blocks)

            fmap[torch.Tensor] = collate_tensor
            out = collate(batch, collate_fn_map=fmap)
        else:
            blocks = {}
            out = self.user(batch)
        return _walk(out, lambda leaf: self._handle(leaf, blocks))

    def _stack(self, batch: Sequence[torch.Tensor], blocks: dict[int, Any]) -> torch.Tensor:
        elem = batch[0]
        if elem.layout != torch.strided or elem.is_nested or elem.device.type != "cpu":
            return torch.stack(list(batch), 0)
        shape = (len(batch), *elem.shape)
        numel = math.prod(shape)
        nbytes = numel * elem.element_size()
        if nbytes < SMALL:
            return torch.stack(list(batch), 0)
        blk = self._allocate(nbytes)
        out = torch.frombuffer(blk, dtype=elem.dtype, count=numel).view(shape)
        torch.stack(list(batch), 0, out=out)
        blocks[out.data_ptr()] = blk
        return out

    def _handle(self, leaf: Any, blocks: dict[int, Any]) -> Any:
        if not isinstance(leaf, torch.Tensor) or leaf.layout != torch.strided:
            return leaf
        if leaf.device.type != "cpu" or leaf.is_nested:
            return leaf
        shape = tuple(leaf.shape)
        nbytes = leaf.numel() * leaf.element_size()
        blk = blocks.pop(leaf.data_ptr(), None) if leaf.is_contiguous() else None
        if blk is None or blk.nbytes != nbytes:
            if nbytes < SMALL:
                return _SmallTensor(_bytes_of(leaf), leaf.dtype, shape)
            blk = self._allocate(nbytes)  # a custom collate_fn's tensor: one copy
            dst = torch.frombuffer(blk, dtype=leaf.dtype, count=leaf.numel()).view(shape)
            dst.copy_(leaf)
            del dst
        # Held by the heap while in flight: survives this worker; the main process takes it.
        return _TensorRef(self.heap._hold_block(blk), nbytes, leaf.dtype, shape)

    def _allocate(self, nbytes: int) -> Any:
        """A block of the heap; while it is full, waits (back-pressure) for the main process to
        drop batches, up to ``wait`` seconds."""
        deadline = time.monotonic() + self.wait
        delay = 0.0005
        while True:
            try:
                return self.heap.allocate(nbytes)
            except MemoryError as e:
                size = self.heap.stats()["size"]
                if nbytes > size or time.monotonic() >= deadline:
                    raise MemoryError(
                        f"shmipc.torch.DataLoader: a batch tensor of {nbytes} bytes does not fit "
                        f"the shared heap of {size} bytes (waited {self.wait:g} s for the main "
                        f"process to drop batches): raise shm_size, or hold fewer batches ({e})"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)


def _materialize(heap: Heap, obj: Any) -> Any:
    def leaf(x: Any) -> Any:
        if isinstance(x, _TensorRef):
            blk = heap._take_held(x.offset, x.nbytes)
            numel = math.prod(x.shape)
            return torch.frombuffer(blk, dtype=x.dtype, count=numel).view(x.shape)
        if isinstance(x, _SmallTensor):
            t = torch.empty(x.shape, dtype=x.dtype)
            if x.data:
                t.reshape(-1).view(torch.uint8).copy_(
                    torch.frombuffer(bytearray(x.data), dtype=torch.uint8)
                )
            return t
        return x

    return _walk(obj, leaf)


def _drop(heap: Heap, obj: Any) -> None:
    """Frees the held blocks of a batch nobody will receive."""

    def leaf(x: Any) -> Any:
        if isinstance(x, _TensorRef):
            try:
                heap._take_held(x.offset, x.nbytes).release()
            except Exception:  # noqa: BLE001 - best effort (a heap closed or scribbled)
                pass
        return x

    _walk(obj, leaf)


class _Iter:
    """Wraps torch's multiprocessing iterator: turns handles back into tensors."""

    def __init__(self, inner: Any, heap: Heap, pin: bool) -> None:
        self._inner = inner
        self.heap = heap
        self._pin = pin
        self.done = False

    def __iter__(self) -> _Iter:
        return self

    def __next__(self) -> Any:
        try:
            batch = next(self._inner)
        except StopIteration:
            self.done = True
            raise
        out = _materialize(self.heap, batch)
        if self._pin:
            from torch.utils.data._utils.pin_memory import pin_memory

            out = pin_memory(out)
        return out

    def __len__(self) -> int:
        return len(self._inner)

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        # Persistent workers, next epoch: torch drops what the last epoch had not yielded (its
        # reorder buffer, and batches still arriving before the workers' resume acks). Their
        # blocks are held for us: free them, or the heap would fill up epoch after epoch.
        from torch.utils.data._utils.worker import _ResumeIteration

        self.done = False
        inner = self._inner
        for info in list(getattr(inner, "_task_info", {}).values()):
            if len(info) == 2:
                _drop(self.heap, info[1])
        get_data = inner._get_data

        def draining_get_data(*args: Any, **kwargs: Any) -> Any:
            idx, data = get_data(*args, **kwargs)
            if not isinstance(idx, _ResumeIteration):
                _drop(self.heap, data)
            return idx, data

        inner._get_data = draining_get_data
        try:
            inner._reset(loader, first_iter)
        finally:
            del inner._get_data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class DataLoader(tud.DataLoader[Any]):
    """``torch.utils.data.DataLoader`` with batches collated into shared memory (module docs).

    ``shm_size``: bytes of the anonymous heap batches are collated into (default 512 MiB): room
    for the batches in flight (about ``num_workers * prefetch_factor``) plus those the main
    process still holds. ``shm_wait``: seconds a worker waits for room before ``MemoryError``.
    """

    def __init__(
        self,
        dataset: Any,
        *args: Any,
        shm_size: int | None = None,
        shm_wait: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, *args, **kwargs)
        if shm_size is not None and (isinstance(shm_size, bool) or shm_size <= 0):
            raise ValueError(f"shm_size must be a number of bytes > 0, got {shm_size!r}")
        self.shm_size = shm_size or _DEFAULT_SHM
        self.shm_wait = float(shm_wait)
        user: Any = getattr(self, "collate_fn")  # noqa: B009 - set by torch, untyped here
        self._user_collate = None if user is default_collate else user
        self._shm_heap: Heap | None = None
        self._last_iter: weakref.ref[_Iter] | None = None

    def _heap_for_epoch(self) -> Heap:
        # Reuse the heap when the last epoch left nothing in it; a fresh one otherwise (an
        # epoch cut short leaves its prefetched batches' blocks behind, and those go with the
        # old heap once its last tensor is gone).
        heap = self._shm_heap
        last = self._last_iter() if self._last_iter is not None else None
        if heap is not None and not heap.closed and (last is None or last.done):
            if heap.stats()["allocations"] == 0:
                return heap
        heap = Heap.anonymous(self.shm_size)
        self._shm_heap = heap
        return heap

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        heap = self._heap_for_epoch()
        pin = bool(getattr(self, "pin_memory"))  # noqa: B009 - set by torch, untyped here
        collate_fn: Any = getattr(self, "collate_fn")  # noqa: B009
        self.collate_fn = _ShmCollate(self._user_collate, heap, self.shm_wait)
        self.pin_memory = False  # pinned in the main process, after the tensors are rebuilt
        try:
            inner = super()._get_iterator()
        finally:
            self.collate_fn = collate_fn
            self.pin_memory = pin
        it = _Iter(inner, heap, pin)
        self._last_iter = weakref.ref(it)
        return it
