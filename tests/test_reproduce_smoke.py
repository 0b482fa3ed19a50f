"""Smoke test of the Fashion-MNIST reproduction pipeline (examples/fashion_mnist/reproduce.py): it runs end to end.

Checks the pipeline only, never the numbers. Uses Debian's `dataset-fashion-mnist` files when installed, else skips.
"""
import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / 'examples' / 'fashion_mnist' / 'reproduce.py'


def _load_script():
    spec = importlib.util.spec_from_file_location('fashion_mnist_reproduce', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reproduce = _load_script()
needs_data = pytest.mark.skipif(
    not all((reproduce.DEFAULT_DATA_DIR / f'{n}.gz').is_file() or (reproduce.DEFAULT_DATA_DIR / n).is_file()
            for pair in reproduce.FILES.values() for n in pair),
    reason=f'Fashion-MNIST not installed in {reproduce.DEFAULT_DATA_DIR} (apt-get install dataset-fashion-mnist)')


def _write_idx(path: Path, data: bytes, shape: tuple[int, ...]) -> None:
    header = struct.pack('>HBB', 0, 0x08, len(shape)) + struct.pack(f'>{len(shape)}I', *shape)
    (gzip.open if path.suffix == '.gz' else open)(path, 'wb').write(header + data)


def test_idx_reader_plain_and_gz(tmp_path):
    _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', bytes(range(2 * 3 * 3)), (2, 3, 3))
    _write_idx(tmp_path / 'train-labels-idx1-ubyte', bytes([7, 1]), (2,))
    images, labels = reproduce.load_split(tmp_path, 'train')
    assert images.shape == (2, 3, 3) and int(images[1, 2, 2]) == 17
    assert labels.tolist() == [7, 1]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r't10k-images-idx3-ubyte\[\.gz\] not found .*--data-dir'):
        reproduce.load_split(tmp_path, 'test')
    assert reproduce.main(['--data-dir', str(tmp_path), '--output', str(tmp_path / 'out')]) == 2


def test_spearman_and_summary():
    assert reproduce.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert reproduce.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rows = [dict(id=i, gflops=g, top1=a) for i, (g, a) in enumerate([(1, 70), (4, 80), (2, 75), (3, 85), (3, 60)])]
    s = reproduce.summarize(rows, num_anchors=2)
    assert (s['in_band'], s['above_band'], s['below_band']) == (1, 1, 1)
    assert s['pareto'] == [0, 2, 3]


@needs_data
@pytest.mark.timeout(300)
def test_pipeline_smoke(tmp_path):
    """--quick on tiny subsets: trains, LS-inits, trains the SN-Net, sweeps all 71 configs, plots, reports."""
    out = tmp_path / 'out'
    threads = torch.get_num_threads()
    try:
        rc = reproduce.main(['--quick', '--seed', '1', '--output', str(out), '--train-subset', '256',
                             '--test-subset', '64', '--variant-test-subset', '32', '--variants', 'uniform,anchor_boost',
                             '--batch-size', '64', '--latency-iters', '1'])
    finally:
        torch.set_num_threads(threads)  # main() sets the process-wide thread count
    assert rc == 0
    sweep = json.loads((out / 'sweep.json').read_text())
    assert [r['id'] for r in sweep['rows']] == list(range(71))
    assert all(0 <= r['top1'] <= 100 for r in sweep['rows'])
    results = json.loads((out / 'results.json').read_text())
    assert len(results['standalone']) == 3 and set(results['variants']) == {'uniform', 'anchor_boost'}
    assert (out / 'pareto.png').stat().st_size > 0 and (out / 'pareto_anchor_boost.png').stat().st_size > 0
    assert (out / 'snnet.safetensors').is_file()
    assert '## Anchors: standalone vs inside the SN-Net' in (out / 'report.md').read_text()


def test_inplace_teacher_leaves_the_student_sampling():
    """In-place distillation: timm's task puts its teacher in eval mode; the SN-Net (student and teacher at once)
    keeps training and sampling, and the teacher's logits are the largest anchor's."""
    s = reproduce.Setting(widths=(8, 16, 32))
    snnet = reproduce.create_snnet(s)
    task = reproduce.distillation_task(s, 'inplace', snnet, None)
    task.train()
    assert snnet.training and task.teacher.model is not snnet and not task.teacher.training
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    out = task(x, y)
    assert out['kd_loss'] > 0 and out['loss'].requires_grad
    with torch.no_grad():
        assert torch.equal(task.teacher.model(x), snnet(x, stitch_id=2))
    assert reproduce.distillation_task(s, 'none', snnet, None) is None


@needs_data
@pytest.mark.timeout(300)
def test_study_smoke(tmp_path):
    """--study: epochs x distillation on tiny subsets, each run cached (a second call trains nothing), a report."""
    out = tmp_path / 'out'
    args = ['--quick', '--study', '--output', str(out), '--train-subset', '128', '--test-subset', '32',
            '--batch-size', '64', '--study-epochs', '0.5,1', '--study-kd', 'none,teacher,inplace', '--widths',
            '8,16,24', '--anchor-epochs', '0.5']
    threads = torch.get_num_threads()
    try:
        assert reproduce.main(args) == 0
        runs = sorted(p.name for p in (out / 'runs').glob('*.json'))
        assert len(runs) == 6 and any('kd-inplace_0.5ep_seed0' in r for r in runs)
        stamp = {p: p.stat().st_mtime_ns for p in (out / 'runs').iterdir()}
        assert reproduce.main(args) == 0
        assert {p: p.stat().st_mtime_ns for p in (out / 'runs').iterdir()} == stamp
    finally:
        torch.set_num_threads(threads)
    study = json.loads((out / 'study.json').read_text())
    assert [(c['kd'], c['epochs']) for c in study['cells']] == [
        (kd, e) for kd in ('none', 'teacher', 'inplace') for e in (0.5, 1.0)]
    assert all(len(c['anchor_change']) == 3 and set(c['spearman_pairs']) == {'Ti->S', 'S->B'} for c in study['cells'])
    assert '| inplace | 0.5 | 1 |' in (out / 'study.md').read_text()
    assert (out / 'study.png').stat().st_size > 0
    with pytest.raises(SystemExit, match='unknown distillation'):
        reproduce.main(args[:-4] + ['--study-kd', 'hard'])


@needs_data
@pytest.mark.timeout(300)
def test_cross_family_smoke(tmp_path):
    """examples/fashion_mnist/cross_family.py on tiny subsets: EfficientNet -> ConvNeXt joined by reduction, trained,
    swept, reported and plotted."""
    spec = importlib.util.spec_from_file_location('fashion_mnist_cross_family', SCRIPT.with_name('cross_family.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / 'out'
    threads = torch.get_num_threads()
    try:
        rc = module.main(['--seeds', '1', '--output', str(out), '--train-subset', '256', '--test-subset', '64',
                          '--anchor-epochs', '0.5', '--snnet-epochs', '0.5'])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['junctions'] == [2, 4, 8, 16, 32] and results['num_stitches'] == 12
    assert [r['id'] for r in results['runs'][0]['rows']] == list(range(14))
    assert (out / 'pareto.png').stat().st_size > 0 and 'Spearman' in (out / 'report.md').read_text()
