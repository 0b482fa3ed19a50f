"""Multi-process training on 127.0.0.1 with gloo: both ranks train the same stitch each step, and stay identical.

train.py wraps the model in plain DistributedDataParallel (no find_unused_parameters, broadcast_buffers=True) and
seeds each rank differently; the SN-Net sampler must still pick the same stitch on every rank without talking.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY, tiny
from image_folder import make_image_folder
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.timeout(300)

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _record_stitches(model: torch.nn.Module) -> list:
    """Record each training stitch the model samples (an instance attribute shadows the method)."""
    stitches, sample = [], model.sample_stitch

    def recording() -> int:
        stitches.append(sample())
        return stitches[-1]

    model.sample_stitch = recording
    return stitches


def _trained_state(model: torch.nn.Module) -> dict:
    """Parameters and the sampler step. BatchNorm running stats are rank-local between DDP's forward broadcasts."""
    return {**{n: p.detach().contiguous() for n, p in model.named_parameters()}, 'sample_step': model.sample_step}


def _assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'{k} differs between ranks'


# --- plain DDP, as train.py wraps the model (torch.multiprocessing spawn) ---------------------------------------------
def _plain_ddp_worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        for name in sorted(TINY):
            torch.manual_seed(0)  # same init on every rank (DDP also broadcasts it)
            model = tiny(name, num_classes=4)
            torch.manual_seed(42 + rank)  # train.py: utils.random_seed(args.seed, args.rank)
            ddp = DistributedDataParallel(model, broadcast_buffers=True)  # CPU: no device_ids
            opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.05)
            stitches = _record_stitches(model)
            ddp.train()
            for _ in range(STEPS):
                x = torch.randn(2, *TINY[name][1])  # different data on each rank
                loss = torch.nn.functional.cross_entropy(ddp(x), torch.randint(0, 4, (2,)))
                loss.backward()
                opt.step()
                opt.zero_grad()
            del model.sample_stitch
            save_file(_trained_state(model), f'{out_dir}/{name}.{rank}.safetensors')
            Path(f'{out_dir}/{name}.{rank}.json').write_text(json.dumps(dict(stitches=stitches, loss=loss.item())))
    finally:
        dist.destroy_process_group()


def test_plain_ddp_every_model_same_stitches_identical_params(tmp_path: Path) -> None:
    mp.spawn(_plain_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for name in sorted(TINY):
        runs = [json.loads((tmp_path / f'{name}.{r}.json').read_text()) for r in range(WORLD)]
        assert len(runs[0]['stitches']) == STEPS and runs[0]['stitches'] == runs[1]['stitches'], name
        assert all(torch.isfinite(torch.tensor(r['loss'])) for r in runs)
        _assert_same_params(*(load_file(str(tmp_path / f'{name}.{r}.safetensors')) for r in range(WORLD)))


# --- torchrun -m timm_snnet.cli.run: train.py's distributed code path ----------------------------------------------
DDP_SCRIPT = '''
"""train.py's distributed path through timm's library, launched by torchrun -m timm_snnet.cli.run."""
import argparse, json, os
import torch
from timm import utils
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.models import create_model
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask
from safetensors.torch import save_file

parser = argparse.ArgumentParser()
parser.add_argument('--data-dir'); parser.add_argument('--output'); parser.add_argument('--model')
parser.add_argument('--initial-checkpoint', default='')
parser.add_argument('--img-size', type=int, default=None)
parser.add_argument('--device', default='cpu'); parser.add_argument('--seed', type=int, default=42)
parser.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
args = parser.parse_args()

device = utils.init_distributed_device(args)
assert args.distributed and args.world_size == 2, 'launched by torchrun with 2 processes'
utils.random_seed(args.seed, args.rank)
model = create_model(args.model, pretrained=False, in_chans=3, num_classes=4, drop_rate=0., drop_path_rate=0.1,
                     drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
                     checkpoint_path=args.initial_checkpoint, **args.model_kwargs)
data_config = resolve_data_config(vars(args), model=model)
model.to(device=device)
dataset = create_dataset('', root=args.data_dir, split='train', is_training=True, batch_size=4, seed=args.seed)
loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=4, is_training=True,
                       mean=data_config['mean'], std=data_config['std'], num_workers=0, distributed=True,
                       device=device, use_prefetcher=True)
task = ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), device=device, verbose=False)
optimizer = create_optimizer_v2(task.get_trainable_module(), opt='adamw', lr=1e-3, weight_decay=0.05,
                                layer_decay=0.75)
scheduler, epochs = create_scheduler_v2(optimizer, sched='cosine', num_epochs=1, warmup_epochs=0,
                                        updates_per_epoch=len(loader))
task.setup_ema(decay=0.9)
# train.py: task.prepare_distributed(device_ids=[device], broadcast_buffers=not args.no_ddp_bb).
# torch's DDP refuses device_ids for CPU modules, so on CPU (gloo) it is None; everything else is the same.
task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None, broadcast_buffers=True)
stitches, targets, sample = [], [], model.sample_stitch
model.sample_stitch = lambda: stitches.append(sample()) or stitches[-1]
task.get_trainable_module().train()
loader.sampler.set_epoch(0)
for step, (input, target) in enumerate(loader):
    loss = task(input, target)['loss']
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    task.update_ema(step=step + 1)
    scheduler.step_update(num_updates=step + 1)
    targets.append(target.tolist())
del model.sample_stitch
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f'{args.output}/rank{args.rank}.safetensors')
with open(f'{args.output}/rank{args.rank}.json', 'w') as f:
    json.dump(dict(stitches=stitches, targets=targets, loss=loss.item(),
                   ema_step=int(task.get_trainable_module(ema=True).module.sample_step)), f)
torch.distributed.destroy_process_group()
'''


def test_torchrun_timm_snnet_run_trains_in_lockstep(tmp_path: Path) -> None:
    from timm_snnet._evaluate import init_checkpoint

    name = 'snnet_deit_tsb'
    data = make_image_folder(tmp_path / 'data', classes=4, train=6, val=1, size=32)
    init = init_checkpoint(name, data, tmp_path / 'init.safetensors', model_kwargs=TINY[name][0], num_classes=4,
                           num_images=8, workers=0, progress=False)
    script = tmp_path / 'ddp_train.py'
    script.write_text(DDP_SCRIPT)
    kwargs = [f'{k}={v!r}' for k, v in TINY[name][0].items()]
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={WORLD}', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', '-m', 'timm_snnet.cli.run', str(script), '--data-dir', str(data),
           '--output', str(tmp_path), '--model', name, '--initial-checkpoint', str(init),
           '--img-size', str(TINY[name][1][-1]), '--model-kwargs', *kwargs]
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(WORLD)]
    assert runs[0]['stitches'] == runs[1]['stitches'] and len(runs[0]['stitches']) == 3  # 24 images / (2 x 4)
    assert runs[0]['targets'] != runs[1]['targets'], 'ranks read different shards'
    assert runs[0]['ema_step'] == runs[1]['ema_step'] == 3
    _assert_same_params(*(load_file(str(tmp_path / f'rank{r}.safetensors')) for r in range(WORLD)))
