"""ONNX: every kind of path exports with a dynamic batch axis, passes onnx.checker and runs in onnxruntime within
1e-4 of eager. Also `timm-snnet export --format onnx`."""
import json

import pytest
import torch
from conftest import tiny, tiny_input

from timm_snnet import check_onnx, export_onnx, save_snnet
from timm_snnet.cli import main

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')


def _pick(model, kind: str) -> int:
    configs = model.stitch_configs()
    if kind == 'anchor':
        return 0
    front, back, stage = {'Ti->S': (0, 1, None), 'S->B': (1, 2, None), 'stage2': (1, 2, 2), 'stitch': (0, 1, 2),
                          'cnn->vit': (0, 1, 2)}[kind]
    return next(c.id for c in configs if (c.front, c.back) == (front, back) and (stage is None or c.stage == stage))


@pytest.mark.slow
@pytest.mark.parametrize('name,kind', [
    ('snnet_deit_tsb', 'anchor'), ('snnet_deit_tsb', 'Ti->S'), ('snnet_deit_tsb', 'S->B'),
    ('snnet_swin_tsb', 'stage2'), ('snnet_resnet', 'stitch'), ('snnet_resnet18_swin_ti', 'cnn->vit')])
def test_onnx_matches_eager(tmp_path, name, kind):
    model = tiny(name).eval()
    k = _pick(model, kind)
    stitch = model.export_stitch(k)
    path = export_onnx(stitch, tmp_path / 'model.onnx')
    graph = onnx.load(str(path)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim][0] == 'batch'
    for batch in (1, 3):  # exported at batch 2 (ResNet at 224x224: its spatial axes are dynamic too)
        x = tiny_input(name, batch=batch, seed=batch)
        assert check_onnx(path, stitch, x) <= 1e-4, model.describe(model.stitch_configs()[k])
        with torch.no_grad():
            assert torch.equal(stitch(x), model(x, stitch_id=k))


def test_cli_export_onnx(tmp_path, capsys):  # fast tier: the ONNX path, once
    model = tiny('snnet_resnet18_swin_ti').eval()
    save_snnet(model, tmp_path / 'snnet', readme=False)
    assert main(['export', '--model', 'snnet_resnet18_swin_ti', '--checkpoint', str(tmp_path / 'snnet'),
                 '--stitch', '7', '--format', 'onnx', '--output', str(tmp_path / 'onnx')]) == 0
    assert sorted(p.name for p in (tmp_path / 'onnx').iterdir()) == ['config.json', 'model.onnx']
    assert 'onnxruntime matches eager' in capsys.readouterr().out
    cfg = json.loads((tmp_path / 'onnx' / 'config.json').read_text())
    assert cfg['pretrained_cfg']['input_size'] == [3, 64, 64] and cfg['model_args']['stitch_id'] == 7
    x = tiny_input('snnet_resnet18_swin_ti', batch=4)
    assert check_onnx(tmp_path / 'onnx' / 'model.onnx', model.export_stitch(7), x) <= 1e-4
