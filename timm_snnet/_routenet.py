"""The base of every model that runs routes: anchors, stitching layers, their adapters, and one forward pass.

A route (see `_configs.Route`) is a list of segments of anchors' units joined by stitching layers. `RouteNet` owns
the anchors (timm models), the stitching layers and each anchor's family adapter and units, and runs a route top to
bottom: `run` (the first anchor's stem, each segment's units, a stitching layer between segments), `finish` (the
last anchor's final norm) and `head` (its timm `forward_head`). The SN-Net, its feature API and the exported stitch
inherit it; a subclass says which route is active (`active_route`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._input import get_model_input_config
from timm.models._manipulate import checkpoint
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing

from ._configs import Route
from ._routes import owned, prune
from ._stitching import create_stitching_layer
from .families import Family, Unit, family_for

__all__ = ['InputConversion', 'RouteNet', 'Visit', 'input_norm']

Norm = tuple[tuple[float, ...], tuple[float, ...]]  # an input normalisation: (mean, std) per channel
# after each unit: (segment index, unit index, activation) -> True to stop the walk there
Visit = Callable[[int, int, torch.Tensor], bool]


def input_norm(anchor: nn.Module) -> Norm:
    """An anchor's own input normalisation (mean, std) from its timm pretrained_cfg (ImageNet's where it has none)."""
    cfg = getattr(anchor, 'pretrained_cfg', None) or {}
    mean, std = cfg.get('mean', IMAGENET_DEFAULT_MEAN), cfg.get('std', IMAGENET_DEFAULT_STD)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class InputConversion(nn.Module):
    """Re-normalise an input from one mean/std to an anchor's own, per channel: `x * scale + shift` with
    scale = std_in / std and shift = (mean_in - mean) / std (exact up to float rounding)."""

    def __init__(self, source: Norm, target: Norm):
        super().__init__()
        (m_in, s_in), (m, s) = source, target
        self.values = (tuple(si / sa for si, sa in zip(s_in, s)),
                       tuple((mi - ma) / sa for mi, ma, sa in zip(m_in, m, s)))
        self.register_buffer('scale', torch.empty(len(m), 1, 1), persistent=False)
        self.register_buffer('shift', torch.empty(len(m), 1, 1), persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """Fill the buffers from the two normalisations (timm's `reinit_non_persistent_buffers` calls it)."""
        if not self.scale.is_meta:
            for name, values in zip(('scale', 'shift'), self.values):
                buf = getattr(self, name)
                buf.copy_(torch.tensor(values, dtype=torch.float64).view(-1, 1, 1).to(buf.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)

    def extra_repr(self) -> str:
        return f'scale={[round(v, 4) for v in self.values[0]]}, shift={[round(v, 4) for v in self.values[1]]}'


class RouteNet(nn.Module):
    """Anchors (timm models) and stitching layers that run routes, with timm's contract for the active route.

    Args:
        anchors: the anchors, each a timm model with a registered family adapter.
        stitched_final_norm: a stitched route ends with its last anchor's final norm (False: SN-Net v1 DeiT).
    """
    # the anchors' pooling as last given (creation or reset_classifier; None: each anchor's own), as timm models keep
    # it: timm's get_model_args reads it, so save_for_hf and export_stitch keep a reset's pooling
    global_pool: Optional[str] = None

    def __init__(self, anchors: Sequence[nn.Module], stitched_final_norm: bool = True):
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        self.stitch_layers = nn.ModuleList()  # set by the subclass, once the units say what they join
        self._families: list[Family] = [family_for(m) for m in self.anchors]
        self._units: list[list[Unit]] = [f.units(m) for f, m in zip(self._families, self.anchors)]
        self.stitched_final_norm = stitched_final_norm
        self.grad_checkpointing = False
        self.input_conversions = nn.ModuleDict()  # anchor index -> InputConversion, where its own mean/std differ
        self.input_mean, self.input_std = input_norm(self.anchors[0])

    def set_input_norm(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                       in_chans: Optional[int] = None) -> None:
        """The one normalisation this model's input has (default: its first anchor's). Each anchor whose own differs
        in value gets a fixed affine conversion ahead of its stem, so that each anchor sees what it was trained on."""
        first = input_norm(self.anchors[0])
        mean, std = (tuple(float(v) for v in given) if given is not None else own
                     for given, own in zip((mean, std), first))
        if len(mean) != len(std) or not all(v > 0 for v in std):
            raise ValueError(f'input normalisation needs one mean and one positive std per channel, got mean {mean} '
                             f'and std {std}')
        conversions = {}
        for i, anchor in enumerate(self.anchors):
            own = input_norm(anchor)
            if len(own[0]) != len(mean):
                raise ValueError(
                    f'anchor {i} ({type(anchor).__name__}) normalises {len(own[0])} input channel(s) (mean {own[0]}, '
                    f'std {own[1]}) and the SN-Net\'s input has {len(mean)} (mean {mean}, std {std}): a conversion '
                    f'cannot change the channel count; use anchors of one input format')
            if own != (mean, std):
                conversions[str(i)] = InputConversion((mean, std), own)
        if conversions and in_chans is not None and in_chans != len(mean):
            norms = '; '.join(f'mean {m} std {s}' for m, s in map(input_norm, self.anchors))
            raise ValueError(f'the anchors normalise their inputs differently ({norms}), '
                             f'which is converted per channel, but the input has {in_chans} channel(s) and the '
                             f'normalisation {len(mean)}: use anchors with one normalisation for in_chans={in_chans}')
        self.input_mean, self.input_std = mean, std
        self.input_conversions = nn.ModuleDict(conversions)

    def _describe_anchor(self, i: int) -> str:
        names = getattr(self, 'anchor_names', None)
        name = names[i] if names else self.anchors[i].pretrained_cfg.get('architecture', f'anchor {i}')
        return f'{name} ({type(self.anchors[i]).__name__}, {self._families[i].layout})'

    def join_layer(self, front: tuple[int, int], back: tuple[int, int], rank: int = 0, device=None,
                   dtype=None) -> nn.Module:
        """The stitching layer from the output of unit `front` = (anchor, unit) to the input of the unit after `back`
        (it stands in for that unit's output; -1: the stem's): both at one spatial reduction; any two layouts (see
        `create_stitching_layer`)."""
        (fa, fu), (ba, bu) = front, back
        f, b = self._units[fa][fu], self._units[ba][max(bu, 0)]  # unit -1, the stem (window rule): block 0's width
        ff, fb = self._families[fa], self._families[ba]
        where = f'cannot stitch {self._describe_anchor(fa)} onto {self._describe_anchor(ba)}'
        if f.reduction != b.reduction:
            raise ValueError(f'{where}: the front runs at 1/{f.reduction} resolution, the back at 1/{b.reduction}')
        prefix = tuple(fam.prefix_tokens(self.anchors[a]) if fam.layout == 'tokens' else 0
                       for fam, a in ((ff, fa), (fb, ba)))
        if ff.layout == fb.layout == 'tokens' and prefix[0] != prefix[1]:
            raise ValueError(f'{where}: their token sequences differ ({prefix[0]} and {prefix[1]} class / register '
                             f'tokens before the patches)')
        grid = None
        if ff.layout == 'tokens' and fb.layout != 'tokens':  # tokens laid on a map: the front's patch grid
            grid = tuple(n // f.reduction for n in get_model_input_config(self.anchors[fa])['input_size'][1:])
        try:
            return create_stitching_layer(f.channels, b.channels, ff.layout, fb.layout, device, dtype, rank=rank,
                                          grid=grid, prefix=prefix)
        except ValueError as e:
            raise ValueError(f'{where}: {e}') from e

    @property
    def families(self) -> tuple[Family, ...]:
        """The family adapter of each anchor."""
        return tuple(self._families)

    @property
    def units(self) -> tuple[list[Unit], ...]:
        """The units (cut-able blocks) of each anchor, across stages."""
        return tuple(self._units)

    @property
    def active_route(self) -> Route:
        """The route that `forward_features` / `forward_head` run."""
        raise NotImplementedError

    @property
    def last_anchor(self) -> nn.Module:
        """The anchor whose final norm and head end the active route."""
        return self.anchors[self.active_route.last.anchor]

    # --- the forward pass of a route -------------------------------------------------------------------------------
    def check_input(self, route: Route, x: torch.Tensor) -> None:
        """Raise a clear ValueError for an input that an anchor on the route cannot take."""
        if not is_fx_tracing():
            for anchor in dict.fromkeys(s.anchor for s in route.segments):
                self._families[anchor].check_input(self.anchors[anchor], x)

    def stem(self, anchor: int, x: torch.Tensor) -> torch.Tensor:
        """An anchor's stem on the model's input, re-normalised first where the anchor's own normalisation differs."""
        key = str(anchor)
        if key in self.input_conversions:
            x = self.input_conversions[key](x)
        return self._families[anchor].stem(self.anchors[anchor], x)

    def run_units(self, anchor: int, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Units [start, stop) of one anchor, each module through its family (`Family.run_module`)."""
        family, model = self._families[anchor], self.anchors[anchor]
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled() and not is_fx_tracing()
        for unit in self._units[anchor][start:stop]:
            for name in unit.modules:
                if checkpointing:
                    x = checkpoint(family.run_module, model, name, x)
                else:
                    x = family.run_module(model, name, x)
        return x

    def run(self, route: Route, x: torch.Tensor, stem: bool = True, visit: Optional[Visit] = None) -> torch.Tensor:
        """Run a route up to (not including) its final norm: the first anchor's stem (unless `stem=False`: `x` is its
        output), each segment's units, and the stitching layer before each segment but the first.

        With `visit`, units run one at a time and the walk stops after the unit where it returns True."""
        if stem:
            x = self.stem(route.first.anchor, x)
        for s, seg in enumerate(route.segments):
            if s:
                x = self.stitch_layers[route.layers[s - 1]](x)
            if visit is None:
                x = self.run_units(seg.anchor, x, seg.start, seg.stop)
                continue
            for u in range(seg.start, seg.stop):
                x = self.run_units(seg.anchor, x, u, u + 1)
                if visit(s, u, x):
                    return x
        return x

    def finish(self, route: Route, x: torch.Tensor) -> torch.Tensor:
        """The last anchor's final norm (skipped on stitched routes with `stitched_final_norm=False`, SN-Net v1)."""
        if route.layers and not self.stitched_final_norm:
            return x
        return self._families[route.last.anchor].finish(self.anchors[route.last.anchor], x)

    def head(self, route: Route, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The last anchor's head, with timm's `forward_head` semantics."""
        return self._families[route.last.anchor].head(self.anchors[route.last.anchor], x, pre_logits=pre_logits)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        route = self.active_route
        self.check_input(route, x)
        return self.finish(route, self.run(route, x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(self.active_route, x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- what a route owns -----------------------------------------------------------------------------------------
    def route_names(self, route: Route, norm: bool = True, head: bool = True, block_norms: bool = False) -> set[str]:
        """Names (`anchors.N.`, `stitch_layers.L`) of what a route runs: its stitching layers, each segment's units,
        the first anchor's stem, the last anchor's final norm (`norm`) and head (`head`: every tensor that is neither
        stem, unit nor norm, as the FLOPs table counts it). `block_norms`: also the final norm of every anchor whose
        per-block features take it (ViT)."""
        keep = {f'stitch_layers.{layer}' for layer in route.layers}
        for s, seg in enumerate(route.segments):
            family, units, prefix = self._families[seg.anchor], self._units[seg.anchor], f'anchors.{seg.anchor}.'
            keep.update(prefix + m for u in units[seg.start:seg.stop] for m in u.modules)
            keep.update(prefix + m for m in family.shared_names)
            if s == 0:
                keep.update(prefix + n for n in family.stem_names)
            last = seg is route.last
            if (norm and last) or (block_norms and family.taps == 'block'):
                keep.update(prefix + n for n in family.norm_names)
            if last and head:
                body = [*family.stem_names, *family.norm_names, *family.shared_names,
                        *(m for u in units for m in u.modules)]
                model = self.anchors[seg.anchor]
                tensors = [*model.named_parameters(), *model.named_buffers()]
                keep.update(prefix + n for n, _ in tensors if not owned(n, body))
        return keep

    def prune_to(self, keep: set[str]) -> None:
        """`prune` each anchor and the stitching layers to the names in `keep` (see `route_names`); the anchor and
        layer lists keep their length."""
        for i, model in enumerate(self.anchors):
            prefix = f'anchors.{i}.'
            mine = [k[len(prefix):] for k in keep if k.startswith(prefix)]
            prune(model, lambda n, mine=mine: owned(n, mine))
        layers = [k.split('.', 1)[1] for k in keep if k.startswith('stitch_layers.')]
        prune(self.stitch_layers, lambda n: owned(n, layers))

    # --- timm contract: the active route's last anchor -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Classes of the head (0: no classifier)."""
        return self.last_anchor.num_classes

    @property
    def num_features(self) -> int:
        """Channels of `forward_features` (and of `forward_head(pre_logits=True)` unless the head has its own)."""
        return self.last_anchor.num_features

    @property
    def head_hidden_size(self) -> int:
        """Channels of `forward_head(pre_logits=True)`."""
        return getattr(self.last_anchor, 'head_hidden_size', self.last_anchor.num_features)

    def get_classifier(self) -> nn.Module:
        return self.last_anchor.get_classifier()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
