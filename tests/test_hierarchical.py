"""Swin, ResNet and ResNet -> Swin SN-Nets: enumeration and costs against reference/, paths, BatchNorm, DDP.

Enumeration, FLOPs and paths are checked at full size (paths on the meta device); the generic engine tests in
test_engine.py run on the tiny variants in conftest.TINY.
"""
import itertools
import json
import os
import warnings
from typing import Callable

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY, tiny, tiny_input
from fvcore.nn import FlopCountAnalysis
from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timm_snnet._configs import assign_layers, enumerate_configs
from timm_snnet._flops import sdpa_flop_jit
from timm_snnet._releases import REFERENCE_DIR
from timm_snnet._stitching import ConvStitch, LinearStitch

REFERENCE = REFERENCE_DIR  # the authors' published per-config results (package data)
OFFICIAL = {
    'snnet_swin_tsb': 'snnet_swin_tsb',
    'snnet_resnet': 'snnet_resnet_18_50',
    'snnet_resnet18_swin_ti': 'snnet_resnet18_swin_ti',
}
SWIN_DEPTHS = ((2, 2, 6, 2), (2, 2, 18, 2), (2, 2, 18, 2))
STAGES = {'snnet_swin_tsb': (0, 1, 2), 'snnet_resnet': (1, 2), 'snnet_resnet18_swin_ti': (1, 2)}
RUNS = (SwinTransformerBlock, PatchMerging, BasicBlock, Bottleneck, LinearStitch, ConvStitch)

pytestmark = pytest.mark.slow


def swin_undercount(cfg_id: int) -> int:
    """The authors' Swin params leave out the front anchor's patch merging: stage 1 (ids 5-6), stages 1+2 (7-40)."""
    return 0 if cfg_id < 5 else 74_496 if cfg_id < 7 else 370_944


def official(name: str) -> list[dict]:
    path = REFERENCE / f'{OFFICIAL[name]}.official.jsonl'
    if not path.exists():
        pytest.skip(f'reference file {path} not found')
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def full() -> Callable[[str], nn.Module]:
    """Full-size models, each built (and its table computed) once, on demand."""
    cache = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = timm.create_model(name).eval()
        return cache[name]
    return get


def depths(anchor: nn.Module) -> tuple[int, ...]:
    if isinstance(anchor, SwinTransformer):
        return tuple(len(stage.blocks) for stage in anchor.layers)
    return tuple(len(getattr(anchor, f'layer{s}')) for s in range(1, 5))


def readme_configs(anchor_depths, stages) -> list[tuple]:
    """(front, back, stage, j, k) as reference/README.md lists them: anchors, then stage, pair, back block ascending."""
    out = [(a, a, None, None, None) for a in range(len(anchor_depths))]
    for s in stages:
        for f in range(len(anchor_depths) - 1):
            lf, lb = anchor_depths[f][s], anchor_depths[f + 1][s]
            for b in range(lb):
                a = b - 1 if lf == lb else b * lf // lb
                if 0 <= a < b:
                    out.append((f, f + 1, s, a, b))
    return out


def stage_runs(anchor: nn.Module, s: int, blocks: slice, merge: bool) -> list[str]:
    """Names of the patch merging (if it runs) and the blocks of stage s, by timm's own structure."""
    if isinstance(anchor, SwinTransformer):
        stage = anchor.layers[s]
        first = [f'layers.{s}.downsample'] if merge and isinstance(stage.downsample, PatchMerging) else []
        return first + [f'layers.{s}.blocks.{i}' for i in range(len(stage.blocks))][blocks]
    return [f'layer{s + 1}.{i}' for i in range(len(getattr(anchor, f'layer{s + 1}')))][blocks]


def readme_path(model: nn.Module, c) -> list[str]:
    """Blocks, patch merging and stitching layer a config runs, in order, as reference/README.md describes."""
    every = slice(None)
    if c.is_anchor:
        a = model.anchors[c.front]
        return [f'anchors.{c.front}.{n}' for s in range(4) for n in stage_runs(a, s, every, True)]
    front, back = model.anchors[c.front], model.anchors[c.back]
    runs = [f'anchors.{c.front}.{n}' for s in range(c.stage) for n in stage_runs(front, s, every, True)]
    runs += [f'anchors.{c.front}.{n}' for n in stage_runs(front, c.stage, slice(c.front_block + 1), True)]
    runs += [f'stitch_layers.{c.layer}']
    runs += [f'anchors.{c.back}.{n}' for n in stage_runs(back, c.stage, slice(c.back_block, None), False)]
    return runs + [f'anchors.{c.back}.{n}' for s in range(c.stage + 1, 4) for n in stage_runs(back, s, every, True)]


# --- enumeration and costs against the reference ----------------------------------------------------------------------
@pytest.mark.parametrize('name', list(OFFICIAL))
def test_enumeration_matches_reference(full, name):
    model, rows = full(name), official(name)
    configs = model.stitch_configs()
    assert [c.id for c in configs] == [r['cfg_id'] for r in rows] == list(range(len(rows)))
    expected = readme_configs([depths(a) for a in model.anchors], STAGES[name])
    assert [(c.front, c.back, c.stage, c.front_block, c.back_block) for c in configs] == expected
    for c, row in zip(configs, rows):  # fvcore counts reproduce the authors' exactly
        assert round(c.gflops * 1e9) == row['flops'], f'config {c.id}: {c.gflops * 1e9:.0f} vs {row["flops"]}'
        if name == 'snnet_swin_tsb':
            assert c.params == row['params'] + swin_undercount(c.id), f'config {c.id} params'


def test_enumeration_counts():
    assert len(readme_configs(SWIN_DEPTHS, (0, 1, 2))) == 3 + 2 + 2 + 17 + 17
    resnet = readme_configs(((2, 2, 2, 2), (3, 4, 6, 3)), (1, 2))
    assert [c[2:] for c in resnet[2:]] == [(1, 0, 1), (1, 1, 2), (1, 1, 3),
                                           (2, 0, 1), (2, 0, 2), (2, 1, 3), (2, 1, 4), (2, 1, 5)]
    assert all(k > 0 for *_, k in resnet[2:])  # never into a stage's first (downsampling) block


class _Call(nn.Module):
    """One config as a plain module, for an fvcore count independent of the cached table."""

    def __init__(self, model: nn.Module, stitch_id: int):
        super().__init__()
        self.model, self.stitch_id = model, stitch_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, stitch_id=self.stitch_id)


@pytest.mark.parametrize('name, ids', [
    ('snnet_swin_tsb', (3, 6, 19)), ('snnet_resnet', (2, 8)), ('snnet_resnet18_swin_ti', (2, 6))])
def test_flops_table_equals_fvcore_of_forward(full, name, ids):
    model = full(name)
    table = model.stitch_configs()
    x = torch.zeros(1, 3, 224, 224)
    for k in ids:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            analysis = FlopCountAnalysis(_Call(model, k), x)
            analysis.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
            analysis.unsupported_ops_warnings(False)
            total = analysis.total()
        assert total == round(table[k].gflops * 1e9), f'config {k}'


@pytest.mark.parametrize('name', list(OFFICIAL))
def test_each_config_runs_the_readme_path(full, name):
    """Forward hooks: the blocks, patch merging and stitching layer each config runs, in order; its params."""
    table = full(name).stitch_configs()
    model = timm.create_model(name, device='meta').eval()
    names = {m: n for n, m in model.named_modules()}
    calls: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in model.modules()]
    x = torch.empty(1, 3, 224, 224, device='meta')
    try:
        for c in table:
            calls.clear()
            model(x, stitch_id=c.id)
            assert [names[m] for m in calls if isinstance(m, RUNS)] == readme_path(model, c), model.describe(c)
            params = sum(p.numel() for m in set(calls) for p in m.parameters(recurse=False))
            assert params == c.params, f'config {c.id}: {params} params run, table says {c.params}'
    finally:
        for h in handles:
            h.remove()


# --- stitching layers -------------------------------------------------------------------------------------------------
def test_stitching_layer_types():
    for name, cls, out_layout in (('snnet_swin_tsb', LinearStitch, None), ('snnet_resnet', ConvStitch, 'nchw'),
                                  ('snnet_resnet18_swin_ti', ConvStitch, 'nhwc')):
        layers = tiny(name, device='meta').stitch_layers
        assert all(type(layer) is cls and getattr(layer, 'out_layout', None) == out_layout for layer in layers)


def test_default_layers_one_per_front_block(full):
    stitches = [c for c in full('snnet_swin_tsb').stitch_configs() if not c.is_anchor]
    owner = {}
    for c in stitches:
        assert owner.setdefault(c.layer, (c.front, c.stage, c.front_block)) == (c.front, c.stage, c.front_block)
    assert len(owner) == len({(c.front, c.stage, c.front_block) for c in stitches}) == 27


def authors_assignment(configs, anchor_depths) -> list[int]:
    """The authors' layer ids: by list position inside each (pair, stage), `Lb // Lf` consecutive stitches a layer."""
    out, base = [], 0
    stitches = [c for c in configs if not c.is_anchor]
    for (f, b, s), group in itertools.groupby(stitches, key=lambda c: (c.front, c.back, c.stage)):
        per = max(1, anchor_depths[b][s] // anchor_depths[f][s])
        ids = [base + i // per for i in range(len(list(group)))]
        out += ids
        base = ids[-1] + 1
    return out


def test_authors_layer_assignment_is_expressible():
    configs, layers = enumerate_configs(SWIN_DEPTHS, (0, 1, 2), 'stage')
    assignment = authors_assignment(configs, SWIN_DEPTHS)
    by_list, _ = assign_layers(configs, layers, assignment)
    layer = {(c.stage, c.front, c.front_block, c.back_block): c.layer for c in by_list if not c.is_anchor}
    # README: Swin Ti -> S stage 2, (0,1), (0,2), (1,3) share one layer; (1,4), (1,5), (2,6) the next
    assert layer[2, 0, 0, 1] == layer[2, 0, 0, 2] == layer[2, 0, 1, 3] != layer[2, 0, 1, 4]
    assert layer[2, 0, 1, 4] == layer[2, 0, 1, 5] == layer[2, 0, 2, 6]
    model = timm.create_model('snnet_swin_tsb', layer_assignment=assignment, device='meta')
    assert len(model.stitch_layers) == max(assignment) + 1 == 2 + 2 + 6 + 17
    # on a real (tiny) model the table follows the assignment: Ti -> S stage 2 is 2 -> 4 blocks there
    tiny_depths = [a['depths'] for a in TINY['snnet_swin_tsb'][0]['anchor_kwargs']]
    configs, _ = enumerate_configs(tiny_depths, (0, 1, 2), 'stage')
    assignment = authors_assignment(configs, tiny_depths)
    assert assignment != [c.layer for c in configs if not c.is_anchor]  # differs from one layer per front block
    model = tiny('snnet_swin_tsb', layer_assignment=assignment)
    assert [c.layer for c in model.stitch_configs() if not c.is_anchor] == assignment


# --- anchors: other lists, pretrained cfgs, input checks --------------------------------------------------------------
def test_resnet_any_ordered_anchor_list():
    small = [dict(channels=(8, 16, 32, 64), stem_width=8)] * 3
    model = timm.create_model('snnet_resnet', anchors=('resnet18', 'resnet34', 'resnet50'), anchor_kwargs=small).eval()
    configs = model.stitch_configs()
    expected = readme_configs([(2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3)], (1, 2))
    assert [(c.front, c.back, c.stage, c.front_block, c.back_block) for c in configs] == expected
    assert len(configs) == 3 + (3 + 3) + (5 + 5)
    assert model.pretrained_cfg['first_conv'] == tuple(f'anchors.{i}.conv1' for i in range(3))
    assert model.pretrained_cfg['classifier'] == tuple(f'anchors.{i}.fc' for i in range(3))
    x = tiny_input('snnet_resnet')
    with torch.no_grad():
        assert all(model(x, stitch_id=k).shape == (2, 1000) for k in range(len(configs)))


@pytest.mark.parametrize('name, tags', [
    ('snnet_swin_tsb', ('ms_in22k_ft_in1k',) * 3),
    ('snnet_resnet', ('tv_in1k', 'a1_in1k')),
    ('snnet_resnet18_swin_ti', ('tv_in1k', 'ms_in1k')),
])
def test_pretrained_cfg_names_anchors(name, tags):
    model = timm.create_model(name, device='meta')
    cfg, anchors = model.pretrained_cfg, [m.pretrained_cfg for m in model.anchors]
    assert tuple(a['tag'] for a in anchors) == tags  # the weights pretrained_anchors=True loads
    assert all(f"{a['architecture']}.{a['tag']}" in ' '.join(cfg['notes']) for a in anchors)
    assert cfg['first_conv'] == tuple(f"anchors.{i}.{a['first_conv']}" for i, a in enumerate(anchors))
    assert cfg['classifier'] == tuple(f"anchors.{i}.{a['classifier']}" for i, a in enumerate(anchors))
    assert all((cfg['mean'], cfg['std']) == (a['mean'], a['std']) for a in anchors)
    assert (cfg['crop_pct'], cfg['interpolation']) == (anchors[-1]['crop_pct'], anchors[-1]['interpolation'])
    assert cfg['input_size'] == (3, 224, 224)
    assert cfg['fixed_input_size'] == any(a['fixed_input_size'] for a in anchors)  # Swin's windows are fixed
    state = model.state_dict()
    assert all(f'{n}.weight' in state for n in cfg['first_conv'] + cfg['classifier'])


def test_swin_wrong_image_size_is_a_clear_value_error():
    model = timm.create_model('snnet_swin_tsb', device='meta').eval()
    for k in (0, 5, 40):
        with pytest.raises(ValueError, match=r'input size \(256, 256\) does not match .* image size \(224, 224\)'):
            model(torch.empty(1, 3, 256, 256, device='meta'), stitch_id=k)


def test_resnet_front_checks_the_swin_back():
    model = tiny('snnet_resnet18_swin_ti').eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert model(x, stitch_id=0).shape == (1, 1000)  # ResNet-18 alone takes any size
        for k in range(1, model.num_configs):
            with pytest.raises(ValueError, match='fixed image size'):
                model(x, stitch_id=k)
    resnet = tiny('snnet_resnet').eval()
    with torch.no_grad():
        assert all(resnet(x, stitch_id=k).shape == (1, 1000) for k in range(resnet.num_configs))


# --- BatchNorm and DDP ------------------------------------------------------------------------------------------------
def _bn_means(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_batchnorm_updates_only_the_sampled_path():
    model = tiny('snnet_resnet').train()
    x = tiny_input('snnet_resnet', 4)
    before = _bn_means(model)
    model.stitch_configs()  # the FLOPs table runs a zero image: it must not touch running stats
    assert all(torch.equal(v, _bn_means(model)[n]) for n, v in before.items())
    table = model.stitch_configs()
    for k, per_call in ((7, False), (4, True), (0, False)):
        weights = [0.0] * model.num_configs
        weights[k] = 1.0
        model.set_sampling_weights(weights)
        before = _bn_means(model)
        model(x, stitch_id=k if per_call else None).mean().backward()
        changed = {n for n, v in _bn_means(model).items() if not torch.equal(v, before[n])}
        path = readme_path(model, table[k]) + [f'anchors.{table[k].front}.bn1']  # + the stem's BatchNorm
        on_path = {n for n in before if any(n == p or n.startswith(p + '.') for p in path)}
        assert changed == on_path, f'config {k}: {sorted(changed ^ on_path)[:4]}'


def _ddp_worker(rank: int, world: int, store: str, out: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different init and data per rank: DDP must make them agree
        model = tiny('snnet_resnet', num_classes=5, stitch_seed=3).train()
        sampled = []
        draw = model.sample_stitch
        model.sample_stitch = lambda: sampled.append(draw()) or sampled[-1]
        ddp = DistributedDataParallel(model, broadcast_buffers=True)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        for _ in range(steps):
            x, y = tiny_input('snnet_resnet', 4, seed=100 * rank + len(sampled)), torch.randint(0, 5, (4,))
            loss = nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(dict(sampled=sampled, params=params, step=int(model.sample_step)), out.format(rank=rank))
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_ranks_resnet(tmp_path):
    steps, out = 6, str(tmp_path / 'rank{rank}.pt')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'store'), out, steps), nprocs=2, join=True)
    r0, r1 = (torch.load(out.format(rank=r), weights_only=True) for r in range(2))
    assert r0['sampled'] == r1['sampled'] and len(r0['sampled']) == steps == r0['step']
    assert len(set(r0['sampled'])) > 1
    assert torch.equal(r0['params'], r1['params'])


def test_feature_dim_follows_the_back_anchor():
    model = tiny('snnet_resnet18_swin_ti').eval()
    x = tiny_input('snnet_resnet18_swin_ti')
    for k, dim in ((0, 1), (1, -1), (4, -1)):  # ResNet NCHW; Swin NHWC
        model.set_stitch(k)
        assert model.feature_dim == dim
        assert model.forward_features(x).shape[dim] == model.num_features
