"""Stitch config enumeration (pure functions, no torch).

A config is either an anchor (one whole model) or a stitch: the front anchor's stem and blocks 0..j of a
stage, a stitching layer, then the back anchor's blocks k.. of the same stage and everything after it.
Block ids here are stage-local, as in the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Optional, Sequence

Rule = Literal['window', 'stage']
Assignment = Literal['front_block', 'window']


@dataclass(frozen=True)
class StitchConfig:
    """One path through an SN-Net. Anchors have `stage`, `front_block`, `back_block` and `layer` set to None."""
    id: int
    front: int
    back: int
    stage: Optional[int] = None
    front_block: Optional[int] = None
    back_block: Optional[int] = None
    layer: Optional[int] = None
    gflops: float = math.nan
    params: int = 0

    @property
    def is_anchor(self) -> bool:
        return self.layer is None

    def path(self, names: Sequence[str], depths: Optional[Sequence[Sequence[int]]] = None) -> str:
        """Readable path such as `Ti[0..3] -> S[4..]` (or `Ti[s2.0..1] -> S[s2.3..]` for staged models)."""
        if self.is_anchor:
            return names[self.front]
        staged = depths is not None and len(depths[self.front]) > 1
        s = f's{self.stage}.' if staged else ''
        return f'{names[self.front]}[{s}0..{self.front_block}] -> {names[self.back]}[{s}{self.back_block}..]'

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Segment:
    """Units [start, stop) of one anchor (global unit indices, across stages)."""
    anchor: int
    start: int
    stop: int


@dataclass(frozen=True)
class Route:
    """What a config runs: segments joined by stitching layers (`layers[i]` maps segment i into segment i + 1).

    The first segment also runs its anchor's stem; the last one its final norm and head. An anchor is one segment.
    """
    segments: tuple[Segment, ...]
    layers: tuple[int, ...] = ()

    @property
    def first(self) -> Segment:
        return self.segments[0]

    @property
    def last(self) -> Segment:
        return self.segments[-1]

    def joins(self) -> list[tuple[int, Segment, Segment]]:
        """(stitching layer, segment before it, segment after it) for each join."""
        return list(zip(self.layers, self.segments, self.segments[1:]))


@dataclass(frozen=True)
class LayerSpec:
    """What one stitching layer connects: front anchor -> back anchor at a stage."""
    front: int
    back: int
    stage: int


def window_groups(depth: int, kernel_size: int = 2, stride: int = 1) -> list[list[tuple[int, int]]]:
    """Sliding-window pairs (j, k) for two anchors of equal depth, grouped by the window that adds them."""
    if kernel_size < 1 or stride < 1:
        raise ValueError(f'kernel_size and stride must be >= 1, got kernel_size={kernel_size}, stride={stride}')
    seen: set[tuple[int, int]] = set()
    groups = []
    for start in range(0, max(depth - kernel_size, 0) + 1, stride):
        ids = range(start, min(start + kernel_size, depth))
        new = [(j, k) for j in ids for k in ids if (j, k) not in seen]
        seen.update(new)
        if new:
            groups.append(new)
    return groups


def mapped_pairs(front_depth: int, back_depth: int) -> list[tuple[int, int]]:
    """Nearest index mapping inside a stage: back block b maps to front block a = floor(b * Lf / Lb); keep b > a.

    Equal depths keep (j, j + 1). Ordered by back block.
    """
    if front_depth == back_depth:
        return [(j, j + 1) for j in range(front_depth - 1)]
    return [(b * front_depth // back_depth, b) for b in range(back_depth) if b > b * front_depth // back_depth]


def _check_depths(depths: Sequence[Sequence[int]], stages: Sequence[int]) -> None:
    if len(depths) < 2:
        raise ValueError(f'an SN-Net needs at least 2 anchors, got {len(depths)}')
    n_stages = {len(d) for d in depths}
    if len(n_stages) != 1:
        raise ValueError(f'all anchors need the same number of stages, got depths {list(depths)}')
    bad = [s for s in stages if not 0 <= s < len(depths[0])]
    if bad:
        raise ValueError(f'stages {bad} out of range: anchors have stages 0..{len(depths[0]) - 1}')


def enumerate_configs(
        depths: Sequence[Sequence[int]],
        stages: Sequence[int] = (0,),
        rule: Rule = 'window',
        kernel_size: int = 2,
        stride: int = 1,
) -> tuple[list[StitchConfig], list[LayerSpec]]:
    """All configs in the official order, and the stitching layers they use (one layer per window or front block).

    Anchors come first, smallest first. Then stitches: for `rule='window'` (isotropic models) anchor pair by
    anchor pair, window by window; for `rule='stage'` stage by stage, pair by pair, back block ascending.
    Only neighbouring anchors are stitched, small front -> large back. Anchors must be ordered small to large.
    """
    stages = tuple(stages)
    _check_depths(depths, stages)
    configs = [StitchConfig(id=i, front=i, back=i) for i in range(len(depths))]
    layers: list[LayerSpec] = []
    pairs = [(a, a + 1) for a in range(len(depths) - 1)]

    def add(front: int, back: int, stage: int, jk: Sequence[tuple[int, int]], layer_of) -> None:
        ids: dict = {}
        for j, k in jk:
            key = layer_of(j, k)
            if key not in ids:
                ids[key] = len(layers)
                layers.append(LayerSpec(front, back, stage))
            configs.append(StitchConfig(
                id=len(configs), front=front, back=back, stage=stage, front_block=j, back_block=k, layer=ids[key]))

    if rule == 'window':
        for f, b in pairs:
            for s in stages:
                lf, lb = depths[f][s], depths[b][s]
                if lf == lb:
                    groups = window_groups(lf, kernel_size, stride)
                    window = {jk: g for g, group in enumerate(groups) for jk in group}
                    add(f, b, s, list(window), lambda j, k, window=window: window[(j, k)])
                else:
                    add(f, b, s, mapped_pairs(lf, lb), lambda j, k: j)
    elif rule == 'stage':
        for s in stages:
            for f, b in pairs:
                add(f, b, s, mapped_pairs(depths[f][s], depths[b][s]), lambda j, k: j)
    else:
        raise ValueError(f"unknown stitching rule {rule!r}: valid rules are 'window' and 'stage'")
    return configs, layers


def assign_layers(
        configs: Sequence[StitchConfig],
        layers: Sequence[LayerSpec],
        assignment: Sequence[int],
) -> tuple[list[StitchConfig], list[LayerSpec]]:
    """Re-assign stitching layers: `assignment[i]` is the layer of the i-th stitch (in config order).

    Used to reproduce other layouts (e.g. the authors' assignment by list position). A layer may be shared only by
    stitches with the same anchors and stage.
    """
    stitches = [c for c in configs if not c.is_anchor]
    if len(assignment) != len(stitches):
        raise ValueError(f'layer assignment has {len(assignment)} entries, expected one per stitch ({len(stitches)})')
    n = max(assignment) + 1 if len(assignment) else 0
    if sorted(set(assignment)) != list(range(n)):
        raise ValueError(f'layer assignment must use every layer id 0..{n - 1} (got {sorted(set(assignment))})')
    specs: dict[int, LayerSpec] = {}
    out = [c for c in configs if c.is_anchor]
    for c, layer in zip(stitches, assignment):
        spec = LayerSpec(c.front, c.back, c.stage)
        if specs.setdefault(layer, spec) != spec:
            raise ValueError(f'layer {layer} is shared by stitches with different anchors/stages: '
                             f'{specs[layer]} and {spec} (config {c.id})')
        out.append(replace(c, layer=layer))
    return out, [specs[i] for i in range(n)]
