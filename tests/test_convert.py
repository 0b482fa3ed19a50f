"""Official SN-Net v1 checkpoints -> this package: a synthetic checkpoint laid out exactly as the authors' modules name
their parameters (tiny anchors, the authors' depths) converts to a model whose every config gives the outputs of the
authors' forward computed directly from the same tensors."""
from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY

from timm_snnet._convert import ConversionError, convert, load_official
from timm_snnet.cli import main as cli

SWIN_TSB = dict(img_size=32, anchor_kwargs=[
    dict(embed_dim=e, depths=d, num_heads=h, window_size=4) for e, d, h in (
        (8, (2, 2, 6, 2), (1, 1, 2, 2)), (8, (2, 2, 18, 2), (1, 1, 2, 2)), (16, (2, 2, 18, 2), (1, 2, 2, 4)))])
MODELS = {  # name -> (tiny kwargs with the authors' depths, input size)
    'snnet_deit_tsb': (TINY['snnet_deit_tsb'][0], (3, 32, 32)),
    'snnet_swin_tsb': (SWIN_TSB, (3, 32, 32)),
    'snnet_resnet': (TINY['snnet_resnet'][0], (3, 64, 64)),
    'snnet_resnet18_swin_ti': (TINY['snnet_resnet18_swin_ti'][0], (3, 64, 64)),
    'snnet_levit_192_256': (TINY['snnet_levit_192_256'][0], (3, 64, 64)),  # LeViT-192/256 depths (4-4-4)
}




# --- the authors' config tables (from their code): (stage, front anchor, j, k, layer) per stitch, in id order -------
def _deit_table(depth: int, anchors: int = 3) -> list[tuple]:
    rows = []
    for pair in range(anchors - 1):
        rows += [(0, pair, j, k, 0) for j, k in ((0, 0), (0, 1), (1, 0), (1, 1))]
        rows += [(0, pair, j, k, m) for m in range(1, depth - 1) for j, k in ((m, m + 1), (m + 1, m), (m + 1, m + 1))]
    return rows


SWIN_TI_S_STAGE2 = [(0, 1, 0), (0, 2, 0), (1, 3, 0), (1, 4, 1), (1, 5, 1), (2, 6, 1), (2, 7, 2), (2, 8, 2), (3, 9, 2),
                    (3, 10, 3), (3, 11, 3), (4, 12, 3), (4, 13, 4), (4, 14, 4), (5, 15, 4), (5, 16, 5), (5, 17, 5)]
TABLES = {
    'snnet_deit_tsb': _deit_table(4),
    'snnet_swin_tsb': [(s, p, 0, 1, 0) for s in (0, 1) for p in (0, 1)]
    + [(2, 0, *jkl) for jkl in SWIN_TI_S_STAGE2] + [(2, 1, m, m + 1, m) for m in range(17)],
    'snnet_resnet': [(1, 0, 0, 1, 0), (1, 0, 1, 2, 0), (1, 0, 1, 3, 1),
                     (2, 0, 0, 1, 0), (2, 0, 0, 2, 0), (2, 0, 1, 3, 0), (2, 0, 1, 4, 1), (2, 0, 1, 5, 1)],
    'snnet_resnet18_swin_ti': [(1, 0, 0, 1, 0), (2, 0, 0, 1, 0), (2, 0, 0, 2, 0), (2, 0, 1, 3, 0), (2, 0, 1, 4, 1),
                               (2, 0, 1, 5, 1)],
    # stitching_levit: per stage 0, 1 paired_stitching(4): blocks (j, j + 1), layer j
    'snnet_levit_192_256': [(s, 0, j, j + 1, j) for s in (0, 1) for j in range(3)],
}
STITCHED_STAGES = {'snnet_deit_tsb': (0,), 'snnet_swin_tsb': (0, 1, 2), 'snnet_resnet': (1, 2),
                   'snnet_resnet18_swin_ti': (1, 2), 'snnet_levit_192_256': (0, 1)}


def _kind(anchor: torch.nn.Module) -> str:
    return type(anchor).__name__


def _channels(anchor: torch.nn.Module, stage: int) -> int:
    if _kind(anchor) == 'VisionTransformer':
        return anchor.embed_dim
    if _kind(anchor) == 'LevitDistilled':
        return anchor.feature_info[stage]['num_chs']
    return anchor.feature_info[stage + (_kind(anchor) == 'ResNet')]['num_chs']


def _levit_original_keys(anchor: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """facebookresearch/LeViT's `model_factory(C, D, N, X, distillation=True)` state dict (keys and shapes, in its
    order: a module's own parameters and buffers before its children's) for the anchor's architecture: stem b16
    (Conv2d_BN at patch_embed.0/2/4/6), per stage X Residual(Attention) / Residual(MLP) pairs in one flat `blocks`
    list, between stages an AttentionSubsample (D, C // D heads, attn_ratio 4, stride 2) and a Residual(MLP), then
    BN_Linear `head` and `head_dist`. Attention and subsample blocks save their `attention_bias_idxs`."""
    dims = [info['num_chs'] for info in anchor.feature_info]
    d = anchor.stages[0].blocks[0].attn.key_dim
    heads = [stage.blocks[0].attn.num_heads for stage in anchor.stages]
    depths = [len(stage.blocks) for stage in anchor.stages]
    keys: list[tuple[str, tuple[int, ...]]] = []

    def conv_bn(prefix: str, shape: tuple[int, ...]) -> None:  # Conv2d_BN / Linear_BN: `c` (no bias), `bn`
        keys.append((f'{prefix}.c.weight', shape))
        keys.extend((f'{prefix}.bn.{p}', (shape[0],)) for p in ('weight', 'bias', 'running_mean', 'running_var'))
        keys.append((f'{prefix}.bn.num_batches_tracked', ()))

    def mlp(n: int, ed: int) -> None:
        conv_bn(f'blocks.{n}.m.0', (2 * ed, ed))
        conv_bn(f'blocks.{n}.m.2', (ed, 2 * ed))

    stem = [3, dims[0] // 8, dims[0] // 4, dims[0] // 2, dims[0]]
    for i in range(4):
        conv_bn(f'patch_embed.{2 * i}', (stem[i + 1], stem[i], 3, 3))
    n, res = 0, anchor.stages[0].blocks[0].attn.resolution[0]  # img_size // 16
    for s, (ed, nh, depth) in enumerate(zip(dims, heads, depths)):
        for _ in range(depth):
            offsets = len({(abs(a // res - b // res), abs(a % res - b % res)) for a in range(res * res)
                           for b in range(res * res)})
            keys += [(f'blocks.{n}.m.attention_biases', (nh, offsets)),
                     (f'blocks.{n}.m.attention_bias_idxs', (res * res, res * res))]
            conv_bn(f'blocks.{n}.m.qkv', (2 * d * nh + 2 * d * nh, ed))
            conv_bn(f'blocks.{n}.m.proj.1', (ed, 2 * d * nh))
            mlp(n + 1, ed)
            n += 2
        if s + 1 < len(dims):
            out, sh, res_ = dims[s + 1], ed // d, (res - 1) // 2 + 1
            offsets = len({(abs(2 * (a // res_) - b // res), abs(2 * (a % res_) - b % res)) for a in range(res_ ** 2)
                           for b in range(res * res)})
            keys += [(f'blocks.{n}.attention_biases', (sh, offsets)),
                     (f'blocks.{n}.attention_bias_idxs', (res_ * res_, res * res))]
            conv_bn(f'blocks.{n}.kv', (4 * d * sh + d * sh, ed))
            conv_bn(f'blocks.{n}.q.1', (d * sh, ed))
            conv_bn(f'blocks.{n}.proj.1', (out, 4 * d * sh))
            mlp(n + 1, out)
            n, res = n + 2, res_
    for head in ('head', 'head_dist'):
        keys.extend((f'{head}.bn.{p}', (dims[-1],)) for p in ('weight', 'bias', 'running_mean', 'running_var'))
        keys += [(f'{head}.bn.num_batches_tracked', ()), (f'{head}.l.weight', (anchor.num_classes, dims[-1])),
                 (f'{head}.l.bias', (anchor.num_classes,))]
    return keys


def _authors_keys(anchor: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An anchor's tensors under the authors' names: Microsoft Swin for Swin (merging at a stage's end, plain `head`,
    index / mask buffers saved), split-BN auxiliary copies for ResNet (they trained with --split-bn), and for LeViT
    facebookresearch/LeViT's original model (stitching_levit wraps it) with its `attention_bias_idxs` buffers.

    LeViT: the original keys correspond to timm's by position once the index buffers are left out (timm's module
    order is the original's: how timm converted the original weights, `levit.checkpoint_filter_fn`), checked by
    shape here; the converter's name mapping is not used."""
    sd = dict(anchor.state_dict())
    if _kind(anchor) == 'LevitDistilled':
        original = _levit_original_keys(anchor)
        weights = [(k, shape) for k, shape in original if not k.endswith('attention_bias_idxs')]
        assert [shape for _, shape in weights] == [tuple(v.shape) for v in sd.values()], 'not the LeViT layout'
        out = dict(zip((k for k, _ in weights), sd.values()))
        idxs = [b for n, b in anchor.named_buffers() if n.endswith('attention_bias_idxs')]  # timm: non-persistent
        out.update(zip((k for k, _ in original if k.endswith('attention_bias_idxs')), idxs, strict=True))
        return {k: out[k] for k, _ in original}  # the original's order
    if _kind(anchor) == 'SwinTransformer':
        sd = {re.sub(r'layers\.(\d+)\.downsample', lambda m: f'layers.{int(m[1]) - 1}.downsample', k)
              .replace('head.fc.', 'head.'): v for k, v in sd.items()}
        sd.update({n: b for n, b in anchor.named_buffers() if n.endswith(('relative_position_index', 'attn_mask'))})
    if _kind(anchor) == 'ResNet':
        for name, module in anchor.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                sd.update({f'{name}.aux_bn.0.{k}': v.clone() for k, v in module.state_dict().items()})
    return sd


def _cfgnode():
    """yacs' CfgNode (the Swin `config` object), or a stand-in of the same name when yacs is not installed."""
    try:
        from yacs.config import CfgNode
    except ImportError:
        module = types.ModuleType('yacs.config')
        CfgNode = type('CfgNode', (dict,), {'__module__': 'yacs.config'})
        module.CfgNode = CfgNode
        sys.modules.setdefault('yacs', types.ModuleType('yacs'))
        sys.modules['yacs.config'] = module
    node = CfgNode()
    node['MODEL'] = CfgNode({'TYPE': 'snnet', 'DROP_PATH_RATE': 0.2})
    node['TRAIN'] = CfgNode({'EPOCHS': 50, 'BASE_LR': 5e-4})
    return node


def _official(name: str, tmp_path: Path, edit=None, kwargs=None, table=None) -> tuple[Path, list, dict]:
    """A checkpoint file as the authors saved it (after `edit(checkpoint)`), the timm anchors holding the same
    tensors, and the stitching weights by the authors' key."""
    torch.manual_seed(0)
    kwargs = kwargs or MODELS[name][0]
    anchors = [a.eval() for a in timm.create_model(name, **kwargs).anchors]
    with torch.no_grad():
        for a in anchors:
            for t in [*a.parameters(), *(b for n, b in a.named_buffers() if 'running' in n)]:
                t.copy_(t + torch.rand_like(t) * 0.1)
    state = {f'anchors.{i}.{k}': v for i, a in enumerate(anchors) for k, v in _authors_keys(a).items()}
    stitch = {}
    for stage, pair, _, _, layer in table or TABLES[name]:
        nested = f'{STITCHED_STAGES[name].index(stage)}.' if name != 'snnet_deit_tsb' else ''
        key = f'stitch_layers.{nested}{pair}.{layer}.transform'
        if key not in stitch:
            c_in, c_out = _channels(anchors[pair], stage), _channels(anchors[pair + 1], stage)
            shape = (c_out, c_in, 1, 1) if _kind(anchors[pair]) == 'ResNet' else (c_out, c_in)
            stitch[key] = (torch.randn(shape) / c_in ** 0.5, torch.randn(c_out) * 0.1)
    state.update({f'{k}.{p}': t for k, (w, b) in stitch.items() for p, t in (('weight', w), ('bias', b))})
    args = argparse.Namespace(model=name, lr=1e-4, epochs=50, distillation_type='hard', resume='')
    if name == 'snnet_swin_tsb':
        ckpt = dict(model=state, optimizer={}, lr_scheduler={}, max_accuracy=83.2, scaler={}, epoch=49,
                    config=_cfgnode())
    elif name in ('snnet_deit_tsb', 'snnet_levit_192_256'):  # DeiT's main.py; stitching_levit/main.py alike
        ckpt = dict(model=state, optimizer={'state': {}}, lr_scheduler={'t_initial': 50}, epoch=49, scaler={},
                    args=args)
    else:  # timm's CheckpointSaver
        ckpt = dict(epoch=29, arch='snnet', state_dict={f'module.{k}': v for k, v in state.items()}, optimizer={},
                    version=2, args=args, amp_scaler={}, metric=77.0)
    if edit is not None:
        edit(ckpt)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f'{name}.pth'
    torch.save(ckpt, path)
    return path, anchors, stitch


def _authors_forward(name: str, anchors: list, stitch: dict, x: torch.Tensor, row: tuple) -> torch.Tensor:
    """The authors' stitched forward, written out on the timm anchors with their stitching weights."""
    stage, pair, j, k, layer = row
    a, b = anchors[pair], anchors[pair + 1]
    nested = f'{STITCHED_STAGES[name].index(stage)}.' if name != 'snnet_deit_tsb' else ''
    w, bias = stitch[f'stitch_layers.{nested}{pair}.{layer}.transform']
    if _kind(a) == 'VisionTransformer':
        h = a.norm_pre(a.patch_drop(a._pos_embed(a.patch_embed(x))))
        h = F.linear(a.blocks[:j + 1](h), w, bias)
        return b.forward_head(b.blocks[k:](h))  # v1 DeiT: no final norm on stitched paths
    if _kind(a) == 'LevitDistilled':  # stitching_levit: forward_until(stage, j), the Linear, forward_from(stage, k)
        h = a.stem(x).flatten(2).transpose(1, 2)  # patch_embed, tokens
        h = a.stages[:stage](h)  # the flat blocks of earlier stages and their subsamples (timm: stage s+1 downsample)
        h = a.stages[stage].blocks[:j + 1](a.stages[stage].downsample(h))
        h = F.linear(h, w, bias)
        h = b.stages[stage + 1:](b.stages[stage].blocks[k:](h)).mean(1)
        return (b.head(h) + b.head_dist(h)) / 2  # distilled heads, averaged in eval
    if _kind(a) == 'SwinTransformer':
        h = a.layers[:stage](a.patch_embed(x))
        h = a.layers[stage].blocks[:j + 1](a.layers[stage].downsample(h))
        h = F.linear(h, w, bias)
    else:
        h = a.maxpool(a.act1(a.bn1(a.conv1(x))))
        for s in range(stage):
            h = getattr(a, f'layer{s + 1}')(h)
        h = F.conv2d(getattr(a, f'layer{stage + 1}')[:j + 1](h), w, bias)
    if _kind(b) == 'SwinTransformer':
        h = h if _kind(a) == 'SwinTransformer' else h.permute(0, 2, 3, 1)
        h = b.layers[stage + 1:](b.layers[stage].blocks[k:](h))
        return b.forward_head(b.norm(h))
    h = getattr(b, f'layer{stage + 1}')[k:](h)
    for s in range(stage + 1, 4):
        h = getattr(b, f'layer{s + 1}')(h)
    return b.forward_head(h)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_convert_gives_the_authors_outputs(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, anchors, stitch = _official(name, tmp_path)
    out = tmp_path / 'converted'
    assert cli(['convert', str(ckpt), '--from', 'official-v1', '--model', name, '--output', str(out),
                '--model-kwargs', *(f'{k}={v!r}' for k, v in MODELS[name][0].items())]) == 0
    printed = capsys.readouterr().out
    assert '0 unmapped, 0 missing' in printed
    saved = sum(k.endswith('attention_bias_idxs') for k in load_official(ckpt))
    assert (f'{saved} LeViT attention_bias_idxs' in printed) == (name == 'snnet_levit_192_256')  # every one dropped
    assert {p.name for p in out.iterdir()} == {'config.json', 'model.safetensors'}
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()

    table = TABLES[name]
    configs = model.stitch_configs()
    assert len(configs) == len(anchors) + len(table)
    assert [(c.stage, c.front, c.front_block, c.back_block) for c in configs[len(anchors):]] == \
        [row[:4] for row in table]  # the authors' ids
    args = json.loads((out / 'config.json').read_text())['model_args']
    if name == 'snnet_deit_tsb':  # compatibility switch on, default (window) layers
        assert args['stitched_final_norm'] is False and args['layer_assignment'] is None
    else:  # plain path, the authors' layers by list position (LeViT: one per stitch, the default: no assignment)
        keys = [(row[0], row[1], row[4]) for row in table]
        first_use = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        layers = [first_use[key] for key in keys]
        assert args['stitched_final_norm'] is True and [c.layer for c in configs[len(anchors):]] == layers
        assert args['layer_assignment'] == (None if name == 'snnet_levit_192_256' else layers)

    # every anchor tensor back at its timm key (outputs alone would miss a LeViT head <-> head_dist swap: averaged)
    for ours, anchor in zip(model.anchors, anchors):
        converted, original = ours.state_dict(), anchor.state_dict()
        assert converted.keys() == original.keys() and all(torch.equal(converted[k], v) for k, v in original.items())

    x = torch.randn(2, *MODELS[name][1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i, anchor in enumerate(anchors):
            assert torch.equal(model(x, stitch_id=i), anchor(x))
        for c, row in zip(configs[len(anchors):], table):
            expected = _authors_forward(name, anchors, stitch, x, row)
            assert torch.equal(model(x, stitch_id=c.id), expected), (c.id, row)  # bit-identical


def test_deit_final_norm_switch_matters(tmp_path: Path) -> None:
    """The converted DeiT reproduces the authors only with stitched_final_norm=False (anchors are unaffected)."""
    ckpt, _, _ = _official('snnet_deit_tsb', tmp_path)
    out, report = convert(ckpt, 'snnet_deit_tsb', tmp_path / 'out', **MODELS['snnet_deit_tsb'][0])
    assert report['compat'] == {'stitched_final_norm': False}
    v1 = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    new = timm.create_model(f'local-dir:{out}', pretrained=True, stitched_final_norm=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(v1(x, stitch_id=2), new(x, stitch_id=2))
        assert not torch.allclose(v1(x, stitch_id=10), new(x, stitch_id=10), atol=1e-3)


def test_unmapped_missing_and_wrong_model_fail(tmp_path: Path) -> None:
    def edit(ckpt: dict) -> None:
        ckpt['state_dict']['module.anchors.1.fc.extra'] = torch.zeros(1)
        del ckpt['state_dict']['module.stitch_layers.1.0.1.transform.bias']

    ckpt, _, _ = _official('snnet_resnet', tmp_path)
    bad, _, _ = _official('snnet_resnet', tmp_path / 'bad', edit)
    kwargs = MODELS['snnet_resnet'][0]
    with pytest.raises(ConversionError, match=r'1 unmapped \(anchors.1.fc.extra\); 1 missing \(stitch_layers.3.bias\)'):
        convert(bad, 'snnet_resnet', tmp_path / 'out', **kwargs)
    with pytest.raises(ConversionError, match=r'does not convert exactly to snnet_deit_tsb: \d+ unmapped'):
        convert(ckpt, 'snnet_deit_tsb', tmp_path / 'out', **MODELS['snnet_deit_tsb'][0])
    assert not (tmp_path / 'out').exists() and not list(tmp_path.glob('.out.*'))  # nothing half-written
    with pytest.raises(SystemExit, match='timm-snnet convert: .*missing'):
        cli(['convert', str(bad), '--from', 'official-v1', '--model', 'snnet_resnet', '--output', str(tmp_path / 'o'),
             '--model-kwargs', f'anchor_kwargs={kwargs["anchor_kwargs"]!r}'])


_RAN = []


def _side_effect() -> dict:
    _RAN.append(True)
    return {}


class _Payload:
    def __reduce__(self):
        return _side_effect, ()


def test_unsafe_pickle_is_refused_not_run(tmp_path: Path) -> None:
    evil, _, _ = _official('snnet_deit_tsb', tmp_path, lambda ckpt: ckpt.update(args=_Payload()))
    _RAN.clear()
    with pytest.raises(ConversionError, match=r'weights_only=True does not build \(test_convert._side_effect\)'):
        convert(evil, 'snnet_deit_tsb', tmp_path / 'out', **MODELS['snnet_deit_tsb'][0])
    assert not _RAN
