"""How the ranks of a role find each other: the rendezvous store rank 0 binds, the torch.distributed group
and DeepSpeed's comm layer on top of it, and the /dev/shm segment that layer leaves behind on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DistSpec:
    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "gloo"
    """gloo on CPU, nccl on GPU."""


_MASTER_SOCKET = None
_MASTER_STORE = None
"""Rank 0's rendezvous store, bound (port 0: the OS picks) before its port is handed to the other ranks."""


def bind_master_store(host: str) -> int:
    """Bind this process's rendezvous store now and return its port. Binding first and publishing after
    leaves no window in which another process can take the port (picking a free port, releasing it and
    binding later raced: EADDRINUSE)."""
    global _MASTER_STORE, _MASTER_SOCKET
    import socket
    from datetime import timedelta

    if _MASTER_STORE is None:
        # TCPStore binds every interface when it opens the port itself; handed a socket bound to `host`
        # (the node address: 127.0.0.1 in local mode) it listens there only
        _MASTER_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _MASTER_SOCKET.bind((host, 0))
        _MASTER_SOCKET.listen()
        _MASTER_STORE = torch.distributed.TCPStore(host, _MASTER_SOCKET.getsockname()[1], is_master=True,
                                                   wait_for_workers=False, timeout=timedelta(minutes=10),
                                                   master_listen_fd=_MASTER_SOCKET.fileno())
    return _MASTER_STORE.port


def init_process_group(dist: DistSpec) -> None:
    """Join the torch.distributed group of this role, then DeepSpeed's comm layer on top of it."""
    from datetime import timedelta

    import deepspeed

    if not torch.distributed.is_initialized():
        if dist.rank == 0:
            bind_master_store(dist.master_addr)
            store = _MASTER_STORE
        else:
            store = torch.distributed.TCPStore(dist.master_addr, dist.master_port, is_master=False,
                                               timeout=timedelta(minutes=10))
        torch.distributed.init_process_group(dist.backend, store=store, rank=dist.rank, world_size=dist.world_size)
    os.environ.update(
        MASTER_ADDR=dist.master_addr,
        MASTER_PORT=str(dist.master_port),
        RANK=str(dist.rank),
        WORLD_SIZE=str(dist.world_size),
        LOCAL_RANK="0",  # one device per actor: Ray sets CUDA_VISIBLE_DEVICES
        LOCAL_SIZE="1",
    )
    deepspeed.init_distributed(dist_backend=dist.backend, rank=dist.rank, world_size=dist.world_size,
                               verbose=False)
    release_shm_segment(dist)


def shm_segment(dist: DistSpec) -> Path:
    """The /dev/shm segment DeepSpeed's CPU comm layer creates for this rank (ops/csrc/cpu/comm/shm.cpp)."""
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{dist.master_addr}_{dist.master_port}_{dist.rank}"
    return Path("/dev/shm") / name


def release_shm_segment(dist: DistSpec) -> bool:
    """Unlink this rank's DeepSpeed shared-memory all-reduce segment once every rank has mapped it.

    On CPU, DeepSpeed's comm layer gives each process of an all-local group a 64 MiB /dev/shm segment and
    never unlinks it, so every process that exits or is killed leaves 64 MiB of tmpfs behind, which is
    memory: a test suite or a long run with restarts filled a 24 GiB node (Ray's OOM killer fired after
    ~190 leaked segments). The mapping outlives the name, so unlinking after a barrier changes nothing for
    the running group and lets the kernel free the segment when its last process goes. True if one was
    removed."""
    path = shm_segment(dist)
    if not path.exists():  # GPU (no shm op) or a group whose ranks are not all local: nothing was made
        return False
    if dist.world_size > 1:
        torch.distributed.barrier()  # every peer has opened this rank's segment by now
    path.unlink(missing_ok=True)
    return True


def node_endpoint() -> tuple[str, int]:
    """This node's address and a free TCP port on it: the rendezvous of a group whose rank 0 runs here."""
    import socket

    try:
        import ray

        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    except ImportError:  # pragma: no cover - ray is a dependency
        host = "127.0.0.1"
    with socket.socket() as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]
