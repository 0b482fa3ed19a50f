"""Feature extraction for the SN-Net engine: timm's feature API for the active stitch.

A stitch's feature pyramid follows from its route and the units' specs: the first anchor's stem features, then one
feature per stage (at the end of the stage, wherever the route finishes it) or one per block (ViT), each with the
channels and reduction of the anchor that computes it. `forward_intermediates`, `prune_intermediate_layers` and
`feature_info` follow timm's semantics for the anchors' family, so timm's `FeatureGetterNet` (features_only) works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
from timm.models._features import feature_take_indices

from ._configs import Route, Segment
from ._routenet import RouteNet

_FORMATS = {'tokens': 'NLC', 'nhwc': 'NHWC', 'nchw': 'NCHW'}


@dataclass(frozen=True, eq=False)
class Tap:
    """One feature of a route: the output of unit `unit` in segment `segment` (unit None: a stem feature)."""
    segment: int
    unit: Optional[int]
    info: dict  # timm feature_info entry: num_chs, reduction, module, stage


class SNNetFeatures(RouteNet):
    """timm's feature API over the active route; `SNNet`'s base.

    Beyond `RouteNet`, it uses only the engine's declared contract: `stitch_id`, `input_size()`, `reset_classifier`
    and `restrict_to`.
    """

    # --- the pyramid of a route --------------------------------------------------------------------------------------
    def route_taps(self, route: Route) -> list[Tap]:
        """The features a route computes, in order: stem features, then per stage (at its end) or per block."""
        first = route.first
        taps = [Tap(0, None, dict(num_chs=i['num_chs'], reduction=i['reduction'], stage=-1,
                                  module=f'anchors.{first.anchor}.{i["module"]}'))
                for i in self.families[first.anchor].stem_taps(self.anchors[first.anchor])]
        by_reduction = getattr(self, 'junctions', None) is not None  # anchors joined by reduction: stages differ
        for s, seg in enumerate(route.segments):
            family, units = self.families[seg.anchor], self.units[seg.anchor]
            for u in range(seg.start, seg.stop):
                unit = units[u]
                if family.taps == 'stage':
                    if u + 1 < len(units) and units[u + 1].stage == unit.stage:
                        continue  # not the end of its stage
                    if taps and (taps[-1].info['reduction'] == unit.reduction and taps[-1].segment != s
                                 if by_reduction else taps[-1].info['stage'] == unit.stage):
                        taps.pop()  # a stitch inside this stage: the stage ends in the next segment
                taps.append(Tap(s, u, dict(num_chs=unit.channels, reduction=unit.reduction, stage=unit.stage,
                                           module=f'anchors.{seg.anchor}.{unit.modules[-1]}')))
        return taps

    @property
    def feature_info(self) -> list[dict]:
        """timm feature_info of the active stitch: channels, reduction and module of each feature it computes."""
        return [dict(t.info) for t in self.route_taps(self.active_route)]

    @property
    def output_fmt(self) -> str:
        """Layout of `forward_features` for the active stitch (timm's attribute): NCHW, NHWC or NLC (tokens)."""
        return _FORMATS[self.families[self.active_route.last.anchor].layout]

    @property
    def pool_size(self) -> Optional[tuple[int, int]]:
        """Spatial size of `forward_features` for the active stitch at the model's input size; None for tokens."""
        route = self.active_route
        if self.families[route.last.anchor].layout == 'tokens':
            return None
        r = self.route_taps(route)[-1].info['reduction']
        return tuple(math.ceil(n / r) for n in self.input_size()[-2:])

    # --- forward_intermediates ---------------------------------------------------------------------------------------
    def _classifier_names(self) -> set[str]:
        """Every anchor's classifier modules (its timm cfg's `classifier`), as SN-Net names."""
        out = set()
        for i, model in enumerate(self.anchors):
            names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
            out.update(f'anchors.{i}.{n}' for n in ((names,) if isinstance(names, str) else names))
        return out

    def _feature(self, route: Route, tap: Tap, x: torch.Tensor, norm: bool, output_fmt: str,
                 img_size: tuple[int, int]) -> torch.Tensor:
        anchor = route.segments[tap.segment].anchor
        family, model = self.families[anchor], self.anchors[anchor]
        # the final norm: on every block feature (ViT), else only on the anchor's last unit (timm's Swin)
        if norm and tap.unit is not None and (family.taps == 'block' or tap.unit == len(self.units[anchor]) - 1):
            x = family.feature_norm(model, x)
        return family.intermediate(model, x, output_fmt, img_size, tap.info['reduction'])

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """The active stitch's features (`feature_info` order) and its `forward_features` output, as in timm.

        Args:
            indices: last n features if int, all if None, else these (negative from the end).
            norm: apply the final norm to the features that take it (every block of a ViT, a Swin's last stage).
            stop_early: stop after the last feature asked for (the final output is then the unnormed activation).
            output_fmt: 'NCHW', or 'NLC' for ViT stitches.
            intermediates_only: return the features only.
        """
        route = self.active_route
        formats = [f for f in ('NCHW', 'NLC')
                   if all(f in self.families[s.anchor].intermediate_fmts for s in route.segments)]
        if output_fmt not in formats:
            raise ValueError(f'output_fmt {output_fmt!r} is not available for stitch {self.stitch_id}: '
                             f'valid formats are {formats}')
        taps = self.route_taps(route)
        take, max_index = feature_take_indices(len(taps), indices)
        wanted = {(taps[i].segment, taps[i].unit): taps[i] for i in take}
        stop = (taps[max_index].segment, taps[max_index].unit) if stop_early else None
        self.check_input(route, x)
        img_size = tuple(x.shape[-2:])

        first = route.first
        x, stem_features = self.families[first.anchor].stem_intermediates(self.anchors[first.anchor], x)
        out = [self._feature(route, taps[i], f, norm, output_fmt, img_size)
               for i, f in enumerate(stem_features) if i in take]

        def visit(s: int, u: int, h: torch.Tensor) -> bool:
            if (s, u) in wanted:
                out.append(self._feature(route, wanted[(s, u)], h, norm, output_fmt, img_size))
            return (s, u) == stop

        if stop != (0, None):
            x = self.run(route, x, stem=False, visit=visit)
        if intermediates_only:
            return out
        end = (len(route.segments) - 1, route.last.stop - 1)
        return (self.finish(route, x) if stop is None or stop == end else x), out

    # --- prune_intermediate_layers -----------------------------------------------------------------------------------
    def prune_intermediate_layers(
            self,
            indices: Union[int, list[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Keep only what the active stitch needs up to its last wanted feature; returns the kept indices.

        The SN-Net becomes a one-stitch feature extractor (as timm's features_only does): other anchors' parts and
        stitching layers are removed, so every parameter left takes part in training (DDP), and other stitch ids
        are refused. Features past the last index, the final norm (`prune_norm`) and the head (`prune_head`) go as
        in timm.
        """
        k, route = self.stitch_id, self.active_route
        taps = self.route_taps(route)
        take, max_index = feature_take_indices(len(taps), indices)
        tap, prune_end = taps[max_index], max_index < len(taps) - 1
        if tap.unit is None:  # a stem feature: the stem ends there
            self.families[route.first.anchor].prune_stem(self.anchors[route.first.anchor])
            new = Route((Segment(route.first.anchor, 0, 0),))
        else:
            s = tap.segment
            new = Route(route.segments[:s] + (replace(route.segments[s], stop=tap.unit + 1),), route.layers[:s])
        if prune_end:  # features now end at the tap; a new head is sized for them
            end = self.anchors[new.last.anchor]
            end.num_features = end.head_hidden_size = tap.info['num_chs']
        keep = self.route_names(new, norm=not prune_norm and not prune_end, head=not prune_head and not prune_end,
                                block_norms=not prune_norm)
        if prune_head or prune_end:
            # the head's own layers go first (MobileNetV3's conv_head), the classifiers stay for reset_classifier,
            # which then drops them (with the head's own norm: ConvNeXt's reset_other)
            self.prune_to(keep | self._classifier_names())
            on_route = sorted({seg.anchor for seg in new.segments})
            keep_pool = any(self.families[i].head_keeps_pool for i in on_route)  # as timm prunes EfficientViT
            self.reset_heads(on_route, 0, None if keep_pool else '', reset_other=True)
        self.prune_to(keep)
        self.restrict_to(k, new)
        return take
