"""Bucketed weight broadcast from the policy trainer into live vLLM engines (both halves of the protocol).

The sender is rank 0 of a torch.distributed group that it shares with every vLLM worker of every rollout
engine (ranks 1..world_size-1). The group is made with vLLM's `stateless_init_torch_distributed_process_group`,
so it never touches the global `torch.distributed` state that DeepSpeed (trainer side) and vLLM (engine side)
already own. One sync:

1. control plane (Ray / `collective_rpc`): the receivers get a `SyncMeta` = the ordered HF parameter names,
   the engine dtype and shapes, and `bucket_bytes`. The sender casts to the engine dtype (policy fp32, engine
   bf16: the cast happens once, on rank 0, and halves the bytes on the wire).
2. handshake: rank 0 broadcasts `[fingerprint(meta), total_bytes]`; every rank all-reduces a mismatch flag,
   so a sender and a receiver that disagree both raise at once instead of reading garbage.
3. data: `bucket_plan(meta.params, meta.bucket_bytes)` is a pure function, so both sides derive the same
   buckets without exchanging anything more; each bucket is one uint8 broadcast from rank 0.

CPU: backend "gloo", CPU tensors. GPU: the same code with backend "nccl" and CUDA tensors (the sender packs
into a CUDA buffer on its current device, call `torch.cuda.set_device` first; receivers use the vLLM
worker's device). Names are HF names (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`); vLLM's
`reload_weights(..., is_checkpoint_format=True)` maps them onto its fused layers and shards them for TP.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import torch

DEFAULT_BUCKET_BYTES = 32 * 2**20
"""32 MiB: SmolLM2-135M (269 MB bf16) synced in 8 buckets took ~0.5 s on 2 CPU cores, in 5 of 64 MiB ~0.62 s, in
15 of 16 MiB ~0.53 s (the first and last buckets are not overlapped; smaller ones add per-bucket calls)."""
ALIGN = 16
"""Every slot starts at a multiple of 16 bytes, so a uint8 slice can be viewed as any dtype."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype | str) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"weight sync dtype: must be one of {sorted(DTYPES)}, got {name!r}")
    return name


class ParamMeta(NamedTuple):
    name: str
    dtype: str
    """The dtype on the wire = the engine's dtype."""
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Bucket:
    entries: tuple[tuple[int, int], ...]
    """(index into the param list, byte offset in the bucket), in param order."""
    nbytes: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def bucket_plan(params: Sequence[ParamMeta], bucket_bytes: int) -> list[Bucket]:
    """Greedy in-order packing: a bucket is closed when the next tensor would push it past `bucket_bytes`.

    A tensor larger than `bucket_bytes` gets a bucket of its own. Pure: sender and receivers call it on the
    same meta and get the same plan.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes: must be > 0, got {bucket_bytes}")
    buckets: list[Bucket] = []
    entries: list[tuple[int, int]] = []
    size = 0
    for i, p in enumerate(params):
        p = ParamMeta(*p)
        off = _align(size)
        if entries and off + p.nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(entries), size))
            entries, off = [], 0
        entries.append((i, off))
        size = off + p.nbytes
    if entries:
        buckets.append(Bucket(tuple(entries), size))
    return buckets


@dataclass(frozen=True)
class SyncMeta:
    """What the receivers must know before a sync; built once per (model, engine dtype)."""

    params: tuple[ParamMeta, ...]
    bucket_bytes: int = DEFAULT_BUCKET_BYTES

    @classmethod
    def build(
        cls,
        named_shapes: Iterable[tuple[str, Sequence[int]]],
        dtype: torch.dtype | str,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> SyncMeta:
        """From (name, shape) pairs (ZeRO-3 callers pass `param.ds_shape`), all sent in `dtype`."""
        d = dtype_name(dtype)
        return cls(tuple(ParamMeta(n, d, tuple(int(s) for s in shape)) for n, shape in named_shapes), bucket_bytes)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, dtype: torch.dtype | str, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> SyncMeta:
        """HF names and shapes of a (non-sharded) model's parameters; buffers (rotary inv_freq) stay."""
        return cls.build(((n, p.shape) for n, p in model.named_parameters()), dtype, bucket_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.plan())

    def plan(self) -> list[Bucket]:
        return bucket_plan(self.params, self.bucket_bytes)

    def fingerprint(self) -> int:
        """A signed 64-bit hash of names, dtypes, shapes and bucket size (checked in the handshake)."""
        h = hashlib.blake2b(repr((self.bucket_bytes, [tuple(p) for p in self.params])).encode(), digest_size=8)
        return int.from_bytes(h.digest(), "little", signed=True)

    def to_wire(self) -> list:
        """Plain lists/str/int: what survives vLLM's `collective_rpc` msgpack serialisation."""
        return [self.bucket_bytes, [[p.name, p.dtype, list(p.shape)] for p in self.params]]

    @classmethod
    def from_wire(cls, wire: Sequence) -> SyncMeta:
        bucket_bytes, params = wire
        return cls(tuple(ParamMeta(n, d, tuple(s)) for n, d, s in params), int(bucket_bytes))


@dataclass(frozen=True)
class SyncStats:
    bytes: int
    seconds: float
    buckets: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------- packing (both sides)


def _slot(buf: torch.Tensor, offset: int, p: ParamMeta) -> torch.Tensor:
    return buf[offset : offset + p.nbytes].view(DTYPES[p.dtype]).view(p.shape)


def pack_bucket(
    named_tensors: Iterator[tuple[str, torch.Tensor]],
    bucket: Bucket,
    params: Sequence[ParamMeta],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Copy (and cast) the bucket's tensors, taken in order from `named_tensors`, into one uint8 buffer."""
    buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
    for idx, off in bucket.entries:
        p = params[idx]
        try:
            name, t = next(named_tensors)
        except StopIteration:
            raise ValueError(f"weight sync: tensors ended before {p.name!r} (meta has {len(params)})") from None
        if name != p.name or tuple(t.shape) != p.shape:
            raise ValueError(f"weight sync: tensor #{idx} is {name!r} {tuple(t.shape)}, meta says {p.name!r} {p.shape}")
        _slot(buf, off, p).copy_(t.detach())
    return buf


def unpack_bucket(buf: torch.Tensor, bucket: Bucket, params: Sequence[ParamMeta]) -> list[tuple[str, torch.Tensor]]:
    """Views into `buf` (no copy): the caller keeps `buf` alive as long as the tensors."""
    return [(params[idx].name, _slot(buf, off, params[idx])) for idx, off in bucket.entries]


# --------------------------------------------------------------------------- the group


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on `host`: only for tests that bind it right away; a group's
    rendezvous uses `listen_socket` (bound first, published after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listen_socket(host: str) -> socket.socket:
    """A socket bound (the OS picks the port) and listening on `host`: the sender's rendezvous. Binding
    before the port is published leaves no window in which another process can take it (picking a free
    port and binding it later raced)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s


_stdout_lock = threading.Lock()
_stdout_users = 0
_stdout_saved: int | None = None


@contextmanager
def _keep_stdout():
    """vLLM builds gloo groups inside `suppress_stdout()`, which points fd 1 at /dev/null and restores the
    fd it saved on entry. Two ranks joining from one process at once (sender and receiver threads, as in
    the tests) both sit inside it during the rendezvous: the second saves /dev/null, restores it last, and
    the process's stdout is gone for good (pytest -s output silently vanished). Restore the true fd 1
    when the last concurrent join leaves."""
    global _stdout_users, _stdout_saved
    with _stdout_lock:
        if _stdout_users == 0:
            _stdout_saved = os.dup(1)
        _stdout_users += 1
    try:
        yield
    finally:
        with _stdout_lock:
            _stdout_users -= 1
            if _stdout_users == 0 and _stdout_saved is not None:
                os.dup2(_stdout_saved, 1)
                os.close(_stdout_saved)
                _stdout_saved = None


def init_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
               sock: socket.socket | None = None):
    """Join the sync group; blocks until all `world_size` ranks have joined (or `timeout_s`). Rank 0
    passes the `listen_socket` it published the port of; the group's store takes it over."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"weight sync backend: must be 'gloo' (CPU) or 'nccl' (GPU), got {backend!r}")
    with _keep_stdout():
        return stateless_init_torch_distributed_process_group(
            host, port, rank, world_size, backend=backend, timeout=timedelta(seconds=timeout_s),
            listen_socket=sock,
        )


def close_group(pg) -> None:
    from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

    stateless_destroy_torch_distributed_process_group(pg)


class WeightSyncMismatch(RuntimeError):
    """Sender and a receiver hold different metas; raised on every rank."""


def _handshake(pg, meta: SyncMeta, device: torch.device, is_sender: bool) -> None:
    mine = torch.tensor([meta.fingerprint(), meta.total_bytes], dtype=torch.int64, device=device)
    header = mine.clone()
    pg.broadcast(header, 0).wait()
    bad = torch.tensor([0 if is_sender else int(not torch.equal(header, mine))], dtype=torch.int64, device=device)
    pg.allreduce(bad).wait()
    if int(bad.item()):
        raise WeightSyncMismatch(
            f"weight sync: {int(bad.item())} receiver(s) hold a different meta than the sender "
            f"(sender fingerprint/bytes {header.tolist()}, this rank {mine.tolist()})"
        )


class WeightSyncSender:
    """Rank 0 of the sync group, on the policy trainer (its rank 0 only).

    The constructor blocks until every receiver has called `init_weight_sync`: start those first (Ray
    calls return at once), then build the sender, then wait for the receivers' refs. `sock`: the bound
    `listen_socket` whose port the receivers were given (None: bind `port` now, tests only).
    """

    def __init__(
        self,
        host: str,
        port: int,
        world_size: int,
        backend: str = "gloo",
        timeout_s: float = 600.0,
        device: torch.device | str | None = None,
        sock: socket.socket | None = None,
    ):
        self.device = torch.device(device or ("cuda" if backend == "nccl" else "cpu"))
        self.world_size = world_size
        self.pg = init_group(host, port, 0, world_size, backend, timeout_s, sock)

    @classmethod
    def on_group(cls, pg, device: torch.device | str) -> WeightSyncSender:
        """A sender on a process group that exists already (the GPU check's world-size-1 NCCL group)."""
        sender = cls.__new__(cls)
        sender.device, sender.world_size, sender.pg = torch.device(device), pg.size(), pg
        return sender

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], meta: SyncMeta) -> SyncStats:
        """Broadcast `named_tensors` (in `meta.params` order, any dtype/device) bucket by bucket.

        The iterable is consumed lazily, one bucket at a time, so a ZeRO-3 caller can gather parameters as
        it yields them. The next bucket is packed while the previous one is on the wire (2 buckets of memory).
        Receivers must be inside `receive_weights` at the same time.
        """
        t0 = time.perf_counter()
        _handshake(self.pg, meta, self.device, is_sender=True)
        it = iter(named_tensors)
        plan = meta.plan()
        pending = None
        sent = 0
        for bucket in plan:
            buf = pack_bucket(it, bucket, meta.params, self.device)
            if self.device.type == "cuda":
                torch.cuda.current_stream().synchronize()
            if pending is not None:
                pending.wait()
            pending = self.pg.broadcast(buf, 0)
            sent += bucket.nbytes
        if pending is not None:
            pending.wait()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        extra = next(it, None)
        if extra is not None:
            raise ValueError(f"weight sync: tensor {extra[0]!r} is not in the meta ({len(meta.params)} params)")
        return SyncStats(bytes=sent, seconds=time.perf_counter() - t0, buckets=len(plan))

    def close(self) -> None:
        close_group(self.pg)


def raw_broadcast(pg, nbytes: int, device: torch.device | str, src: int = 0) -> float:
    """The physical limit of a sync: one uint8 broadcast of `nbytes` over the sync group, nothing packed,
    cast or loaded. A 1-byte broadcast first lines the ranks up; the seconds returned are the big one's
    only. Every rank of the group calls it at the same time (benchmarks/compare.py)."""
    buf = torch.zeros(1, dtype=torch.uint8, device=device)
    pg.broadcast(buf, src).wait()
    buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    t0 = time.perf_counter()
    pg.broadcast(buf, src).wait()
    return time.perf_counter() - t0


def receive_buckets(
    pg, params: Sequence[ParamMeta], bucket_bytes: int, device: torch.device | str, src: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver half: yields (HF name, tensor) as each bucket arrives; a fresh buffer per bucket.

    Feed it straight into vLLM's `reload_weights(weights_iterator=...)`, which may hold on to the tensors
    until a whole layer has arrived: that is why buffers are never reused. The next bucket's receive is
    posted before this one's tensors are handed over, so it travels while vLLM loads them (received one
    at a time, the sender's next broadcast waited on every load: SmolLM2's 269 MB took ~0.66 s in 64 MiB
    buckets, ~0.62 s with the overlap, ~0.5 s with the overlap in 32 MiB buckets).
    """
    plan = bucket_plan(params, bucket_bytes)

    def post(bucket: Bucket):
        buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
        return buf, pg.broadcast(buf, src)

    incoming = post(plan[0]) if plan else None
    for i, bucket in enumerate(plan):
        buf, work = incoming
        work.wait()
        incoming = post(plan[i + 1]) if i + 1 < len(plan) else None
        yield from unpack_bucket(buf, bucket, params)


def receive(pg, meta: SyncMeta, device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    """Handshake now (not a generator: a mismatch must raise before vLLM starts tearing down its
    layers for reloading), then the lazy `receive_buckets` iterator."""
    _handshake(pg, meta, torch.device(device), is_sender=False)
    return receive_buckets(pg, meta.params, meta.bucket_bytes, device)
