"""What the package writes: concurrent sweeps of one folder keep every row, existing files are replaced only with
--overwrite, orphans of killed writers are cleaned (only ours, only dead ones), and every file honours the umask."""
import json
import os
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TINY
from image_folder import make_image_folder

from timm_snnet._results import write_results
from timm_snnet._utils import LOCK_NAME, atomic_folder, clean_orphans, fcntl
from timm_snnet.cli import main

NAME = 'snnet_deit_tsb'
CLASSES = 4
KWARGS = [f'{k}={v!r}' for k, v in TINY[NAME][0].items()]
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
ROW = dict(id=0, path='Ti', gflops=1.0, params=10, top1=50.0)


def _init_args(data: Path, out: Path, *extra: str) -> list:
    return ['init', '--model', NAME, '--data-dir', str(data), '--num-images', '4', '--num-classes', str(CLASSES),
            '--output', str(out), '--workers', '0', '--device', 'cpu', *extra, '--model-kwargs', *KWARGS]


def _sweep_args(ckpt: Path, data: Path, out: Path, *extra: str) -> list:
    return ['sweep', '--model', NAME, '--checkpoint', str(ckpt), '--data-dir', str(data), '--output', str(out),
            '--num-classes', str(CLASSES), '--batch-size', '8', '--device', 'cpu', '--workers', '0',
            '--latency-warmup', '0', '--latency-iters', '1', *extra, '--model-kwargs', *KWARGS]


def _profile_args(ckpt: Path, *extra: str) -> list:
    return ['profile', '--model', NAME, '--checkpoint', str(ckpt), '--num-classes', str(CLASSES), '--stitches', '0',
            '--batch-sizes', '1', '--rounds', '1', '--warmup', '0', '--min-run-time', '0.001', '--device', 'cpu',
            *extra, '--model-kwargs', *KWARGS]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('writes')
    data = make_image_folder(root / 'data', classes=CLASSES, train=1, val=2, size=32)
    assert main(_init_args(data, root / 'init.safetensors')) == 0
    assert main(_sweep_args(root / 'init.safetensors', data, root / 'sweep', '--stitches', '0,5')) == 0
    return dict(root=root, data=data, init=root / 'init.safetensors', sweep=root / 'sweep')


@contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(fcntl is None, reason='no advisory locks on this platform')
def test_concurrent_sweeps_keep_every_row(setup, tmp_path) -> None:
    """Two sweep processes with other --stitches on one folder, at the same time: both sets of rows end in the table."""
    out = tmp_path / 'out'
    procs = [subprocess.Popen([sys.executable, '-m', 'timm_snnet.cli',
                               *_sweep_args(setup['init'], setup['data'], out, '--stitches', ids)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ids in ('0-10', '11-22')]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = json.loads((out / 'sweep.json').read_text())['rows']
    assert [r['id'] for r in rows] == list(range(23)) and all('top1_correct' in r for r in rows)
    assert len((out / 'sweep.csv').read_text().splitlines()) == 1 + 23
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, 'sweep.csv', 'sweep.json'], 'no temp file left'


def _refused(argv: list, capsys) -> str:
    """The one-line error of a command that must exit 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_existing_files_need_overwrite(setup, tmp_path, capsys) -> None:
    init, data, swept = setup['init'], setup['data'], setup['sweep']
    taken, png = tmp_path / 'taken.safetensors', tmp_path / 'p.png'
    taken.write_bytes(b'mine')
    png.write_bytes(b'mine')
    for argv, path in ((_init_args(data, taken), taken), (_sweep_args(init, data, swept, '--save-model', str(taken)),
                                                           taken), (['plot', str(swept), '--output', str(png)], png)):
        assert _refused(argv, capsys).endswith(f'{path} exists: pass --overwrite (overwrite=True) to replace it, or '
                                               f'another path')
    assert taken.read_bytes() == b'mine' and png.read_bytes() == b'mine'
    assert main(['plot', str(swept), '--output', str(png), '--overwrite']) == 0
    assert png.read_bytes()[:4] == b'\x89PNG'
    assert main(_sweep_args(init, data, swept, '--stitches', '0,5', '--save-model', str(taken), '--overwrite')) == 0
    assert taken.read_bytes() != b'mine'
    # profile --output: never a sweep's own sweep.json, even with --overwrite; its own only with --overwrite
    before = (swept / 'sweep.json').read_text()
    for extra in ((), ('--overwrite',)):
        assert 'was not written by profile' in _refused(_profile_args(init, '--output', str(swept), *extra), capsys)
    assert (swept / 'sweep.json').read_text() == before
    lat = tmp_path / 'lat'
    assert main(_profile_args(init, '--output', str(lat))) == 0
    assert f'{lat / "sweep.json"} exists: pass --overwrite' in _refused(_profile_args(init, '--output', str(lat)),
                                                                         capsys)
    assert main(_profile_args(init, '--output', str(lat), '--overwrite')) == 0


@pytest.mark.skipif(fcntl is None, reason='no advisory locks on this platform')
def test_orphans_cleaned_only_ours_and_dead(setup, tmp_path) -> None:
    write_results(tmp_path, {'rows': [ROW]})
    dead = tmp_path / '.sweep.json.k2x_9a0b.incomplete'  # as mkdtemp names ours; its writer was killed
    (dead / 'sub').mkdir(parents=True)
    (dead / 'sub' / 'model.safetensors').write_bytes(b'half')
    live = tmp_path / '.export.abcd1234.incomplete'  # a writer still holds it
    live.mkdir()
    kept = [live, *(tmp_path / n for n in ('.notes.incomplete', 'mine.abcd1234.incomplete', '.x.ABCD1234.incomplete',
                                           '.f.abcd1234.incomplete', '.l.abcd1234.incomplete', '.sweep.json.tmp'))]
    for path in kept[1:4]:
        path.mkdir()
    kept[4].write_text('a file, not our temp folder')
    kept[5].symlink_to(tmp_path / '.notes.incomplete')
    kept[6].write_text('not ours')
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(['plot', str(tmp_path)]) == 0  # the next run in that folder cleans
    finally:
        os.close(fd)
    assert not dead.exists() and all(p.exists() or p.is_symlink() for p in kept)
    assert clean_orphans(tmp_path) == [live], 'once its writer is gone, it is an orphan too'


@pytest.mark.parametrize('mask, file_mode, dir_mode', [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_honour_umask(setup, tmp_path, mask, file_mode, dir_mode) -> None:
    init, data, swept = setup['init'], setup['data'], setup['sweep']
    with _umask(mask):
        assert main(_init_args(data, tmp_path / 'init.safetensors')) == 0
        model = tmp_path / 'm.safetensors'
        assert main(_sweep_args(init, data, swept, '--stitches', '0,5', '--save-model', str(model))) == 0
        assert main(['plot', str(swept), '--output', str(tmp_path / 'p.png')]) == 0
        write_results(tmp_path / 'res', {'rows': [ROW]})
        with atomic_folder(tmp_path / 'folder') as folder:
            (folder / 'sub').mkdir()
            (folder / 'sub' / 'f.txt').write_text('x')
    files = ['init.safetensors', 'm.safetensors', 'p.png', 'res/sweep.json', 'res/sweep.csv', 'folder/sub/f.txt']
    assert {f: oct(_mode(tmp_path / f)) for f in files} == {f: oct(file_mode) for f in files}
    assert {oct(_mode(tmp_path / d)) for d in ('folder', 'folder/sub')} == {oct(dir_mode)}
