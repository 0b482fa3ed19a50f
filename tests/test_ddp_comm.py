"""Under DDP only the sampled paths are communicated (issue #24), and training stays bit-identical.

Two gloo ranks (torch.multiprocessing spawn). The same SN-Net trains twice per rank, from the same weights and data:
with the communication hook the SN-Net installs on the plain DistributedDataParallel wrapping it, and with DDP's own
full all-reduce (the hook refused up front). Steps cover anchors and stitches, gradient accumulation under
`no_sync`, bf16 autocast with a CPU GradScaler, and clip-grad; afterwards parameters and AdamW state must be equal
bit for bit, and the hook must have sent fewer bytes on a Ti-path step than a full step.
"""
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import tiny, tiny_input
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel as DDP

from timm_snnet import _training as training

NAME = 'snnet_deit_tsb'
CLASSES = 4
TI, S, B, TI_S, S_B = 0, 1, 2, 8, 18  # anchors and a Ti -> S / S -> B stitch of the tiny model (23 configs)
# one list per optimizer step: micro-steps under no_sync, the last one synchronises; in ALL_SYNC steps every
# micro-step synchronises (two all-reduces before one optimizer step)
SCHEDULE = [(TI,), (TI_S, S), (S_B,), (B, TI), (TI,), (TI_S,), (S, S_B, TI), (TI, S_B)]
ALL_SYNC = {7}
BUCKET_MB = 0.05  # the tiny model (0.8 MB of gradients) in ~17 buckets, as DeiT-Ti/S/B (470 MB) fills 25 MB ones


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _train(rank: int, hooked: bool, bucket_view: bool) -> dict:
    torch.manual_seed(0)
    model = tiny(NAME, num_classes=CLASSES).train()
    ddp = DDP(model, bucket_cap_mb=BUCKET_MB, gradient_as_bucket_view=bucket_view)
    if not hooked:
        training._COMMS[ddp] = None  # as after a refusal: DDP's own full all-reduce
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.05)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10)
    sent = []
    for step, routes in enumerate(SCHEDULE):
        comm = training.path_comm(ddp)
        before = (comm.bytes_reduced, comm.bytes_full) if comm else (0, 0)
        for i, k in enumerate(routes):
            x = tiny_input(NAME, seed=1000 * rank + 10 * step + i)  # different data on each rank
            y = torch.randint(0, CLASSES, (len(x),), generator=torch.Generator().manual_seed(rank + step))
            with ddp.no_sync() if i < len(routes) - 1 and step not in ALL_SYNC else torch.enable_grad():
                with torch.autocast('cpu', dtype=torch.bfloat16):
                    loss = F.cross_entropy(ddp(x, stitch_id=k), y) / len(routes)
                scaler.scale(loss).backward()
            if step == 0 and hooked and not bucket_view:  # off the path: zero views of the bucket, not copies
                grad = model.anchors[2].head.weight.grad
                assert grad._base is not None and not grad.any()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        comm = training.path_comm(ddp)
        if comm:
            sent.append((comm.bytes_reduced - before[0], comm.bytes_full - before[1]))
    state = {f'p.{n}': p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        for k, v in opt.state[p].items():
            state[f's.{n}.{k}'] = v.detach().clone().reshape(-1)
    return dict(state=state, sent=sent, comm=training.path_comm(ddp), model=model)


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        for bucket_view in (False, True):
            full = _train(rank, hooked=False, bucket_view=bucket_view)
            hooked = _train(rank, hooked=True, bucket_view=bucket_view)
            assert full['comm'] is None and hooked['comm'] is not None, 'the hook is installed at the first forward'
            a, b = full['state'], hooked['state']
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), f'{k} differs from the full all-reduce (bucket_view={bucket_view})'
            # off-path parameters (B on no step) got no optimizer state, as the paper's semantics want
            assert not any(k.startswith('s.anchors.2.') for k in b) or any(B in r or S_B in r for r in SCHEDULE)
            save_file(b, f'{out}/rank{rank}.{int(bucket_view)}.safetensors')
            comm, sent = hooked['comm'], hooked['sent']
            assert comm.syncs == len(SCHEDULE) + 1 and comm.buckets_skipped > 0
            ti_param_bytes = 4 * sum(p.numel() for p in hooked['model'].anchors[0].parameters())
            ti, full_step = sent[0], sent[0][1]  # step 0: the Ti anchor alone
            assert ti_param_bytes <= ti[0] < full_step / 4, (ti, full_step, ti_param_bytes)
            assert sent[4] == ti  # the same path sends the same bytes
            assert sent[1][0] > ti[0] and sent[2][0] > ti[0]  # Ti -> S + S, S -> B: more
            assert sent[3][0] > sent[2][0] or sent[3][0] == full_step  # B + Ti (accumulated): nearly everything
        # off_path='zero' keeps DDP's full all-reduce: no hook
        model = tiny(NAME, num_classes=CLASSES, off_path='zero').train()
        ddp = DDP(model, bucket_cap_mb=BUCKET_MB)
        ddp(tiny_input(NAME), stitch_id=TI).sum().backward()
        assert training.path_comm(ddp) is None
        # a DDP that has a communication hook already keeps it: one line logged, training as before
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        model = tiny(NAME, num_classes=CLASSES).train()
        ddp = DDP(model, bucket_cap_mb=BUCKET_MB)
        ddp.register_comm_hook(None, allreduce_hook)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger(training.__name__).addHandler(handler)
        for _ in range(2):
            ddp(tiny_input(NAME), stitch_id=TI).sum().backward()
        logging.getLogger(training.__name__).removeHandler(handler)
        assert training.path_comm(ddp) is None
        assert len([r for r in records if 'already has a communication hook' in r.getMessage()]) == 1
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_hook_bit_identical_to_full_all_reduce_and_sends_less(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for bucket_view in (0, 1):
        r0, r1 = (load_file(str(tmp_path / f'rank{r}.{bucket_view}.safetensors')) for r in (0, 1))
        assert r0.keys() == r1.keys()
        assert all(torch.equal(r0[k], r1[k]) for k in r0), 'ranks diverged'


def test_no_process_group_no_hook_state():
    """Single process: nothing to install, training as before."""
    model = tiny(NAME, num_classes=CLASSES).train()
    model(tiny_input(NAME), stitch_id=TI).sum().backward()
    assert model.anchors[2].head.weight.grad is None
    assert all(training._COMMS.get(k) is None for k in list(training._COMMS.keys()))
