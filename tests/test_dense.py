"""Dense prediction on every stitch (issue 30): the stitchable feature contract, every smp architecture on tiny
anchors for every stitch, switching inside wrappers, training semantics, export and bad requests."""
import copy
import warnings

import pytest
import timm
import torch
from conftest import TINY, tiny, tiny_input

import timm_snnet
from timm_snnet import DenseError, StitchableFeatures

smp = pytest.importorskip('segmentation_models_pytorch')
NAMES = ('snnet_resnet', 'snnet_deit_tsb', 'snnet_swin_tsb', 'snnet_resnet18_swin_ti')
HIERARCHICAL = ('snnet_resnet', 'snnet_swin_tsb', 'snnet_resnet18_swin_ti')
ARCHS = ('Unet', 'UnetPlusPlus', 'FPN', 'PSPNet', 'DeepLabV3', 'DeepLabV3Plus', 'Linknet', 'MAnet', 'PAN', 'UPerNet',
         'Segformer', 'DPT')
DILATES = ('snnet_resnet', 'snnet_deit_tsb')  # ResNets dilate in timm; a ViT pyramid stops at the output stride
SIZE = {'PAN': 128}  # PAN's pyramid attention pools the 1/32 map: 64 px leaves nothing to pool


def _kwargs(name: str, size: int = 64) -> dict:
    kw = dict(TINY[name][0])
    if 'img_size' in kw:
        kw['img_size'] = size
    return kw


@pytest.mark.parametrize('name', NAMES)
@torch.no_grad()
def test_every_stitch_one_feature_info(name):
    feats = tiny(name, features_only=True).eval()
    ref = tiny(name).eval()
    ref.load_state_dict(feats.model.state_dict(), strict=False)
    x = tiny_input(name)
    info = feats.feature_info
    assert isinstance(feats, StitchableFeatures) and info.channels() == [lv.channels for lv in feats.levels]
    expected = [4, 8, 16, 32] if name != 'snnet_resnet' else [2, 4, 8, 16, 32]
    assert info.reduction() == expected
    for k in range(feats.num_configs):
        feats.set_stitch(k)
        out = feats(x)
        assert [o.shape[1] for o in out] == info.channels(), k
        assert [o.shape[-1] for o in out] == [x.shape[-1] // r for r in info.reduction()], k
        if name in HIERARCHICAL:  # a level no projection touches is the stitch's own feature at that stage
            ref.set_stitch(k)
            native = ref.forward_intermediates(x, intermediates_only=True)[-len(out):]
            for i, (o, n) in enumerate(zip(out, native)):
                if f'{i}_{feats.plans[k][i][1]}' not in feats.projections:
                    torch.testing.assert_close(o, n, rtol=0, atol=0)


def test_projections_least_squares():
    feats = tiny('snnet_swin_tsb', features_only=True).eval()
    x = tiny_input('snnet_swin_tsb', batch=8)
    ids = {c.front: c.id for c in feats.model.configs if c.is_anchor}

    def error() -> float:  # anchor 0's projected stage-2 feature against the widest anchor's
        lv = feats.levels[2]
        src = feats._native(x, ids[0], [2])[0]
        return float((feats.projections['2_0'](src) - feats._native(x, ids[lv.target], [2])[0]).pow(2).mean())

    with torch.no_grad():
        before = error()
    feats.init_stitching_layers(x, progress=False)
    with torch.no_grad():
        assert error() < before  # the least-squares map beats the padded identity on its own rows


def test_getter_switch_keeps_the_pruned_backbone():
    getter = tiny('snnet_resnet', features_only=True, feature_cls='getter', stitch_id=5)
    assert type(getter).__name__ == 'FeatureGetterNet'
    assert getter.feature_info.channels() == [64, 8, 16, 128, 256]  # the stitch's own channels
    timm_snnet.set_stitch(getter, 5)
    with pytest.raises(DenseError, match='pruned to stitch 5'):
        timm_snnet.set_stitch(getter, 3)


def _smp(arch: str, name: str, **kw):
    size = SIZE.get(arch, 64)
    extra = dict(features_only=True) if arch == 'DPT' else {}  # DPT builds its encoder without features_only
    if arch == 'PAN' and name not in DILATES:  # undilated: PAN's pooling needs a 1/32 map of 8 x 8
        extra['encoder_output_stride'], size = 32, 256
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = getattr(smp, arch)(encoder_name=f'tu-{name}', encoder_weights=None, classes=3, **_kwargs(name, size),
                                   **extra, **kw)
    return model.eval(), torch.randn(1, 3, size, size)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('arch', ARCHS)
@torch.no_grad()
def test_smp_every_stitch(arch, name):
    if arch.startswith('DeepLab') and name not in DILATES:
        with pytest.raises(DenseError, match='cannot dilate'):
            _smp(arch, name)
        return
    model, x = _smp(arch, name)
    n = tiny(name).num_configs if arch != 'DPT' else model.encoder.model.num_configs
    for k in range(n):
        timm_snnet.set_stitch(model, k)
        assert model(x).shape == (1, 3, *x.shape[-2:]), k


def test_wrappers_switch_and_refuse():
    model, x = _smp('Unet', 'snnet_resnet')
    timm_snnet.set_stitch(model, 7)
    assert model.encoder.model.stitch_id == model.encoder.model.model.stitch_id == 7
    with pytest.raises(DenseError, match=r'valid ids are integers 0\.\.9'):
        timm_snnet.set_stitch(model, 10)
    with pytest.raises(DenseError, match='no SN-Net'):
        timm_snnet.set_stitch(torch.nn.Linear(2, 2), 0)
    with pytest.raises(DenseError, match=r'valid indices are 0\.\.4'):
        tiny('snnet_resnet', features_only=True, out_indices=(1, 5))
    # DDP (one process): the wrapper switches the SN-Net it holds
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method='tcp://127.0.0.1:29533', rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        timm_snnet.set_stitch(ddp, 2)
        assert model.encoder.model.stitch_id == 2
    finally:
        dist.destroy_process_group()


def test_stitch_configs_of_the_whole_model():
    model, _ = _smp('FPN', 'snnet_resnet')
    snnet = model.encoder.model.model
    rows = timm_snnet.stitch_configs(model, (3, 64, 64))
    own = snnet.stitch_configs((3, 64, 64))
    assert [r.id for r in rows] == list(range(snnet.num_configs)) and model.encoder.model.stitch_id == snnet.stitch_id
    extra = [r.gflops - o.gflops for r, o in zip(rows, own)]  # the decoder (and projections): about the same for all
    assert min(extra) > 0 and max(extra) - min(extra) < 0.2 * min(extra)
    assert all(r.params > o.params for r, o in zip(rows, own))


def test_training_touches_only_the_sampled_path():
    model, _ = _smp('Unet', 'snnet_resnet')
    feats = model.encoder.model
    feats.init_stitching_layers(torch.randn(8, 3, 64, 64), progress=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        k = copy.deepcopy(feats.model).sample_stitch()  # what the SN-Net's own sampler draws next
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = model(torch.randn(2, 3, 64, 64)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        off = {f'encoder.model.model.{m}.{p}' for m, p in feats.model.off_path_names(k)}
        off |= {f'encoder.model.projections.{n}.{t}' for n in feats.projections
                if n not in feats.projection_names(k) for t, _ in feats.projections[n].named_parameters()}
        off = {n for n in off if n in before}
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert off and not off & changed, k
        assert {n for n in before if n.startswith('decoder.')} <= changed
        assert any(n.startswith('encoder.') for n in changed)


def test_plain_ddp_without_find_unused_parameters(tmp_path):
    """timm's train.py wraps the model in plain DDP (find_unused_parameters=False): each step samples one stitch,
    the off-path encoder parameters and projections join the graph without a gradient, and stay untouched (a one-rank
    gloo group, in process)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "group"}', rank=0, world_size=1)
    try:
        model, _ = _smp('Unet', 'snnet_resnet')
        feats = model.encoder.model
        ddp = DistributedDataParallel(model.train())
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            k = copy.deepcopy(feats.model).sample_stitch()  # what the SN-Net's own sampler draws next
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            loss = ddp(torch.randn(2, 3, 64, 64)).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            off = {f'encoder.model.{m}.{p}' for m, p in feats.off_path_names(k)} & set(before)
            changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
            assert off and not off & changed, k
    finally:
        dist.destroy_process_group()


def test_export_one_stitch():
    model, x = _smp('Unet', 'snnet_resnet')
    model.encoder.model.init_stitching_layers(torch.randn(8, 3, 64, 64), progress=False)
    timm_snnet.set_stitch(model, 6)
    exported = timm_snnet.export_stitch(model, 6)
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=0, atol=0)
    with pytest.raises(DenseError, match='pruned to stitch 6'):
        timm_snnet.set_stitch(exported, 5)


@pytest.mark.slow
def test_export_onnx(tmp_path):
    pytest.importorskip('onnxruntime')
    model, x = _smp('Unet', 'snnet_resnet')
    exported = timm_snnet.export_stitch(model, 6)
    path = tmp_path / 'seg.onnx'
    with torch.no_grad():
        torch.onnx.export(exported, (x,), str(path), dynamo=True, input_names=['input'], verbose=False)
    assert timm_snnet.check_onnx(path, exported, x) < 1e-4


def test_timm_features_only_conventions():
    feats = timm.create_model('snnet_resnet', features_only=True, out_indices=(1, 2, 3, 4), device='meta')
    assert feats.feature_info.reduction() == [4, 8, 16, 32] and feats.output_fmt == 'NCHW'
    assert feats.pretrained_cfg['architecture'] == 'snnet_resnet'
