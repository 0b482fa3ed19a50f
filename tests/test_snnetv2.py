"""SN-Netv2 in the engine: two-way enumeration and FLOPs against the authors' S -> L results, the blocks each config
runs, low-rank stitching layers, resource-constrained sampling, the v2 converter and the DDP training contract."""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from timm.utils import ParseKwargs

from timm_snnet import save_snnet
from timm_snnet._configs import two_way_configs
from timm_snnet._convert import ConversionError, convert_official_v2, official_stitch_table
from timm_snnet._releases import HUB_RELEASES
from timm_snnet._sampling import flops_groups, ros_weights
from timm_snnet._stitching import LinearStitch, LowRankLinearStitch
from timm_snnet.cli import main as cli

REFERENCE = Path(__file__).parents[1] / 'timm_snnet' / 'reference' / 'snnetv2_deit3_s_l.official.jsonl'
ROWS = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
DS, DL = 12, 24
# DeiT-III S/L classes and depths (12 / 24), tiny widths
TINY_V2 = dict(img_size=32, anchor_kwargs=[dict(patch_size=8, embed_dim=e, num_heads=2) for e in (16, 32)])
NAMES = {'S': 0, 'L': 1}


def tiny_v2(**kwargs) -> torch.nn.Module:
    return timm.create_model('snnetv2_deit3_s_l', **{**TINY_V2, 'stitch_rank': 4, **kwargs})


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def reference_route(row_path: str) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Segments (anchor, first block, last block) and our stitching-layer ids, from the authors' `path` field.

    Layers: SL f -> f, LS m -> ds + m (small -> large first, as the authors' `stitch_layers.0` then `.1`)."""
    if row_path.startswith('anchor'):
        a = NAMES[row_path[-1]]
        return [(a, 0, (DS, DL)[a] - 1)], []
    segments = [(NAMES[a], int(lo), int(hi)) for a, lo, hi in re.findall(r'([SL])\[(\d+)-(\d+)\]', row_path)]
    layers = [int(i) + DS * (d == 'LS') for d, i in re.findall(r'>(SL|LS)(\d+)>', row_path)]
    return segments, layers


# --- enumeration and FLOPs against the authors' S -> L file -----------------------------------------------------------
def test_two_way_enumeration_reproduces_the_authors_ids():
    configs, layers = two_way_configs([[DS], [DL]])
    assert len(configs) == 135 and len(layers) == 23  # 12 SL + 11 LS layers
    assert [(s.front, s.back) for s in layers] == [(0, 1)] * 12 + [(1, 0)] * 11
    assert [r['cfg_id'] for r in ROWS] == [k for k in range(135) if k != 13]  # id 13 is built, never evaluated
    for row in ROWS:
        c = configs[row['cfg_id']]
        segments, route_layers = reference_route(row['path'])
        if c.is_anchor:
            assert segments == [(c.front, 0, (DS, DL)[c.front] - 1)]
            continue
        ours = [(c.front, 0, c.front_block)]
        last = (DS, DL)[c.back] - 1
        if c.is_round_trip:
            ours += [(c.back, c.back_block, c.return_block), (c.front, c.resume_block, (DS, DL)[c.front] - 1)]
        else:
            ours += [(c.back, c.back_block, last)]
        assert (ours, [c.layer] + [c.return_layer] * c.is_round_trip) == (segments, route_layers), row['path']
    c13 = configs[13]  # the whole small anchor, SL11, then the large anchor's norm and head
    assert (c13.front, c13.front_block, c13.layer, c13.back_block, c13.is_round_trip) == (0, 11, 11, DL, False)


def test_two_way_counts_for_equal_depths_and_bad_depths():
    configs, layers = two_way_configs([[12], [12]])  # S -> B: r = 1
    assert len(configs) == 135 and len(layers) == 23
    assert (configs[2].front_block, configs[2].back_block, configs[14].front_block, configs[14].back_block) == \
        (0, 1, 0, 1)
    with pytest.raises(ValueError, match='multiple of the small'):
        two_way_configs([[12], [18]])
    with pytest.raises(ValueError, match='two single-stage anchors'):
        two_way_configs([[4], [8], [16]])


@pytest.fixture(scope='module')
def full_s_l():
    """Full-size SN-Netv2 S -> L, uninitialised memory (FLOPs need shapes only)."""
    torch.set_num_threads(1)
    return timm.create_model('snnetv2_deit3_s_l', device='meta').to_empty(device='cpu')


def test_full_size_flops_match_reference(full_s_l):
    configs = full_s_l.stitch_configs()
    for row in ROWS:
        assert configs[row['cfg_id']].gflops * 1e9 == pytest.approx(row['flops'], rel=1e-3), row['path']
    assert configs[13].gflops == pytest.approx(4.687, abs=1e-3)  # S + SL11 + L norm/head (the authors' app: "= 0")
    assert full_s_l.pretrained_cfg['crop_pct'] == 1.0 and full_s_l.pretrained_cfg['input_size'] == (3, 224, 224)

    def count(anchor: int, prefixes: tuple[str, ...]) -> int:
        return sum(p.numel() for n, p in full_s_l.anchors[anchor].named_parameters() if n.startswith(prefixes))

    # id 2 = S stem + S block 0 + SL0 (its dense, merged size) + L blocks 2..23 + L norm and head
    stem = ('patch_embed.', 'cls_token', 'pos_embed')
    want = count(0, stem + ('blocks.0.',)) + 384 * 1024 + 1024
    want += count(1, tuple(f'blocks.{b}.' for b in range(2, DL)) + ('norm.', 'head.'))
    assert configs[2].params == want


def test_ros_reproduces_the_authors_13_groups(full_s_l):
    configs = full_s_l.stitch_configs()
    groups = flops_groups({c.id: c.gflops for c in configs if c.id != 13}, 1.0)
    assert [len(g) for g in groups] == [1] + [12] * 11 + [1] and groups[0] == [0] and groups[-1] == [1]
    floors = [min(configs[k].gflops for k in g) for g in groups]
    assert [round(f, 2) for f in floors[:3]] == [4.61, 9.43, 14.17] and round(floors[-2], 2) == 56.84
    weights = full_s_l.ros_weights()
    assert weights[13] == 0 and sum(weights) == pytest.approx(1)
    assert weights[0] == weights[1] == pytest.approx(1 / 13) and weights[2] == pytest.approx(1 / 156)


# --- the blocks each config runs ------------------------------------------------------------------------------------
def test_every_config_runs_exactly_its_reference_route():
    model = tiny_v2().eval()
    calls: list[str] = []
    watched = [f'anchors.{a}.{m}' for a in (0, 1) for m in ('patch_embed', 'norm', 'head')]
    watched += [f'anchors.{a}.blocks.{b}' for a, d in ((0, DS), (1, DL)) for b in range(d)]
    watched += [f'stitch_layers.{i}' for i in range(len(model.stitch_layers))]
    for name in watched:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    expected_rows = [(r['cfg_id'], r['path']) for r in ROWS] + [(13, 'SL S[0-11] >SL11> head=L')]
    x = _x()
    for k, path in expected_rows:
        segments, layers = reference_route(path)
        if k == 13:
            segments, layers = [(0, 0, 11)], [11]
        last = 1 if k == 13 else segments[-1][0]
        expected = [f'anchors.{segments[0][0]}.patch_embed']
        for i, (a, lo, hi) in enumerate(segments):
            expected += [f'anchors.{a}.blocks.{b}' for b in range(lo, hi + 1)]
            if i < len(layers):
                expected.append(f'stitch_layers.{layers[i]}')
        expected += [f'anchors.{last}.norm', f'anchors.{last}.head']
        calls.clear()
        model(x, stitch_id=k)
        assert calls == expected, (k, path)


# --- low-rank stitching layers ---------------------------------------------------------------------------------------
def _lora_with_update(seed: int = 0) -> LowRankLinearStitch:
    torch.manual_seed(seed)
    layer = LowRankLinearStitch(16, 32, rank=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_lora_b_zero_equals_least_squares_layer_exactly():
    torch.manual_seed(0)
    lora, dense = LowRankLinearStitch(16, 32, rank=4), LinearStitch(16, 32)
    w, b = torch.randn(32, 16), torch.randn(32)
    lora.set_affine(w, b)
    dense.set_affine(w, b)
    assert torch.equal(lora.lora_B, torch.zeros(32, 4)) and lora.lora_A.abs().sum() > 0
    x = torch.randn(3, 5, 16)
    assert torch.equal(lora(x), dense(x))
    # and the whole network: a low-rank SN-Net with B = 0 gives the dense SN-Net's outputs, config by config
    torch.manual_seed(0)
    low = tiny_v2(stitch_rank=4).eval()
    high = tiny_v2(stitch_rank=0).eval()
    high.load_state_dict({k: v for k, v in low.state_dict().items() if 'lora_' not in k})
    xs = _x()
    for k in [*range(0, low.num_configs, 4), 13]:  # every kind: anchors, SL, LS, LSL, SLS
        assert torch.equal(low(xs, stitch_id=k), high(xs, stitch_id=k)), k


def test_lora_trains_a_b_and_bias_only():
    layer = _lora_with_update()
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {'bias', 'lora_A', 'lora_B'}
    assert 'weight' in layer.state_dict() and 'weight' not in dict(layer.named_parameters())
    w = layer.weight.clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 16)).square().sum().backward()
    opt.step()
    assert torch.equal(layer.weight, w)


def test_lora_merge_is_idempotent():
    layer = _lora_with_update()
    w = layer.weight.clone()
    x = torch.randn(3, 16)
    want = x @ (w + layer.lora_B @ layer.lora_A / 4).T + layer.bias
    out = layer(x)
    torch.testing.assert_close(out, want)
    for _ in range(3):  # the authors merge in place on .eval() and unmerge on .train(): here nothing moves
        layer.eval()
        assert torch.equal(layer(x), out)
        layer.train()
        assert torch.equal(layer(x), out)
    assert torch.equal(layer.weight, w)
    layer.eval()  # a state dict saved in eval mode, loaded into a fresh layer that is then put in eval mode
    fresh = LowRankLinearStitch(16, 32, rank=4)
    fresh.load_state_dict(layer.state_dict())
    fresh.eval().train().eval()
    assert torch.equal(fresh(x), out) and torch.equal(fresh.weight, w)
    torch.testing.assert_close(fresh.merged_weight(), w + layer.lora_B @ layer.lora_A / 4)


def test_lora_model_round_trip_and_weight_decay_groups(tmp_path: Path):
    model = tiny_v2()
    with torch.no_grad():
        for layer in model.stitch_layers:
            layer.lora_B.normal_(std=0.1)
    model.eval()
    x = _x()
    want = [model(x, stitch_id=k) for k in (2, 14, 25, 80)]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / 'm.safetensors'))
    again = tiny_v2()
    again.load_state_dict(load_file(str(tmp_path / 'm.safetensors')))
    again.eval().train().eval()
    assert all(torch.equal(again(x, stitch_id=k), w) for k, w in zip((2, 14, 25, 80), want))
    # the factors follow the authors (weight-decayed: decay pulls the update back to the least-squares weight)
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[i] for i in decay}
    assert {f'stitch_layers.0.lora_{f}' for f in 'AB'} <= decayed and 'stitch_layers.0.bias' not in decayed
    assert not any(n.endswith('stitch_layers.0.weight') for n in names.values())  # frozen: not a parameter


def test_stitch_rank_errors():
    with pytest.raises(ValueError, match='stitch_rank must be an integer >= 0'):
        tiny_v2(stitch_rank=-1)
    with pytest.raises(ValueError, match='stitch_rank must be in 1..16'):
        tiny_v2(stitch_rank=64)
    with pytest.raises(ValueError, match='stitch_rank=0'):
        timm.create_model('snnet_resnet', anchor_kwargs=[dict(channels=(8, 16, 32, 64), stem_width=8)] * 2,
                          stitch_rank=2)


# --- resource-constrained sampling -----------------------------------------------------------------------------------
def test_flops_groups_are_greedy_windows_from_their_leader():
    gflops = {0: 0.5, 1: 1.4, 2: 1.6, 3: 2.3, 4: 2.7, 5: 2.6, 6: 9.0}
    # first leader 0 (the authors' start): 0.5 joins it; 1.4 leads; 1.6, 2.3 stay within 1.4 + 1; 2.6 leads ...
    assert flops_groups(gflops, 1.0) == [[0], [1, 2, 3], [5, 4], [6]]
    w = ros_weights([gflops[k] for k in range(7)], 1.0, [True] * 6 + [False])
    assert w[6] == 0 and sum(w) == pytest.approx(1) and w[0] == pytest.approx(1 / 3) and w[1] == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match='flops_gap must be a positive'):
        flops_groups(gflops, 0)


def test_ros_on_v1_from_model_kwargs_draws_groups_uniformly():
    from conftest import tiny

    ns = type('NS', (), {})()  # train.py's --model-kwargs parsing
    ParseKwargs(None, 'model_kwargs')(None, ns, ['sampling=ros', 'flops_gap=0.0004'])
    kwargs = ns.model_kwargs
    model = tiny('snnet_deit_tsb', **kwargs)
    assert (model.sampling, model.flops_gap) == ('ros', 0.0004)
    assert model.pretrained_cfg and model._model_args['sampling'] == 'ros'
    configs = model.stitch_configs()
    groups = flops_groups({c.id: c.gflops for c in configs}, 0.0004)
    assert 3 < len(groups) < len(configs)
    model.train()
    draws = [model.sample_stitch() for _ in range(6000)]
    group_of = {k: g for g, ks in enumerate(groups) for k in ks}
    counts = torch.bincount(torch.tensor([group_of[k] for k in draws]), minlength=len(groups)).float()
    assert (counts / len(draws) - 1 / len(groups)).abs().max() < 0.03


def test_sampling_args_checked_and_saved(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown sampling 'bins'"):
        tiny_v2(sampling='bins')
    with pytest.raises(ValueError, match='flops_gap must be a positive'):
        tiny_v2(flops_gap=0)
    with pytest.raises(ValueError, match="sampling='ros' sets the sampling weights"):
        tiny_v2(sampling_weights=[1.0] * 135)
    uniform = tiny_v2(sampling='uniform')
    assert uniform._cum_weights[13] == uniform._cum_weights[12]  # id 13 is never drawn
    model = tiny_v2(flops_gap=0.0004, stitch_rank=2)
    save_snnet(model, tmp_path / 'repo', readme=False)
    args = json.loads((tmp_path / 'repo' / 'config.json').read_text())['model_args']
    assert (args['rule'], args['sampling'], args['flops_gap'], args['stitch_rank']) == ('two_way', 'ros', 0.0004, 2)
    again = timm.create_model(f'local-dir:{tmp_path / "repo"}', pretrained=True)
    assert (again.sampling, again.flops_gap, again.stitch_rank) == ('ros', 0.0004, 2)


# --- the authors' v2 checkpoints ------------------------------------------------------------------------------------
def _authors_checkpoint(path: Path, rank: int = 4) -> dict[str, torch.Tensor]:
    """A checkpoint in the authors' v2 layout: DeiT-III anchors (gamma_1/2), stitch_layers.{0,1}.i.transform.*."""
    torch.manual_seed(1)
    state = {}
    for i, kw in enumerate(TINY_V2['anchor_kwargs']):
        anchor = timm.create_model(('deit3_small_patch16_224', 'deit3_large_patch16_224')[i], img_size=32, **kw)
        for k, v in anchor.state_dict().items():
            state[f'anchors.{i}.' + k.replace('ls1.gamma', 'gamma_1').replace('ls2.gamma', 'gamma_2')] = \
                v + 0.01 * torch.randn_like(v)
    for direction, (n, d_in, d_out) in enumerate(((DS, 16, 32), (DS - 1, 32, 16))):
        for i in range(n):
            p = f'stitch_layers.{direction}.{i}.transform.'
            state.update({p + 'weight': torch.randn(d_out, d_in) / 4, p + 'bias': torch.randn(d_out),
                          p + 'lora_A': torch.randn(rank, d_in), p + 'lora_B': torch.randn(d_out, rank)})
    torch.save({'model': state, 'epoch': 49}, path)
    return state


def _authors_forward(state: dict, path: str, x: torch.Tensor, rank: int) -> torch.Tensor:
    """The authors' computation from the raw tensors: plain timm DeiT-III anchors, stitches as W + B A / r."""
    anchors = []
    for i, kw in enumerate(TINY_V2['anchor_kwargs']):
        a = timm.create_model(('deit3_small_patch16_224', 'deit3_large_patch16_224')[i], img_size=32, **kw).eval()
        a.load_state_dict({k[len(f'anchors.{i}.'):].replace('gamma_1', 'ls1.gamma').replace('gamma_2', 'ls2.gamma'): v
                           for k, v in state.items() if k.startswith(f'anchors.{i}.')})
        anchors.append(a)
    segments, layers = reference_route(path)
    first = anchors[segments[0][0]]
    h = first._pos_embed(first.patch_embed(x))
    for i, (a, lo, hi) in enumerate(segments):
        for b in range(lo, hi + 1):
            h = anchors[a].blocks[b](h)
        if i < len(layers):
            d, j = divmod(layers[i], DS)
            p = f'stitch_layers.{d}.{j}.transform.'
            h = h @ (state[p + 'weight'] + state[p + 'lora_B'] @ state[p + 'lora_A'] / rank).T + state[p + 'bias']
    last = anchors[segments[-1][0]]
    return last.forward_head(last.norm(h))


def test_convert_official_v2_gives_the_authors_outputs(tmp_path: Path, capsys: pytest.CaptureFixture):
    state = _authors_checkpoint(tmp_path / 'snnetv2_deit3_s_l.pth')
    kwargs = [f'{k}={v!r}' for k, v in TINY_V2.items()]
    assert cli(['convert', str(tmp_path / 'snnetv2_deit3_s_l.pth'), '--from', 'official-v2', '--model',
                'snnetv2_deit3_s_l', '--output', str(tmp_path / 'out'), '--model-kwargs', *kwargs]) == 0
    assert 'stitch_rank=4' in capsys.readouterr().out
    model = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    assert model.stitch_rank == 4
    sd = model.state_dict()
    assert torch.equal(sd['stitch_layers.12.weight'], state['stitch_layers.1.0.transform.weight'])  # unmerged
    assert torch.equal(sd['stitch_layers.3.lora_B'], state['stitch_layers.0.3.transform.lora_B'])
    assert torch.equal(sd['anchors.1.blocks.5.ls2.gamma'], state['anchors.1.blocks.5.gamma_2'])
    x = _x()
    for row in ROWS[::7] + [ROWS[-1]]:
        torch.testing.assert_close(model(x, stitch_id=row['cfg_id']), _authors_forward(state, row['path'], x, 4),
                                   rtol=1e-4, atol=1e-4, msg=row['path'])
    table = model.stitch_table
    assert len(table) == 134 and table[0]['top1'] == ROWS[0]['acc1'] and table[0]['path'] == 'S'
    assert table == official_stitch_table('snnetv2_deit3_s_l', model)
    release = HUB_RELEASES['snnetv2_deit3_s_l']
    assert (release.repo_id, release.filename) == ('ziplab/snnetv2_deit3_s_l_imagenet_1k', 'snnetv2_deit3_s_l.pth')


def test_convert_official_v2_fails_on_any_unmapped_or_missing_key(tmp_path: Path):
    state = _authors_checkpoint(tmp_path / 'a.pth')
    extra = {**state, 'stitch_layers.0.12.transform.weight': torch.zeros(32, 16)}
    torch.save({'model': extra}, tmp_path / 'extra.pth')
    with pytest.raises(ConversionError, match='1 unmapped .*stitch_layers.0.12.transform.weight'):
        convert_official_v2(tmp_path / 'extra.pth', 'snnetv2_deit3_s_l', **TINY_V2)
    short = {k: v for k, v in state.items() if k != 'anchors.0.blocks.3.gamma_1'}
    torch.save({'model': short}, tmp_path / 'short.pth')
    with pytest.raises(ConversionError, match=r'1 missing \(anchors.0.blocks.3.ls1.gamma\)'):
        convert_official_v2(tmp_path / 'short.pth', 'snnetv2_deit3_s_l', **TINY_V2)
    with pytest.raises(ConversionError, match='stitch_rank are set by the converter'):
        convert_official_v2(tmp_path / 'a.pth', 'snnetv2_deit3_s_l', stitch_rank=4, **TINY_V2)
    with pytest.raises(ConversionError, match='no official v2 layout'):
        convert_official_v2(tmp_path / 'a.pth', 'snnet_deit_tsb')
    assert not (tmp_path / 'out').exists()


# --- training contract: two-way, low rank, ROS under timm's optimizer and plain DDP -----------------------------------
WORLD, STEPS = 2, 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = tiny_v2(num_classes=4, flops_gap=0.0004)
        model.init_stitching_layers(_x(8, seed=rank), num_images=8, progress=False)  # rank 0's wins: DDP broadcasts
        torch.manual_seed(42 + rank)
        ddp = DistributedDataParallel(model, broadcast_buffers=True)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        opt = create_optimizer_v2(model, 'adamw', lr=1e-2, weight_decay=0.05)
        stitches, sample = [], model.sample_stitch
        model.sample_stitch = lambda: stitches.append(sample()) or stitches[-1]
        ddp.train()
        for _ in range(STEPS):
            loss = torch.nn.functional.cross_entropy(ddp(torch.randn(2, 3, 32, 32)), torch.randint(0, 4, (2,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
        del model.sample_stitch
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, f'{out_dir}/{rank}.safetensors')
        save_file(initial, f'{out_dir}/{rank}.initial.safetensors')
        Path(f'{out_dir}/{rank}.json').write_text(json.dumps(dict(
            stitches=stitches, loss=loss.item(), weights=model._cum_weights)))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_two_way_low_rank_ros_train_in_lockstep(tmp_path: Path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    runs = [json.loads((tmp_path / f'{r}.json').read_text()) for r in range(WORLD)]
    assert runs[0]['stitches'] == runs[1]['stitches'] and len(runs[0]['stitches']) == STEPS
    assert runs[0]['weights'] == runs[1]['weights'] and 13 not in runs[0]['stitches']
    gaps = [b - a for a, b in zip([0.0] + runs[0]['weights'], runs[0]['weights'])]
    assert len(set(round(g, 12) for g in gaps if g)) > 1  # ROS: configs in small groups weigh more
    assert all(torch.isfinite(torch.tensor(r['loss'])) for r in runs)
    final = [load_file(str(tmp_path / f'{r}.safetensors')) for r in range(WORLD)]
    initial = load_file(str(tmp_path / '0.initial.safetensors'))
    for k in final[0]:
        assert torch.equal(final[0][k], final[1][k]), f'{k} differs between ranks'
    frozen = [k for k in initial if re.fullmatch(r'stitch_layers\.\d+\.weight', k)]
    assert len(frozen) == 23 and all(torch.equal(final[0][k], initial[k]) for k in frozen)
    used = {layer for k in runs[0]['stitches'] for layer in _layers_of(k)}
    assert used and all(not torch.equal(final[0][f'stitch_layers.{i}.lora_B'], initial[f'stitch_layers.{i}.lora_B'])
                        for i in used)


def _layers_of(k: int) -> list[int]:
    c = two_way_configs([[DS], [DL]])[0][k]
    return [] if c.is_anchor else [c.layer] + [c.return_layer] * c.is_round_trip


def test_least_squares_init_solves_each_two_way_layer_once():
    """Each v2 layer joins one pair of cuts in many routes: its init is that pair's least-squares solution."""
    from timm_snnet._stitching import LeastSquares, to_rows

    model = tiny_v2(stitch_rank=2)
    images = _x(6, seed=3)
    model.init_stitching_layers(images, num_images=6, progress=False)
    with torch.no_grad():
        acts = [model.eval()._activations(a, images) for a in (0, 1)]
    cuts = ((0, (0, 0), (1, 1)), (5, (0, 5), (1, 11)), (DS, (1, 1), (0, 0)), (2 * DS - 2, (1, 21), (0, 10)))
    for layer, x_cut, y_cut in cuts:  # (layer, front anchor's last unit, unit before the back anchor's first)
        ls = LeastSquares()
        rows = {c: to_rows(acts[c[0]][c[1]], 'tokens') for c in (x_cut, y_cut)}
        ls.add({x_cut: rows[x_cut]}, {y_cut: rows[y_cut]}, [(x_cut, y_cut)])
        w, b = ls.solve(x_cut, y_cut)
        torch.testing.assert_close(model.stitch_layers[layer].weight, w.float())
        torch.testing.assert_close(model.stitch_layers[layer].bias, b.float())
