"""A new user's first hour: one-line errors with exit status 2, a quiet import, files others can read, the install
paths the README documents."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny
from safetensors.torch import save_file

from timm_snnet import load_model, save_snnet

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'timm_snnet.cli', *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1', **(env or {})}, timeout=300)


def one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    one_line(cli('configs', '--model', 'snnet_deit'), "unknown model 'snnet_deit'", 'snnetv2_deit3_s_l',
             'snnet_deit_tsb')
    one_line(cli('configs', '--model', 'deit_tiny_patch16_224'), 'is not an SN-Net', "'snnet'")
    folder = tmp_path / 'model'
    save_snnet(tiny('snnet_deit_tsb'), folder, readme=False)
    out = tmp_path / 'out'
    one_line(cli('export', '--model', 'snnet_deit_tsb', '--checkpoint', str(folder), '--output', str(out),
                 '--stitch', '1', '--model-kwargs', 'stitch_id=abc'),
             'stitch id must be an integer', 'valid ids are integers 0..')
    assert not out.exists() and not list(tmp_path.glob('.out.*'))  # nothing left on disk
    debug = cli('--debug', 'configs', '--model', 'snnet_deit')
    assert debug.returncode != 0 and 'Traceback' in debug.stderr


def test_missing_anchor_weights_name_the_anchor_and_the_remedy(tmp_path: Path) -> None:
    from image_folder import make_image_folder

    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=1, size=64)
    out = tmp_path / 'init.safetensors'
    line = one_line(cli('init', '--model', 'snnet_resnet', '--data-dir', str(data), '--output', str(out),
                        '--pretrained-anchors', env={'HF_HUB_CACHE': str(tmp_path / 'empty-cache')}),
                    'pretrained weights of anchor resnet18.tv_in1k', "Hub repo 'timm/resnet18.tv_in1k'",
                    'HF_HUB_OFFLINE=1', 'pretrained_anchors=False')
    assert str(tmp_path / 'empty-cache') in line and not out.exists()


def test_wrong_class_count_says_which_num_classes(tmp_path: Path) -> None:
    model = tiny('snnet_resnet', num_classes=10)
    ckpt = tmp_path / 'ten.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    with pytest.raises(ValueError, match=r'has 10 classes \(anchors\.\d\.fc\.weight\), snnet_resnet is built with '
                                         r'1000: pass --num-classes 10'):
        load_model('snnet_resnet', ckpt, TINY['snnet_resnet'][0])


def test_import_and_commands_are_quiet() -> None:
    """No third-party warning or log line on import, nor when latency is timed (torch.utils.benchmark's import)."""
    code = 'import timm_snnet, timm_snnet._latency as lat; lat._timed(lambda: None, 1, 0.01)'
    proc = subprocess.run([sys.executable, '-W', 'default', '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = save_snnet(tiny('snnet_resnet'), tmp_path / 'repo', readme=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}


@pytest.mark.slow
def test_wheel_ships_what_the_package_reads(tmp_path: Path) -> None:
    """`pip install .` / `pip install git+URL` build this wheel: it holds the reference tables the package reads."""
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '-q',
                           '-w', str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob('timm_snnet-*.whl'))).namelist()
    for table in ('snnet_deit_tsb', 'snnet_levit_192_256', 'snnetv2_deit3_s_l'):
        assert f'timm_snnet/reference/{table}.official.jsonl' in names
    assert 'timm_snnet/cli/__main__.py' in names and 'timm_snnet/families/levit.py' in names
    assert not any(n.startswith(('tests/', 'examples/', 'benchmarks/')) for n in names)


def test_cuda_free_forward_has_no_side_effects() -> None:
    """The first-hour quickstart: a random-weight forward needs no network and leaves torch's defaults alone."""
    threads = torch.get_num_threads()
    tiny('snnet_deit_tsb')(torch.randn(1, 3, 32, 32))
    assert torch.get_num_threads() == threads


@pytest.mark.slow
def test_pip_install_from_the_git_url(tmp_path: Path) -> None:
    """`pip install "git+URL"` (here the clone's own URL, file://): the installed package holds its data files."""
    if not (ROOT / '.git').exists():
        pytest.skip('not a git clone')
    target = tmp_path / 'site'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                           '--target', str(target), f'git+file://{ROOT}'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (target / 'timm_snnet' / 'reference' / 'snnet_deit_tsb.official.jsonl').is_file()
    assert (target / 'timm_snnet' / 'cli' / '__main__.py').is_file()


def test_init_prints_a_train_command_that_runs_as_printed(tmp_path: Path) -> None:
    """`timm-snnet init`'s "train with:" line, run through train.py's own order (the contract replay) as printed."""
    import argparse
    import shlex

    from image_folder import make_image_folder
    from test_train_contract import run_train, train_args
    from timm.utils import ParseKwargs

    name = 'snnet_deit_tsb'  # fixed-size anchors built at 32x32 through --model-kwargs img_size=32
    data = make_image_folder(tmp_path / 'data', classes=4, train=8, val=4, size=32)
    kwargs = [f'{k}={v!r}' for k, v in TINY[name][0].items()]
    proc = cli('init', '--model', name, '--data-dir', str(data), '--num-classes', '4', '--num-images', '8',
               '--output', str(tmp_path / 'init.safetensors'), '--model-kwargs', *kwargs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith('train with: '))
    tokens = shlex.split(line[len('train with: '):])
    assert tokens[:3] == ['timm-snnet', 'run', 'train.py'] and '...' in tokens
    tokens = [t for t in tokens[3:] if t != '...']  # where the user's own options go
    parser = argparse.ArgumentParser()  # train.py's flags that the printed command uses, as train.py declares them
    parser.add_argument('data_dir')
    parser.add_argument('--model')
    parser.add_argument('--initial-checkpoint', default='')
    parser.add_argument('--num-classes', type=int)
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    printed = parser.parse_args(tokens)
    args = train_args(Path(printed.data_dir), tmp_path / 'out', model=printed.model, epochs=1,
                      initial_checkpoint=printed.initial_checkpoint, num_classes=printed.num_classes,
                      img_size=printed.img_size, model_kwargs=printed.model_kwargs)
    out = run_train(args, str(tmp_path / 'out'))
    assert out['stitches'] and out['top1']
