"""The paper's optimizer semantics: parameters off the sampled path get no update, on-path ones the reference update.

The reference is the loop the authors ran (DDP with find_unused_parameters): a copy of the model trained on the
same path through `forward_features` / `forward_head`, so parameters off the path never get a gradient.
"""
import copy
import gc
import os
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import TINY, tiny, tiny_input
from timm.optim import create_optimizer_v2
from timm.utils import NativeScaler, dispatch_clip_grad
from torch import nn

from timm_snnet import _training as training

NAME = 'snnet_deit_tsb'
CLASSES = 4
OPTIMIZERS = {  # what people train ViTs and ResNets with, as timm's create_optimizer_v2 builds them
    'adamw': dict(opt='adamw', foreach=False),
    'adamw_foreach': dict(opt='adamw', foreach=True),
    'adamw_fused': dict(opt='adamw', fused=True),
    'sgd_nesterov': dict(opt='sgd', momentum=0.9, nesterov=True),
    'lamb': dict(opt='lamb'),
    'lars': dict(opt='lars'),
    'lion': dict(opt='lion'),
}
TI_S, S_B = 8, 18  # a Ti -> S and an S -> B stitch of the tiny model (23 configs)


def _loss(out: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return F.cross_entropy(out, torch.randint(0, CLASSES, (len(out),), generator=torch.Generator().manual_seed(seed)))


def _warm(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    """Steps over every config at once, so every parameter has optimizer state (momentum) before the test step."""
    for s in range(steps):
        x = tiny_input(NAME, seed=100 + s)
        sum(_loss(model(x, stitch_id=k), s) for k in range(model.num_configs)).backward()
        opt.step()
        opt.zero_grad()


def _setup(opt_kwargs: dict, **model_kwargs):
    torch.manual_seed(0)
    model = tiny(NAME, num_classes=CLASSES, **model_kwargs).train()
    opt = create_optimizer_v2(model, lr=1e-2, weight_decay=0.05, **opt_kwargs)
    _warm(model, opt)
    ref, ref_opt = copy.deepcopy((model, opt))
    ref.off_path = 'zero'  # the reference runs plain forward_features / forward_head: no join, no hook bookkeeping
    return model, opt, ref, ref_opt


def _path_out(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    model.set_stitch(k)
    return model.forward_head(model.forward_features(x))


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    state = {n: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
             for n, p in model.named_parameters()}
    return dict(params={n: p.detach().clone() for n, p in model.named_parameters()}, state=state)


def _check(model, opt, ref, ref_opt, before: dict, off: set) -> None:
    """Off-path: parameters and optimizer state bit-identical; on-path: exactly the reference's parameters."""
    names = [n for n, _ in model.named_parameters()]
    assert off and len(off) < len(names)
    moved = 0
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        if n in off:
            assert torch.equal(p, before['params'][n]), f'{n} is off the path but changed'
            for k, v in opt.state[p].items():
                if torch.is_tensor(v):
                    assert torch.equal(v, before['state'][n][k]), f'{n}: optimizer state {k} moved off the path'
        else:
            assert torch.equal(p, q), f'{n}: on-path update differs from the reference'
            moved += not torch.equal(p, before['params'][n])
    assert moved > len(names) - len(off) - 5, 'on-path parameters were updated'


def _off_names(ref: nn.Module) -> set:
    return {n for n, p in ref.named_parameters() if p.grad is None}


@pytest.mark.parametrize('opt_name', sorted(OPTIMIZERS))
def test_off_path_bit_identical_on_path_equals_reference(opt_name):
    model, opt, ref, ref_opt = _setup(OPTIMIZERS[opt_name])
    before = _snapshot(model, opt)
    x = tiny_input(NAME, seed=1)
    for k in (TI_S, S_B, 0):  # three steps, momentum from the earlier steps everywhere
        opt.zero_grad()
        _loss(model(x, stitch_id=k)).backward()
        opt.step()
        ref_opt.zero_grad()
        _loss(_path_out(ref, x, k)).backward()
        off = _off_names(ref)
        ref_opt.step()
        _check(model, opt, ref, ref_opt, before, off)
        before = _snapshot(model, opt)


def test_v1_zero_mode_still_moves_off_path_weights():
    """`off_path='zero'` keeps the old behaviour: AdamW decays and moves parameters off the path."""
    model, opt, _, _ = _setup(OPTIMIZERS['adamw'], off_path='zero')
    before = _snapshot(model, opt)
    _loss(model(tiny_input(NAME, seed=1), stitch_id=S_B)).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    ti_head = dict(model.named_parameters())['anchors.0.head.weight']
    assert not torch.equal(ti_head, before['params']['anchors.0.head.weight'])


def test_no_process_group_off_path_not_in_graph():
    """Single process: parameters off the path get no gradient at all (they never enter the graph)."""
    model = tiny(NAME, num_classes=CLASSES).train()
    model(tiny_input(NAME), stitch_id=S_B).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and not any(n.startswith('anchors.0.') for n in grads)
    assert all(n.startswith(('anchors.1.', 'anchors.2.', 'stitch_layers.')) for n in grads)


def test_grad_accumulation_union_of_paths_and_set_to_none_false():
    """Two paths before one step: their union is on the path. Zero gradients left by `zero_grad(set_to_none=False)`
    do not count as a use."""
    model, opt, ref, ref_opt = _setup(OPTIMIZERS['adamw_foreach'])
    for p in model.parameters():  # as after a full step and zero_grad(set_to_none=False): zero gradients everywhere
        p.grad = torch.zeros_like(p)
    before = _snapshot(model, opt)
    for i, k in enumerate((TI_S, 1)):  # Ti -> S stitch, then S: B's parameters and Ti's head stay off
        _loss(model(tiny_input(NAME, seed=i), stitch_id=k) / 2).backward()
        _loss(_path_out(ref, tiny_input(NAME, seed=i), k) / 2).backward()
    off = _off_names(ref)
    assert any(n.startswith('anchors.2.') for n in off) and 'anchors.0.head.weight' in off
    opt.step()
    ref_opt.step()
    _check(model, opt, ref, ref_opt, before, off)


def test_sampled_training_and_clip_and_amp_scaler():
    """timm's train.py step without DDP: sampled stitch, NativeScaler (bf16 autocast on CPU), --clip-grad."""
    model, opt, ref, ref_opt = _setup(OPTIMIZERS['adamw'], anchor_share=0.5, stitch_seed=3)
    scaler, ref_scaler = NativeScaler(device='cpu'), NativeScaler(device='cpu')
    for step in range(3):
        before = _snapshot(model, opt)
        x = tiny_input(NAME, seed=step)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = _loss(model(x))
        k = model._step - 1
        scaler(loss, opt, clip_grad=0.5, parameters=model.parameters())
        opt.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            ref_loss = _loss(_path_out(ref, x, _draw(ref, k)))
        ref_scaler._scaler.scale(ref_loss).backward()
        off = _off_names(ref)
        ref_scaler._scaler.unscale_(ref_opt)
        dispatch_clip_grad([p for p in ref.parameters() if p.grad is not None], 0.5)
        ref_scaler._scaler.step(ref_opt)
        ref_scaler._scaler.update()
        ref_opt.zero_grad()
        _check(model, opt, ref, ref_opt, before, off)


def _draw(model: nn.Module, step: int) -> int:
    """The stitch the sampler drew at `step` (a pure function of seed and step)."""
    saved = model._step
    model._step = step
    k = model.sample_stitch()
    model._step = saved
    return k


def test_hook_ignores_other_modules_and_deleted_models():
    other = nn.Linear(3, 3)
    model = tiny(NAME, num_classes=CLASSES).train()
    opt = torch.optim.AdamW(list(model.parameters()) + list(other.parameters()), lr=1e-2, weight_decay=0.5)
    model(tiny_input(NAME), stitch_id=0).sum().backward()
    other.weight.grad = torch.zeros_like(other.weight)  # a zero gradient on another module: still updated (decay)
    w = other.weight.detach().clone()
    opt.step()
    assert not torch.equal(other.weight, w)
    n = len(training._LEDGERS)
    del model, opt
    gc.collect()
    assert len(training._LEDGERS) == n - 1, 'the hook holds no strong reference to the model'


def test_anchor_share_weights_and_errors():
    model = tiny(NAME, anchor_share=0.3)
    w = [b - a for a, b in zip([0.0] + model._cum_weights, model._cum_weights)]
    assert sum(w[:3]) == pytest.approx(0.3) and len(set(round(v, 12) for v in w[3:])) == 1
    draws = [model.sample_stitch() for _ in range(2000)]
    assert 0.25 < sum(d < 3 for d in draws) / len(draws) < 0.35
    for bad in (1.5, -0.1, float('nan'), True, '0.3'):
        with pytest.raises(ValueError, match=r'anchor_share .* \[0, 1\]'):
            tiny(NAME, anchor_share=bad)
    with pytest.raises(ValueError, match='pass one of anchor_share, sampling_weights'):
        tiny(NAME, anchor_share=0.3, sampling_weights=[1.0] * model.num_configs)
    with pytest.raises(ValueError, match='pass one of anchor_share, sampling_weights'):
        tiny(NAME, anchor_share=0.3, sampling='ros')
    with pytest.raises(ValueError, match="off_path must be 'skip' .* or 'zero'"):
        tiny(NAME, off_path='none')


def test_anchor_share_and_off_path_round_trip_save_for_hf(tmp_path):
    """--model-kwargs anchor_share=0.3 off_path=zero: recorded in config.json, restored by `local-dir:`."""
    from timm.models import save_for_hf

    model = tiny(NAME, num_classes=CLASSES, anchor_share=0.3, off_path='zero')
    save_for_hf(model, str(tmp_path))
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert loaded.anchor_share == 0.3 and loaded.off_path == 'zero'
    assert loaded._cum_weights == model._cum_weights
    default = tiny(NAME, num_classes=CLASSES)
    assert default._model_args['off_path'] == 'skip'
    assert default._model_args['anchor_share'] is None


# --- two gloo ranks, plain DDP as train.py wraps the model ----------------------------------------------------------
class _PathOnly(nn.Module):
    """The authors' loop: only the path runs, DDP finds the unused parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return _path_out(self.model, x, k)


def _ddp_worker(rank: int, port: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        model = tiny(NAME, num_classes=CLASSES).train()  # a process group, no DDP: the join allocates no gradient
        model(tiny_input(NAME), stitch_id=S_B).sum().backward()
        assert model.anchors[0].head.weight.grad is None and model.anchors[2].head.weight.grad is not None
        for bucket_view in (False, True):
            model, opt, ref, ref_opt = _setup(OPTIMIZERS['adamw_foreach'])  # same on both ranks
            ddp = DDP(model, gradient_as_bucket_view=bucket_view)
            ref_ddp = DDP(_PathOnly(ref), find_unused_parameters=True, gradient_as_bucket_view=bucket_view)
            for routes in ((S_B,), (TI_S, 0)):  # one path, then two accumulated (no_sync on the first)
                before = _snapshot(model, opt)
                for i, k in enumerate(routes):
                    last = i == len(routes) - 1
                    x = tiny_input(NAME, seed=10 * rank + i)  # different data per rank
                    with (ddp.no_sync() if not last else torch.enable_grad()):
                        _loss(ddp(x, stitch_id=k), rank).backward()
                    with (ref_ddp.no_sync() if not last else torch.enable_grad()):
                        _loss(ref_ddp(x, k), rank).backward()
                off = _off_names(ref)
                opt.step()
                ref_opt.step()
                _check(model, opt, ref, ref_opt, before, off)
                opt.zero_grad()
                ref_opt.zero_grad()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_ddp_two_ranks_off_path_identical_on_path_reference():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port,), nprocs=2, join=True)


def test_tiny_ids():
    model = tiny(NAME)
    configs = model.stitch_configs(TINY[NAME][1])
    assert (configs[TI_S].front, configs[TI_S].back) == (0, 1) and (configs[S_B].front, configs[S_B].back) == (1, 2)


def test_reset_classifier_new_heads_follow_the_rule():
    """New parameters (reset_classifier) are covered: the caches are rebuilt."""
    model = tiny(NAME, num_classes=CLASSES).train()
    model(tiny_input(NAME), stitch_id=S_B).sum().backward()  # caches hold the old heads
    model.reset_classifier(7)
    model.zero_grad()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradients everywhere, as zero_grad(set_to_none=False) leaves them
    head = model.anchors[0].head.weight.detach().clone()
    model(tiny_input(NAME), stitch_id=S_B).sum().backward()
    opt.step()
    assert torch.equal(model.anchors[0].head.weight, head)
    assert not opt.state[model.anchors[0].head.weight]
