"""A sweep split across processes and machines: the process group, the data shards and the few collectives it needs.

`timm-snnet sweep` under `torchrun` (the env vars RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) joins a process
group: gloo on CPU, nccl on CUDA, where each rank uses `cuda:LOCAL_RANK`. Without those vars it is one process and
every collective here is a no-op, so the sweep runs one code path either way.

Split: by data shard, every rank evaluating every config on its own shard. Each shard is a run of *whole batches
of the one-process order* (`batch_shard`), so every image meets the very batch it meets in a one-process sweep, and
the per-config correct counts summed over the ranks (an integer all-reduce) are exactly the one-process counts, for
any number of ranks: no sample is dropped, padded or counted twice (no DistributedSampler). Splitting by config
instead would leave ranks idle whenever the configs do not divide evenly among them (23 configs for a tiny model,
costs that differ by 10x between configs, more ranks than configs on a few nodes), and a config would only be done
when its one rank is; with data shards every config finishes on all ranks at once, in order, so rank 0 records it
at once, and a restarted sweep resumes after the last recorded config. What it costs: one small all-reduce per
config, and ranks beyond the number of batches get no images (use a smaller --batch-size).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ['Ranks', 'join', 'batch_shard', 'env_rank', 'under_launcher']


def under_launcher() -> bool:
    """True when torchrun (or any launcher setting RANK and WORLD_SIZE) started this process."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def env_rank() -> int:
    """This process's global rank from the launcher's env (0 for a plain process)."""
    return int(os.environ.get('RANK', 0)) if under_launcher() else 0


def batch_shard(num_items: int, batch_size: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s share of `range(num_items)`: a contiguous run of whole `batch_size` batches of the one-process
    order (the last batch may be short, as in one process). Shards differ by at most one batch; together they cover
    every index once."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f'bad shard: batch_size={batch_size}, rank={rank}, world_size={world_size}')
    batches = -(-num_items // batch_size)
    lo, hi = rank * batches // world_size, (rank + 1) * batches // world_size
    return range(min(lo * batch_size, num_items), min(hi * batch_size, num_items))


@dataclass
class Ranks:
    """This process's place in the group; with `world_size == 1` and no group every collective is local."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    owned: bool = False  # this module initialised the group, so it destroys it
    comm_device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[int]) -> list[int]:
        """Integer sums over the ranks (int64, exact)."""
        if not self.distributed:
            return [int(v) for v in values]
        t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [int(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run a setup step on every rank; if it fails on any rank, it fails on all of them (no rank is left waiting
        in a collective): the failing rank raises its own error, the others a ValueError naming that rank."""
        try:
            yield
        except Exception as e:
            self._agree(e)
            raise
        self._agree(None)

    def _agree(self, error: Optional[BaseException]) -> None:
        if not self.distributed:
            return
        errors = self.gather(None if error is None else f'{type(error).__name__}: {error}')
        failed = [(r, e) for r, e in enumerate(errors) if e]
        if failed and error is None:
            r, e = failed[0]
            raise ValueError(f'rank {r} of {self.world_size} failed: {e}')

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def _rank_device(name: Optional[str], local_rank: int) -> torch.device:
    """The device of this rank: `cuda:LOCAL_RANK` for CUDA (an explicit index is refused), else the one asked for."""
    if name is None:
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f'bad --device {name!r}: {e}') from e
    if device.type != 'cuda':
        return device
    if device.index is not None:
        raise ValueError(f'--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda')
    if not torch.cuda.is_available():
        raise ValueError(f'--device {name} asked for CUDA, but torch sees no GPU; use --device cpu')
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f'LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} GPU(s): start at '
                         f'most that many processes per node (--nproc_per_node)')
    return torch.device('cuda', local_rank)


def join(device: Optional[str], timeout_s: float = 1800) -> tuple[Ranks, Optional[torch.device]]:
    """This process's `Ranks` and device. Under a launcher (or inside an initialised group) the group is joined:
    gloo on CPU, nccl on CUDA. Outside one, returns `(Ranks(), None)`: the caller resolves its device as before."""
    if dist.is_available() and dist.is_initialized():  # called from a program that runs its own group
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        dev = _rank_device(device, local_rank)
        nccl = dist.get_backend() == 'nccl'
        return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, True, False,
                     dev if nccl else torch.device('cpu')), dev
    if not under_launcher():
        return Ranks(), None
    if not dist.is_available():
        raise ValueError('started under a launcher (RANK/WORLD_SIZE set), but this torch has no torch.distributed')
    rank, world, local_rank = (int(os.environ.get(k, 0)) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'))
    dev = _rank_device(device, local_rank)
    backend = 'nccl' if dev.type == 'cuda' else 'gloo'
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                            **({'device_id': dev} if dev.type == 'cuda' else {}))
    return Ranks(rank, world, local_rank, True, True, dev if backend == 'nccl' else torch.device('cpu')), dev
