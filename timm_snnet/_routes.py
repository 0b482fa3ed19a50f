"""The one route walker: which modules a route owns, running it, and pruning a model to it.

A route (see `_configs.Route`) is a list of segments of anchors' units joined by stitching layers. Everything here
takes the anchors, their family adapters and units as plain lists, so the SN-Net engine, its feature API, the
exported-stitch model and the FLOPs table all walk routes the same way.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from timm.models._manipulate import checkpoint
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing

from ._configs import Route
from .families import Family, Unit

__all__ = ['owned', 'route_names', 'run_units', 'run_route', 'finish_route', 'prune', 'prune_anchors']

# after each unit: (segment index, unit index, activation) -> True to stop the walk there
Visit = Callable[[int, int, torch.Tensor], bool]


def owned(name: str, prefixes: Sequence[str]) -> bool:
    """`name` is one of `prefixes` or lies under one of them (dotted module paths)."""
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def route_names(
        route: Route,
        anchors: Sequence[nn.Module],
        families: Sequence[Family],
        units: Sequence[Sequence[Unit]],
        norm: bool = True,
        head: bool = True,
        block_norms: bool = False,
) -> set[str]:
    """Names, under the SN-Net (`anchors.N.`, `stitch_layers.L`), of what a route runs: its stitching layers, each
    segment's units, the first anchor's stem, the last anchor's final norm (`norm`) and head (`head`: every tensor
    that is neither stem, unit nor norm, as the FLOPs table counts it). `block_norms`: also the final norm of every
    anchor whose per-block features take it (ViT)."""
    keep = {f'stitch_layers.{layer}' for layer in route.layers}
    for s, seg in enumerate(route.segments):
        family, prefix = families[seg.anchor], f'anchors.{seg.anchor}.'
        keep.update(prefix + m for u in units[seg.anchor][seg.start:seg.stop] for m in u.modules)
        keep.update(prefix + m for m in family.shared_names)
        if s == 0:
            keep.update(prefix + n for n in family.stem_names)
        last = seg is route.last
        if (norm and last) or (block_norms and family.taps == 'block'):
            keep.update(prefix + n for n in family.norm_names)
        if last and head:
            body = [*family.stem_names, *family.norm_names, *family.shared_names,
                    *(m for u in units[seg.anchor] for m in u.modules)]
            model = anchors[seg.anchor]
            tensors = [*model.named_parameters(), *model.named_buffers()]
            keep.update(prefix + n for n, _ in tensors if not owned(n, body))
    return keep


def run_units(family: Family, model: nn.Module, units: Sequence[Unit], start: int, stop: int, x: torch.Tensor,
              checkpointing: bool = False) -> torch.Tensor:
    """Units [start, stop) of one anchor, each module through its family (`Family.run_module`)."""
    checkpointing = checkpointing and torch.is_grad_enabled() and not is_fx_tracing()
    for unit in units[start:stop]:
        for name in unit.modules:
            if checkpointing:
                x = checkpoint(family.run_module, model, name, x)
            else:
                x = family.run_module(model, name, x)
    return x


def run_route(
        route: Route,
        anchors: Sequence[nn.Module],
        families: Sequence[Family],
        units: Sequence[Sequence[Unit]],
        stitch_layers: Sequence[nn.Module],
        x: torch.Tensor,
        stem: bool = True,
        checkpointing: bool = False,
        visit: Optional[Visit] = None,
) -> tuple[torch.Tensor, bool]:
    """Run a route up to (not including) its final norm: the first anchor's stem (unless `stem=False`: `x` is its
    output), each segment's units, and the stitching layer before each segment but the first.

    With `visit`, units run one at a time and the walk stops when it returns True. Returns (activation, stopped)."""
    first = route.first
    if stem:
        x = families[first.anchor].stem(anchors[first.anchor], x)
    for s, seg in enumerate(route.segments):
        if s:
            x = stitch_layers[route.layers[s - 1]](x)
        family, model = families[seg.anchor], anchors[seg.anchor]
        if visit is None:
            x = run_units(family, model, units[seg.anchor], seg.start, seg.stop, x, checkpointing)
            continue
        for u in range(seg.start, seg.stop):
            x = run_units(family, model, units[seg.anchor], u, u + 1, x, checkpointing)
            if visit(s, u, x):
                return x, True
    return x, False


def finish_route(route: Route, anchors: Sequence[nn.Module], families: Sequence[Family], x: torch.Tensor,
                 stitched_final_norm: bool = True) -> torch.Tensor:
    """The last anchor's final norm (skipped on stitched routes with `stitched_final_norm=False`, SN-Net v1 DeiT)."""
    if route.layers and not stitched_final_norm:
        return x
    return families[route.last.anchor].finish(anchors[route.last.anchor], x)


def prune(model: nn.Module, keep: Callable[[str], bool]) -> None:
    """Drop every module and tensor of `model` holding nothing that `keep` accepts: a module becomes `nn.Identity`
    (so sequence indices stay), a parameter or buffer of a kept module becomes None."""
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


def prune_anchors(anchors: Sequence[nn.Module], stitch_layers: nn.ModuleList, keep: set[str]) -> None:
    """`prune` each anchor and the stitching layers to the SN-Net names in `keep` (see `route_names`); the anchor and
    layer lists keep their length."""
    for i, model in enumerate(anchors):
        prefix = f'anchors.{i}.'
        mine = [k[len(prefix):] for k in keep if k.startswith(prefix)]
        prune(model, lambda n, mine=mine: owned(n, mine))
    layers = [k.split('.', 1)[1] for k in keep if k.startswith('stitch_layers.')]
    prune(stitch_layers, lambda n: owned(n, layers))
