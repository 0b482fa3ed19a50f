"""Deploy one stitch: a plain timm model holding only the weights on one config's path, ONNX, and latency profiles.

`SNNet.export_stitch(k)` returns an `ExportedStitch`, registered in timm as `exported_stitch`. Its constructor takes
JSON-serialisable arguments only (the route's anchors by timm name and kwargs, its segments of unit indices and its
stitching layers), so timm's `save_for_hf` writes them into config.json and `timm.create_model('local-dir:DIR')` /
`'hf-hub:ORG/NAME'` rebuild it. With `pretrained=True` the anchors are built on the meta device, everything off the
path is dropped, and the checkpoint's tensors are taken as the parameters (`assign`): the other anchors' weights
are never allocated, and the weights are held once.

    timm-snnet export --model snnet_deit_tsb --checkpoint CKPT --max-gflops 5 --format onnx --output deploy/
    timm-snnet profile --model snnet_deit_tsb --checkpoint CKPT --batch-sizes 1,8 --merge sweep/sweep.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._input import get_model_input_config
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn
from tqdm.auto import tqdm

from .families import Family, family_for
from .stitching import create_stitching_layer

__all__ = ['ExportedStitch', 'EXPORT_NAME', 'export_stitch', 'export_onnx', 'check_onnx', 'profile', 'add_commands']

EXPORT_NAME = 'exported_stitch'
_OWN_ARGS = ('num_classes', 'in_chans', 'img_size')  # set on the exported model itself, not per anchor
PathLike = Union[str, os.PathLike]


def _owned(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def _keep_fn(family: Family, units: list, spans: list[tuple[int, int]], stem: bool,
             head: bool) -> Callable[[str], bool]:
    """Which of an anchor's tensors a route runs: its units in `spans`, the stem if it starts the route, and the head
    (everything that is neither stem nor unit, as the FLOPs/params table counts it) if it ends the route."""
    run = [m for start, stop in spans for u in units[start:stop] for m in u.modules] + list(family.stem_names) * stem
    owned = [*family.stem_names, *(m for u in units for m in u.modules)]
    return lambda name: _owned(name, run) or (head and not _owned(name, owned))


def _prune(model: nn.Module, keep: Callable[[str], bool]) -> None:
    """Drop every module and tensor holding nothing that `keep` accepts: a module becomes `nn.Identity` (so sequence
    indices stay), a parameter or buffer becomes None."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    kept = {n for n in names if keep(n)}
    needed = {'.'.join(n.split('.')[:i]) for n in kept for i in range(1, n.count('.') + 2)}
    for name in names:
        if name in kept:
            continue
        parts = name.split('.')
        i = next(i for i in range(1, len(parts) + 1) if '.'.join(parts[:i]) not in needed)
        parent, attr = model.get_submodule('.'.join(parts[:i - 1])), parts[i - 1]
        if attr in parent._modules:
            parent._modules[attr] = nn.Identity()
        elif attr in parent._parameters or attr in parent._buffers:
            setattr(parent, attr, None)


class ExportedStitch(nn.Module):
    """One SN-Net config as a plain model: the route's anchors (pruned to the path), its stitching layers, its head.

    Args:
        anchors: timm names of the anchors on the route, in order of first use.
        anchor_kwargs: each anchor's create_model kwargs (without num_classes, in_chans, img_size).
        segments: `[anchor, start, stop]` per segment: units [start, stop) of `anchors[anchor]`. The first segment
            also runs its anchor's stem, the last one its final norm and head.
        stitch_layers: `{'in_features', 'out_features'}` of the stitching layer after each segment but the last.
        stitched_final_norm: a stitched route ends with its last anchor's final norm (False: SN-Net v1 DeiT).
        names, stitch_id, path: where the stitch comes from (display only).
        num_classes, in_chans, img_size: passed to every anchor (`img_size` only to fixed-size ones, as in timm).
    """

    def __init__(
            self,
            anchors: Sequence[str],
            anchor_kwargs: Sequence[dict],
            segments: Sequence[Sequence[int]],
            stitch_layers: Sequence[dict] = (),
            stitched_final_norm: bool = True,
            names: Optional[Sequence[str]] = None,
            stitch_id: Optional[int] = None,
            path: Optional[str] = None,
            num_classes: Optional[int] = None,
            in_chans: Optional[int] = None,
            img_size: Optional[Union[int, Sequence[int]]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        from .snnet import _shared_kwargs

        self.segments = [tuple(int(v) for v in s) for s in segments]
        _check_route(anchors, anchor_kwargs, self.segments, stitch_layers)
        own = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size).items()
               if v is not None}
        models = [timm.create_model(name, **{**kw, **_shared_kwargs(name, own)}, device=device, dtype=dtype)
                  for name, kw in zip(anchors, anchor_kwargs)]
        self._families = [family_for(m) for m in models]
        units = [f.units(m) for f, m in zip(self._families, models)]
        for a, start, stop in self.segments:
            if not 0 <= start <= stop <= len(units[a]):
                raise ValueError(f'segment [{a}, {start}, {stop}] is out of range: {anchors[a]} has units '
                                 f'0..{len(units[a]) - 1} (a segment runs units [start, stop))')
        # a fixed-size anchor after the first cannot check its input itself once its stem is gone
        self._fixed_sizes = [(anchors[a], tuple(get_model_input_config(models[a])['input_size'][1:]))
                             for a in dict.fromkeys(s[0] for s in self.segments[1:])
                             if get_model_input_config(models[a])['fixed_input_size']]
        first, last = self.segments[0][0], self.segments[-1][0]
        for i, (model, family) in enumerate(zip(models, self._families)):
            spans = [(start, stop) for a, start, stop in self.segments if a == i]
            _prune(model, _keep_fn(family, units[i], spans, stem=i == first, head=i == last))
        self.anchors = nn.ModuleList(models)
        self.stitch_layers = nn.ModuleList([
            create_stitching_layer(int(spec['in_features']), int(spec['out_features']), self._families[a].layout,
                                   self._families[b].layout, device=device, dtype=dtype)
            for spec, (a, _, _), (b, _, _) in zip(stitch_layers, self.segments, self.segments[1:])])
        self._blocks = [[m for u in units[a][start:stop] for m in u.modules] for a, start, stop in self.segments]
        self.stitched_final_norm = stitched_final_norm
        self.anchor_names = tuple(names or (n.split('.')[0] for n in anchors))
        self.stitch_id, self.path = stitch_id, path
        self.in_chans = int(own.get('in_chans', anchor_kwargs[first].get('in_chans', 3)))

    @property
    def _last(self) -> nn.Module:
        return self.anchors[self.segments[-1][0]]

    @property
    def num_classes(self) -> int:
        return self._last.num_classes

    @property
    def num_features(self) -> int:
        return self._last.num_features

    @property
    def head_hidden_size(self) -> int:
        return getattr(self._last, 'head_hidden_size', self._last.num_features)

    def get_classifier(self) -> nn.Module:
        return self._last.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is None:
            self._last.reset_classifier(num_classes)
        else:
            self._last.reset_classifier(num_classes, global_pool)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        own = {n for n, _ in self.named_parameters()}
        return {f'anchors.{i}.{n}' for i, m in enumerate(self.anchors) if hasattr(m, 'no_weight_decay')
                for n in m.no_weight_decay()} & own

    def _check_input(self, x: torch.Tensor) -> None:
        first = self.segments[0][0]
        self._families[first].check_input(self.anchors[first], x)
        for name, size in self._fixed_sizes:
            if tuple(x.shape[-2:]) != size:
                raise ValueError(f'input size {tuple(x.shape[-2:])} does not match {name}\'s fixed image size {size} '
                                 f'(on this stitch\'s path); resize to {size}')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        first, last = self.segments[0][0], self.segments[-1][0]
        x = self._families[first].stem(self.anchors[first], x)
        for i, ((a, _, _), blocks) in enumerate(zip(self.segments, self._blocks)):
            if i:
                x = self.stitch_layers[i - 1](x)
            for name in blocks:
                x = self._families[a].run_module(self.anchors[a], name, x)
        if len(self.segments) > 1 and not self.stitched_final_norm:
            return x
        return self._families[last].finish(self.anchors[last], x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        last = self.segments[-1][0]
        return self._families[last].head(self.anchors[last], x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- loading onto meta-built anchors ---------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's; a model built on the meta device takes the given tensors as its own (no second copy)."""
        on_meta = any(p.is_meta for p in self.parameters())
        result = super().load_state_dict(state_dict, strict=strict, assign=assign or on_meta)
        if on_meta:
            self._materialise()
        return result

    def _materialise(self) -> None:
        """After loading onto meta-built anchors: rebuild the buffers no checkpoint holds (Swin's relative position
        index and attention masks) with timm's own initialisers, and a head dropped for a new `num_classes`."""
        loaded = next((p for p in self.parameters() if not p.is_meta), None)
        if loaded is None:
            return  # exported from a meta SN-Net: nothing to materialise
        rebuilt = []
        for name, module in self.named_modules():
            for key, buf in module._buffers.items():
                if buf is not None and buf.is_meta:
                    module._buffers[key] = torch.empty_like(buf, device=loaded.device)
                    rebuilt.append((name, key, hasattr(module, 'init_non_persistent_buffers')))
        reinit_non_persistent_buffers(self)
        orphans = [f'{m}.{k}' for m, k, ok in rebuilt if not ok]
        if orphans:
            raise RuntimeError(f'buffers {orphans[:3]} are not in the checkpoint and their modules cannot rebuild them')
        missing = [n for n, p in self.named_parameters() if p.is_meta]
        if missing:
            classifier = (self.pretrained_cfg or {}).get('classifier') if hasattr(self, 'pretrained_cfg') else None
            if not classifier or not all(_owned(n, [classifier]) for n in missing):
                raise RuntimeError(f'{len(missing)} parameters were not loaded (e.g. {missing[0]}): the checkpoint '
                                   f'does not hold this stitch; export it again with `timm-snnet export`')
            self.reset_classifier(self.num_classes)  # timm dropped the head for another num_classes
            self._last.get_classifier().to(loaded.device, loaded.dtype)


def _check_route(anchors, anchor_kwargs, segments, stitch_layers) -> None:
    if not anchors or len(anchor_kwargs) != len(anchors):
        raise ValueError(f'exported_stitch needs anchor names and one kwargs dict per anchor, got {list(anchors)} '
                         f'and {len(anchor_kwargs)} kwargs')
    if not segments or any(len(s) != 3 or not 0 <= s[0] < len(anchors) for s in segments):
        raise ValueError(f'segments must be [anchor, start, stop] with anchor in 0..{len(anchors) - 1}, got '
                         f'{[list(s) for s in segments]}')
    if len(stitch_layers) != len(segments) - 1:
        raise ValueError(f'{len(segments)} segments need {len(segments) - 1} stitching layers, got '
                         f'{len(stitch_layers)}')
    bad = [s for s in stitch_layers if not {'in_features', 'out_features'} <= set(s)]
    if bad:
        raise ValueError(f'stitching layers need in_features and out_features, got {bad[0]}')


def _layer_names(anchors: Sequence[str], segments: Sequence[Sequence[int]]) -> dict[str, Any]:
    """first_conv (the first segment's stem) and classifier (the last segment's head), by the anchors' timm cfgs."""
    out = {}
    for key, a in (('first_conv', segments[0][0]), ('classifier', segments[-1][0])):
        cfg = get_pretrained_cfg(anchors[a])
        name = getattr(cfg, key, None) if cfg is not None else None
        out[key] = f'anchors.{a}.{name}' if isinstance(name, str) else None
    return out


default_cfgs = generate_default_cfgs({
    EXPORT_NAME: {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.875,
        'interpolation': 'bicubic', 'mean': timm.data.IMAGENET_DEFAULT_MEAN, 'std': timm.data.IMAGENET_DEFAULT_STD,
        'license': 'apache-2.0', 'hf_hub_filename': 'model.safetensors', 'paper_ids': 'arXiv:2302.06586',
        'paper_name': 'Stitchable Neural Networks',
    },
})


@register_model
def exported_stitch(pretrained: bool = False, **kwargs: Any) -> ExportedStitch:
    """One SN-Net config as a standalone model (`SNNet.export_stitch(k)`; rebuilt from its config.json)."""
    if kwargs.get('features_only'):
        raise RuntimeError(f'features_only is not supported for {EXPORT_NAME}')
    if 'anchors' not in kwargs or 'segments' not in kwargs:
        raise TypeError(f'{EXPORT_NAME} needs its route (anchors=, anchor_kwargs=, segments=, stitch_layers=): get one '
                        f'from SNNet.export_stitch(k), or load a folder it wrote with "local-dir:DIR"')
    overlay = {**_layer_names(kwargs['anchors'], kwargs['segments']), **(kwargs.pop('pretrained_cfg_overlay') or {})}
    device = kwargs.pop('device', None)
    if pretrained:  # anchors on meta, pruned, then the checkpoint's tensors become the parameters
        model = build_model_with_cfg(ExportedStitch, EXPORT_NAME, True, pretrained_cfg_overlay=overlay,
                                     device='meta', **kwargs)
        return model.to(device) if device is not None else model
    return build_model_with_cfg(ExportedStitch, EXPORT_NAME, False, pretrained_cfg_overlay=overlay, device=device,
                                **kwargs)


# --- SNNet -> ExportedStitch ---------------------------------------------------------------------------------------
def _anchor_name(anchor: nn.Module) -> str:
    cfg = anchor.pretrained_cfg
    return f'{cfg["architecture"]}.{cfg["tag"]}' if cfg.get('tag') else cfg['architecture']


def _anchor_kwargs(anchor: nn.Module) -> dict[str, Any]:
    """The create_model kwargs timm recorded for an anchor, less those the exported model sets itself."""
    return {k: v for k, v in getattr(anchor, '_model_args', {}).items() if k not in _OWN_ARGS}


def export_stitch(model: nn.Module, stitch_id: int) -> ExportedStitch:
    """Config `stitch_id` of an SN-Net as an `ExportedStitch`: a copy of the weights on its path and nothing else.

    Its outputs equal `model(x, stitch_id=stitch_id)`, its parameter count is `stitch_configs()[k].params`, and it
    keeps the SN-Net's mode, device and dtype. A meta-device SN-Net gives a meta-device stitch.
    """
    k = model._check_id(stitch_id)
    route = model.route(k)
    used = list(dict.fromkeys(s.anchor for s in route.segments))
    local = {a: i for i, a in enumerate(used)}
    fixed = any(get_model_input_config(model.anchors[a])['fixed_input_size'] for a in used)
    input_size = tuple(model._input_size())
    path = model.describe(model._configs[k])
    args = dict(
        anchors=[_anchor_name(model.anchors[a]) for a in used],
        anchor_kwargs=[_anchor_kwargs(model.anchors[a]) for a in used],
        segments=[[local[s.anchor], s.start, s.stop] for s in route.segments],
        stitch_layers=[dict(in_features=int(model.stitch_layers[i].weight.shape[1]),
                            out_features=int(model.stitch_layers[i].weight.shape[0])) for i in route.layers],
        stitched_final_norm=bool(model.stitched_final_norm), names=[model.anchor_names[a] for a in used],
        stitch_id=k, path=path, num_classes=model.num_classes, in_chans=model.in_chans,
        img_size=list(input_size[1:]) if fixed else None,
    )
    source = getattr(model, 'pretrained_cfg', None) or model.anchors[route.last.anchor].pretrained_cfg
    arch = source.get('architecture', type(model).__name__)
    overlay = {key: source[key] for key in ('crop_pct', 'crop_mode', 'interpolation', 'mean', 'std', 'license')
               if source.get(key) is not None}
    overlay.update(input_size=input_size, fixed_input_size=fixed, num_classes=model.num_classes,
                   notes=(f'{arch} config {k}: {path}',))
    param = next(model.parameters())
    stitch = timm.create_model(EXPORT_NAME, pretrained_cfg_overlay=overlay, device='meta', dtype=param.dtype,
                               **{key: v for key, v in args.items() if v is not None})
    layer = {i: j for j, i in enumerate(route.layers)}
    state = {}
    for name, tensor in model.state_dict().items():
        group, _, rest = name.partition('.')
        index, _, sub = rest.partition('.')
        if group == 'anchors' and int(index) in local:
            state[f'anchors.{local[int(index)]}.{sub}'] = tensor
        elif group == 'stitch_layers' and int(index) in layer:
            state[f'stitch_layers.{layer[int(index)]}.{sub}'] = tensor
    stitch.load_state_dict({n: state[n].detach().clone() for n in stitch.state_dict()})
    return stitch.train(model.training)


# --- ONNX ----------------------------------------------------------------------------------------------------------
def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f'{module} is not installed: pip install "timm-snnet[export]" (onnx, onnxruntime, '
                         f'onnxscript)') from e


def example_input(model: nn.Module, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A random batch at the model's input size, on its device and in its dtype."""
    param = next(model.parameters())
    size = get_model_input_config(model)['input_size']
    x = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed))
    return x.to(param.device, param.dtype)


def export_onnx(model: nn.Module, path: PathLike, opset: Optional[int] = None) -> Path:
    """Write `model` to one ONNX file (`input` -> `logits`) with a dynamic batch axis (and dynamic height and width
    when no model on the path has a fixed input size), and check it with onnx.checker.

    Uses torch's dynamo-based exporter (`torch.export`, the default and supported one since torch 2.9; the
    TorchScript exporter is deprecated).
    """
    onnx = _need('onnx')
    _need('onnxscript')
    path = Path(path)
    axes = {0: torch.export.Dim('batch')}
    if not get_model_input_config(model)['fixed_input_size']:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example_input(model, 2),), str(path), dynamo=True, external_data=False,
                              input_names=['input'], output_names=['logits'], opset_version=opset, verbose=False,
                              dynamic_shapes=(axes,))
    finally:
        model.train(was_training)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def check_onnx(path: PathLike, model: nn.Module, x: torch.Tensor) -> float:
    """Max abs difference between onnxruntime (CPU) and the eager model on `x`."""
    ort = _need('onnxruntime')
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = session.run(None, {session.get_inputs()[0].name: x.detach().float().cpu().numpy()})[0]
    with torch.no_grad():
        ref = model.eval()(x)
    return float((torch.from_numpy(out) - ref.float().cpu()).abs().max())


# --- latency profile -----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == 'cuda':
        return torch.cuda.synchronize
    if device.type == 'mps':
        return torch.mps.synchronize
    return lambda: None


def _timed(fn: Callable[[], Any], threads: int, min_run_time: float) -> float:
    """Median seconds per call (torch.utils.benchmark, blocked runs after its own block-size estimate)."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt='fn()', globals={'fn': fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def profile(
        model: nn.Module,
        stitches: Optional[Sequence[int]] = None,
        batch_sizes: Sequence[int] = (1, 8),
        device: Union[str, torch.device] = 'cpu',
        threads: Optional[int] = None,
        compile: bool = False,
        warmup: int = 3,
        rounds: int = 3,
        min_run_time: float = 0.1,
        progress: bool = True,
) -> list[dict]:
    """Median latency (ms) of each config at each batch size on `device`: rows `latency_ms_b{n}` in the sweep format.

    Eager configs run as `model(x, stitch_id=k)` in interleaved rounds (each round times every config and batch
    size once; the result is the median over rounds). With `compile`, each config is exported and compiled on its
    own (`torch.compile` of `export_stitch(k)`), warmed up, then timed in rounds over the batch sizes.
    """
    device = torch.device(device)
    stitches = list(range(model.num_configs)) if stitches is None else [model._check_id(k) for k in stitches]
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f'batch sizes must be positive integers, got {list(batch_sizes)}')
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = _sync(device)
    model = model.to(device).eval()
    inputs = {b: example_input(model, b) for b in batch_sizes}

    def runner(net: nn.Module, b: int, **kw: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                net(inputs[b], **kw)
            sync()
        return run

    times: dict[tuple[int, int], list[float]] = {(k, b): [] for k in stitches for b in batch_sizes}
    groups = [[k] for k in stitches] if compile else [stitches]
    bar = tqdm(total=len(times) * rounds, desc='profile', unit='run', disable=not progress)
    for group in groups:
        if compile:
            net = torch.compile(model.export_stitch(group[0]).eval())
            fns = {(group[0], b): runner(net, b) for b in batch_sizes}
        else:
            fns = {(k, b): runner(model, b, stitch_id=k) for k in group for b in batch_sizes}
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for key, fn in fns.items():
                times[key].append(_timed(fn, threads, min_run_time))
                bar.update()
    bar.close()
    configs = model.stitch_configs()
    rows = []
    for k in stitches:
        c = configs[k]
        row = dict(id=k, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params))
        row.update({f'latency_ms_b{b}': round(1e3 * statistics.median(times[(k, b)]), 4) for b in batch_sizes})
        big = [b for b in batch_sizes if b != 1]
        if big:
            row['latency_ms_bN'] = row[f'latency_ms_b{max(big)}']
        rows.append(row)
    return rows


def profile_header(model_name: str, model_kwargs: dict, device: torch.device, batch_sizes: Sequence[int],
                   threads: int, compile: bool, warmup: int, rounds: int) -> dict[str, Any]:
    from .sweep import _device_name

    return dict(device=str(device), device_name=_device_name(device), batch_sizes=list(batch_sizes), threads=threads,
                compile=compile, warmup=warmup, rounds=rounds, stat='median', timer='torch.utils.benchmark',
                torch=torch.__version__, date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))


def merge_latency(sweep_json: PathLike, rows: Sequence[dict], profile_info: dict, model_name: str) -> dict[str, Any]:
    """Put profiled latencies into an existing sweep.json (its rows keep their accuracies); returns the result."""
    from .sweep import load_sweep

    result = load_sweep(sweep_json)
    if result.get('model') and result['model'] != model_name:
        raise SystemExit(f'{sweep_json} was measured on {result["model"]}, not {model_name}')
    big = [b for b in profile_info['batch_sizes'] if b != 1]
    n = result.get('batch_size')
    if n is not None and big and max(big) != n:
        raise SystemExit(f'{sweep_json} holds latency_ms_bN at batch {n}, but the largest profiled batch is '
                         f'{max(big)}: profile with --batch-sizes 1,{n}')
    by_id = {r['id']: r for r in rows}
    for row in result['rows']:
        new = by_id.get(row['id'])
        if new is None:
            continue
        if 'path' in row and row['path'] != new['path']:
            raise SystemExit(f'{sweep_json}: row {row["id"]} is {row["path"]!r} but config {row["id"]} of this model '
                             f'is {new["path"]!r}: the sweep was measured on another model')
        row.update({k: v for k, v in new.items() if k.startswith('latency_ms_')})
    result['profile'] = profile_info
    if n is None and big:
        result['batch_size'] = max(big)
    return result


# --- command line --------------------------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> nn.Module:
    from .hub import load_snnet, model_from_checkpoint

    if args.checkpoint:
        return model_from_checkpoint(args.model, args.checkpoint, args.model_kwargs, args.num_classes)
    if args.pretrained:
        kwargs = {**args.model_kwargs, **({'num_classes': args.num_classes} if args.num_classes else {})}
        return load_snnet(args.model, pretrained=True, **kwargs)
    raise SystemExit(f'{args.command} needs the SN-Net weights: --checkpoint PATH or --pretrained')


def _pick(model: nn.Module, args: argparse.Namespace) -> int:
    from .sweep import load_sweep

    try:
        if args.stitch is not None:
            return model._check_id(args.stitch)
        rows = load_sweep(args.sweep)['rows'] if args.sweep else None
        return model.select_stitch(max_gflops=args.max_gflops, max_latency_ms=args.max_latency_ms, table=rows,
                                   latency=args.latency)
    except ValueError as e:
        raise SystemExit(f'export: {e}') from e


def _write_folder(output: Path, write: Callable[[Path], None]) -> None:
    """Write into a new sibling folder, then move it into place: a failure leaves nothing half written."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SystemExit(f'--output {output} exists and is not an empty folder: pick a new one')
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{output.name}.', dir=output.parent))
    try:
        write(tmp)
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd_export(args: argparse.Namespace) -> int:
    from timm.models import save_for_hf
    from timm.models._hub import save_config_for_hf

    model = _load(args)
    k = _pick(model, args)
    stitch = model.export_stitch(k).eval()
    c = model.stitch_configs()[k]
    output = Path(args.output)
    note = ''
    if args.format == 'onnx':
        def write(folder: Path) -> None:
            nonlocal note
            export_onnx(stitch, folder / 'model.onnx', opset=args.opset)
            save_config_for_hf(stitch, folder / 'config.json')
            if not args.no_verify:
                diff = check_onnx(folder / 'model.onnx', stitch, example_input(stitch, 2))
                if diff > args.atol:
                    raise SystemExit(f'export: onnxruntime differs from eager by {diff:.2e} (> --atol {args.atol})')
                note = f'; onnxruntime matches eager within {diff:.1e}'
        _write_folder(output, write)
        how = f'onnxruntime.InferenceSession("{output / "model.onnx"}"); preprocessing in config.json'
    else:
        _write_folder(output, lambda folder: save_for_hf(stitch, folder, safe_serialization=True))
        how = f'timm.create_model("local-dir:{output}", pretrained=True)'
    print(f'wrote {output}: config {k} `{model.describe(c)}`, {c.params / 1e6:.2f}M params, {c.gflops:.3f} GFLOPs'
          f'{note}\nload it with {how}')
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .selection import parse_stitches
    from .sweep import _device, _jsonable, write_results

    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(',')})
    except ValueError:
        raise SystemExit(f'--batch-sizes takes a comma list of integers, e.g. 1,8; got {args.batch_sizes!r}') from None
    if not batch_sizes or batch_sizes[0] < 1:
        raise SystemExit(f'--batch-sizes must be positive, got {args.batch_sizes!r}')
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f'--threads must be >= 1, got {args.threads}')
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit(f'--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}')
    device = _device(args.device)
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise SystemExit(f'--device {args.device} asked for MPS, but torch sees none; use --device cpu')
    model = _load(args)
    try:
        stitches = parse_stitches(args.stitches, model.num_configs)
    except ValueError as e:
        raise SystemExit(f'profile: {e}') from e
    threads = args.threads or torch.get_num_threads()
    rows = profile(model, stitches, batch_sizes, device, threads, args.compile, args.warmup, args.rounds,
                   args.min_run_time)
    info = profile_header(args.model, args.model_kwargs, device, batch_sizes, threads, args.compile, args.warmup,
                          args.rounds)
    if args.merge:
        result = merge_latency(args.merge, rows, info, args.model)
        out = Path(args.merge)
        out = out if out.is_dir() else out.parent
    else:
        big = [b for b in batch_sizes if b != 1]
        result = dict(model=args.model, model_kwargs=_jsonable(args.model_kwargs),
                      checkpoint=dict(path=str(Path(args.checkpoint).resolve())) if args.checkpoint else None,
                      device=str(device), device_name=info['device_name'], batch_size=max(big) if big else 1,
                      anchors=[c.id for c in model.stitch_configs() if c.is_anchor], profile=info, rows=rows)
        out = Path(args.output)
    write_results(out, result)
    print(f'wrote {out / "sweep.json"} and {out / "sweep.csv"} ({len(rows)} configs, batch sizes '
          f'{",".join(map(str, batch_sizes))}, {info["device_name"]}); pick one with '
          f'`timm-snnet select {out / "sweep.json"} --max-latency-ms MS`')
    return 0


def _source_args(p: argparse.ArgumentParser) -> None:
    from timm.utils import ParseKwargs

    p.add_argument('--model', required=True, help='registered SN-Net, e.g. snnet_deit_tsb')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--checkpoint', help='train.py checkpoint, .safetensors, or a folder from convert / save_snnet')
    src.add_argument('--pretrained', action='store_true', help="the SN-Net's published weights (Hub)")
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='create_model kwargs the checkpoint was trained with')


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'export', help='write one stitch as a standalone model (safetensors + config.json, or ONNX)',
        description='Export one config of an SN-Net as a plain timm model holding only its path\'s weights. Pick it '
                    'by id or by budget (FLOPs, or latency from a sweep.json / the stored stitch table).')
    _source_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument('--stitch', type=int, help='config id (see `timm-snnet configs`)')
    which.add_argument('--max-gflops', type=float, help='the best config within this many GFLOPs')
    which.add_argument('--max-latency-ms', type=float, help='the best config within this latency (needs --sweep '
                                                            'or a model with a stored stitch table)')
    p.add_argument('--sweep', help='sweep.json whose rows rank the configs (top-1, latency)')
    p.add_argument('--latency', default='b1', choices=('b1', 'bN'), help='latency column for --max-latency-ms')
    p.add_argument('--format', default='safetensors', choices=('safetensors', 'onnx'))
    p.add_argument('--output', required=True, help='new (or empty) output folder')
    p.add_argument('--opset', type=int, default=None, help='ONNX opset (default: the exporter\'s)')
    p.add_argument('--atol', type=float, default=1e-4, help='max abs onnxruntime vs eager difference (onnx)')
    p.add_argument('--no-verify', action='store_true', help='skip the onnxruntime check (onnx)')
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        'profile', help='measure every config\'s latency on this device -> sweep.json rows (latency_ms_bN)',
        description='Latency of each config on cpu, cuda or mps with torch.utils.benchmark (warm-up, interleaved '
                    'rounds, medians). Writes OUT/sweep.json in the sweep format, or merges the latencies into an '
                    'existing sweep.json, so `select --max-latency-ms` and `plot --x latency` work.')
    _source_args(p)
    p.add_argument('--stitches', default='all', help="config ids: 'all' (default), '0-70', '3' or '0-2,5'")
    p.add_argument('--device', default=None, help='cpu, cuda[:N] or mps (default: cuda if available, else cpu)')
    p.add_argument('--batch-sizes', default='1,8', help='comma list (default 1,8); the largest is latency_ms_bN')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--compile', action='store_true', help='time torch.compile of each exported stitch')
    p.add_argument('--warmup', type=int, default=3, help='untimed calls per config and batch size first')
    p.add_argument('--rounds', type=int, default=3, help='interleaved rounds; the median is reported')
    p.add_argument('--min-run-time', type=float, default=0.1, help='seconds per timing (blocked_autorange)')
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument('--output', help='folder for sweep.json and sweep.csv')
    out.add_argument('--merge', help='existing sweep.json (or its folder) to put the latencies into')
    p.set_defaults(func=_cmd_profile)
