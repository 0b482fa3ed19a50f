"""timm's feature API on SN-Nets (tiny anchors): the features of every stitch, features_only, output_fmt / pool_size,
and timm's own save_for_hf keeping the active stitch, the sampling settings and the stitch table."""
import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY, tiny, tiny_input
from safetensors.torch import load_file
from timm.models import save_for_hf

from timm_snnet import save_snnet


def _hooked_features(model, x):
    """What the stitched forward computes at each feature_info module (forward hooks), in NCHW."""
    info, seen = model.feature_info, {}
    hooks = [model.get_submodule(i['module']).register_forward_hook(
        lambda m, a, out, key=i['module']: seen.__setitem__(key, out)) for i in info]
    try:
        final = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i in info:
        f = seen[i['module']]
        if f.ndim == 3:  # ViT tokens: patch tokens to NCHW
            a = int(i['module'].split('.')[1])
            f = f[:, model.families[a].prefix_tokens(model.anchors[a]):]
            side = x.shape[-1] // i['reduction']
            f = f.reshape(f.shape[0], -1, side, f.shape[-1]).permute(0, 3, 1, 2)
        elif model._families[int(i['module'].split('.')[1])].layout == 'nhwc':
            f = f.permute(0, 3, 1, 2)
        out.append(f)
    return final, out


@torch.no_grad()
def test_features_follow_every_stitch(tiny_name):
    model, x = tiny(tiny_name).eval(), tiny_input(tiny_name)
    for k in range(model.num_configs):
        model.set_stitch(k)
        expected_final, expected = _hooked_features(model, x)
        final, features = model.forward_intermediates(x)
        torch.testing.assert_close(final, expected_final, rtol=0, atol=0)
        assert len(features) == len(model.feature_info)
        for f, e, i in zip(features, expected, model.feature_info):
            assert f.shape[1] == i['num_chs'] and f.shape[-1] == -(-x.shape[-1] // i['reduction'])
            torch.testing.assert_close(f, e, rtol=0, atol=0)
        # stop_early and indices pick the same tensors
        last = model.forward_intermediates(x, indices=[-1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(last[0], features[-1], rtol=0, atol=0)


def test_output_fmt_and_pool_size_follow_the_stitch():
    model = tiny('snnet_resnet18_swin_ti').eval()
    x = tiny_input('snnet_resnet18_swin_ti')
    fmts = []
    for k in range(model.num_configs):
        model.set_stitch(k)
        fmts.append(model.output_fmt)
        out = model.forward_features(x)
        spatial = out.shape[2:] if model.output_fmt == 'NCHW' else out.shape[1:3]
        assert tuple(spatial) == model.pool_size, k
        assert out.shape[model.feature_dim] == model.num_features
    assert fmts == ['NCHW'] + ['NHWC'] * (model.num_configs - 1)  # R18 anchor ends NCHW, every Swin path NHWC
    assert tiny('snnet_deit_tsb').output_fmt == 'NLC' and tiny('snnet_deit_tsb').pool_size is None
    assert timm.create_model('snnet_swin_tsb', device='meta').pretrained_cfg['pool_size'] == (7, 7)


@pytest.mark.parametrize('name', ['snnet_resnet', 'snnet_resnet18_swin_ti', 'snnet_deit_tsb'])
def test_features_only_backbone(name):
    x = tiny_input(name)
    ref = tiny(name).eval()
    for k in (0, ref.num_configs - 2):
        backbone = tiny(name, features_only=True, feature_cls='getter', stitch_id=k).eval()  # one stitch, pruned
        ref.set_stitch(k)
        assert backbone.feature_info.channels() == [i['num_chs'] for i in ref.feature_info]
        backbone.model.load_state_dict({n: t for n, t in ref.state_dict().items()
                                        if n in backbone.model.state_dict()})
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), ref.forward_intermediates(x, intermediates_only=True))
        # pruned to the stitch's path: every parameter left trains (DDP without find_unused_parameters)
        backbone.train()
        sum(f.sum() for f in backbone(x)).backward()
        assert not [n for n, p in backbone.named_parameters() if p.grad is None]
        other = (k + 1) % ref.num_configs
        with pytest.raises(ValueError, match=f'pruned to stitch {k}'):
            backbone.model.set_stitch(other)
    with pytest.raises(ValueError, match='output_fmt'):
        tiny('snnet_resnet').forward_intermediates(tiny_input('snnet_resnet'), output_fmt='NLC')


def _rows(model):
    return [dict(id=c.id, gflops=float(c.id), top1=50.0 + c.id) for c in model.stitch_configs()]


@pytest.mark.parametrize('name', ['snnet_resnet', 'snnet_deit_tsb'])
def test_timm_save_for_hf_round_trip(name, tmp_path):
    model = tiny(name).eval()
    model.set_stitch(5)
    model.set_stitch_table(_rows(model))
    weights = [1.0 + i % 3 for i in range(model.num_configs)]
    model.set_sampling_weights(weights)
    save_for_hf(model, tmp_path / 'timm', safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path / "timm"}', pretrained=True).eval()
    assert loaded.stitch_id == 5
    assert loaded.stitch_table == model.stitch_table
    assert loaded._sampling_weights == weights and loaded.stitch_seed == model.stitch_seed
    x = tiny_input(name)
    with torch.no_grad():
        for k in range(model.num_configs):
            torch.testing.assert_close(loaded(x, stitch_id=k), model(x, stitch_id=k), rtol=0, atol=0)

    # timm's way and timm-snnet's save give the same repo (model card aside)
    save_snnet(model, tmp_path / 'snnet', readme=False)
    for folder in ('timm', 'snnet'):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ['config.json', 'model.safetensors']
    configs = [json.loads((tmp_path / f / 'config.json').read_text()) for f in ('timm', 'snnet')]
    # save_snnet pins the weights file (timm's export drops hf_hub_* keys; timm-snnet's loader reads it either way)
    assert configs[1]['pretrained_cfg'].pop('hf_hub_filename') == 'model.safetensors'
    assert configs[0] == configs[1]
    tensors = [load_file(tmp_path / f / 'model.safetensors') for f in ('timm', 'snnet')]
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][n], tensors[1][n]) for n in tensors[0])


def test_set_stitch_stays_cheap():
    """set_stitch writes no dict: model_args are read live when timm saves."""
    model = tiny('snnet_resnet')
    model.set_stitch(3)
    assert '_recorded_model_args' in model.__dict__ and model._model_args['stitch_id'] == 3
    assert model.__dict__['_recorded_model_args'].get('stitch_id') != 3  # recorded at creation, not on set_stitch


def test_backbone_example(capsys):
    path = Path(__file__).resolve().parents[1] / 'examples' / 'backbone.py'
    spec = importlib.util.spec_from_file_location('backbone_example', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(['--tiny', '--img-size', '64'])
    assert [r['stitch_id'] for r in report] == [0, 5]
    assert report[0]['channels'] == [8, 16, 32, 64] and report[1]['channels'] == [8, 16, 128, 256]
    assert all(r['shapes'] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)] for r in report)
    assert 'stitch 5' in capsys.readouterr().out


assert set(TINY) == set(timm.list_models('snnet_*'))
