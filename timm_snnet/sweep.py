"""`timm-snnet init | sweep | plot | select`: calibrate the stitching layers, measure every stitch, plot, pick one.

- `init` least-squares initialises the stitching layers on training images (the model's eval transforms) and writes
  a `.safetensors` checkpoint for train.py's `--initial-checkpoint`. It runs once, before training, so every DDP
  rank starts from the same weights.
- `sweep` evaluates each selected stitch on an ImageFolder split and writes `OUT/sweep.json` and `OUT/sweep.csv`
  after every stitch. A re-run resumes only when model, kwargs, checkpoint hash, data, transforms, device, batch
  size and latency settings all match the recorded ones; otherwise it recomputes everything.
- `plot` draws top-1 against GFLOPs or latency with the Pareto front; `select` picks the best stitch in a budget.

sweep.json (also read by the Hub model card):

    {
      "model": "snnet_deit_tsb",                     # timm model name
      "model_kwargs": {...},                         # create_model kwargs of the swept model
      "checkpoint": {"path": str, "sha256": str, "use_ema": bool},
      "data": {"root": str, "split": str, "num_images": int, "num_classes": int, "sha256": str},
      "transforms": {"input_size": [3, 224, 224], "interpolation": str, "mean": [...], "std": [...],
                     "crop_pct": float, "crop_mode": str, "eval": str},
      "device": "cuda", "device_name": str,
      "batch_size": 64,                              # eval batch and the N of latency_ms_bN
      "latency": {"warmup": 5, "iters": 20, "stat": "median"},
      "anchors": [0, 1, 2],                          # ids of the anchor configs
      "rows": [{"id": 0, "path": "Ti", "gflops": 1.258, "params": 5717416, "top1": 72.1, "top5": 91.0,
                "latency_ms_b1": 4.1, "latency_ms_bN": 21.7}, ...]
    }

Rows are sorted by id; `top1`/`top5` are percentages, `gflops` is fvcore's count at batch 1 (one multiply-add is
one FLOP), `params` counts the parameters on the config's path, latencies are median milliseconds per forward.
`sweep.csv` holds the same rows, one per stitch.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .anchors import AnchorCheckpointError, anchor_checkpoint_records
from .selection import LATENCY_KEYS, pareto_front, parse_stitches, select_stitch
from .utils import file_sha256

__all__ = [
    'ROW_KEYS', 'init_checkpoint', 'load_model', 'sweep', 'load_sweep', 'plot_sweep', 'read_reference',
    'add_commands',
]

ROW_KEYS = ('id', 'path', 'gflops', 'params', 'top1', 'top5', 'latency_ms_b1', 'latency_ms_bN')
_RESUME_KEYS = ('model', 'model_kwargs', 'checkpoint', 'data', 'transforms', 'device', 'batch_size', 'latency')
_IGNORED_FOR_RESUME = {'checkpoint': ('path',), 'data': ('root',)}  # moving files does not change results

PathLike = Union[str, os.PathLike]


# --- model and data ------------------------------------------------------------------------------------------------
def _create(model_name: str, model_kwargs: Optional[dict], num_classes: Optional[int], **extra: Any) -> torch.nn.Module:
    import timm

    import timm_snnet  # noqa: F401  (registers the snnet_* models)

    if not timm.is_model(model_name):
        snnets = ', '.join(timm.list_models('snnet_*'))
        raise SystemExit(f'unknown model {model_name!r}; registered SN-Nets: {snnets}')
    kwargs = {**(model_kwargs or {}), **extra}
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(model_name, **kwargs)
    except TypeError as e:
        raise SystemExit(f'cannot create {model_name} with kwargs {kwargs}: {e}') from e
    except AnchorCheckpointError as e:
        raise SystemExit(f'cannot create {model_name}: {e}') from e
    if not hasattr(model, 'stitch_configs'):
        raise SystemExit(f'{model_name} is not an SN-Net (no stitch configs); use one of timm.list_models("snnet_*")')
    return model


def load_model(
        model_name: str,
        checkpoint: PathLike,
        model_kwargs: Optional[dict] = None,
        num_classes: Optional[int] = None,
        use_ema: bool = False,
) -> torch.nn.Module:
    """Create `model_name` and load `checkpoint` (train.py `.pth.tar`, `.pth` or `.safetensors`) as validate.py does."""
    from timm.models import load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise SystemExit(f'checkpoint not found: {checkpoint} (pass a train.py checkpoint, e.g. '
                         f'output/train/<run>/model_best.pth.tar, or a .safetensors file)')
    model = _create(model_name, model_kwargs, num_classes)
    try:
        load_checkpoint(model, str(path), use_ema=use_ema)
    except RuntimeError as e:
        if 'loading state_dict' not in str(e):  # e.g. a pickle that weights_only=True refuses
            raise SystemExit(f'cannot read checkpoint {checkpoint}: {e}') from e
        detail = str(e).strip().splitlines()
        raise SystemExit(
            f'checkpoint {checkpoint} does not fit {model_name} with kwargs {model_kwargs or {}}: '
            f'{" ".join(detail[:3])[:600]}\nPass the --model-kwargs (and --num-classes) the checkpoint was '
            f'trained with.') from e
    except Exception as e:  # unreadable file: not a checkpoint, truncated, wrong format for its extension
        raise SystemExit(f'cannot read checkpoint {checkpoint}: {type(e).__name__}: {e}') from e
    return model


def _data_config(model: torch.nn.Module) -> dict[str, Any]:
    """validate.py's data config: the model's real input size and channels (mean/std adapted to 1 channel)."""
    from timm.data.model_config import resolve_input_data_config

    return resolve_input_data_config(model)


def _dataset(data_dir: PathLike, split: str, in_chans: int = 3):
    """timm's folder dataset for `split` (DIR/train, DIR/val or DIR itself), with a clear error when empty.

    Images are read as grayscale for 1-channel models, as validate.py does."""
    from timm.data import create_dataset

    root = Path(data_dir)
    if not root.is_dir():
        raise SystemExit(f'data dir not found: {data_dir} (expected an ImageFolder: DIR/train/<class>/<image> and '
                         f'DIR/val/<class>/<image>)')
    try:
        return create_dataset('', root=str(root), split=split, is_training=False,
                              input_img_mode='L' if in_chans == 1 else 'RGB')
    except (RuntimeError, FileNotFoundError) as e:
        raise SystemExit(f'no images for split {split!r} under {data_dir}: {e}\nExpected an ImageFolder: '
                         f'DIR/train/<class>/<image> and DIR/val/<class>/<image> (or DIR/<class>/<image>).') from e


def _data_record(dataset, data_dir: PathLike, split: str) -> dict[str, Any]:
    """What identifies the evaluation data: sorted relative paths, labels and sizes, hashed."""
    reader = getattr(dataset, 'reader', None)
    samples = getattr(reader, 'samples', None) or [(f, 0) for f in dataset.filenames(absolute=True)]
    root = getattr(reader, 'root', str(data_dir))
    digest = hashlib.sha256()
    for path, target in sorted((str(p), int(t)) for p, t in samples):
        size = os.path.getsize(path) if os.path.isfile(path) else -1
        digest.update(f'{os.path.relpath(path, root)}\t{target}\t{size}\n'.encode())
    classes = getattr(reader, 'class_to_idx', None)
    return dict(root=os.path.abspath(root), split=split, num_images=len(samples),
                num_classes=len(classes) if classes else len({t for _, t in samples}), sha256=digest.hexdigest())


def _loader(dataset, data_config: dict, batch_size: int, workers: int, indices: Optional[Sequence[int]] = None,
            device: Optional[torch.device] = None) -> torch.utils.data.DataLoader:
    """Eval-transform loader: the transform validate.py's create_loader builds, without the prefetcher."""
    from timm.data import create_transform

    dataset.transform = create_transform(**data_config, is_training=False)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device is not None and device.type == 'cuda')


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f'bad --device {name!r}: {e}') from e
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'--device {name} asked for CUDA, but torch sees no GPU; use --device cpu')
    return device



def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- init ----------------------------------------------------------------------------------------------------------
def init_checkpoint(
        model_name: str,
        data_dir: PathLike,
        output: PathLike,
        model_kwargs: Optional[dict] = None,
        num_classes: Optional[int] = None,
        pretrained_anchors: bool = False,
        anchor_checkpoints: Optional[Sequence[Optional[str]]] = None,
        num_images: int = 100,
        batch_size: int = 25,
        split: str = 'train',
        seed: int = 0,
        device: Optional[str] = None,
        workers: int = 2,
        progress: bool = True,
) -> Path:
    """LS-init the stitching layers on `num_images` training images (seeded sample, eval transforms); save safetensors.

    The file is a plain state dict, so train.py loads it with `--initial-checkpoint` (timm's `load_checkpoint` reads
    `.safetensors` by extension). Train with the same `--model-kwargs` and `--num-classes`. With `anchor_checkpoints`
    the anchors come from the user's files (see `timm_snnet.anchors`); the init file holds them, and its metadata
    records each file's sha256, so training needs only the init file.
    """
    from safetensors.torch import save_file

    output = Path(output)
    if output.suffix != '.safetensors':
        raise SystemExit(f'--output must end with .safetensors (timm picks the loader by extension), got {output}')
    if num_images < 1:
        raise SystemExit(f'--num-images must be >= 1, got {num_images}')
    dataset = _dataset(data_dir, split, (model_kwargs or {}).get('in_chans', 3))
    model_kwargs = dict(model_kwargs or {})
    anchor_checkpoints = anchor_checkpoints if anchor_checkpoints is not None else \
        model_kwargs.pop('anchor_checkpoints', None)
    extra = {'pretrained_anchors': True} if pretrained_anchors else {}
    if anchor_checkpoints is not None:
        extra['anchor_checkpoints'] = list(anchor_checkpoints)
    model = _create(model_name, model_kwargs, num_classes, **extra)
    dev = _device(device)
    model.to(dev)
    data_config = _data_config(model)
    take = min(num_images, len(dataset))
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:take].tolist()
    loader = _loader(dataset, data_config, min(batch_size, take), workers, indices, dev)
    model.init_stitching_layers(loader, num_images=take, batch_size=batch_size, progress=progress)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(model=model_name, model_kwargs=json.dumps(_jsonable(model_kwargs or {})),
                num_classes=str(model.num_classes), init_images=str(take), data_dir=str(os.path.abspath(data_dir)),
                split=split, seed=str(seed))
    if anchor_checkpoints is not None:
        meta['anchor_checkpoints'] = json.dumps(anchor_checkpoint_records(anchor_checkpoints, len(model.anchors)))
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output), metadata=meta)
    return output


# --- sweep ---------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device, stitch_id: int) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of one stitch over a loader."""
    model.eval()
    model.set_stitch(stitch_id)
    correct1 = correct5 = seen = 0
    for images, target in loader:
        output = model(images.to(device, non_blocking=True))
        target = target.to(device)
        top = output.topk(min(5, output.shape[1]), dim=1).indices
        hits = top.eq(target[:, None])
        correct1 += int(hits[:, :1].sum())
        correct5 += int(hits.sum())
        seen += len(target)
    return 100.0 * correct1 / seen, 100.0 * correct5 / seen


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, input_size: Sequence[int], batch_size: int, device: torch.device,
                    warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds per forward of the active stitch at `batch_size`, on `device`."""
    model.eval()
    x = torch.randn(batch_size, *input_size, device=device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{device.type} ({torch.get_num_threads()} threads)'


def load_sweep(path: PathLike) -> dict[str, Any]:
    """A sweep.json (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / 'sweep.json'
    if not path.is_file():
        raise SystemExit(f'no sweep results at {path}: run `timm-snnet sweep ... --output DIR` first')
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f'{path} is not valid JSON: {e}') from e
    if not isinstance(result, dict) or not isinstance(result.get('rows'), list):
        raise SystemExit(f'{path} is not a sweep.json (no "rows" list)')
    return result


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(output_dir: PathLike, result: dict[str, Any]) -> None:
    """Write OUT/sweep.json and OUT/sweep.csv (rows by id), each replaced atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, 'rows': sorted(result['rows'], key=lambda r: r['id'])}
    _write_atomic(out / 'sweep.json', json.dumps(result, indent=2) + '\n')
    tmp = out / 'sweep.csv.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=ROW_KEYS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(result['rows'])
    os.replace(tmp, out / 'sweep.csv')


def _resume_view(header: dict[str, Any]) -> dict[str, Any]:
    view = {k: header.get(k) for k in _RESUME_KEYS}
    for key, ignored in _IGNORED_FOR_RESUME.items():
        if isinstance(view.get(key), dict):
            view[key] = {k: v for k, v in view[key].items() if k not in ignored}
    return _jsonable(view)


def _mismatch(recorded: dict[str, Any], header: dict[str, Any]) -> list[str]:
    old, new = _resume_view(recorded), _resume_view(header)
    return [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]


def sweep(
        model_name: str,
        checkpoint: PathLike,
        data_dir: PathLike,
        output_dir: PathLike,
        stitches: str = 'all',
        batch_size: int = 64,
        device: Optional[str] = None,
        model_kwargs: Optional[dict] = None,
        num_classes: Optional[int] = None,
        split: str = 'validation',
        use_ema: bool = False,
        workers: int = 2,
        latency_warmup: int = 5,
        latency_iters: int = 20,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure top-1, top-5, GFLOPs, params and latency (batch 1 and `batch_size`) of each selected stitch.

    Results go to OUT/sweep.json and OUT/sweep.csv after every stitch, so an interrupted sweep resumes where it
    stopped, but only when everything that determines the numbers is unchanged (see the module docstring).
    """
    if batch_size < 1:
        raise SystemExit(f'--batch-size must be >= 1, got {batch_size}')
    dataset = _dataset(data_dir, split, (model_kwargs or {}).get('in_chans', 3))  # fail before hashing a checkpoint
    model = load_model(model_name, checkpoint, model_kwargs, num_classes, use_ema)
    try:
        selected = parse_stitches(stitches, model.num_configs)
    except ValueError as e:
        raise SystemExit(f'{e} ({model_name} has {model.num_configs} configs)') from e
    dev = _device(device)
    data_config = _data_config(model)
    data = _data_record(dataset, data_dir, split)
    if data['num_classes'] > model.num_classes:
        raise SystemExit(f'{data_dir} has {data["num_classes"]} classes but {model_name} predicts {model.num_classes}; '
                         f'pass --num-classes (and the checkpoint trained for it)')
    loader = _loader(dataset, data_config, batch_size, workers, device=dev)
    configs = model.stitch_configs(data_config['input_size'])
    header = dict(
        model=model_name, model_kwargs=_jsonable(model_kwargs or {}),
        checkpoint=dict(path=str(Path(checkpoint).resolve()), sha256=file_sha256(checkpoint), use_ema=use_ema),
        data=data,
        transforms={**_jsonable(data_config), 'eval': ' '.join(str(dataset.transform).split())},
        device=str(dev), device_name=_device_name(dev), batch_size=batch_size,
        latency=dict(warmup=latency_warmup, iters=latency_iters, stat='median'),
        anchors=[c.id for c in configs if c.is_anchor],
    )
    if num_classes is not None:
        header['model_kwargs'] = {**header['model_kwargs'], 'num_classes': num_classes}

    out = Path(output_dir)
    rows: dict[int, dict] = {}
    if (out / 'sweep.json').is_file():
        recorded = load_sweep(out / 'sweep.json')
        changed = _mismatch(recorded, header)
        if changed:
            os.replace(out / 'sweep.json', out / 'sweep.json.bak')
            log(f'{out / "sweep.json"} was recorded with a different {", ".join(changed)}: recomputing '
                f'(old results moved to sweep.json.bak)')
        else:
            rows = {r['id']: r for r in recorded['rows'] if all(k in r for k in ROW_KEYS)}
            done = sum(k in rows for k in selected)
            log(f'resuming {out / "sweep.json"}: {done} of {len(selected)} selected stitches already measured')
    todo = [k for k in selected if k not in rows]

    model.to(dev)
    input_size = tuple(data_config['input_size'])
    bar = tqdm(todo, desc='sweep', unit='stitch', disable=not progress)
    for k in bar:
        c = configs[k]
        top1, top5 = evaluate(model, loader, dev, k)
        rows[k] = dict(
            id=k, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params),
            top1=round(top1, 4), top5=round(top5, 4),
            latency_ms_b1=round(measure_latency(model, input_size, 1, dev, latency_warmup, latency_iters), 4),
            latency_ms_bN=round(measure_latency(model, input_size, batch_size, dev, latency_warmup, latency_iters), 4),
        )
        bar.set_postfix(id=k, top1=f'{top1:.2f}')
        write_results(out, {**header, 'rows': list(rows.values())})
    missing = [k for k in selected if k not in rows]
    if missing:  # never skip a config silently
        raise RuntimeError(f'stitches {missing} have no results')
    result = {**header, 'rows': sorted(rows.values(), key=lambda r: r['id'])}
    write_results(out, result)
    return result


# --- plot ----------------------------------------------------------------------------------------------------------
_X_AXES = {'gflops': ('gflops', 'GFLOPs'), 'latency': ('latency_ms_b1', 'latency, batch 1 (ms)'),
           'latency_bN': ('latency_ms_bN', 'latency, batch {n} (ms)')}


def read_reference(path: PathLike) -> list[dict]:
    """Official points from a JSONL file (`cfg_id`, `flops` in FLOPs, `acc1`) as rows with `id`, `gflops`, `top1`."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SystemExit(f'cannot read reference file {path}: {e}') from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rows.append(dict(id=int(rec['cfg_id']), gflops=float(rec['flops']) / 1e9, top1=float(rec['acc1'])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SystemExit(f'{path}:{n}: expected a JSON object with cfg_id, flops and acc1 ({e})') from e
    return rows


def plot_sweep(
        sweep_json: PathLike,
        output: Optional[PathLike] = None,
        x: str = 'gflops',
        reference: Optional[PathLike] = None,
) -> Path:
    """Pareto plot (PNG, Agg) of top-1 against GFLOPs or latency: every stitch labelled by id, anchors marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in _X_AXES:
        raise SystemExit(f'--x must be one of {", ".join(_X_AXES)}, got {x!r}')
    result = load_sweep(sweep_json)
    key, label = _X_AXES[x]
    label = label.format(n=result.get('batch_size', 'N'))
    # a latency table from `timm-snnet profile` has no accuracies: draw GFLOPs against latency instead
    y = 'top1' if any(isinstance(r.get('top1'), (int, float)) for r in result['rows']) or key == 'gflops' else 'gflops'
    rows = [r for r in result['rows'] if all(isinstance(r.get(k), (int, float)) for k in (key, y))]
    if not rows:
        raise SystemExit(f'{sweep_json} has no rows with both {key} and {y} to plot')
    anchors = set(result.get('anchors') or [r['id'] for r in rows if '->' not in str(r.get('path', ''))])
    if output is None:
        base = Path(sweep_json) if Path(sweep_json).is_dir() else Path(sweep_json).parent
        output = base / f'pareto_{x}.png'
    output = Path(output)

    fig = Figure(figsize=(7, 4.8), dpi=110, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        if key != 'gflops':
            raise SystemExit('reference points carry FLOPs only: use --x gflops with --reference')
        ref = read_reference(reference)
        ax.scatter([r['gflops'] for r in ref], [r['top1'] for r in ref], s=22, facecolors='none',
                   edgecolors='0.55', label='official (paper)', zorder=1)
    stitched = [r for r in rows if r['id'] not in anchors]
    ax.scatter([r[key] for r in stitched], [r[y] for r in stitched], s=16, color='tab:blue', alpha=0.75,
               label='stitches', zorder=2)
    if y == 'top1':
        front = {k: None for k in pareto_front(rows, key, 'top1')}
        by_id = {r['id']: r for r in rows}
        ax.plot([by_id[k][key] for k in front], [by_id[k]['top1'] for k in front], color='tab:orange', lw=1.4,
                label='Pareto front', zorder=3)
    marked = [r for r in rows if r['id'] in anchors]
    ax.scatter([r[key] for r in marked], [r[y] for r in marked], marker='*', s=160, color='tab:red',
               edgecolors='k', linewidths=0.5, label='anchors', zorder=4)
    for r in rows:
        ax.annotate(str(r['id']), (r[key], r[y]), xytext=(2, 2), textcoords='offset points', fontsize=6)
    for r in marked:
        ax.annotate(str(r.get('path', r['id'])), (r[key], r[y]), xytext=(6, -10), textcoords='offset points',
                    fontsize=8, color='tab:red')
    ax.set_xlabel(label)
    ax.set_ylabel('top-1 (%)' if y == 'top1' else 'GFLOPs')
    measured = result.get('profile') or result  # latencies merged from `timm-snnet profile` name its device
    where = f' on {measured.get("device_name") or measured.get("device")}' if key != 'gflops' else ''
    ax.set_title(f'{result.get("model", "SN-Net")}: {len(rows)} configs{where}', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    return output


# --- command line --------------------------------------------------------------------------------------------------
def _model_kwargs_arg(p: argparse.ArgumentParser) -> None:
    from timm.utils import ParseKwargs

    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help="create_model kwargs, as train.py's --model-kwargs (e.g. img_size=384 stitch_seed=1)")


def _anchor_list(tokens: Optional[Sequence[str]]) -> Optional[list[Optional[str]]]:
    """--anchor-checkpoints tokens; `none` leaves that anchor as built."""
    return None if tokens is None else [None if t.lower() == 'none' else t for t in tokens]


def _cmd_init(args: argparse.Namespace) -> int:
    out = init_checkpoint(
        args.model, args.data_dir, args.output, model_kwargs=args.model_kwargs, num_classes=args.num_classes,
        pretrained_anchors=args.pretrained_anchors, anchor_checkpoints=_anchor_list(args.anchor_checkpoints),
        num_images=args.num_images, batch_size=args.batch_size, split=args.split, seed=args.seed,
        device=args.device, workers=args.workers)
    kw = ' '.join(shlex.quote(f'{k}={v!r}') for k, v in args.model_kwargs.items()
                  if k != 'anchor_checkpoints')  # the init file holds the anchors
    classes = f' --num-classes {args.num_classes}' if args.num_classes else ''
    print(f'wrote {out}\ntrain with: timm-snnet run train.py {shlex.quote(str(args.data_dir))} --model {args.model} '
          f'--initial-checkpoint {shlex.quote(str(out))}{classes} ...{f" --model-kwargs {kw}" if kw else ""}')
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    result = sweep(
        args.model, args.checkpoint, args.data_dir, args.output, stitches=args.stitches, batch_size=args.batch_size,
        device=args.device, model_kwargs=args.model_kwargs, num_classes=args.num_classes, split=args.split,
        use_ema=args.use_ema, workers=args.workers, latency_warmup=args.latency_warmup,
        latency_iters=args.latency_iters)
    out = Path(args.output)
    print(f'wrote {out / "sweep.json"} and {out / "sweep.csv"} ({len(result["rows"])} stitches)')
    if args.save_model:
        model = load_model(args.model, args.checkpoint, args.model_kwargs, args.num_classes, args.use_ema)
        model.set_stitch_table(result['rows'])
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, args.save_model)
        print(f'wrote {args.save_model} (weights with the sweep table, for select_stitch after loading)')
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    print(f'wrote {plot_sweep(args.sweep, args.output, x=args.x, reference=args.reference)}')
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    budget = dict(max_gflops=args.max_gflops, max_latency_ms=args.max_latency_ms, min_top1=args.min_top1,
                  latency=args.latency)
    try:
        if args.sweep:
            rows = load_sweep(args.sweep)['rows']
            best = select_stitch(rows, **budget)
        elif args.model:
            model = (load_model(args.model, args.checkpoint, args.model_kwargs, args.num_classes) if args.checkpoint
                     else _create(args.model, args.model_kwargs, args.num_classes))
            rows = model.stitch_table or [dict(id=c.id, path=model.describe(c), gflops=c.gflops, params=c.params)
                                          for c in model.stitch_configs()]
            best = model.select_stitch(**budget, table=rows)
        else:
            raise SystemExit('select needs a sweep.json (positional) or --model [--checkpoint]')
    except ValueError as e:
        raise SystemExit(f'select: {e}') from e
    row = next(r for r in rows if r['id'] == best)
    extra = '\t'.join(f'{k}={row[k]:g}' for k in ROW_KEYS[2:] if isinstance(row.get(k), (int, float)))
    print(f'{best}\t{row.get("path", "")}\t{extra}')
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser('init', help='least-squares init of the stitching layers -> .safetensors for train.py')
    p.add_argument('--model', required=True, help='registered snnet model, e.g. snnet_deit_tsb')
    p.add_argument('--data-dir', required=True, help='ImageFolder root (uses DIR/train if present)')
    p.add_argument('--output', required=True, help='output .safetensors (train.py --initial-checkpoint)')
    p.add_argument('--pretrained-anchors', action='store_true', help="load each anchor's timm pretrained weights")
    p.add_argument('--anchor-checkpoints', nargs='+', default=None, metavar='CKPT',
                   help='one per anchor, smallest first: train.py checkpoint (ema:PATH for its EMA weights), '
                        '.safetensors, hf-hub:ORG/NAME or local-dir:DIR; none leaves an anchor as built. Loaded '
                        'strictly; pass --num-classes when the anchors were trained on other than 1000 classes')
    p.add_argument('--num-images', type=int, default=100, help='calibration images (default 100, as the paper)')
    p.add_argument('--num-classes', type=int, default=None, help='as train.py --num-classes')
    p.add_argument('--batch-size', type=int, default=25)
    p.add_argument('--split', default='train')
    p.add_argument('--seed', type=int, default=0, help='seed of the calibration image sample')
    p.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    p.add_argument('--workers', type=int, default=2)
    _model_kwargs_arg(p)
    p.set_defaults(func=_cmd_init)

    p = subparsers.add_parser('sweep', help='measure top-1/top-5/GFLOPs/params/latency of every stitch')
    p.add_argument('--model', required=True)
    p.add_argument('--checkpoint', required=True, help='train.py checkpoint (.pth.tar) or .safetensors')
    p.add_argument('--data-dir', required=True, help='ImageFolder root (uses DIR/val if present)')
    p.add_argument('--output', required=True, help='output dir for sweep.json and sweep.csv')
    p.add_argument('--stitches', default='all', help="config ids: 'all' (default), '0-70', '3' or '0-2,5'")
    p.add_argument('--batch-size', type=int, default=64, help='eval batch, and the N of latency_ms_bN')
    p.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--split', default='validation')
    p.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights (validate.py)")
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--latency-warmup', type=int, default=5)
    p.add_argument('--latency-iters', type=int, default=20)
    p.add_argument('--save-model', default=None, metavar='PATH.safetensors',
                   help='also write the weights with the sweep table attached (model.stitch_table)')
    _model_kwargs_arg(p)
    p.set_defaults(func=_cmd_sweep)

    p = subparsers.add_parser('plot', help='Pareto plot (PNG) of a sweep')
    p.add_argument('sweep', help='OUT/sweep.json or OUT/')
    p.add_argument('--output', default=None, help='PNG path (default OUT/pareto_<x>.png)')
    p.add_argument('--x', default='gflops', choices=sorted(_X_AXES), help='x axis (default gflops)')
    p.add_argument('--reference', default=None, help='official points, JSONL with cfg_id, flops, acc1')
    p.set_defaults(func=_cmd_plot)

    p = subparsers.add_parser('select', help='best stitch within a budget (prints: id, path, measurements)')
    p.add_argument('sweep', nargs='?', default=None, help='OUT/sweep.json (else --model, FLOPs or its stored table)')
    p.add_argument('--model', default=None)
    p.add_argument('--checkpoint', default=None, help='weights whose stored stitch table to use')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--max-gflops', type=float, default=None)
    p.add_argument('--max-latency-ms', type=float, default=None)
    p.add_argument('--latency', default='b1', choices=sorted(LATENCY_KEYS), help='latency column for the budget')
    p.add_argument('--min-top1', type=float, default=None)
    _model_kwargs_arg(p)
    p.set_defaults(func=_cmd_select)
