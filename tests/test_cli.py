"""`timm-snnet run | init | sweep | plot | select` end to end on a tiny model, and budget selection."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY, tiny
from image_folder import make_image_folder

import timm_snnet._evaluate as sweep_mod
from timm_snnet._selection import pareto_front, parse_stitches, select_stitch
from timm_snnet.cli import main

NAME = 'snnet_deit_tsb'
CLASSES = 4
KWARGS = [f'{k}={v!r}' for k, v in TINY[NAME][0].items()]  # --model-kwargs tokens, as on a shell
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore'}

SCRIPT = '''
import json, os, sys
import timm
out = {"name": __name__, "argv": sys.argv, "path0": sys.path[0], "file": __file__,
       "snnets": timm.list_models("snnet_*")}
with open(os.environ["RUN_OUT"], "w") as f:
    json.dump(out, f)
if "--fail" in sys.argv:
    sys.exit(3)
'''


# --- run -------------------------------------------------------------------------------------------------------------
@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / 'scripts' / 'train.py'
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


def _check_run(out: Path, script: Path, args: list) -> None:
    seen = json.loads(out.read_text())
    assert seen['name'] == '__main__'
    assert seen['argv'] == [str(script), *args]
    assert seen['path0'] == str(script.parent)
    assert NAME in seen['snnets'], 'the plugin is imported before the script runs'


def test_run_module_runs_script_as_main(script: Path, tmp_path: Path) -> None:
    args = ['/data/imagenet', '--model', NAME, '-h', '--model-kwargs', 'stitch_id=3']
    env = {**ENV, 'RUN_OUT': str(tmp_path / 'seen.json')}
    proc = subprocess.run([sys.executable, '-m', 'timm_snnet.cli.run', str(script), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _check_run(tmp_path / 'seen.json', script, args)
    failed = subprocess.run([sys.executable, '-m', 'timm_snnet.cli.run', str(script), '--fail'], env=env,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 3, "the script's exit status comes back"


def test_run_console_script(script: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / 'timm-snnet'
    if not exe.is_file():
        pytest.skip('timm-snnet console script not installed in this environment')
    args = ['--lr', '0.1', 'positional']
    proc = subprocess.run([str(exe), 'run', str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**ENV, 'RUN_OUT': str(tmp_path / 'seen.json')})
    assert proc.returncode == 0, proc.stderr
    _check_run(tmp_path / 'seen.json', script, args)


def test_run_in_process_restores_argv(script: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv('RUN_OUT', str(tmp_path / 'seen.json'))
    argv, path0 = list(sys.argv), sys.path[0]
    assert main(['run', str(script), '--epochs', '2', '-h']) == 0
    _check_run(tmp_path / 'seen.json', script, ['--epochs', '2', '-h'])
    assert sys.argv == argv and sys.path[0] == path0
    with pytest.raises(SystemExit, match='no script at'):
        main(['run', str(tmp_path / 'missing.py')])


# --- init / sweep / plot / select ------------------------------------------------------------------------------------
def _sweep_args(ckpt: Path, data: Path, out: Path, *extra: str, name: str = NAME, kwargs: list = KWARGS) -> list:
    return ['sweep', '--model', name, '--checkpoint', str(ckpt), '--data-dir', str(data), '--output', str(out),
            '--num-classes', str(CLASSES), '--batch-size', '8', '--device', 'cpu', '--workers', '0',
            '--latency-warmup', '0', '--latency-iters', '1', *extra, '--model-kwargs', *kwargs]


def _rows(path: Path) -> list:
    return json.loads(path.read_text())['rows']


def _accuracy_view(rows: list) -> list:
    return [{k: r[k] for k in ('id', 'path', 'gflops', 'params', 'top1', 'top5')} for r in rows]


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    data = make_image_folder(root / 'data', classes=CLASSES, train=6, val=4, size=32)
    init = root / 'init.safetensors'
    assert main(['init', '--model', NAME, '--data-dir', str(data), '--num-images', '16', '--num-classes',
                 str(CLASSES), '--output', str(init), '--workers', '0', '--device', 'cpu',
                 '--model-kwargs', *KWARGS]) == 0
    assert main(_sweep_args(init, data, root / 'full')) == 0
    return dict(root=root, data=data, init=init, full=root / 'full')


def test_init_sweep_plot_every_model(tiny_name: str, tmp_path: Path) -> None:
    """Every registered SN-Net (tiny anchors): init -> sweep of an anchor and a stitch -> plot."""
    kwargs = [f'{k}={v!r}' for k, v in TINY[tiny_name][0].items()]
    data = make_image_folder(tmp_path / 'data', classes=CLASSES, train=2, val=2, size=TINY[tiny_name][1][-1])
    init = tmp_path / 'init.safetensors'
    assert main(['init', '--model', tiny_name, '--data-dir', str(data), '--num-images', '8', '--num-classes',
                 str(CLASSES), '--output', str(init), '--workers', '0', '--device', 'cpu',
                 '--model-kwargs', *kwargs]) == 0
    last = tiny(tiny_name).num_configs - 1
    assert main(_sweep_args(init, data, tmp_path / 'out', '--stitches', f'0,{last}', name=tiny_name,
                            kwargs=kwargs)) == 0
    assert [r['id'] for r in _rows(tmp_path / 'out' / 'sweep.json')] == [0, last]
    assert main(['plot', str(tmp_path / 'out')]) == 0
    assert (tmp_path / 'out' / 'pareto_gflops.png').read_bytes()[:8] == PNG_MAGIC


def test_init_writes_ls_initialised_safetensors(swept) -> None:
    from safetensors import safe_open

    with safe_open(str(swept['init']), 'pt') as f:
        meta = f.metadata()
    assert meta['model'] == NAME and meta['init_images'] == '16'
    model = tiny(NAME, num_classes=CLASSES)
    x = torch.randn(4, 3, 32, 32)
    before = sum(model.stitching_error(x).values())
    timm.models.load_checkpoint(model, str(swept['init']))
    assert sum(model.stitching_error(x).values()) < before


def test_sweep_one_row_per_stitch(swept) -> None:
    n = tiny(NAME).num_configs
    with open(swept['full'] / 'sweep.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['id']) for r in rows] == list(range(n))
    result = json.loads((swept['full'] / 'sweep.json').read_text())
    assert result['model'] == NAME and result['batch_size'] == 8 and result['device'] == 'cpu'
    assert result['anchors'] == [0, 1, 2]
    assert set(result['checkpoint']) >= {'path', 'sha256'} and len(result['checkpoint']['sha256']) == 64
    assert result['data']['num_images'] == 4 * CLASSES and result['transforms']['input_size'] == [3, 32, 32]
    for row in result['rows']:
        assert set(row) == set(sweep_mod.ROW_KEYS)
        assert 0 <= row['top1'] <= row['top5'] <= 100 and row['gflops'] > 0 and row['params'] > 0
        assert row['latency_ms_b1'] > 0 and row['latency_ms_bN'] > 0
    model = tiny(NAME, num_classes=CLASSES)
    expect = model.stitch_configs()
    assert [r['params'] for r in result['rows']] == [c.params for c in expect]


def test_sweep_matches_validate_path(swept) -> None:
    """A stitch's top-1 equals validate.py's: create_model(stitch_id=K) + load_checkpoint, eval transforms."""
    row = _rows(swept['full'] / 'sweep.json')[7]
    model = timm.create_model(NAME, num_classes=CLASSES, stitch_id=7, **TINY[NAME][0])
    timm.models.load_checkpoint(model, str(swept['init']))
    from timm.data import create_dataset, create_loader, resolve_data_config
    cfg = resolve_data_config({'img_size': 32}, model=model)
    loader = create_loader(create_dataset('', root=str(swept['data']), split='validation'), cfg['input_size'], 8,
                           interpolation=cfg['interpolation'], crop_pct=cfg['crop_pct'], use_prefetcher=False,
                           num_workers=0)
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
    assert row['top1'] == pytest.approx(100 * hits / (4 * CLASSES))


def test_sweep_resumes_after_interruption(swept, monkeypatch) -> None:
    out = swept['root'] / 'interrupted'
    real, calls = sweep_mod.evaluate, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, 'evaluate', flaky)
    with pytest.raises(KeyboardInterrupt):
        main(_sweep_args(swept['init'], swept['data'], out, '--stitches', '2-8'))
    partial = _rows(out / 'sweep.json')
    assert [r['id'] for r in partial] == [2, 3, 4]
    monkeypatch.setattr(sweep_mod, 'evaluate', real)
    assert main(_sweep_args(swept['init'], swept['data'], out, '--stitches', '2-8')) == 0
    rows = _rows(out / 'sweep.json')
    assert rows[:3] == partial, 'finished stitches are kept, not re-measured'
    assert _accuracy_view(rows) == _accuracy_view(_rows(swept['full'] / 'sweep.json')[2:9])


def test_sweep_recomputes_when_checkpoint_or_data_change(swept, capsys, tmp_path) -> None:
    out = tmp_path / 'out'
    assert main(_sweep_args(swept['init'], swept['data'], out, '--stitches', '0-2')) == 0
    assert main(_sweep_args(swept['init'], swept['data'], out, '--stitches', '0-3')) == 0
    assert 'resuming' in capsys.readouterr().out
    assert [r['id'] for r in _rows(out / 'sweep.json')] == [0, 1, 2, 3]
    other = tmp_path / 'other.safetensors'
    main(['init', '--model', NAME, '--data-dir', str(swept['data']), '--num-images', '8', '--seed', '1',
          '--num-classes', str(CLASSES), '--output', str(other), '--workers', '0', '--model-kwargs', *KWARGS])
    assert main(_sweep_args(other, swept['data'], out, '--stitches', '0-1')) == 0
    assert 'different checkpoint: recomputing' in capsys.readouterr().out
    assert [r['id'] for r in _rows(out / 'sweep.json')] == [0, 1]
    (swept['data'] / 'val' / 'class_0' / '0.png').rename(swept['data'] / 'val' / 'class_0' / 'moved.png')
    try:
        assert main(_sweep_args(other, swept['data'], out, '--stitches', '0-1')) == 0
    finally:
        (swept['data'] / 'val' / 'class_0' / 'moved.png').rename(swept['data'] / 'val' / 'class_0' / '0.png')
    assert 'different data: recomputing' in capsys.readouterr().out


def test_sweep_clear_errors(swept, tmp_path) -> None:
    init, data = swept['init'], swept['data']
    with pytest.raises(SystemExit, match='data dir not found'):
        main(_sweep_args(init, tmp_path / 'nope', tmp_path / 'o'))
    (tmp_path / 'empty' / 'val' / 'a').mkdir(parents=True)
    with pytest.raises(SystemExit, match='no images'):
        main(_sweep_args(init, tmp_path / 'empty', tmp_path / 'o'))
    with pytest.raises(SystemExit, match=r'out of range: valid ids are 0\.\.22'):
        main(_sweep_args(init, data, tmp_path / 'o', '--stitches', '0-99'))
    with pytest.raises(SystemExit, match='bad stitch range'):
        main(_sweep_args(init, data, tmp_path / 'o', '--stitches', 'x-3'))
    with pytest.raises(SystemExit, match='checkpoint not found'):
        main(_sweep_args(tmp_path / 'missing.pth.tar', data, tmp_path / 'o'))
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit, match='not a safetensors file: .* is a text file'):
        main(_sweep_args(junk, data, tmp_path / 'o'))
    args = _sweep_args(init, data, tmp_path / 'o')
    args[args.index('--num-classes') + 1] = '7'
    with pytest.raises(SystemExit, match=r'has \d+ classes .*, snnet_deit_tsb is built with 7: pass --num-classes'):
        main(args)
    assert not (tmp_path / 'o' / 'sweep.json').exists()


def test_plot_writes_png(swept, tmp_path) -> None:
    out = tmp_path / 'p.png'
    ref = tmp_path / 'ref.jsonl'
    ref.write_text('{"cfg_id": 0, "flops": 300000, "acc1": 50.0}\n{"cfg_id": 1, "flops": 1000000, "acc1": 60.0}\n')
    assert main(['plot', str(swept['full'] / 'sweep.json'), '--output', str(out), '--reference', str(ref)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert main(['plot', str(swept['full']), '--x', 'latency']) == 0
    assert (swept['full'] / 'pareto_latency.png').read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit, match='FLOPs only'):
        main(['plot', str(swept['full']), '--x', 'latency', '--reference', str(ref)])


def test_select_command_and_stored_table(swept, capsys, tmp_path) -> None:
    rows = _rows(swept['full'] / 'sweep.json')
    budget = sorted(r['gflops'] for r in rows)[len(rows) // 2]
    assert main(['select', str(swept['full'] / 'sweep.json'), '--max-gflops', str(budget)]) == 0
    best = int(capsys.readouterr().out.split('\t')[0])
    assert best == select_stitch(rows, max_gflops=budget)
    with pytest.raises(SystemExit, match='no config fits max_gflops=1e-09'):
        main(['select', str(swept['full']), '--max-gflops', '1e-9'])
    # the sweep table rides in the weights: select_stitch works after loading them
    saved = tmp_path / 'with_table.safetensors'
    assert main(_sweep_args(swept['init'], swept['data'], swept['full'], '--save-model', str(saved))) == 0
    model = tiny(NAME, num_classes=CLASSES)
    timm.models.load_checkpoint(model, str(saved))
    assert model.stitch_table == rows
    assert model.select_stitch(max_gflops=budget) == best
    capsys.readouterr()
    assert main(['select', '--model', NAME, '--checkpoint', str(saved), '--num-classes', str(CLASSES),
                 '--max-gflops', str(budget), '--model-kwargs', *KWARGS]) == 0
    assert int(capsys.readouterr().out.split('\t')[0]) == best


# --- selection (pure) ------------------------------------------------------------------------------------------------
TABLE = [
    dict(id=0, gflops=1.0, top1=70.0, latency_ms_b1=1.0, latency_ms_bN=10.0),
    dict(id=1, gflops=4.0, top1=79.0, latency_ms_b1=2.0, latency_ms_bN=20.0),
    dict(id=2, gflops=17.0, top1=82.0, latency_ms_b1=5.0, latency_ms_bN=50.0),
    dict(id=3, gflops=2.5, top1=75.0, latency_ms_b1=1.5, latency_ms_bN=15.0),
    dict(id=4, gflops=3.0, top1=74.0, latency_ms_b1=1.2, latency_ms_bN=30.0),
    dict(id=5, gflops=3.9, top1=79.0, latency_ms_b1=2.1, latency_ms_bN=21.0),
]


@pytest.mark.parametrize('budget, expect', [
    ({}, 2),
    ({'max_gflops': 3.0}, 3),
    ({'max_gflops': 4.0}, 5),  # ties on top-1 go to fewer GFLOPs
    ({'max_gflops': 0.99999, 'min_top1': 0}, None),
    ({'max_latency_ms': 1.3}, 4),
    ({'max_latency_ms': 16, 'latency': 'bN'}, 3),
    ({'min_top1': 80}, 2),
    ({'min_top1': 76, 'max_gflops': 4.0}, 5),
])
def test_select_stitch_on_table(budget, expect) -> None:
    if expect is None:
        with pytest.raises(ValueError, match=r'no config fits max_gflops=0\.99999 .*lowest gflops in the table is 1'):
            select_stitch(TABLE, **budget)
    else:
        assert select_stitch(TABLE, **budget) == expect


def test_select_stitch_rejects_impossible_and_bad_budgets() -> None:
    with pytest.raises(ValueError, match=r'min_top1=90 \(the best top1 in the table is 82, config 2\)'):
        select_stitch(TABLE, min_top1=90)
    with pytest.raises(ValueError, match='no config fits max_gflops=2'):
        select_stitch(TABLE, max_gflops=2, min_top1=75)
    with pytest.raises(ValueError, match='must be positive'):
        select_stitch(TABLE, max_gflops=-1)
    with pytest.raises(ValueError, match='must be a number'):
        select_stitch(TABLE, max_latency_ms='fast')
    with pytest.raises(ValueError, match='empty'):
        select_stitch([], max_gflops=1)
    flops_only = [{k: r[k] for k in ('id', 'gflops')} for r in TABLE]
    assert select_stitch(flops_only, max_gflops=3.95) == 5  # largest FLOPs within budget
    assert select_stitch(flops_only) == 2
    with pytest.raises(ValueError, match='min_top1 needs `top1`'):
        select_stitch(flops_only, min_top1=70)
    with pytest.raises(ValueError, match='max_latency_ms needs `latency_ms_b1`'):
        select_stitch(flops_only, max_latency_ms=3)


def test_model_select_stitch_flops_and_stored_table() -> None:
    model = tiny(NAME)
    configs = model.stitch_configs()
    budget = sorted(c.gflops for c in configs)[10]
    expect = max((c for c in configs if c.gflops <= budget), key=lambda c: (c.gflops, -c.id)).id
    assert model.select_stitch(max_gflops=budget) == expect
    with pytest.raises(ValueError, match='no config fits'):
        model.select_stitch(max_gflops=min(c.gflops for c in configs) / 2)
    table = [dict(r, id=k) for k, r in enumerate(TABLE)]
    assert model.select_stitch(max_gflops=3.0, table=table) == 3
    model.set_stitch_table(table)
    other = tiny(NAME)
    other.load_state_dict(model.state_dict())
    assert other.stitch_table == table and other.select_stitch(max_gflops=4.0) == 5


def test_pareto_front_and_stitch_ranges() -> None:
    assert pareto_front(TABLE) == [0, 3, 5, 2]
    assert pareto_front(TABLE, x='latency_ms_b1') == [0, 4, 3, 1, 2]
    assert parse_stitches('all', 4) == [0, 1, 2, 3]
    assert parse_stitches('0-2,5,1', 9) == [0, 1, 2, 5]
    assert parse_stitches(' 7 ', 9) == [7]
    for bad in ('3-1', 'a', '1-', '', '0-9'):
        with pytest.raises(ValueError, match='valid ids are 0..8'):
            parse_stitches(bad, 9)


def test_init_and_sweep_grayscale_model(tmp_path: Path) -> None:
    """A 1-channel model reads its images as grayscale, as validate.py does."""
    kwargs = KWARGS + ['in_chans=1']
    data = make_image_folder(tmp_path / 'data', classes=CLASSES, train=2, val=2, size=32)
    init = tmp_path / 'init.safetensors'
    assert main(['init', '--model', NAME, '--data-dir', str(data), '--num-images', '4', '--num-classes',
                 str(CLASSES), '--output', str(init), '--workers', '0', '--device', 'cpu',
                 '--model-kwargs', *kwargs]) == 0
    assert main(_sweep_args(init, data, tmp_path / 'out', '--stitches', '0,5', kwargs=kwargs)) == 0
    assert [r['id'] for r in _rows(tmp_path / 'out' / 'sweep.json')] == [0, 5]


def test_configs_command_prints_the_table(capsys) -> None:
    assert main(['configs', '--model', 'snnet_resnet']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ['id', 'path'] and len(lines) == 1 + 10
    assert lines[4].split()[1:] == ['resnet18[s1.0..1]', '->', 'resnet50[s1.2..]', '3.77', '25.42']
