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

from typing import Any, Optional, Sequence, Union

import timm
import torch
from timm.models._input import get_model_input_config
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn

from ._anchors import create_anchor, shared_kwargs
from ._configs import Route, Segment
from ._routenet import RouteNet
from ._routes import owned

__all__ = ['ExportedStitch', 'EXPORT_NAME', 'export_stitch']

EXPORT_NAME = 'exported_stitch'  # its timm entry point (registered in `timm_snnet._models`)
_OWN_ARGS = ('num_classes', 'in_chans', 'img_size')  # set on the exported model itself, not per anchor


class ExportedStitch(RouteNet):
    """One SN-Net config as a plain model: the route's anchors (pruned to the path), its stitching layers, its head.

    Args:
        anchors: timm names of the anchors on the route, in order of first use.
        anchor_kwargs: each anchor's create_model kwargs (without num_classes, in_chans, img_size).
        segments: `[anchor, start, stop]` per segment: units [start, stop) of `anchors[anchor]`. The first segment
            also runs its anchor's stem, the last one its final norm and head.
        stitch_layers: `{'in_features', 'out_features'}` of the stitching layer after each segment but the last.
        stitched_final_norm: a stitched route ends with its last anchor's final norm (False: SN-Net v1 DeiT).
        names, stitch_id, path: where the stitch comes from (display only).
        num_classes, in_chans, img_size, global_pool: passed to every anchor (`img_size` only to fixed-size ones, as
            in timm).
        input_mean, input_std: the input's normalisation (default: the first anchor's); see `RouteNet.set_input_norm`.
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
            global_pool: Optional[str] = None,
            input_mean: Optional[Sequence[float]] = None,
            input_std: Optional[Sequence[float]] = None,
            device=None,
            dtype=None,
    ):
        segments = [tuple(int(v) for v in s) for s in segments]
        _check_route(anchors, anchor_kwargs, segments, stitch_layers)
        own = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                     global_pool=global_pool).items() if v is not None}
        super().__init__([create_anchor(name, False, **{**kw, **shared_kwargs(name, own)}, device=device, dtype=dtype)
                          for name, kw in zip(anchors, anchor_kwargs)], stitched_final_norm)
        self.set_input_norm(input_mean, input_std)
        self.segments = segments
        for a, start, stop in segments:
            if not 0 <= start <= stop <= len(self._units[a]):
                raise ValueError(f'segment [{a}, {start}, {stop}] is out of range: {anchors[a]} has units '
                                 f'0..{len(self._units[a]) - 1} (a segment runs units [start, stop))')
        # a fixed-size anchor after the first cannot check its input itself once its stem is gone
        configs = [get_model_input_config(m) for m in self.anchors]
        self._fixed_sizes = [(anchors[a], tuple(configs[a]['input_size'][1:]))
                             for a in dict.fromkeys(s[0] for s in segments[1:]) if configs[a]['fixed_input_size']]
        self._route = Route(tuple(Segment(*seg) for seg in segments), tuple(range(len(segments) - 1)))
        self.stitch_layers = nn.ModuleList([self._join(spec, before, after, device, dtype)
                                            for spec, before, after in zip(stitch_layers, segments, segments[1:])])
        self.prune_to(self.route_names(self._route))
        self.anchor_names = tuple(names or (n.split('.')[0] for n in anchors))
        self.stitch_id, self.path = stitch_id, path
        self.in_chans = int(own.get('in_chans', anchor_kwargs[segments[0][0]].get('in_chans', 3)))
        self.global_pool = global_pool

    @property
    def active_route(self) -> Route:
        return self._route

    def _join(self, spec: dict, before: tuple[int, int, int], after: tuple[int, int, int], device, dtype) -> nn.Module:
        """The stitching layer between two segments, as the SN-Net built it (checked against `spec`)."""
        if before[2] < 1:
            raise ValueError(f'segments {list(before)} -> {list(after)}: the segment before a stitching layer runs '
                             f'at least one unit')
        layer = self.join_layer((before[0], before[2] - 1), (after[0], after[1] - 1), device=device, dtype=dtype)
        if (int(spec['in_features']), int(spec['out_features'])) != (layer.weight.shape[1], layer.weight.shape[0]):
            raise ValueError(f'stitching layer {spec} does not join these segments: their units have '
                             f'{layer.weight.shape[1]} -> {layer.weight.shape[0]} channels')
        return layer

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self._families[self._route.last.anchor].reset_head(self.last_anchor, num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = global_pool

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        own = {n for n, _ in self.named_parameters()}
        return {f'anchors.{i}.{n}' for i, m in enumerate(self.anchors) if hasattr(m, 'no_weight_decay')
                for n in m.no_weight_decay()} & own

    def check_input(self, route: Route, x: torch.Tensor) -> None:
        """The first anchor checks the input; later fixed-size anchors (their stems are gone) by their size."""
        first = route.first.anchor
        self._families[first].check_input(self.anchors[first], x)
        for name, size in self._fixed_sizes:
            if tuple(x.shape[-2:]) != size:
                raise ValueError(f'input size {tuple(x.shape[-2:])} does not match {name}\'s fixed image size {size} '
                                 f'(on this stitch\'s path); resize to {size}')

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
            if not classifier or not all(owned(n, [classifier]) for n in missing):
                raise RuntimeError(f'{len(missing)} parameters were not loaded (e.g. {missing[0]}): the checkpoint '
                                   f'does not hold this stitch; export it again with `timm-snnet export`')
            self.reset_classifier(self.num_classes)  # timm dropped the head for another num_classes
            self.last_anchor.get_classifier().to(loaded.device, loaded.dtype)


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
    k = model.check_id(stitch_id)
    route = model.route(k)
    used = list(dict.fromkeys(s.anchor for s in route.segments))
    local = {a: i for i, a in enumerate(used)}
    fixed = any(get_model_input_config(model.anchors[a])['fixed_input_size'] for a in used)
    input_size = tuple(model.input_size())
    path = model.describe(model.configs[k])
    args = dict(
        anchors=[_anchor_name(model.anchors[a]) for a in used],
        anchor_kwargs=[_anchor_kwargs(model.anchors[a]) for a in used],
        segments=[[local[s.anchor], s.start, s.stop] for s in route.segments],
        stitch_layers=[dict(in_features=int(model.stitch_layers[i].weight.shape[1]),
                            out_features=int(model.stitch_layers[i].weight.shape[0])) for i in route.layers],
        stitched_final_norm=bool(model.stitched_final_norm), names=[model.anchor_names[a] for a in used],
        stitch_id=k, path=path, num_classes=model.num_classes, in_chans=model.in_chans,
        img_size=list(input_size[1:]) if fixed else None, global_pool=model.global_pool,
        input_mean=list(model.input_mean), input_std=list(model.input_std),
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


