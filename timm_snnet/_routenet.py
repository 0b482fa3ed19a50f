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
from timm.models._manipulate import checkpoint
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing

from ._configs import Route
from ._routes import owned, prune
from .families import Family, Unit, family_for

__all__ = ['RouteNet', 'Visit']

# after each unit: (segment index, unit index, activation) -> True to stop the walk there
Visit = Callable[[int, int, torch.Tensor], bool]


class RouteNet(nn.Module):
    """Anchors (timm models) and stitching layers that run routes, with timm's contract for the active route.

    Args:
        anchors: the anchors, each a timm model with a registered family adapter.
        stitched_final_norm: a stitched route ends with its last anchor's final norm (False: SN-Net v1 DeiT).
    """

    def __init__(self, anchors: Sequence[nn.Module], stitched_final_norm: bool = True):
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        self.stitch_layers = nn.ModuleList()  # set by the subclass, once the units say what they join
        self._families: list[Family] = [family_for(m) for m in self.anchors]
        self._units: list[list[Unit]] = [f.units(m) for f, m in zip(self._families, self.anchors)]
        self.stitched_final_norm = stitched_final_norm
        self.grad_checkpointing = False

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
            x = self._families[route.first.anchor].stem(self.anchors[route.first.anchor], x)
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
