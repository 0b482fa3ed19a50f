"""Deploy one stitch: `export_stitch` equals the SN-Net's path exactly and holds only its weights; it round-trips
through save_for_hf / `local-dir:` without building the SN-Net; `timm-snnet export | profile`; torch.compile."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import tiny, tiny_input
from timm.models import save_for_hf

from timm_snnet import ExportedStitch, SNNet, save_snnet
from timm_snnet.cli import main

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_every_config_of_every_model_exports_exactly(tiny_name):
    """All configs: outputs equal model(x, stitch_id=k) bit for bit, parameters == the config table's params."""
    model = tiny(tiny_name).eval()
    x = tiny_input(tiny_name)
    for c in model.stitch_configs():
        stitch = model.export_stitch(c.id)
        assert type(stitch) is ExportedStitch and not stitch.training
        assert sum(p.numel() for p in stitch.parameters()) == c.params, model.describe(c)
        with torch.no_grad():
            ref = model(x, stitch_id=c.id)
            out = stitch(x)
            split = stitch.forward_head(stitch.forward_features(x))
        assert (out - ref).abs().max().item() == 0, model.describe(c)
        assert torch.equal(split, out)
        # a copy, not a view: changing the export leaves the SN-Net alone
        assert all(p.data_ptr() not in {q.data_ptr() for q in model.parameters()} for p in stitch.parameters())


def test_export_is_timm_shaped():
    model = tiny('snnet_swin_tsb').eval()
    k = next(c.id for c in model.stitch_configs() if c.stage == 2)
    stitch = model.export_stitch(k)
    cfg = stitch.pretrained_cfg
    assert cfg['architecture'] == 'exported_stitch' and cfg['input_size'] == (3, 64, 64) and cfg['fixed_input_size']
    assert cfg['first_conv'] == 'anchors.0.patch_embed.proj' and cfg['classifier'] == 'anchors.1.head.fc'
    assert stitch.get_submodule(cfg['classifier']) is stitch.get_classifier()
    assert stitch.num_classes == 1000 and stitch.num_features == model.anchors[model.route(k).last.anchor].num_features
    assert timm.data.resolve_model_data_config(stitch)['input_size'] == (3, 64, 64)
    stitch.reset_classifier(7)
    assert stitch.num_classes == 7 and stitch(tiny_input('snnet_swin_tsb')).shape == (2, 7)
    assert stitch.forward_head(stitch.forward_features(tiny_input('snnet_swin_tsb')), pre_logits=True).shape == (
        2, stitch.num_features)


def _roundtrip(tmp_path: Path, name: str, k: int, **kwargs):
    model = tiny(name).eval()
    save_for_hf(model.export_stitch(k), tmp_path / f'{name}-{k}', safe_serialization=True)
    return model, timm.create_model(f'local-dir:{tmp_path / f"{name}-{k}"}', pretrained=True, **kwargs).eval()


@pytest.mark.parametrize('name,k', [('snnet_swin_tsb', 10), ('snnet_resnet18_swin_ti', 6), ('snnet_deit_tsb', 0)])
def test_local_dir_rebuilds_without_the_snnet(tmp_path, monkeypatch, name, k):
    """config.json + model.safetensors rebuild the stitch; no SNNet is built, and Swin's non-persistent buffers
    (relative position index, shifted-window masks) are rebuilt by timm's own initialisers."""
    model = tiny(name).eval()
    folder = tmp_path / 'stitch'
    save_for_hf(model.export_stitch(k), folder, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'exported_stitch' and config['model_args']['stitch_id'] == k

    def no_snnet(*args, **kwargs):
        raise AssertionError('loading an exported stitch must not build the SN-Net')
    monkeypatch.setattr(SNNet, '__init__', no_snnet)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    x = tiny_input(name)
    with torch.no_grad():
        assert (loaded(x) - model(x, stitch_id=k)).abs().max().item() == 0
    if name == 'snnet_swin_tsb':
        masks = [b for n, b in loaded.named_buffers() if n.endswith('attn_mask')]
        assert masks and all(torch.isfinite(m).all() for m in masks)


def test_local_dir_new_head_and_bad_inputs(tmp_path):
    model, loaded = _roundtrip(tmp_path, 'snnet_resnet18_swin_ti', 6, num_classes=5)
    assert loaded.num_classes == 5 and loaded(tiny_input('snnet_resnet18_swin_ti')).shape == (2, 5)
    with pytest.raises(ValueError, match=r"fixed image size \(64, 64\)"):  # the Swin back anchor's size
        loaded(torch.zeros(1, 3, 96, 96))
    with pytest.raises(TypeError, match='export_stitch'):
        timm.create_model('exported_stitch')
    args = json.loads((tmp_path / 'snnet_resnet18_swin_ti-6' / 'config.json').read_text())['model_args']
    with pytest.raises(ValueError, match='out of range'):
        timm.create_model('exported_stitch', **{**args, 'segments': [[0, 0, 6], [1, 8, 99]]})
    with pytest.raises(ValueError, match='need 1 stitching layers'):
        timm.create_model('exported_stitch', **{**args, 'stitch_layers': []})



@pytest.mark.parametrize('name', ['snnet_resnet', 'snnet_resnet18_swin_ti'])
def test_reset_pooling_survives_export_and_save(tmp_path, name):
    """reset_classifier(0, '') after creation (unpooled maps): export_stitch and save_for_hf / `local-dir:` of the
    SN-Net and of the stitch keep it (timm's get_model_args reads `global_pool`), and equal the SN-Net exactly."""
    model, x = tiny(name).eval(), tiny_input(name)
    model.reset_classifier(0, '')
    k = model.stitch_configs()[-2].id
    ref = model(x, stitch_id=k)
    assert ref.ndim == 4
    stitch = model.export_stitch(k)
    assert torch.equal(stitch(x), ref)
    for i, m in enumerate((model, stitch)):
        save_for_hf(m, tmp_path / str(i), safe_serialization=True)
        loaded = timm.create_model(f'local-dir:{tmp_path / str(i)}', pretrained=True).eval()
        assert loaded.global_pool == '' and torch.equal(loaded(x, stitch_id=k) if i == 0 else loaded(x), ref)

_MEMORY_CHILD = '''
import pathlib, resource, sys, torch, timm, timm_snnet
torch.set_num_threads(1)
pathlib.Path('/proc/self/clear_refs').write_text('5')  # peak := RSS now, so the imports' transient peak drops out
if sys.argv[1] != 'bare':
    model = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
'''


def _peak_rss(arg: str) -> int:
    out = subprocess.run([sys.executable, '-c', _MEMORY_CHILD, arg], capture_output=True, text=True, timeout=300,
                         env={'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin', 'PYTHONWARNINGS': 'ignore',
                              'PYTHONPATH': str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path('/proc/self/clear_refs').exists(), reason='needs Linux /proc to reset the RSS peak')
def test_loading_holds_only_the_path(tmp_path):
    """Full-size DeiT S[0..1] -> B[2..] stitch (random weights): peak RSS of load + one forward, minus a bare
    interpreter with the same imports, stays within 1.3x its parameter bytes (the whole SN-Net is 1.5x that).
    The ~60 MiB above the weights is the forward's activations and the library code it touches first."""
    with torch.device('meta'):
        model = timm.create_model('snnet_deit_tsb')
    k = next(c.id for c in model.configs if (c.front, c.back, c.front_block, c.back_block) == (1, 2, 1, 2))
    stitch = model.export_stitch(k)
    stitch.to_empty(device='cpu')
    with torch.no_grad():
        for p in stitch.parameters():
            p.normal_(0, 0.02)
    save_for_hf(stitch, tmp_path / 'sb', safe_serialization=True)
    param_bytes = sum(p.numel() * p.element_size() for p in stitch.parameters())
    assert param_bytes > 250e6  # ~78M parameters: far above allocator noise
    del stitch, model
    added = _peak_rss(str(tmp_path / 'sb')) - _peak_rss('bare')
    assert added <= 1.3 * param_bytes, f'{added / 2**20:.0f} MiB for {param_bytes / 2**20:.0f} MiB of parameters'


def test_compiles_without_graph_breaks():
    for name, k in (('snnet_resnet18_swin_ti', 6), ('snnet_deit_tsb', 7)):
        model = tiny(name).eval()
        stitch = model.export_stitch(k)
        x = tiny_input(name)
        explained = torch._dynamo.explain(stitch)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
        torch._dynamo.reset()
        compiled = torch.compile(stitch, backend='aot_eager', fullgraph=True)  # inductor: test_export_compile.py
        with torch.no_grad():
            assert (compiled(x) - model(x, stitch_id=k)).abs().max().item() <= 1e-4


# --- command line ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp('export') / 'snnet'
    model = tiny('snnet_deit_tsb').eval()
    save_snnet(model, folder, readme=False)
    return model, folder


def test_cli_export_by_id_and_budget(saved, tmp_path, capsys):
    model, folder = saved
    assert main(['export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--stitch', '5',
                 '--output', str(tmp_path / 'k5')]) == 0
    x = tiny_input('snnet_deit_tsb')
    loaded = timm.create_model(f'local-dir:{tmp_path / "k5"}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x, stitch_id=5))
    configs = model.stitch_configs()
    budget = sorted(c.gflops for c in configs)[len(configs) // 2]
    assert main(['export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--max-gflops', str(budget),
                 '--output', str(tmp_path / 'budget')]) == 0
    k = json.loads((tmp_path / 'budget' / 'config.json').read_text())['model_args']['stitch_id']
    assert k == model.select_stitch(max_gflops=budget) and configs[k].gflops <= budget
    assert 'config' in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r'no config fits max_gflops=0.0001 \(the lowest gflops'):
        main(['export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--max-gflops', '0.0001',
              '--output', str(tmp_path / 'none')])
    with pytest.raises(SystemExit, match='max_latency_ms needs `latency_ms_b1`'):
        main(['export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--max-latency-ms', '5',
              '--output', str(tmp_path / 'none')])
    with pytest.raises(SystemExit, match='exists and is not empty'):
        main(['export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--stitch', '1',
              '--output', str(tmp_path / 'k5')])
    assert not (tmp_path / 'none').exists()


def test_cli_profile_merge_select_plot(saved, tmp_path):
    model, folder = saved
    common = ['--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--stitches', '0-2,20', '--device', 'cpu',
              '--batch-sizes', '1,2', '--threads', '1', '--warmup', '1', '--rounds', '2', '--min-run-time', '0.01']
    assert main(['profile', *common, '--output', str(tmp_path / 'prof')]) == 0
    result = json.loads((tmp_path / 'prof' / 'sweep.json').read_text())
    assert result['batch_size'] == 2 and result['profile']['rounds'] == 2 and result['anchors'] == [0, 1, 2]
    assert [r['id'] for r in result['rows']] == [0, 1, 2, 20]
    for r in result['rows']:
        assert r['latency_ms_b1'] > 0 and r['latency_ms_b2'] == r['latency_ms_bN'] > 0
    fastest = min(result['rows'], key=lambda r: r['latency_ms_b1'])
    assert main(['export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--sweep',
                 str(tmp_path / 'prof' / 'sweep.json'), '--max-latency-ms', str(fastest['latency_ms_b1']),
                 '--output', str(tmp_path / 'fast')]) == 0
    assert json.loads((tmp_path / 'fast' / 'config.json').read_text())['model_args']['stitch_id'] == fastest['id']
    assert main(['plot', str(tmp_path / 'prof'), '--x', 'latency']) == 0
    assert (tmp_path / 'prof' / 'pareto_latency.png').read_bytes()[:8] == PNG_MAGIC

    # merge into a sweep with accuracies: latencies replaced, top-1 kept, other rows untouched
    sweep = dict(model='snnet_deit_tsb', batch_size=2, rows=[
        dict(id=k, path=model.describe(model.stitch_configs()[k]), gflops=1.0, top1=50.0 + k, latency_ms_b1=99.0)
        for k in (0, 1, 2, 3)])
    (tmp_path / 'acc').mkdir()
    (tmp_path / 'acc' / 'sweep.json').write_text(json.dumps(sweep))
    assert main(['profile', *common, '--merge', str(tmp_path / 'acc' / 'sweep.json')]) == 0
    merged = {r['id']: r for r in json.loads((tmp_path / 'acc' / 'sweep.json').read_text())['rows']}
    assert set(merged) == {0, 1, 2, 3} and merged[3]['latency_ms_b1'] == 99.0 and merged[2]['top1'] == 52.0
    assert all(merged[k]['latency_ms_b1'] != 99.0 and merged[k]['latency_ms_bN'] > 0 for k in (0, 1, 2))
    sweep['batch_size'] = 64
    (tmp_path / 'acc' / 'sweep.json').write_text(json.dumps(sweep))
    with pytest.raises(SystemExit, match='--batch-sizes 1,64'):
        main(['profile', *common, '--merge', str(tmp_path / 'acc' / 'sweep.json')])
    with pytest.raises(SystemExit, match='--batch-sizes takes a comma list'):
        main(['profile', *common[:-8], '--batch-sizes', 'one', '--output', str(tmp_path / 'x')])


def test_profile_runs_in_interleaved_rounds(monkeypatch):
    """Each round times every (config, batch) once, and the row is the median over rounds."""
    import timm_snnet._latency as export

    order, values = [], iter(range(1, 100))
    monkeypatch.setattr(export, '_timed', lambda fn, threads, t: (order.append(fn), next(values) / 1e3)[1])
    model = tiny('snnet_deit_tsb').eval()
    rows = export.profile(model, [0, 4], batch_sizes=(1, 3), threads=1, warmup=0, rounds=3, progress=False)
    assert len(order) == 12 and order[:4] == order[4:8] == order[8:]
    assert [r['latency_ms_b1'] for r in rows] == [5.0, 7.0] and [r['latency_ms_bN'] for r in rows] == [6.0, 8.0]
