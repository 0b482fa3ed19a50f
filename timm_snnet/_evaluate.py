"""Measuring stitches: least-squares init of the stitching layers on training images, and the sweep that evaluates
each stitch (top-1, top-5, latency) into the results format of `timm_snnet._results`.

Command line: `timm-snnet init | sweep | plot | select` (`timm_snnet.cli.sweep`).

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

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from safetensors.torch import save_file
from timm.data import create_dataset, create_transform
from timm.data.model_config import resolve_input_data_config
from tqdm.auto import tqdm

from ._anchors import anchor_checkpoint_records
from ._latency import device_name, measure_latency, resolve_device
from ._load import create_snnet, load_model
from ._results import ROW_KEYS, jsonable, load_sweep, write_results
from ._selection import parse_stitches
from ._utils import file_sha256

__all__ = ['ROW_KEYS', 'init_checkpoint', 'sweep', 'evaluate']

_RESUME_KEYS = ('model', 'model_kwargs', 'checkpoint', 'data', 'transforms', 'device', 'batch_size', 'latency')
_IGNORED_FOR_RESUME = {'checkpoint': ('path',), 'data': ('root',)}  # moving files does not change results

PathLike = Union[str, os.PathLike]


def _data_config(model: torch.nn.Module) -> dict[str, Any]:
    """validate.py's data config: the model's real input size and channels (mean/std adapted to 1 channel)."""
    return resolve_input_data_config(model)


def _dataset(data_dir: PathLike, split: str, in_chans: int = 3):
    """timm's folder dataset for `split` (DIR/train, DIR/val or DIR itself), with a clear error when empty.

    Images are read as grayscale for 1-channel models, as validate.py does."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f'data dir not found: {data_dir} (expected an ImageFolder: DIR/train/<class>/<image> '
                                f'and DIR/val/<class>/<image>)')
    try:
        return create_dataset('', root=str(root), split=split, is_training=False,
                              input_img_mode='L' if in_chans == 1 else 'RGB')
    except (RuntimeError, FileNotFoundError) as e:
        raise ValueError(f'no images for split {split!r} under {data_dir}: {e}\nExpected an ImageFolder: '
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
    dataset.transform = create_transform(**data_config, is_training=False)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device is not None and device.type == 'cuda')


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
    the anchors come from the user's files (see `timm_snnet._anchors`); the init file holds them, and its metadata
    records each file's sha256, so training needs only the init file.
    """
    output = Path(output)
    if output.suffix != '.safetensors':
        raise ValueError(f'--output must end with .safetensors (timm picks the loader by extension), got {output}')
    if num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {num_images}')
    dataset = _dataset(data_dir, split, (model_kwargs or {}).get('in_chans', 3))
    model_kwargs = dict(model_kwargs or {})
    anchor_checkpoints = anchor_checkpoints if anchor_checkpoints is not None else \
        model_kwargs.pop('anchor_checkpoints', None)
    extra = {'pretrained_anchors': True} if pretrained_anchors else {}
    if anchor_checkpoints is not None:
        extra['anchor_checkpoints'] = list(anchor_checkpoints)
    model = create_snnet(model_name, model_kwargs, num_classes, **extra)
    dev = resolve_device(device)
    model.to(dev)
    data_config = _data_config(model)
    take = min(num_images, len(dataset))
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:take].tolist()
    loader = _loader(dataset, data_config, min(batch_size, take), workers, indices, dev)
    model.init_stitching_layers(loader, num_images=take, batch_size=batch_size, progress=progress)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(model=model_name, model_kwargs=json.dumps(jsonable(model_kwargs or {})),
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


def _resume_view(header: dict[str, Any]) -> dict[str, Any]:
    view = {k: header.get(k) for k in _RESUME_KEYS}
    for key, ignored in _IGNORED_FOR_RESUME.items():
        if isinstance(view.get(key), dict):
            view[key] = {k: v for k, v in view[key].items() if k not in ignored}
    return jsonable(view)


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
        raise ValueError(f'--batch-size must be >= 1, got {batch_size}')
    dataset = _dataset(data_dir, split, (model_kwargs or {}).get('in_chans', 3))  # fail before hashing a checkpoint
    model = load_model(model_name, checkpoint, model_kwargs, num_classes, use_ema)
    try:
        selected = parse_stitches(stitches, model.num_configs)
    except ValueError as e:
        raise ValueError(f'{e} ({model_name} has {model.num_configs} configs)') from e
    dev = resolve_device(device)
    data_config = _data_config(model)
    data = _data_record(dataset, data_dir, split)
    if data['num_classes'] > model.num_classes:
        raise ValueError(f'{data_dir} has {data["num_classes"]} classes but {model_name} predicts {model.num_classes}; '
                         f'pass --num-classes (and the checkpoint trained for it)')
    loader = _loader(dataset, data_config, batch_size, workers, device=dev)
    configs = model.stitch_configs(data_config['input_size'])
    header = dict(
        model=model_name, model_kwargs=jsonable(model_kwargs or {}),
        checkpoint=dict(path=str(Path(checkpoint).resolve()), sha256=file_sha256(checkpoint), use_ema=use_ema),
        data=data,
        transforms={**jsonable(data_config), 'eval': ' '.join(str(dataset.transform).split())},
        device=str(dev), device_name=device_name(dev), batch_size=batch_size,
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


