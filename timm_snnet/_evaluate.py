"""Measuring stitches: least-squares init of the stitching layers on training images, and the sweep that evaluates
each stitch (top-1, top-5, latency) into the results format of `timm_snnet._results`.

Command line: `timm-snnet init | sweep | plot | select` (`timm_snnet.cli.sweep`).

- `init` least-squares initialises the stitching layers on training images (the model's eval transforms) and writes
  a `.safetensors` checkpoint for train.py's `--initial-checkpoint`. It runs once, before training, so every DDP
  rank starts from the same weights.
- `sweep` evaluates each selected stitch on an ImageFolder split (anything timm's `create_dataset` reads, with the
  model's eval transform) and writes `OUT/sweep.json` and `OUT/sweep.csv` after every stitch (each replaced
  atomically). A re-run resumes only when model, kwargs, checkpoint hash, data, transforms, device, batch size and
  latency settings all match the recorded ones (the fingerprint); otherwise one process moves an old one-process
  file to sweep.json.bak and recomputes everything; a process group, or a file it wrote, refuses (see below).
  Sweeps of one OUT with the same settings may run at once (other --stitches): each write re-reads sweep.json and
  merges under OUT's lock (`timm_snnet._utils.folder_lock`), so every row is kept.
- `torchrun --nproc_per_node N [--nnodes M ...] -m timm_snnet.cli sweep ...` (the same arguments) splits the images
  across the ranks in whole batches of the one-process order (`timm_snnet._dist`: why by data and not by config),
  sums the integer correct counts, and rank 0 writes the same files, with the only progress bar; the counts, top-1
  and top-5 are those of one process, whatever N. Every rank must see the same checkpoint and data (checked).
  After a killed rank the same command resumes after the last recorded stitch; results recorded with another
  model, checkpoint, data or settings are refused with what changed, never mixed or silently overwritten (a
  cluster run is too costly to discard on a typo). Latency is per device, measured by `profile`: a sharded sweep
  records `"latency": null` and no latency columns, and says so in one line.
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
      "latency": {"warmup": 5, "iters": 20, "stat": "median", "threads": 1},  # null under a process group
      "anchors": [0, 1, 2],                          # ids of the anchor configs
      "ranks": 8,                                    # only from a process group: its (latest) world size
      "rows": [{"id": 0, "path": "Ti", "gflops": 1.258, "params": 5717416, "top1": 72.1, "top5": 91.0,
                "latency_ms_b1": 4.1, "latency_ms_bN": 21.7, "top1_correct": 7210, "top5_correct": 9100,
                "num_images": 10000}, ...]
    }

Rows are sorted by id; `top1`/`top5` are percentages, `gflops` is fvcore's count at batch 1 (one multiply-add is
one FLOP), `params` counts the parameters on the config's path, latencies are median milliseconds per forward with
`threads` torch threads (`--threads`, default 1: at the default count on a busy machine latency is noise);
`top1_correct`, `top5_correct` and `num_images` are the exact counts behind top-1/top-5. `sweep.csv` holds the
same rows, one per stitch (the columns of `timm_snnet._results.ROW_KEYS`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_dataset, create_transform
from timm.data.model_config import resolve_input_data_config
from tqdm.auto import tqdm

from ._anchors import anchor_checkpoint_records
from ._dist import Ranks, batch_shard, join
from ._inputs import check_image_folder
from ._latency import device_name, measure_latency, resolve_device
from ._load import checkpoint_file, create_snnet, model_from_checkpoint
from ._results import ROW_KEYS as _RESULT_ROW_KEYS
from ._results import jsonable, load_sweep, write_results
from ._selection import parse_stitches
from ._utils import atomic_file, check_new_file, file_sha256, folder_lock

__all__ = ['ROW_KEYS', 'COUNT_KEYS', 'Accuracy', 'init_checkpoint', 'sweep', 'evaluate']

COUNT_KEYS = ('top1_correct', 'top5_correct', 'num_images')  # the exact counts behind top1/top5
ROW_KEYS = _RESULT_ROW_KEYS  # a sweep.json row and the sweep.csv columns, COUNT_KEYS included
_LATENCY_KEYS = ('latency_ms_b1', 'latency_ms_bN')

_RESUME_KEYS = ('model', 'model_kwargs', 'checkpoint', 'data', 'transforms', 'device', 'batch_size', 'latency')
_IGNORED_FOR_RESUME = {'checkpoint': ('path',), 'data': ('root',)}  # moving files does not change results

PathLike = Union[str, os.PathLike]


def _data_config(model: torch.nn.Module) -> dict[str, Any]:
    """validate.py's data config: the model's real input size and channels (mean/std adapted to 1 channel)."""
    return resolve_input_data_config(model)


def _dataset(data_dir: PathLike, split: str):
    """timm's folder dataset for `split` (DIR/train, DIR/val or DIR itself), with a clear error when empty. Its image
    mode follows the model's channels (`_img_mode`), set once the model is built."""
    root = check_image_folder(data_dir)
    try:
        return create_dataset('', root=str(root), split=split, is_training=False)
    except (RuntimeError, FileNotFoundError) as e:
        raise ValueError(f'no images for split {split!r} under {data_dir}: {e}\nExpected an ImageFolder: '
                         f'DIR/train/<class>/<image> and DIR/val/<class>/<image> (or DIR/<class>/<image>).') from e


def _img_mode(dataset, data_config: dict) -> None:
    """Read images as grayscale for 1-channel models, as validate.py does."""
    dataset.input_img_mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'


class _Decodes(torch.utils.data.Dataset):
    """For each index, '' if its image decodes as the eval loader reads it, else the error."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> str:
        try:
            with self.dataset.reader[self.indices[i]][0] as f:
                Image.open(f).convert(self.dataset.input_img_mode)
            return ''
        except Exception as e:  # noqa: BLE001  (whatever PIL raises: the image is unreadable)
            text = re.sub(r'\s*<_io\.\w+ name=[^>]*>', '', f'{type(e).__name__}: {e}')  # PIL repeats the path
            return ' '.join(text.split())[:120]


def _readable(dataset, indices: Sequence[int], workers: int, log: Callable[[str], None]) -> list[int]:
    """The `indices` whose images decode. timm's dataset would silently read the next image in place of a broken
    one; these are reported instead (count and first paths) and left out of the evaluation and of num_images."""
    indices = list(indices)
    loader = torch.utils.data.DataLoader(_Decodes(dataset, indices), batch_size=None, num_workers=workers)
    errors = [(k, e) for k, e in zip(indices, loader) if e]
    if not errors:
        return indices
    first = '; '.join(f'{dataset.filename(k, absolute=True)} ({e})' for k, e in errors[:3])
    first += ' ...' if len(errors) > 3 else ''
    if len(errors) == len(indices):
        raise ValueError(f'none of the {len(indices)} images can be read: {first}')
    log(f'{len(errors)} of {len(indices)} images cannot be read and are left out (num_images counts the '
        f'{len(indices) - len(errors)} others): {first}')
    bad = {k for k, _ in errors}
    return [k for k in indices if k not in bad]


def _data_record(dataset, data_dir: PathLike, split: str, keep: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """What identifies the evaluation data (the `keep` indices, default all): sorted relative paths, labels and
    sizes, hashed."""
    reader = getattr(dataset, 'reader', None)
    samples = getattr(reader, 'samples', None) or [(f, 0) for f in dataset.filenames(absolute=True)]
    samples = samples if keep is None else [samples[k] for k in keep]
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
    _img_mode(dataset, data_config)
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
        overwrite: bool = True,
) -> Path:
    """LS-init the stitching layers on `num_images` training images (seeded sample, eval transforms); save safetensors.

    The file is a plain state dict, so train.py loads it with `--initial-checkpoint` (timm's `load_checkpoint` reads
    `.safetensors` by extension). Train with the same `--model-kwargs` and `--num-classes`. With `anchor_checkpoints`
    the anchors come from the user's files (see `timm_snnet._anchors`); the init file holds them, and its metadata
    records each file's sha256, so training needs only the init file. Without `overwrite` an existing `output` is
    refused (before any work).
    """
    output = Path(output)
    if output.suffix != '.safetensors':
        raise ValueError(f'--output must end with .safetensors (timm picks the loader by extension), got {output}')
    check_new_file(output, overwrite)
    if num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {num_images}')
    dataset = _dataset(data_dir, split)
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
    _img_mode(dataset, data_config)
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images].tolist()
    indices = _readable(dataset, indices, workers, print)
    take = len(indices)
    loader = _loader(dataset, data_config, min(batch_size, take), workers, indices, dev)
    model.init_stitching_layers(loader, num_images=take, batch_size=batch_size, progress=progress)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(model=model_name, model_kwargs=json.dumps(jsonable(model_kwargs or {})),
                num_classes=str(model.num_classes), init_images=str(take), data_dir=str(os.path.abspath(data_dir)),
                split=split, seed=str(seed))
    if anchor_checkpoints is not None:
        meta['anchor_checkpoints'] = json.dumps(anchor_checkpoint_records(anchor_checkpoints, len(model.anchors)))
    with atomic_file(output, overwrite) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return output


# --- sweep ---------------------------------------------------------------------------------------------------------
class Accuracy(tuple):
    """`(top1, top5)` in percent, as `evaluate` has always returned, carrying the exact counts behind them:
    `top1_correct`, `top5_correct` and `num_images` (percentages are nan for no images)."""
    top1_correct: int
    top5_correct: int
    num_images: int

    def __new__(cls, top1_correct: int, top5_correct: int, num_images: int) -> Accuracy:
        def pct(c: int) -> float:
            return 100.0 * c / num_images if num_images else float('nan')

        self = super().__new__(cls, (pct(top1_correct), pct(top5_correct)))
        self.top1_correct, self.top5_correct, self.num_images = int(top1_correct), int(top5_correct), int(num_images)
        return self


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device, stitch_id: int) -> Accuracy:
    """Top-1 and top-5 (percent) of one stitch over a loader, with the counts (`Accuracy.top1_correct`, ...)."""
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
    return Accuracy(correct1, correct5, seen)


def _resume_view(header: dict[str, Any]) -> dict[str, Any]:
    view = {k: header.get(k) for k in _RESUME_KEYS}
    for key, ignored in _IGNORED_FOR_RESUME.items():
        if isinstance(view.get(key), dict):
            view[key] = {k: v for k, v in view[key].items() if k not in ignored}
    return jsonable(view)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        text = ' '.join(f'{k}={_short(v)}' for k, v in value.items())
        return '{' + text + '}' if len(text) <= 60 else '{' + text[:57] + '...}'
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + '...'


def _changes(old_view: dict[str, Any], new_view: dict[str, Any]) -> tuple[list[str], str]:
    """The resume keys that differ between two resume views, and what changed in each, in words."""
    keys, details = [], []
    for k in _RESUME_KEYS:
        old, new = old_view.get(k), new_view.get(k)
        if old == new:
            continue
        keys.append(k)
        if isinstance(old, dict) and isinstance(new, dict):
            details += [f'{k}.{s} {_short(old.get(s))} -> {_short(new.get(s))}' for s in sorted({*old, *new})
                        if old.get(s) != new.get(s)]
        else:
            details.append(f'{k} {_short(old)} -> {_short(new)}')
    return keys, '; '.join(details)


def _mismatch(recorded: dict[str, Any], header: dict[str, Any]) -> list[str]:
    return _changes(_resume_view(recorded), _resume_view(header))[0]


def _required_keys(header: dict[str, Any]) -> tuple[str, ...]:
    """What a recorded row needs to count as done: latency only when this sweep measures it."""
    return tuple(k for k in ROW_KEYS if header.get('latency') is not None or k not in _LATENCY_KEYS)


def _recorded_rows(out: Path, header: dict[str, Any], selected: Sequence[int], refuse: bool,
                   log: Callable[[str], None]) -> dict[int, dict]:
    """Finished rows of OUT/sweep.json that this sweep may keep. A file recorded with other settings is refused
    (`refuse`: under a process group, or a file a process group wrote) or, one process over a one-process file,
    moved to sweep.json.bak (the sweep starts over)."""
    path = out / 'sweep.json'
    if not path.is_file():
        return {}
    with folder_lock(out):  # never between another sweep's read and write of OUT
        if not path.is_file():
            return {}
        recorded = load_sweep(path)
        keys, details = _changes(_resume_view(recorded), _resume_view(header))
        move = bool(keys) and not (refuse or 'ranks' in recorded)  # a sharded sweep's results are never moved aside
        if move:
            os.replace(path, out / 'sweep.json.bak')
    if move:
        log(f'{path} was recorded with a different {", ".join(keys)}: recomputing (old results moved to '
            f'sweep.json.bak)')
        return {}
    if keys:
        hint = (' A sharded sweep measures no latency: finish a one-process sweep with one process, and a sharded '
                'one under torchrun.' if 'latency' in keys else '')
        raise ValueError(f'{path} was recorded with a different {", ".join(keys)} ({details}): refusing to mix its '
                         f'results with this run.{hint} Re-run with the recorded model, checkpoint, data and settings '
                         f'to resume, or pass a new --output (or move {path} away) to start over.')
    rows = _finished(recorded['rows'], header)
    log(f'resuming {path}: {sum(k in rows for k in selected)} of {len(selected)} selected stitches already measured')
    return rows


def _finished(rows: Sequence[Any], header: dict[str, Any]) -> dict[int, dict]:
    """The recorded rows that count as done, by id."""
    need = _required_keys(header)
    return {r['id']: r for r in rows if isinstance(r, dict) and all(k in r for k in need)}


def _write_merged(out: Path, header: dict[str, Any], rows: dict[int, dict]) -> dict[int, dict]:
    """Write `rows` and the rows other sweeps of the same settings recorded in OUT meanwhile (ours win on an id both
    measured), under OUT's lock: sweeps of other --stitches into one folder lose nothing. Returns all the rows."""
    path = out / 'sweep.json'
    with folder_lock(out):
        if path.is_file():
            recorded = load_sweep(path)
            keys, details = _changes(_resume_view(recorded), _resume_view(header))
            if keys:
                raise ValueError(f'{path} was rewritten meanwhile by a sweep with a different {", ".join(keys)} '
                                 f'({details}): refusing to replace its results; pass another --output')
            rows = {**_finished(recorded['rows'], header), **rows}
        write_results(out, {**header, 'rows': list(rows.values())})
    return rows


def _latencies(model: torch.nn.Module, input_size: tuple, batch_size: int, dev: torch.device, warmup: int,
               iters: int, threads: int) -> dict[str, float]:
    """Batch-1 and batch-N latency of the active stitch with `threads` torch threads (then the previous count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {f'latency_ms_b{n}': round(measure_latency(model, input_size, b, dev, warmup, iters), 4)
                for n, b in (('1', 1), ('N', batch_size))}
    finally:
        torch.set_num_threads(before)


def _check_sweep_args(output_dir: PathLike, batch_size: int, workers: int, latency_warmup: int, latency_iters: int,
                      threads: int) -> None:
    """Every argument that needs no file read, checked before any work."""
    for name, value, least in (('--batch-size', batch_size, 1), ('--workers', workers, 0),
                               ('--latency-warmup', latency_warmup, 0), ('--latency-iters', latency_iters, 1),
                               ('--threads', threads, 1)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f'{name} must be an integer >= {least}, got {value!r}')
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f'--output {output_dir} is a file; pass a folder for sweep.json and sweep.csv')


def sweep(
        model_name: str,
        checkpoint: Optional[PathLike],
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
        threads: int = 1,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure top-1, top-5 (with the correct counts), GFLOPs, params and latency (batch 1 and `batch_size`, with
    `threads` torch threads) of each selected stitch.

    Results go to OUT/sweep.json and OUT/sweep.csv after every stitch, so an interrupted sweep resumes where it
    stopped, but only when everything that determines the numbers is unchanged (see the module docstring). Under
    `torchrun` the images are split across the ranks (`timm_snnet._dist`), rank 0 writes, latency is left to
    `profile`; every rank returns the same result.
    """
    _check_sweep_args(output_dir, batch_size, workers, latency_warmup, latency_iters, threads)
    ranks, dev = join(device)  # a process group under torchrun; else one process, the device resolved here
    try:
        dev = dev if dev is not None else resolve_device(device)
        return _sweep(ranks, dev, model_name, checkpoint, data_dir, output_dir, stitches, batch_size, model_kwargs,
                      num_classes, split, use_ema, workers, latency_warmup, latency_iters, threads, progress, log)
    finally:
        ranks.close()


def _sweep(ranks: Ranks, dev: torch.device, model_name: str, checkpoint: Optional[PathLike], data_dir: PathLike,
           output_dir: PathLike, stitches: str, batch_size: int, model_kwargs: Optional[dict],
           num_classes: Optional[int], split: str, use_ema: bool, workers: int, latency_warmup: int,
           latency_iters: int, threads: int, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    if not ranks.main:
        log = lambda msg: None  # noqa: E731  (rank 0 speaks for the group)
    with ranks.together():  # a rank that cannot read its data or checkpoint stops every rank
        dataset = _dataset(data_dir, split)  # before hashing a checkpoint
        model = model_from_checkpoint(model_name, checkpoint, model_kwargs, num_classes, use_ema)
        weights = checkpoint_file(model_name, checkpoint)
        try:
            selected = parse_stitches(stitches, model.num_configs)
        except ValueError as e:
            raise ValueError(f'{e} ({model_name} has {model.num_configs} configs)') from e
        data_config = _data_config(model)  # channels, size and normalisation from the model's config
        _img_mode(dataset, data_config)
        keep = _readable(dataset, range(len(dataset)), workers, log)
        data = _data_record(dataset, data_dir, split, keep)
        if data['num_classes'] > model.num_classes:
            raise ValueError(f'{data_dir} has {data["num_classes"]} classes but {model_name} predicts '
                             f'{model.num_classes}; pass --num-classes (and the checkpoint trained for it)')
        shard = batch_shard(len(keep), batch_size, ranks.rank, ranks.world_size) if ranks.distributed else None
        indices = [keep[i] for i in shard] if shard is not None else keep if len(keep) < len(dataset) else None
        loader = _loader(dataset, data_config, batch_size, workers, indices, device=dev)
        configs = model.stitch_configs(data_config['input_size'])
        header = dict(
            model=model_name, model_kwargs=jsonable(model_kwargs or {}),
            checkpoint=dict(path=str(weights.resolve()) if weights else model_name,
                            sha256=file_sha256(weights) if weights else None, use_ema=use_ema),
            data=data,
            transforms={**jsonable(data_config), 'eval': ' '.join(str(dataset.transform).split())},
            device=dev.type if ranks.distributed else str(dev), device_name=device_name(dev), batch_size=batch_size,
            # under a process group the ranks share cores and buses: latency is `profile`'s job (per device)
            latency=None if ranks.distributed else dict(warmup=latency_warmup, iters=latency_iters, stat='median',
                                                        threads=threads),
            anchors=[c.id for c in configs if c.is_anchor],
            **({'ranks': ranks.world_size} if ranks.distributed else {}),
        )
        if num_classes is not None:
            header['model_kwargs'] = {**header['model_kwargs'], 'num_classes': num_classes}
    views = ranks.gather(_resume_view(header))
    for r, view in enumerate(views):
        keys, details = _changes(views[0], view)
        if keys:
            raise ValueError(f'rank {r} sees a different {", ".join(keys)} than rank 0 ({details}): every rank must '
                             f'read the same checkpoint and data with the same settings')

    out = Path(output_dir)
    rows: dict[int, dict] = {}
    with ranks.together():
        if ranks.main:  # only rank 0 reads and writes OUT (it may live on rank 0's machine only)
            rows = _recorded_rows(out, header, selected, ranks.distributed, log)
    todo = ranks.broadcast([k for k in selected if k not in rows] if ranks.main else None)
    if ranks.distributed:
        sizes = ranks.gather(len(shard))
        log(f'sweep: {len(todo)} of {len(selected)} stitches to evaluate on {ranks.world_size} ranks, each on whole '
            f'batches of {batch_size} ({"+".join(map(str, sizes))} = {data["num_images"]} images): '
            f'{_id_ranges(todo)}')
        log(f'sweep: latency not measured under a process group (the ranks share this machine); measure it per device '
            f'with `timm-snnet profile --model {model_name} --checkpoint ... --batch-sizes 1,{batch_size} --merge '
            f'{out}`')

    model.to(dev)
    input_size = tuple(data_config['input_size'])
    bar = tqdm(todo, desc='sweep', unit='stitch', disable=not (progress and ranks.main))
    for k in bar:
        if ranks.broadcast(k in rows if ranks.main else None):
            continue  # another sweep of this folder measured it meanwhile
        c = configs[k]
        acc = evaluate(model, loader, dev, k)
        correct1, correct5, seen = ranks.all_sum((acc.top1_correct, acc.top5_correct, acc.num_images))
        if seen != data['num_images']:  # never drop or double-count an image
            raise RuntimeError(f'stitch {k} saw {seen} images, the data has {data["num_images"]}')
        row = dict(id=k, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params),
                   top1=round(100.0 * correct1 / seen, 4), top5=round(100.0 * correct5 / seen, 4),
                   top1_correct=correct1, top5_correct=correct5, num_images=seen)
        if header['latency'] is not None:
            row.update(_latencies(model, input_size, batch_size, dev, latency_warmup, latency_iters, threads))
        if ranks.main:
            rows = _write_merged(out, header, {**rows, k: row})
        bar.set_postfix(id=k, top1=f'{row["top1"]:.2f}')
    result = None
    if ranks.main:
        rows = _write_merged(out, header, rows)
        result = {**header, 'rows': sorted(rows.values(), key=lambda r: r['id'])}
    result = ranks.broadcast(result)
    missing = [k for k in selected if k not in {r['id'] for r in result['rows']}]
    if missing:  # never skip a config silently
        raise RuntimeError(f'stitches {missing} have no results')
    return result


def _id_ranges(ids: Sequence[int]) -> str:
    """`[0, 1, 2, 5]` -> `0-2,5` (as --stitches reads it)."""
    parts: list[list[int]] = []
    for k in ids:
        if parts and k == parts[-1][1] + 1:
            parts[-1][1] = k
        else:
            parts.append([k, k])
    return ','.join(f'{a}-{b}' if b > a else f'{a}' for a, b in parts) or 'none'
