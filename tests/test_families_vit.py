"""Family adapters for DeiT with distillation token, EVA-02 and LeViT on tiny anchors of the real timm classes; and the
authors' LeViT-192/256 SN-Net (configs, FLOPs, checkpoint key mapping)."""
import json
import re

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.levit import Levit, LevitDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from timm_snnet._convert import levit_official_to_timm
from timm_snnet._flops import count_flops
from timm_snnet._releases import REFERENCE_DIR
from timm_snnet._snnet import SNNet
from timm_snnet.families import family_for
from timm_snnet.families.eva import EvaFamily
from timm_snnet.families.levit import LevitFamily
from timm_snnet.families.vit import DistilledViTFamily, ViTFamily

torch.set_num_threads(1)

# family -> (SNNet kwargs: tiny anchors of the real timm classes, input size)
FAMILIES = {
    'deit_distilled': (dict(
        anchors=['deit_tiny_distilled_patch16_224'] * 2, img_size=32, rule='window',
        anchor_kwargs=[dict(patch_size=8, embed_dim=e, depth=2, num_heads=2) for e in (16, 32)],
    ), 32),
    'eva02': (dict(  # twins of different widths (head dims 16 and 24: each anchor its own rope)
        anchors=['eva02_tiny_patch14_224'] * 2, img_size=28, rule='window',
        anchor_kwargs=[dict(embed_dim=e, depth=2, num_heads=2) for e in (32, 48)],
    ), 28),
    'levit': (dict(  # LeViT-128S / 128 depths (2-3-4, 4-4-4) at 1/4 width
        anchors=['levit_128s', 'levit_128'], img_size=64, rule='stage', stages=(0, 1, 2),
        anchor_kwargs=[dict(embed_dim=(32, 48, 64), key_dim=8, num_heads=(2, 3, 4), depth=d)
                       for d in ((2, 3, 4), (4, 4, 4))],
    ), 64),
}
REFERENCE = REFERENCE_DIR / 'snnet_levit_192_256.official.jsonl'  # the authors' published results (package data)


def _build(name: str, **kwargs) -> SNNet:
    torch.manual_seed(0)
    return SNNet(**{**FAMILIES[name][0], **kwargs}, num_classes=10)


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = FAMILIES[name][1]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def family(request):
    return request.param, _build(request.param).eval(), _input(request.param)


def test_family_for_walks_the_mro():
    class MyViT(VisionTransformer):
        pass

    tiny = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    assert type(family_for(MyViT(**tiny))) is ViTFamily
    assert type(family_for(VisionTransformer(**tiny))) is ViTFamily
    assert type(family_for(VisionTransformerDistilled(**tiny))) is DistilledViTFamily  # most specific wins
    levit = dict(img_size=32, embed_dim=(16,), key_dim=8, depth=(1,), num_heads=(2,))
    assert type(family_for(Levit(**levit))) is LevitFamily and type(family_for(LevitDistilled(**levit))) is LevitFamily
    with pytest.raises(TypeError, match='no SN-Net adapter for Linear'):
        family_for(nn.Linear(2, 2))


@torch.no_grad()
def test_anchors_are_the_timm_models(family):
    name, model, x = family
    assert {'deit_distilled': DistilledViTFamily, 'eva02': EvaFamily, 'levit': LevitFamily}[name] is \
        type(model._families[0])
    for i, anchor in enumerate(model.anchors):
        assert torch.equal(model(x, stitch_id=i), anchor.eval()(x)), i


@torch.no_grad()
def test_each_stitch_runs_exactly_its_path(family):
    _, model, x = family
    fired: list[str] = []
    names = {f'anchors.{a}.{m}' for a, units in enumerate(model._units) for u in units for m in u.modules}
    names |= {f'stitch_layers.{i}' for i in range(len(model.stitch_layers))}
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: fired.append(n)) for n in sorted(names)]
    try:
        for k in range(model.num_configs):
            route, expected = model.route(k), []
            for s, seg in enumerate(route.segments):
                if s:
                    expected.append(f'stitch_layers.{route.layers[s - 1]}')
                # Eva units also own `rope` (its buffers), which run_module passes through: no forward to hook
                expected += [f'anchors.{seg.anchor}.{m}' for u in model._units[seg.anchor][seg.start:seg.stop]
                             for m in u.modules if m != 'rope']
            fired.clear()
            model(x, stitch_id=k)
            assert fired == expected, k
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def test_stitch_flops_equal_fvcore_and_export_matches(family):
    """FLOPs of every config equal fvcore's count of its exported model exactly (same tracer, same op handles)."""
    _, model, x = family
    configs = model.stitch_configs()
    assert len({c.gflops for c in configs}) > 2
    for k, c in enumerate(configs):
        exported = model.export_stitch(k).eval()
        assert count_flops(exported, x[:1]).total() == round(c.gflops * 1e9), k
        torch.testing.assert_close(exported(x), model(x, stitch_id=k), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_forward_intermediates(family):
    name, model, x = family
    for k in range(model.num_configs):
        model.set_stitch(k)
        final, features = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert len(features) == len(model.feature_info)
        for f, info in zip(features, model.feature_info):
            assert f.shape[1] == info['num_chs'] and f.shape[-1] == -(-x.shape[-1] // info['reduction']), k
    for i, anchor in enumerate(model.anchors):  # an anchor's features are timm's own
        model.set_stitch(i)
        ours = model.forward_intermediates(x, intermediates_only=True)
        theirs = anchor.forward_intermediates(x, intermediates_only=True)
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    model.set_stitch(model.num_configs - 1)
    if name == 'levit':
        with pytest.raises(ValueError, match="output_fmt 'NLC' is not available"):
            model.forward_intermediates(x, output_fmt='NLC')
    else:
        assert model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True)[0].ndim == 3


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(('running_mean', 'running_var'))}


def _on_path(model: SNNet, k: int) -> set[str]:
    """Modules config k runs: its units, stitching layers, the first anchor's stem, the last anchor's head."""
    route = model.route(k)
    on = {f'stitch_layers.{layer}' for layer in route.layers}
    for seg in route.segments:
        family, prefix = model._families[seg.anchor], f'anchors.{seg.anchor}.'
        owned = set(family.stem_names) | {m for u in model._units[seg.anchor] for m in u.modules}
        on |= {prefix + m for u in model._units[seg.anchor][seg.start:seg.stop] for m in u.modules}
        if seg is route.first:
            on |= {prefix + n for n in family.stem_names}
        if seg is route.last:
            on |= {prefix + n for n, _ in model.anchors[seg.anchor].named_modules()
                   if n and not any(n == o or n.startswith(o + '.') or o.startswith(n + '.') for o in owned)}
    return on


def test_training_step_updates_only_the_path(family):
    name, model, x = family
    model = _build(name)
    model.train()
    model(x).sum().backward()  # a sampled stitch
    assert any(p.grad is not None for p in model.parameters())
    for k in range(model.num_configs):
        model.zero_grad(set_to_none=True)
        model.set_sampling_weights([float(i == k) for i in range(model.num_configs)])
        before = _bn_stats(model)
        model(x).sum().backward()
        on = _on_path(model, k)
        changed = {n.rsplit('.', 1)[0] for n, b in _bn_stats(model).items() if not torch.equal(b, before[n])}
        on_bn = {n.rsplit('.', 1)[0] for n in before if any(n.startswith(m + '.') for m in on)}
        assert changed == on_bn, k  # every BatchNorm on the path learns, none off it
        assert bool(on_bn) == (name == 'levit')
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        assert grads and not [n for n in grads if not any(n == m or n.startswith(m + '.') for m in on)], k
    # least-squares init runs the anchors in eval mode: no BatchNorm learns the calibration images
    before = _bn_stats(model)
    model.init_stitching_layers(x, num_images=2, batch_size=1, progress=False)
    assert model.training and all(torch.equal(b, before[n]) for n, b in _bn_stats(model).items())


@pytest.mark.parametrize('name', ['deit_distilled', 'levit'])
def test_distilled_head_is_timms(name):
    """In distilled training timm's head returns (head, head_dist); an anchor config returns the same."""
    model, x = _build(name), _input(name)
    for anchor in model.anchors:
        anchor.set_distilled_training(True)
    model.train()
    model.set_sampling_weights([1.0] + [0.0] * (model.num_configs - 1))
    torch.manual_seed(0)
    out = model(x)
    expected = model.anchors[0](x)
    assert isinstance(out, tuple) and len(out) == 2
    assert all(torch.allclose(a, b) for a, b in zip(out, expected))


def test_eva_refuses_what_a_block_cannot_get():
    kw = FAMILIES['eva02'][0]
    dynamic = SNNet(**{**kw, 'anchor_kwargs': [dict(a, dynamic_img_size=True) for a in kw['anchor_kwargs']]})
    dynamic.eval()(torch.randn(1, 3, 42, 42))  # square grids of any size, or the built one
    with pytest.raises(ValueError, match='dynamic_img_size'):
        dynamic(torch.randn(1, 3, 28, 42))
    with pytest.raises(ValueError, match='learnable rotary'):
        SNNet(**{**kw, 'anchor_kwargs': [dict(a, rope_type='mixed', rope_rotate_half=False)
                                         for a in kw['anchor_kwargs']]})
    model = SNNet(**{**kw, 'anchor_kwargs': [dict(a, patch_drop_rate=0.5) for a in kw['anchor_kwargs']]})
    model.eval()(_input('eva02'), stitch_id=2)  # patch dropout is off in eval
    with pytest.raises(ValueError, match='patch dropout'):
        model.train()(_input('eva02'))


def test_levit_refuses_conv_mode_and_other_sizes():
    with pytest.raises(ValueError, match='conv mode'):
        SNNet(anchors=['levit_conv_128s'] * 2, rule='stage', img_size=64, device='meta',
              anchor_kwargs=dict(embed_dim=(16, 24, 32), key_dim=8, num_heads=(2, 3, 4)))
    model = _build('levit').eval()
    with pytest.raises(ValueError, match='fixed image size'):
        model(torch.randn(1, 3, 96, 96))
    assert [(u.channels, u.reduction) for u in model._units[0][::3]] == [(32, 16), (48, 32), (64, 64)]  # feature_info's


# --- the authors' LeViT-192/256 SN-Net -------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def levit_192_256():
    return timm.create_model('snnet_levit_192_256')


def test_levit_release_configs_and_flops(levit_192_256):
    """Ids, paths and FLOPs of the authors' 8 configs. Both counts are fvcore at 1x3x224x224 with the same ops (their
    SN-Net's in eval; ours with scaled_dot_product_attention counted, which LeViT does not call): equal exactly."""
    model = levit_192_256
    configs = model.stitch_configs()
    if not REFERENCE.exists():
        pytest.skip(f'{REFERENCE} not found')
    ref = [json.loads(line) for line in REFERENCE.read_text().splitlines() if line.strip()]
    assert [c.id for c in configs] == [r['cfg_id'] for r in ref] == list(range(8))
    for c, r in zip(configs, ref):
        assert round(c.gflops * 1e9) == r['flops'], (c.id, c.gflops * 1e9, r['flops'])
    # their enumeration: anchors, then per stitched stage (0, 1) the pairs (0,1), (1,2), (2,3), one layer each
    assert [(c.stage, c.front_block, c.back_block, c.layer) for c in configs[2:]] == [
        (s, j, j + 1, 3 * s + j) for s in (0, 1) for j in range(3)]
    assert model.describe(configs[5]) == '192[s1.0..0] -> 256[s1.1..]'
    assert all(isinstance(a, LevitDistilled) for a in model.anchors)


def test_levit_release_paths_are_the_authors(levit_192_256):
    """Their `forward_until(s, j)` runs flat blocks [0, 10s + 2(j + 1)) of LeViT-192, `forward_from(s, k)` blocks
    [10s + 2k, 30) of LeViT-256 (2 flat blocks per block, 2 per subsample): mapped to timm modules, our routes."""
    model = levit_192_256
    flat = [f'blocks.{n}.m.qkv.c.weight' if n % 10 < 8 and n % 2 == 0 else
            f'blocks.{n}.kv.c.weight' if n % 10 == 8 else f'blocks.{n}.m.0.c.weight' for n in range(28)]
    mapped = levit_official_to_timm({f'anchors.0.{k}': torch.empty(0) for k in flat})
    modules = [re.sub(r'\.(attn|mlp|attn_downsample)\.(qkv|kv|ln1)\..*', '', k[len('anchors.0.'):])
               for k in mapped]
    modules = [m.replace('.downsample.attn_downsample.kv.linear.weight', '.downsample')
               .replace('.downsample.mlp.ln1.linear.weight', '.downsample') for m in modules]

    def timm_modules(start: int, stop: int) -> list[str]:
        return list(dict.fromkeys(modules[start:stop]))

    for c in model.stitch_configs()[2:]:
        front, back = model.route(c.id).segments
        ours_front = [m for u in model._units[0][front.start:front.stop] for m in u.modules
                      if m != 'stages.0.downsample']  # an identity: no LeViT block
        ours_back = [m for u in model._units[1][back.start:back.stop] for m in u.modules]
        assert timm_modules(0, 10 * c.stage + 2 * (c.front_block + 1)) == ours_front, c.id
        assert timm_modules(10 * c.stage + 2 * c.back_block, 28) == ours_back, c.id


def _levit_official_keys(C: str, D: int, N: str, X: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of facebookresearch/LeViT's `model_factory(C, D, N, X, distillation=True)` state dict, from
    its architecture description: stem b16 (Conv2d_BN 3 -> C/8 -> C/4 -> C/2 -> C at patch_embed.0/2/4/6), per stage
    X residual pairs (Attention with attn_ratio 2, MLP ratio 2), a Subsample (AttentionSubsample: key_dim D,
    C[i] // D heads, attn_ratio 4, stride 2) plus MLP between stages, then BN_Linear head and head_dist."""
    dims, heads, depths = ([int(v) for v in s.split('_')] for s in (C, N, X))
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, n: int) -> None:
        keys.update({f'{prefix}.{p}': (n,) for p in ('weight', 'bias', 'running_mean', 'running_var')})
        keys[f'{prefix}.num_batches_tracked'] = ()

    def linear_bn(prefix: str, a: int, b: int) -> None:
        keys[f'{prefix}.c.weight'] = (b, a)
        bn(f'{prefix}.bn', b)

    stem = [3, dims[0] // 8, dims[0] // 4, dims[0] // 2, dims[0]]
    for i in range(4):
        keys[f'patch_embed.{2 * i}.c.weight'] = (stem[i + 1], stem[i], 3, 3)
        bn(f'patch_embed.{2 * i}.bn', stem[i + 1])
    n, res = 0, 224 // 16
    for s, (ed, nh, depth) in enumerate(zip(dims, heads, depths)):
        for _ in range(depth):
            dh = 2 * D * nh
            linear_bn(f'blocks.{n}.m.qkv', ed, dh + 2 * D * nh)
            linear_bn(f'blocks.{n}.m.proj.1', dh, ed)
            keys[f'blocks.{n}.m.attention_biases'] = (nh, res * res)
            keys[f'blocks.{n}.m.attention_bias_idxs'] = (res * res, res * res)
            linear_bn(f'blocks.{n + 1}.m.0', ed, 2 * ed)
            linear_bn(f'blocks.{n + 1}.m.2', 2 * ed, ed)
            n += 2
        if s + 1 < len(dims):
            out, sh, res_ = dims[s + 1], ed // D, (res - 1) // 2 + 1
            dh = 4 * D * sh
            linear_bn(f'blocks.{n}.kv', ed, dh + D * sh)
            linear_bn(f'blocks.{n}.q.1', ed, D * sh)
            linear_bn(f'blocks.{n}.proj.1', dh, out)
            keys[f'blocks.{n}.attention_biases'] = (sh, res * res)
            keys[f'blocks.{n}.attention_bias_idxs'] = (res_ * res_, res * res)
            linear_bn(f'blocks.{n + 1}.m.0', out, 2 * out)
            linear_bn(f'blocks.{n + 1}.m.2', 2 * out, out)
            n, res = n + 2, res_
    for head in ('head', 'head_dist'):
        bn(f'{head}.bn', dims[-1])
        keys[f'{head}.l.weight'] = (num_classes, dims[-1])
        keys[f'{head}.l.bias'] = (num_classes,)
    return keys


def test_levit_official_keys_map_onto_ours():
    """Every key of the authors' checkpoint layout maps to a key of ours with the same shape, and every key of ours
    (anchors and stitching layers) is covered. The original layout comes from the LeViT architecture description."""
    specs = [('192_288_384', 32, '3_5_6', '4_4_4'), ('256_384_512', 32, '4_6_8', '4_4_4')]
    shapes = {f'anchors.{i}.{k}': s for i, spec in enumerate(specs) for k, s in _levit_official_keys(*spec).items()}
    for s in (0, 1):  # their stitching layers: stitch_layers.{stage}.{pair}.{layer}.transform
        for layer in range(3):
            shapes[f'stitch_layers.{s}.0.{layer}.transform.weight'] = ((256, 384)[s], (192, 288)[s])
            shapes[f'stitch_layers.{s}.0.{layer}.transform.bias'] = ((256, 384)[s],)
    assert sum(k.startswith('anchors.0.') for k in shapes) == 414  # LeViT-192: 28 flat blocks, stem, two heads
    official = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    mapped = levit_official_to_timm({'model': official})

    model = timm.create_model('snnet_levit_192_256', device='meta')
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(('anchors.', 'stitch_layers.'))}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    dropped = [k for k in shapes if k.endswith('attention_bias_idxs')]
    assert len(official) - len(mapped) == len(dropped) == 2 * (12 + 2)
    # the dropped index buffers have the shape timm recomputes (non-persistent there)
    buffers = dict(model.named_buffers())
    for k in dropped:
        n = int(k.split('.')[3])
        a = int(k.split('.')[1])
        attn = [m for m in mapped if m.startswith(f'anchors.{a}.') and m.endswith('attention_biases')]
        target = attn[[int(o.split('.')[3]) for o in dropped if o.startswith(f'anchors.{a}.')].index(n)]
        assert tuple(buffers[target.replace('attention_biases', 'attention_bias_idxs')].shape) == shapes[k]
    with pytest.raises(KeyError, match='do not map'):
        levit_official_to_timm({**official, 'anchors.0.blocks.0.m.unknown.weight': torch.empty(0)})


def _levit_original_bias_idxs(res: int, stride: int = 1) -> torch.Tensor:
    """LeViT's persistent `attention_bias_idxs`, from its description: for each query point (row-major, on the grid
    subsampled by `stride`) and key point (row-major), the offset (|dy|, |dx|) gets the next free id on first sight."""
    res_q = (res - 1) // stride + 1
    ids: dict[tuple[int, int], int] = {}
    rows = [[ids.setdefault((abs(qy * stride - ky), abs(qx * stride - kx)), len(ids))
             for ky in range(res) for kx in range(res)] for qy in range(res_q) for qx in range(res_q)]
    return torch.tensor(rows)


@pytest.mark.parametrize('res', [14, 7, 4])
def test_dropped_bias_indices_equal_timms(res):
    """Dropping the checkpoint's index buffers is safe: timm recomputes the same indices (LeViT-192/256 grids)."""
    from timm.models.levit import Attention, AttentionDownsample

    attn = Attention(dim=8, key_dim=4, num_heads=2, resolution=res)
    assert torch.equal(attn.attention_bias_idxs, _levit_original_bias_idxs(res))
    if res > 4:
        down = AttentionDownsample(in_dim=8, out_dim=8, key_dim=4, num_heads=2, resolution=res)
        assert torch.equal(down.attention_bias_idxs, _levit_original_bias_idxs(res, stride=2))
