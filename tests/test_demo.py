"""`make demo` (examples/demo.py) on the trained Fashion-MNIST SN-Net shipped in examples/fashion_mnist/model."""
import json
import sys
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'examples' / 'fashion_mnist' / 'model'


def test_shipped_model_loads_through_local_dir_with_its_table():
    model = timm.create_model(f'local-dir:{MODEL}', pretrained=True)
    table = model.stitch_table
    assert model.num_configs == 71 and [r['id'] for r in table] == list(range(71))
    assert all(60 < r['top1'] <= 100 for r in table), 'a trained model: every stitch well above chance (10%)'
    provenance = json.loads((MODEL / 'provenance.json').read_text())
    assert {'command', 'seed', 'commit'} <= set(provenance)


def test_demo_runs_offline(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / 'examples'))
    import demo

    threads = torch.get_num_threads()
    try:
        demo.main(['--num-images', '40', '--full-size', '', '--output', str(tmp_path), '--data-dir', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert 'shipped in' in out and 'best top-1 within a FLOPs budget' in out
    picks = [line for line in out.splitlines() if line.lstrip().startswith('<=')]
    assert len(picks) == 5 and all(line.endswith(('(anchor)', '(stitch)')) for line in picks)
    rows = json.loads((tmp_path / 'sweep.json').read_text())['rows']
    assert [r['id'] for r in rows] == list(range(71)) and all(r['latency_ms_b1'] > 0 for r in rows)
    assert (tmp_path / 'pareto.png').stat().st_size > 0
    assert json.loads((tmp_path / 'sweep.json').read_text())['architecture'] == 'snnet_deit_tsb'  # the plot's title
