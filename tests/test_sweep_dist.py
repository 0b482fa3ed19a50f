"""`torchrun ... -m timm_snnet.cli sweep ...` with 2 (and 3) gloo ranks on CPU against one process: identical correct
counts on a dataset whose size is not a multiple of the world size; a killed rank, then a resume that does not redo
finished stitches; a changed checkpoint, dataset or rank view refused with a clear message."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY, tiny
from image_folder import make_image_folder
from safetensors.torch import save_file

from timm_snnet._dist import _rank_device, batch_shard
from timm_snnet.cli import main

pytestmark = pytest.mark.timeout(300)

NAME = 'snnet_deit_tsb'
CLASSES = 7  # 7 classes x 3 images = 21: odd, and 6 batches of 4 (the last one short)
KWARGS = [f'{k}={v!r}' for k, v in TINY[NAME][0].items()]
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
KILL_RANK = str(Path(__file__).with_name('kill_rank.py'))
VIEW = ('id', 'path', 'gflops', 'params', 'top1', 'top5', 'top1_correct', 'top5_correct', 'num_images')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _checkpoint(path: Path, seed: int) -> Path:
    """Random weights; a wide head so that predictions differ between images and stitches."""
    torch.manual_seed(seed)
    model = tiny(NAME, num_classes=CLASSES)
    torch.nn.init.normal_(model.get_classifier().weight, std=2.0)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _args(ckpt: Path, data: Path, out: Path, *extra: str) -> list:
    return ['sweep', '--model', NAME, '--checkpoint', str(ckpt), '--data-dir', str(data), '--output', str(out),
            '--num-classes', str(CLASSES), '--batch-size', '4', '--device', 'cpu', '--workers', '0',
            '--latency-warmup', '0', '--latency-iters', '1', *extra, '--model-kwargs', *KWARGS]


def _torchrun(nproc: int, args: list, entry: tuple = ('-m', 'timm_snnet.cli')) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port',
           str(_free_port()), *entry, *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)


def _rows(out: Path) -> list:
    return json.loads((out / 'sweep.json').read_text())['rows']


def _view(rows: list) -> list:
    return [{k: r[k] for k in VIEW} for r in rows]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('dist')
    data = make_image_folder(root / 'data', classes=CLASSES, train=1, val=3, size=32)
    ckpt = _checkpoint(root / 'ckpt.safetensors', 0)
    assert main(_args(ckpt, data, root / 'one')) == 0  # the one-process reference, in this process
    return dict(root=root, data=data, ckpt=ckpt, one=_rows(root / 'one'))


def test_batch_shards_cover_every_image_once() -> None:
    for n in (0, 1, 5, 21, 64, 101):
        for batch in (1, 4, 7, 64):
            for world in (1, 2, 3, 8):
                shards = [batch_shard(n, batch, r, world) for r in range(world)]
                assert [i for s in shards for i in s] == list(range(n))
                assert all(s.start % batch == 0 for s in shards if len(s)), 'shards start on a batch boundary'
                sizes = [-(-len(s) // batch) for s in shards]
                assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        batch_shard(10, 4, 2, 2)


def test_two_ranks_match_one_process(setup) -> None:
    one = setup['one']
    assert sum(r['top1_correct'] for r in one) not in (0, len(one) * one[0]['num_images']), 'a degenerate model'
    assert len({r['top1_correct'] for r in one}) > 1 and one[0]['num_images'] == CLASSES * 3
    out = setup['root'] / 'two'
    proc = _torchrun(2, _args(setup['ckpt'], setup['data'], out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _rows(out)
    assert _view(two) == _view(one), 'the exact one-process counts, top-1 and top-5'
    assert all('latency_ms_b1' not in r for r in two)
    result = json.loads((out / 'sweep.json').read_text())
    assert result['latency'] is None and result['device'] == 'cpu'
    assert 'latency not measured under a process group' in proc.stdout
    assert '12+9 = 21 images' in proc.stdout
    # one bar: its first render (no postfix yet) appears once; tqdm may redraw 100% twice when it closes
    assert proc.stdout.count('wrote ') == 1 and proc.stderr.count('?stitch/s]') == 1, 'rank 0 alone reports'
    csv_ids = [line.split(',')[0] for line in (out / 'sweep.csv').read_text().splitlines()[1:]]
    assert csv_ids == [str(r['id']) for r in one]


def test_killed_rank_resumes_without_redoing(setup) -> None:
    out = setup['root'] / 'killed'
    killed = _torchrun(2, _args(setup['ckpt'], setup['data'], out), entry=(KILL_RANK, '1:3'))  # rank 1, 3 recorded
    assert killed.returncode != 0
    partial = _rows(out)
    assert [r['id'] for r in partial] == [0, 1, 2], 'the configs finished before the kill are recorded'
    assert _view(partial) == _view(setup['one'][:3])
    # the same command resumes, here on 3 ranks (shards of 2+2+2 batches): the counts do not depend on N
    proc = _torchrun(3, _args(setup['ckpt'], setup['data'], out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '3 of 23 selected stitches already measured' in proc.stdout
    assert 'sweep: 20 of 23 stitches to evaluate on 3 ranks' in proc.stdout and ': 3-22' in proc.stdout
    rows = _rows(out)
    assert rows[:3] == partial, 'finished stitches are kept as recorded'
    assert _view(rows) == _view(setup['one'])


def test_resume_refuses_other_checkpoint_or_data(setup, tmp_path, capsys) -> None:
    out = tmp_path / 'out'
    assert _torchrun(2, _args(setup['ckpt'], setup['data'], out, '--stitches', '0-1')).returncode == 0
    before = (out / 'sweep.json').read_bytes()
    data = tmp_path / 'data'
    shutil.copytree(setup['data'], data)
    (data / 'val' / 'class_0' / '0.png').unlink()
    proc = _torchrun(2, _args(setup['ckpt'], data, out))
    assert proc.returncode != 0
    assert 'was recorded with a different data (data.num_images 21 -> 20; data.sha256' in proc.stderr
    assert 'refusing to mix its results with this run' in proc.stderr
    other = _checkpoint(tmp_path / 'other.safetensors', 1)
    proc = _torchrun(2, _args(other, setup['data'], out))
    assert proc.returncode != 0 and 'was recorded with a different checkpoint (checkpoint.sha256' in proc.stderr
    # one process over a sharded sweep's file (which measured no latency) refuses too: nothing is moved aside
    with pytest.raises(SystemExit):
        main(_args(setup['ckpt'], setup['data'], out))
    err = capsys.readouterr().err
    assert 'different latency (latency null -> {warmup=0 iters=1' in err and 'A sharded sweep measures no' in err
    assert (out / 'sweep.json').read_bytes() == before, 'nothing overwritten'
    assert not (out / 'sweep.json.bak').exists()


def _rank_view_worker(rank: int, port: int, ckpt: str, data: list, out: str, errors: str) -> None:
    from timm_snnet import sweep

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    try:
        sweep(NAME, ckpt, data[rank], out, stitches='0', batch_size=4, device='cpu', model_kwargs=TINY[NAME][0],
              num_classes=CLASSES, workers=0, progress=False, log=lambda msg: None)
    except ValueError as e:
        Path(errors, f'{rank}.txt').write_text(str(e))


def test_ranks_that_see_different_data_stop_together(setup, tmp_path) -> None:
    data = tmp_path / 'data'
    shutil.copytree(setup['data'], data)
    (data / 'val' / 'class_1' / '2.png').unlink()
    mp.spawn(_rank_view_worker, args=(_free_port(), str(setup['ckpt']), [str(setup['data']), str(data)],
                                      str(tmp_path / 'out'), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert 'rank 1 sees a different data than rank 0 (data.num_images 21 -> 20' in \
            (tmp_path / f'{rank}.txt').read_text()
    assert not (tmp_path / 'out' / 'sweep.json').exists()


def test_arguments_are_checked_before_any_work(setup, tmp_path, capsys) -> None:
    for flag, value, message in (('--threads', '0', '--threads must be an integer >= 1'),
                                 ('--latency-iters', '0', '--latency-iters must be an integer >= 1'),
                                 ('--workers', '-1', '--workers must be an integer >= 0')):
        args = _args(setup['ckpt'], tmp_path, tmp_path / 'o')  # a folder without images: never read
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args[1:1] = [flag, value]
        with pytest.raises(SystemExit):
            main(args)
        assert message in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()
    with pytest.raises(ValueError, match='each rank uses cuda:LOCAL_RANK; pass --device cuda'):
        _rank_device('cuda:1', 0)
    with pytest.raises(ValueError, match='bad --device'):
        _rank_device('nope', 0)
