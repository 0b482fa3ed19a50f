"""Dense prediction on every stitch (SN-Netv2's backbone use): a timm `features_only` model whose `feature_info` is the
same for every stitch, so one decoder follows `set_stitch(k)`.

Levels: the stages every stitch ends (hierarchical anchors: ResNet, Swin, ...; the stem feature where every stitch has
one), or, for plain ViTs, four blocks at the quarters of the stitch's depth (as SETR/SN-Netv2 pick `out_indices`)
made a simple feature pyramid at reductions 4, 8, 16, 32 (ViTDet's: deconvolution up, max-pool down). Each level
has the widest anchor's channels: a feature computed by another anchor goes through that (level, anchor)'s
projection (a 1x1 conv for NCHW maps, a Linear for tokens / NHWC maps), least-squares initialised like the stitching
layers and trained with the decoder. A projection is on a stitch's path when the stitch computes that level with that
anchor: off-path projections are untouched in training, like any off-path parameter.

`set_stitch(module, k)` / `stitch_configs(module)` reach every SN-Net inside any wrapper (segmentation_models_pytorch,
DDP, timm's FeatureGetterNet); `export_stitch(module, k)` copies a wrapper with one stitch left.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from timm.models._features import FeatureInfo
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
from tqdm.auto import tqdm

from ._configs import StitchConfig
from ._errors import SNNetError
from ._flops import count_flops
from ._snnet import SNNet
from ._stitching import LeastSquares, create_stitching_layer, to_rows
from ._training import JoinOffPath, distributed, join_ddp, ledger
from ._utils import eval_mode

__all__ = ['StitchableFeatures', 'DenseError', 'create_features', 'set_stitch', 'stitch_configs', 'export_stitch']

PYRAMID = (4, 8, 16, 32)  # ViTDet's simple feature pyramid


class DenseError(SNNetError):
    """An encoder request the SN-Net cannot meet (the message names what is valid)."""


@dataclass(frozen=True)
class Level:
    """One output level: its reduction, channels (the widest anchor's), the anchor it projects to, its timm name."""
    reduction: int
    channels: int
    target: int
    module: str


class Projection(nn.Module):
    """One anchor's feature at one level to the level's channels: a 1x1 conv (NCHW maps) or a Linear (channels-last
    activations: tokens, NHWC), over NCHW feature maps. Starts as the (padded) identity until least squares set it."""

    def __init__(self, in_features: int, out_features: int, layout: str):
        super().__init__()
        self.channels_last = layout != 'nchw'
        io = 'nhwc' if self.channels_last else 'nchw'
        self.proj = create_stitching_layer(in_features, out_features, io, io)
        self.proj.set_affine(torch.eye(out_features, in_features), torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(x)


def _resample(channels: int, scale: float) -> nn.Module:
    """ViTDet's pyramid step: a deconvolution up (starts as nearest upsampling), identity, or max-pool down."""
    if scale == 1:
        return nn.Identity()
    if scale < 1:
        return nn.MaxPool2d(round(1 / scale))
    up = nn.ConvTranspose2d(channels, channels, int(scale), int(scale))
    with torch.no_grad():
        up.weight.zero_()
        up.weight[torch.arange(channels), torch.arange(channels)] = 1.0
        up.bias.zero_()
    return up


def _anchor_of(info: dict) -> int:
    return int(info['module'].split('.')[1])


class StitchableFeatures(nn.Module):
    """timm's `features_only` model over every stitch of an SN-Net: the same `feature_info` for all of them.

    Args:
        model: the SN-Net (its heads are reset: features only).
        out_indices: levels to return (default all; negative from the end).
        pyramid: plain-ViT SN-Nets: the simple feature pyramid (reductions 4, 8, 16, 32); False keeps the four block
            features at the patch reduction (DPT resamples them itself).
        output_stride: plain-ViT pyramid levels stop at this reduction (hierarchical anchors dilate in timm instead).
        num_vit_levels: blocks taken from a plain-ViT stitch (the quarters of its depth by default).
    """

    def __init__(
            self,
            model: SNNet,
            out_indices: Optional[Sequence[int]] = None,
            pyramid: bool = True,
            output_stride: Optional[int] = None,
            num_vit_levels: int = 4,
    ):
        super().__init__()
        model.reset_classifier(0)
        self.model = model
        self.pretrained_cfg = self.default_cfg = getattr(model, 'pretrained_cfg', {})
        self.plain_vit = all(f.taps == 'block' for f in model.families)
        self.num_vit_levels = num_vit_levels
        self._taps = taps = self._all_taps()
        keys = [self._keys(k, t) for k, t in enumerate(taps)]
        common = [key for key in keys[0] if all(key in k for k in keys)]
        self.plans = [[(k.index(key), _anchor_of(t[k.index(key)])) for key in common] for k, t in zip(keys, taps)]
        base = self._levels(common, taps)
        self.pyramid = nn.ModuleList()
        if self.plain_vit and pyramid:
            stride = output_stride or PYRAMID[-1]
            reductions = [min(r, stride) for r in PYRAMID[:len(base)]]
            self.pyramid.extend(_resample(lv.channels, lv.reduction / r) for lv, r in zip(base, reductions))
            base = [Level(r, lv.channels, lv.target, f'pyramid.{i}') for i, (lv, r) in enumerate(zip(base, reductions))]
        elif output_stride not in (None, 32, base[-1].reduction):
            raise DenseError(f'output_stride={output_stride}: this SN-Net reaches 1/{base[-1].reduction}; build its '
                             f'anchors dilated (timm output_stride) or ask for output_stride 32')
        self.levels = base
        self.projections = nn.ModuleDict({
            f'{i}_{a}': Projection(taps[k][t]['num_chs'], lv.channels, model.families[a].layout)
            for i, lv in enumerate(self.levels) for k, t, a in self._sources(i) if a != lv.target})
        self.out_indices = _check_indices(out_indices, self.levels)
        self.feature_info = FeatureInfo([dict(num_chs=lv.channels, reduction=lv.reduction, module=lv.module)
                                         for lv in self.levels], self.out_indices)
        self.output_fmt = 'NCHW'

    # --- the levels of every stitch --------------------------------------------------------------------------------
    def _all_taps(self) -> list[list[dict]]:
        """Each stitch's own features (`SNNet.feature_info`), in order."""
        active, out = self.model.stitch_id, []
        try:
            for k in range(self.model.num_configs):
                self.model.set_stitch(k)
                out.append(self.model.feature_info)
        finally:
            self.model.set_stitch(active)
        return out

    def _keys(self, k: int, taps: list[dict]) -> list:
        """A level key per feature of stitch `k`: its stage (stem: -1), for anchors joined by reduction its reduction
        (the last feature at each), or for plain ViTs its quarter of the depth."""
        if self.model.junctions is not None and not self.plain_vit:
            reductions = [t['reduction'] for t in taps]
            return [r if r not in reductions[i + 1:] else ('inner', i) for i, r in enumerate(reductions)]
        if not self.plain_vit:
            return [t.get('stage', i) for i, t in enumerate(taps)]
        n, levels = len(taps), self.num_vit_levels
        picks = {max(int(n * (q + 1) / levels) - 1, 0): q for q in range(levels)}
        return [picks.get(i, ('block', i)) for i in range(n)]

    def _levels(self, common: list, taps: list[list[dict]]) -> list[Level]:
        out = []
        for i in range(len(common)):
            infos = [t[plan[i][0]] for t, plan in zip(taps, self.plans)]
            if len({f['reduction'] for f in infos}) > 1:
                raise DenseError(f'level {i} has reductions {sorted({f["reduction"] for f in infos})} across '
                                 f'stitches; a decoder needs one')
            widest = max(infos, key=lambda f: (f['num_chs'], _anchor_of(f)))
            out.append(Level(infos[0]['reduction'], widest['num_chs'], _anchor_of(widest),
                             f'model.{widest["module"]}'))
        return out

    def _sources(self, level: int) -> list[tuple[int, int, int]]:
        """(stitch, feature index, anchor) of the first stitch computing `level` with each anchor."""
        seen = {}
        for k, plan in enumerate(self.plans):
            t, a = plan[level]
            seen.setdefault(a, (k, t, a))
        return list(seen.values())

    # --- timm's stitch API -----------------------------------------------------------------------------------------
    @property
    def stitch_id(self) -> int:
        return self.model.stitch_id

    @property
    def num_configs(self) -> int:
        return self.model.num_configs

    def set_stitch(self, stitch_id: int) -> None:
        self.model.set_stitch(stitch_id)

    def projection_names(self, stitch_id: int) -> list[str]:
        """The projections on a stitch's path."""
        return [f'{i}_{a}' for i, (_, a) in enumerate(self.plans[stitch_id]) if f'{i}_{a}' in self.projections]

    def stitch_configs(self, input_size: Optional[Sequence[int]] = None) -> tuple[StitchConfig, ...]:
        """The SN-Net's configs, with the FLOPs of this feature model (projections and pyramid included)."""
        return stitch_configs(self, input_size)

    # --- forward ---------------------------------------------------------------------------------------------------
    def _pick(self) -> int:
        """In training, the SN-Net's sampler draws the stitch (one per forward, as in classification)."""
        if self.training and torch.is_grad_enabled() and not is_fx_tracing():
            return self.model.sample_stitch()
        return self.model.stitch_id

    def _native(self, x: torch.Tensor, k: int, indices: list[int]) -> list[torch.Tensor]:
        active = self.model.stitch_id
        self.model._stitch_id = k  # a sampled stitch for this forward only (set_stitch checks the id)
        try:
            return self.model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
        finally:
            self.model._stitch_id = active

    def forward_levels(self, x: torch.Tensor, levels: Iterable[int], stitch_id: Optional[int] = None
                       ) -> list[torch.Tensor]:
        k = self._pick() if stitch_id is None else stitch_id
        levels = list(levels)
        plan = self.plans[k]
        wanted = sorted({plan[i][0] for i in levels})
        native = dict(zip(wanted, self._native(x, k, wanted)))
        out = []
        for i in levels:
            t, a = plan[i]
            f = native[t]
            name = f'{i}_{a}'
            if name in self.projections:
                f = self.projections[name](f)
            if len(self.pyramid):
                f = self.pyramid[i](f)
            out.append(f)
        if stitch_id is None and self.training and torch.is_grad_enabled() and not is_fx_tracing():
            out[0] = self._off_path(out[0], k)
        return out

    # --- training: what is off the sampled path (as `SNNet.forward`) ------------------------------------------------
    @property
    def off_path(self) -> str:
        return self.model.off_path

    def off_path_names(self, stitch_id: int) -> list[tuple[str, str]]:
        """(module, parameter) names of the SN-Net's parameters off a stitch's route and of the projections off it."""
        on = set(self.projection_names(stitch_id))
        return [(f'model.{m}', p) for m, p in self.model.off_path_names(stitch_id)] + [
            (f'projections.{name}.{m}'.rstrip('.'), p) for name in self.projections if name not in on
            for m, p in (n.rpartition('.')[::2] for n, _ in self.projections[name].named_parameters())]

    def _off_path(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Record the sampled stitch (the optimizer leaves what is off it untouched), and under a process group join
        the off-path parameters to the graph so that DDP needs no find_unused_parameters."""
        if self.off_path == 'skip':
            ledger(self).record(self, k)
        if self.off_path == 'zero' or distributed():
            if self.off_path == 'skip':
                join_ddp(self)  # DDP all-reduces only where the sampled paths are
            params = ledger(self).off_path(self, k)
            return JoinOffPath.apply(x, self.off_path == 'zero', *params) if params else x
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_levels(x, self.out_indices)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              intermediates_only: bool = True, **kwargs: Any) -> list[torch.Tensor]:
        """The levels (all, the last n, or these), as timm's `forward_intermediates(..., intermediates_only=True)`."""
        if not intermediates_only or kwargs.get('return_prefix_tokens'):
            raise DenseError('a stitchable feature model returns feature levels only (intermediates_only=True, no '
                             'prefix tokens)')
        n = len(self.levels)
        take = range(n - indices, n) if isinstance(indices, int) else _check_indices(indices, self.levels)
        return self.forward_levels(x, take)

    # --- least-squares init ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_stitching_layers(self, data: Union[torch.Tensor, Iterable], num_images: int = 100,
                              batch_size: int = 25, progress: bool = True) -> None:
        """The SN-Net's stitching layers, then the projections: each (level, anchor) maps that anchor's feature onto
        the level's widest anchor's feature at the same stage (ViT: the same fraction of the depth), in float64."""
        data = _chunks(data, num_images, batch_size)
        self.model.init_stitching_layers(data, num_images, batch_size, progress)
        pairs = self._ls_pairs()
        anchors = sorted({a for group in pairs.values() for x, y in group for a in (x[0], y[0])})
        ids = {c.front: c.id for c in self.model.configs if c.is_anchor}
        ls = LeastSquares()
        with eval_mode(self):
            for images in tqdm(data, desc='LS init (projections)', disable=not progress):
                feats = {a: self._native(images, ids[a], list(range(len(self._taps[ids[a]])))) for a in anchors}
                rows = {(a, u): to_rows(feats[a][u], 'nchw') for a in anchors for u in range(len(feats[a]))}
                ls.add(rows, rows, [p for group in pairs.values() for p in group])
        for name, group in pairs.items():
            pooled = LeastSquares()
            pooled.gram = {0: sum(ls.gram[x] for x, _ in group)}
            pooled.cross = {(0, 0): sum(ls.cross[p] for p in group)}
            weight, bias = pooled.solve(0, 0)
            layer = self.projections[name].proj
            layer.set_affine(weight.to(layer.weight), bias.to(layer.bias))

    def _ls_pairs(self) -> dict[str, list[tuple[tuple[int, int], tuple[int, int]]]]:
        """Per projection: ((anchor, feature index), (target anchor, feature index)) of the anchors' own features."""
        ids = {c.front: c.id for c in self.model.configs if c.is_anchor}
        taps = self._taps
        depth = {a: len(taps[k]) for a, k in ids.items()}
        out: dict[str, set] = {}
        for k, plan in enumerate(self.plans):
            for i, (t, a) in enumerate(plan):
                name, target = f'{i}_{a}', self.levels[i].target
                if name not in self.projections:
                    continue
                if self.plain_vit:  # the block's depth in its anchor, and the target's block at that fraction
                    u = self._block_index(k, t)
                    v = max(round((u + 1) * depth[target] / depth[a]) - 1, 0)
                else:  # the same stage in the anchor's own run
                    u = self._keys(ids[a], taps[ids[a]]).index(self._keys(k, taps[k])[t])
                    v = self._keys(ids[target], taps[ids[target]]).index(self._keys(k, taps[k])[t])
                out.setdefault(name, set()).add(((a, u), (target, v)))
        return {n: sorted(p) for n, p in out.items()}

    def _block_index(self, k: int, t: int) -> int:
        """The unit index, in its anchor, of feature `t` of plain-ViT stitch `k` (one feature per block)."""
        units = [u for s in self.model.route(k).segments for u in range(s.start, s.stop)]
        return units[t]

    # --- deployment --------------------------------------------------------------------------------------------------
    def freeze_stitch(self, stitch_id: int) -> None:
        """Keep only stitch `stitch_id`: the SN-Net pruned to its path, the projections it does not run dropped."""
        k = self.model.check_id(stitch_id)
        self.model.set_stitch(k)
        taps = sorted({t for t, _ in self.plans[k]})
        self.model.prune_intermediate_layers([taps[-1]], prune_norm=True, prune_head=True)
        keep = set(self.projection_names(k))
        for name in list(self.projections):
            if name not in keep:
                del self.projections[name]


def _chunks(data: Union[torch.Tensor, Iterable], num_images: int, batch_size: int) -> list[torch.Tensor]:
    """At most `num_images` images in chunks of `batch_size`, from a (B, C, H, W) tensor or `(images, ...)` batches."""
    out, seen = [], 0
    for batch in [data] if isinstance(data, torch.Tensor) else data:
        images = (batch if isinstance(batch, torch.Tensor) else batch[0])[:num_images - seen]
        out += list(images.split(batch_size))
        seen += len(images)
        if seen >= num_images:
            break
    return out


def _check_indices(indices: Optional[Sequence[int]], levels: Sequence[Level]) -> tuple[int, ...]:
    n = len(levels)
    if indices is None:
        return tuple(range(n))
    if isinstance(indices, int):
        indices = (indices,)
    bad = [i for i in indices if not isinstance(i, int) or not -n <= i < n]
    if bad:
        reductions = ', '.join(str(lv.reduction) for lv in levels)
        raise DenseError(f'out_indices {tuple(indices)}: this SN-Net has {n} feature levels (reductions '
                         f'{reductions}); valid indices are 0..{n - 1} or -{n}..-1')
    return tuple(i % n for i in indices)


# --- timm entry: features_only -----------------------------------------------------------------------------------
_FEATURE_ARGS = ('pyramid', 'num_vit_levels')


def wants_getter(kwargs: dict[str, Any]) -> bool:
    """timm's own switch to its FeatureGetterNet (`feature_cls='getter'`), kept for the one-stitch pruned backbone."""
    return 'getter' in (kwargs.get('feature_cls'), (kwargs.get('feature_cfg') or {}).get('feature_cls'))


def _with_anchor_kwarg(anchor_kwargs: Any, key: str, value: Any) -> Any:
    if isinstance(anchor_kwargs, (list, tuple)):
        return [{**kw, key: value} for kw in anchor_kwargs]
    return {**(anchor_kwargs or {}), key: value}


def create_features(build: Callable[..., SNNet], variant: str, pretrained: bool, kwargs: dict[str, Any]
                    ) -> StitchableFeatures:
    """`features_only=True`: the SN-Net built by `build(variant, pretrained, **kwargs)`, in a `StitchableFeatures`.

    `output_stride` < 32 goes to the anchors (timm dilates ResNets); a plain-ViT pyramid stops at it instead.
    """
    kwargs = dict(kwargs)
    kwargs.pop('features_only')
    cfg = dict(kwargs.pop('feature_cfg', None) or {})
    cfg.pop('feature_cls', None)
    out_indices = kwargs.pop('out_indices', cfg.pop('out_indices', None))
    unknown = set(cfg) - set(_FEATURE_ARGS)
    if unknown:
        raise DenseError(f'feature_cfg keys {sorted(unknown)} are not known; valid: {list(_FEATURE_ARGS)} (or '
                         f"feature_cls='getter' for timm's one-stitch FeatureGetterNet)")
    stride = kwargs.pop('output_stride', None)
    if stride in (None, 32):
        return StitchableFeatures(build(variant, pretrained, **kwargs), out_indices, output_stride=stride, **cfg)
    try:
        model = build(variant, pretrained, **{**kwargs, 'anchor_kwargs': _with_anchor_kwarg(
            kwargs.get('anchor_kwargs'), 'output_stride', stride)})
    except TypeError:  # anchors that do not dilate: only a plain-ViT pyramid can meet it
        model = build(variant, pretrained, **kwargs)
        if not all(f.taps == 'block' for f in model.families):
            names = ', '.join(type(m).__name__ for m in model.anchors)
            raise DenseError(f'output_stride={stride}: the anchors ({names}) cannot dilate in timm; this SN-Net '
                             f'gives output_stride 32 (pick an architecture or setting that accepts it)') from None
        return StitchableFeatures(model, out_indices, output_stride=stride, **cfg)
    return StitchableFeatures(model, out_indices, **cfg)


# --- any wrapper: smp models, DDP, FeatureGetterNet ------------------------------------------------------------
def _stitchables(module: nn.Module) -> list[nn.Module]:
    """The SN-Nets in `module` (a feature model stands for the SN-Net it holds)."""
    found = [m for m in module.modules() if isinstance(m, StitchableFeatures)]
    inner = {id(m.model) for m in found}
    found += [m for m in module.modules() if isinstance(m, SNNet) and id(m) not in inner]
    if not found:
        raise DenseError(f'no SN-Net in this {type(module).__name__}: build its encoder with a timm `snnet*` model '
                         f"(segmentation_models_pytorch: encoder_name='tu-snnet_...')")
    return found


def set_stitch(module: nn.Module, stitch_id: int) -> None:
    """Make `stitch_id` the active config of every SN-Net inside `module`; nothing is rebuilt."""
    nets = _stitchables(module)
    n = {m.num_configs for m in nets}
    if len(n) > 1:
        raise DenseError(f'the SN-Nets in this module have different config counts {sorted(n)}; set them one by one')
    for net in nets:
        try:
            net.set_stitch(stitch_id)
        except ValueError as e:
            raise DenseError(str(e)) from None


def _path_params(net: nn.Module, config: StitchConfig) -> int:
    if isinstance(net, StitchableFeatures):
        names = net.projection_names(config.id)
        return config.params + sum(p.numel() for n in names for p in net.projections[n].parameters()) + sum(
            p.numel() for p in net.pyramid.parameters())
    return config.params


@torch.no_grad()
def stitch_configs(module: nn.Module, input_size: Optional[Sequence[int]] = None) -> tuple[StitchConfig, ...]:
    """Every config of the SN-Nets in `module`, with the GFLOPs (fvcore, batch 1) of the whole module on that stitch
    and the params on its path (the SN-Nets' paths plus everything else in `module`)."""
    nets = _stitchables(module)
    net = nets[0]
    snnet = net.model if isinstance(net, StitchableFeatures) else net
    size = tuple(input_size or snnet.input_size())
    configs = snnet.stitch_configs(size)
    outside = sum(p.numel() for p in module.parameters()) - sum(p.numel() for n in nets for p in n.parameters())
    active, param = net.stitch_id, next(module.parameters())
    x = torch.zeros(1, *size, device=param.device, dtype=param.dtype)
    out = []
    with eval_mode(module):
        try:
            for c in tqdm(configs, desc='FLOPs per stitch', disable=len(configs) < 20):
                set_stitch(module, c.id)
                gflops = count_flops(module, x).total() / 1e9
                out.append(StitchConfig(**{**c.as_dict(), 'gflops': gflops,
                                           'params': outside + sum(_path_params(n, c) for n in nets)}))
        finally:
            set_stitch(module, active)
    return tuple(out)


def export_stitch(module: nn.Module, stitch_id: int) -> nn.Module:
    """A copy of `module` (e.g. a segmentation model) with one stitch left: each feature model pruned to its path."""
    out = copy.deepcopy(module)
    nets = _stitchables(out)
    for net in nets:
        if not isinstance(net, StitchableFeatures):
            raise DenseError('export_stitch(module, k) exports stitchable feature models (features_only=True); '
                             'export a classification SN-Net with SNNet.export_stitch(k)')
        net.freeze_stitch(stitch_id)
    return out.eval()
