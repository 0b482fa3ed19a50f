"""Careless inputs to every command: each is one line on stderr naming what was wrong, exit status 2, no traceback.
Internal errors are one line too, with exit status 1 and a hint at --debug."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny
from image_folder import make_image_folder
from safetensors.torch import save_file

from timm_snnet.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / 'timm_snnet'
NAME = 'snnet_deit_tsb'
KWARGS = [f'{k}={v!r}' for k, v in TINY[NAME][0].items()]


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict:
    """One of each thing a careless user passes: an image, text, an empty file, a folder, a checkpoint in disguise."""
    root = tmp_path_factory.mktemp('careless')
    data = make_image_folder(root / 'data', classes=2, train=1, val=1, size=8)
    png = next((data / 'val' / 'class_0').iterdir())
    (root / 'empty').mkdir()
    (root / 'notes.txt').write_text('not json\n')
    (root / 'empty.json').write_text('')
    (root / 'norows.json').write_text(json.dumps({'model': NAME, 'rows': 'none'}))
    (root / 'sweep.json').write_text(json.dumps({'model': NAME, 'rows': [{'id': 0, 'gflops': 1.0}]}))
    save_file({'w': torch.zeros(2)}, str(root / 'weights.safetensors'))
    save_file({'w': torch.zeros(2)}, str(root / 'weights.pth'))  # safetensors bytes under a torch extension
    (root / 'junk.safetensors').write_bytes(b'\x00' * 64)
    (root / 'noweights').mkdir()
    (root / 'noweights' / 'config.json').write_text(json.dumps({'architecture': NAME}))
    (root / 'badconfig').mkdir()
    (root / 'badconfig' / 'config.json').write_bytes(png.read_bytes())
    (root / 'train.py').write_text('raise SystemExit("the script must not run")\n')
    return dict(root=root, data=data, png=png)


def _fill(argv: list, files: dict) -> list:
    """`{data}`, `{png}` and `{root}/NAME` placeholders -> paths of the fixture."""
    return [a.format(data=files['data'], png=files['png'], root=files['root']) for a in argv]


# command line -> a phrase its one line must hold
CARELESS = [
    # --model-kwargs, malformed in every way, in every command that takes it
    ('select --model snnet_deit_tsb --model-kwargs stitch_id', 'expected KEY=VALUE'),
    ('select --model snnet_deit_tsb --model-kwargs stitch_id=3 {root}/norows.json', "expected KEY=VALUE, got '"),
    ('sweep --model snnet_deit_tsb --data-dir {data} --output {root}/o --model-kwargs anchors=(1',
     'is not a Python literal'),
    ('init --model snnet_deit_tsb --data-dir {data} --output {root}/i.safetensors --model-kwargs =3',
     'is not a keyword name'),
    ('export --model snnet --stitch 0 --output {root}/x --model-kwargs anchors=("resnet18","resnet5O")',
     "unknown timm model 'resnet5O'"),
    ('profile --model snnet_deit_tsb --output {root}/p --model-kwargs img_size=', 'has no value'),
    ('push --model snnet --repo-id a/b --model-kwargs anchors=resnet18', 'takes a list of timm model names'),
    ('convert {root}/weights.safetensors --from official-v1 --model snnet_deit_tsb --output {root}/c '
     '--model-kwargs img_size=[1,2', 'is not a Python literal'),
    ("select --model snnet_deit_tsb --model-kwargs stitch_id='3", 'check brackets, quotes'),
    ('select --model snnet_deit_tsb --model-kwargs stitch_id={{3:', 'is not a Python literal'),
    ('run {root}/train.py --model snnet_deit_tsb --model-kwargs stitch_id', 'train.py --model-kwargs: expected'),
    ('run {root}/train.py --model-kwargs=img_size=(32, --epochs 1', 'is not a Python literal'),
    # files: what each argument must be, what it got
    ('select {png}', 'not a sweep table'),
    ('plot {root}/notes.txt', 'is not valid JSON'),
    ('plot {root}/empty.json', 'not a sweep table'),
    ('plot {root}/norows.json', 'no "rows" list'),
    ('select {root}/empty', 'no sweep results at'),
    ('select {root}/weights.safetensors --max-gflops 1', 'is a safetensors file'),
    ('export --model snnet_deit_tsb --stitch 0 --output {root}/x --sweep {png}', 'is a PNG image'),
    ('profile --model snnet_deit_tsb --merge {root}/notes.txt', 'not a sweep table'),
    ('push --model snnet_deit_tsb --repo-id a/b --sweep {data}', 'no sweep results at'),
    ('serve snnet_deit_tsb --latency-table {png}', 'not a sweep table'),
    ('serve snnet_deit_tsb --labels {root}/missing.txt', 'a labels file not found'),
    ('serve-bench snnet_deit_tsb --slo-ms 100', 'give one of --trace FILE or --load SPEC'),
    ('sweep --model snnet_deit_tsb --checkpoint {png} --data-dir {data} --output {root}/o',
     'not a checkpoint: {png} is a PNG image'),
    ('sweep --model snnet_deit_tsb --checkpoint {root}/empty --data-dir {data} --output {root}/o',
     'not an SN-Net folder'),
    ('sweep --model snnet_deit_tsb --checkpoint {root}/noweights --data-dir {data} --output {root}/o',
     'holds no model.safetensors'),
    ('export --model snnet_deit_tsb --checkpoint {root}/badconfig --stitch 0 --output {root}/x',
     'without an "architecture"'),
    ('export --model snnet_deit_tsb --checkpoint {root}/junk.safetensors --stitch 0 --output {root}/x',
     'not a safetensors file'),
    ('profile --model snnet_deit_tsb --checkpoint {root}/notes.txt --output {root}/p', 'is a text file'),
    ('select --model snnet_deit_tsb --checkpoint {root}/missing.pth.tar', 'checkpoint not found'),
    ('push --model snnet_deit_tsb --checkpoint {root}/weights.pth --repo-id a/b', 'rename it to .safetensors'),
    ('push --model snnet_deit_tsb --repo-id a/b --card {root}/empty', 'not a model card'),
    ('convert {root}/empty --from official-v1 --model snnet_deit_tsb --output {root}/c', 'is a folder'),
    ('convert {png} --from official-v1 --model snnet_deit_tsb --output {root}/c', 'is a PNG image'),
    ('sweep --model snnet_deit_tsb --checkpoint {root}/weights.safetensors --data-dir {png} --output {root}/o',
     'not an image folder'),
    ('init --model snnet_deit_tsb --data-dir {root}/missing --output {root}/i.safetensors', 'data dir not found'),
    ('plot {root}/sweep.json --reference {root}/missing.jsonl', 'a reference file not found'),
    ('run {root}/missing.py', 'no script at'),
    ('zoo-plot snnet_deit_tsb --output {root}/z --table {root}/notes.txt', 'is not valid JSON'),
    ('zoo-plot snnet_deit_tsb --output {png}', 'is a file: pass a folder'),
    # usage: what is missing or out of range
    ('', 'the following arguments are required: COMMAND'),
    ('swep', 'invalid choice'),
    ('sweep --model snnet_deit_tsb --output {root}/o', 'required: --data-dir'),
    ('sweep --model snnet_deit_tsb --data-dir {data} --output {root}/o', 'needs its weights'),
    ('sweep --model snnet_deit_tsb --data-dir {data} --output {root}/o --batch-size 0', '--batch-size must be'),
    ('select --max-gflops 1', 'select needs a sweep.json'),
    ('select --max-gflops fast', "invalid float value: 'fast'"),
    ('export --model snnet_deit_tsb --stitch 0 --output {root}/x', 'needs its weights'),
    ('export --model snnet_deit_tsb --output {root}/x', 'one of the arguments --stitch'),
    ('profile --model snnet_deit_tsb --output {root}/p --batch-sizes 1,x', '--batch-sizes takes a comma list'),
    ('profile --model snnet_deit_tsb --output {root}/p --threads 0', '--threads must be >= 1'),
    ('push --model snnet_deit_tsb --repo-id a/b --dry-run', '--dry-run needs --save-dir'),
    ('configs --model snnet_deit', "unknown model 'snnet_deit'"),
    ('configs --model deit_tiny_patch16_224', 'is not an SN-Net'),
    ('coverage --top many', "invalid int value: 'many'"),
    ('zoo-plot snnet_swin --output {root}/z', "unknown SN-Net 'snnet_swin'"),
    ('zoo-plot snnetv2_deit3_s_b --output {root}/z', 'no published per-config top-1'),
    ('configs --nope', 'unrecognized arguments: --nope'),
]


def _one_line(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2, err
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def _commands() -> set:
    return {cmd.split()[0] for cmd, _ in CARELESS if cmd}


def test_the_table_covers_every_command() -> None:
    from timm_snnet.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == 'command')
    assert set(subparsers.choices) <= _commands()


@pytest.mark.parametrize('command, phrase', CARELESS, ids=[f'{i}-{c.split(" ")[0]}' for i, (c, _) in
                                                           enumerate(CARELESS)])
def test_careless_input_is_one_line_and_exit_2(command: str, phrase: str, files: dict, capsys) -> None:
    # shell-like split that keeps quoted-free tokens; `{root}` etc. become the fixture's paths
    line = _one_line(_fill(command.split(' ') if command else [], files), capsys)
    assert _fill([phrase], files)[0] in line, line
    assert line.startswith('timm-snnet'), line


def test_exit_codes_as_processes(files: dict) -> None:
    """The console entry and `python -m timm_snnet.cli.run`: exit status 2 and one line, as in process."""
    procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in (['-m', 'timm_snnet.cli', 'select', str(files['png'])],
                          ['-m', 'timm_snnet.cli.run', str(files['root'] / 'train.py'), '--model-kwargs', 'x'])]
    for proc in procs:  # side by side: each start-up imports torch
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in err, err


def test_internal_error_is_one_line_exit_1(monkeypatch, capsys) -> None:
    import timm_snnet.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError('a bug\nspread over lines')

    monkeypatch.setattr(cli, 'create_snnet', broken)
    with pytest.raises(SystemExit) as e:
        main(['configs'])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err == ('timm-snnet configs: RuntimeError: a bug spread over lines (run with --debug '
                                         'for the traceback)')
    with pytest.raises(RuntimeError, match='a bug'):
        main(['configs', '--debug'])


def test_sweep_reports_and_skips_unreadable_images(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=3, size=32)
    (data / 'val' / 'class_0' / '0.png').write_bytes(b'not an image')
    good = (data / 'val' / 'class_1' / '1.png').read_bytes()
    (data / 'val' / 'class_1' / '1.png').write_bytes(good[:len(good) // 3])  # truncated
    ckpt = tmp_path / 'tiny.safetensors'
    save_file(tiny(NAME, num_classes=2).state_dict(), str(ckpt))
    args = ['sweep', '--model', NAME, '--checkpoint', str(ckpt), '--data-dir', str(data), '--output',
            str(tmp_path / 'out'), '--num-classes', '2', '--stitches', '0', '--device', 'cpu', '--workers', '0',
            '--latency-warmup', '0', '--latency-iters', '1', '--model-kwargs', *KWARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '2 of 6 images cannot be read' in out and 'class_0/0.png' in out and 'class_1/1.png' in out
    result = json.loads((tmp_path / 'out' / 'sweep.json').read_text())
    assert result['data']['num_images'] == 4 and result['rows'][0]['num_images'] == 4
    for image in (data / 'val').rglob('*.png'):
        image.write_bytes(b'')
    line = _one_line(args[:args.index('--output') + 1] + [str(tmp_path / 'out2')] + args[args.index('--output') + 2:],
                     capsys)
    assert 'none of the 6 images can be read' in line


def test_demo_model_sweeps_with_its_own_channels_and_size(tmp_path: Path) -> None:
    """`--model local-dir:` needs no --checkpoint; 1 channel, 28x28 and the mean/std come from its config.json."""
    model = PACKAGE.parent / 'examples' / 'fashion_mnist' / 'model'
    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=2, size=28)
    args = ['--data-dir', str(data), '--stitches', '0', '--device', 'cpu', '--workers', '0', '--latency-warmup', '0',
            '--latency-iters', '1']
    assert main(['sweep', '--model', f'local-dir:{model}', '--output', str(tmp_path / 'a'), *args]) == 0
    assert main(['sweep', '--model', NAME, '--checkpoint', str(model), '--output', str(tmp_path / 'b'), *args]) == 0
    a, b = (json.loads((tmp_path / o / 'sweep.json').read_text()) for o in 'ab')
    assert a['transforms']['input_size'] == [1, 28, 28] and a['transforms']['mean'] == [0.286]
    assert a['rows'][0]['top1_correct'] == b['rows'][0]['top1_correct']
    assert a['checkpoint']['sha256'] == b['checkpoint']['sha256'] and len(a['checkpoint']['sha256']) == 64


def test_stitch_configs_on_the_meta_device() -> None:
    real = tiny('snnet_swin_tsb')
    meta = tiny('snnet_swin_tsb', device='meta')
    assert [(c.gflops, c.params) for c in meta.stitch_configs()] == [(c.gflops, c.params) for c in
                                                                       real.stitch_configs()]
    assert next(meta.parameters()).is_meta


def _messages(path: Path):
    """String constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_messages_name_public_api_only() -> None:
    bad = [f'{p.relative_to(PACKAGE)}:{n}' for p in sorted(PACKAGE.rglob('*.py')) for n, text in _messages(p)
           if 'weights_only=False' in text or re.search(r'timm_snnet\._\w+\.\w+', text)]
    assert not bad, f'messages that point to private names or weights_only=False: {bad}'
