"""Stitch config enumeration (pure functions, no torch).

A config is either an anchor (one whole model) or a stitch: the front anchor's stem and blocks 0..j of a
stage, a stitching layer, then the back anchor's blocks k.. of the same stage and everything after it.
Block ids here are stage-local, as in the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Optional, Sequence

Rule = Literal['window', 'stage', 'two_way']
Join = Literal['stage', 'reduction']  # where anchors meet: stage to stage (the paper), or at a shared reduction
Assignment = Literal['front_block', 'window']


@dataclass(frozen=True)
class StitchConfig:
    """One path through an SN-Net. Anchors have `stage`, `front_block`, `back_block` and `layer` set to None.

    A round trip (SN-Netv2's LSL / SLS) leaves `back` after block `return_block` through `return_layer` and resumes
    `front` at block `resume_block`; one-way stitches leave the three at None.
    """
    id: int
    front: int
    back: int
    stage: Optional[int] = None
    front_block: Optional[int] = None
    back_block: Optional[int] = None
    layer: Optional[int] = None
    gflops: float = math.nan
    params: int = 0
    return_block: Optional[int] = None
    return_layer: Optional[int] = None
    resume_block: Optional[int] = None

    @property
    def is_anchor(self) -> bool:
        return self.layer is None

    @property
    def is_round_trip(self) -> bool:
        return self.return_layer is not None

    def path(self, names: Sequence[str], depths: Optional[Sequence[Sequence[int]]] = None) -> str:
        """Readable path such as `Ti[0..3] -> S[4..]` (or `Ti[s2.0..1] -> S[s2.3..]` for staged models)."""
        if self.is_anchor:
            return names[self.front]
        staged = depths is not None and len(depths[self.front]) > 1
        s = f's{self.stage}.' if staged else ''
        if self.is_round_trip:
            return (f'{names[self.front]}[{s}0..{self.front_block}] -> {names[self.back]}[{s}{self.back_block}..'
                    f'{self.return_block}] -> {names[self.front]}[{s}{self.resume_block}..]')
        if depths is not None and self.back_block == depths[self.back][self.stage]:  # no back block: its head only
            return f'{names[self.front]}[{s}0..{self.front_block}] -> {names[self.back]}[head]'
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

    @property
    def is_complete(self) -> bool:
        """Every segment runs at least one unit (the stitch before an empty segment feeds the head directly)."""
        return all(s.stop > s.start for s in self.segments)

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


def junction_depths(reductions: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Stages for anchors joined by spatial reduction: one per reduction that any anchor's units run at (sorted),
    each anchor's depth there its number of units at that reduction (0 where it has none). Units come in
    non-decreasing reduction, as in every timm model, so each such stage is one run of an anchor's units."""
    for a, r in enumerate(reductions):
        if list(r) != sorted(r):
            raise ValueError(f'anchor {a}\'s units do not run at non-decreasing reductions ({list(r)}): it cannot be '
                             f'joined by reduction')
    junctions = sorted({r for rs in reductions for r in rs})
    return junctions, [[list(rs).count(j) for j in junctions] for rs in reductions]


def choose_join(units: Sequence[Sequence[tuple[int, int]]]) -> Join:
    """`'stage'` where every anchor has the same stages at the same reductions (the paper's stage-to-stage rule, which
    keeps the authors' ids), `'reduction'` otherwise. `units[a]`: (stage, reduction) of each unit of anchor a."""
    return 'stage' if len({tuple(dict(u).items()) for u in units}) == 1 else 'reduction'


def junction_stages(depths: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The default stages to stitch in when anchors meet by reduction: those every anchor has units in, but the
    last stage (as the stage rule's default), unless it is the only one."""
    common = [s for s in range(len(depths[0])) if all(d[s] for d in depths)]
    return tuple(s for s in common if s != len(depths[0]) - 1) or tuple(common)


def proportional_pairs(front_depth: int, back_depth: int) -> list[tuple[int, int]]:
    """Cuts inside a stage joined by reduction: `mapped_pairs` where the back is at least as deep; a deeper front
    leaves block a for back block b = floor((a + 1) * Lb / Lf), the same share of the stage done (1 <= b < Lb)."""
    if front_depth <= back_depth:
        return mapped_pairs(front_depth, back_depth)
    pairs = [(a, (a + 1) * back_depth // front_depth) for a in range(front_depth)]
    return [(a, b) for a, b in pairs if 1 <= b < back_depth]


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
        join: Join = 'stage',
) -> tuple[list[StitchConfig], list[LayerSpec]]:
    """All configs in the official order, and the stitching layers they use (one layer per window or front block).
    Anchors joined by reduction (`join='reduction'`, stage rule) get one layer per stitch (a stage's blocks may differ
    in width there) and `proportional_pairs`.

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
                if join == 'stage':
                    add(f, b, s, mapped_pairs(depths[f][s], depths[b][s]), lambda j, k: j)
                elif depths[f][s] and depths[b][s]:  # joined by reduction: not where one anchor has no blocks
                    add(f, b, s, proportional_pairs(depths[f][s], depths[b][s]), lambda j, k: (j, k))
    elif rule == 'two_way':
        return two_way_configs(depths, stages)
    else:
        raise ValueError(f"unknown stitching rule {rule!r}: valid rules are 'window', 'stage' and 'two_way'")
    return configs, layers


def two_way_configs(
        depths: Sequence[Sequence[int]],
        stages: Sequence[int] = (0,),
) -> tuple[list[StitchConfig], list[LayerSpec]]:
    """SN-Netv2's two-way stitching of a small and a large anchor (one stage each, large depth a multiple of small).

    Ids: 0 small, 1 large; then SL (small -> large), LS (large -> small), LSL and SLS round trips, as the authors
    list them. One stitching layer per direction and cut: SL[f] leaves small block f for large block (f + 1) * r;
    LS[m] leaves large block (m + 1) * r - 1 for small block m + 1 (r = depth ratio). Layers: SL[0..ds-1], then
    LS[0..ds-2]. The last SL config (the whole small anchor, then straight to the large anchor's norm and head) is
    enumerated to keep the authors' ids and its layer; its route has an empty last segment (`Route.is_complete`).
    """
    _check_depths(depths, tuple(stages))
    if len(depths) != 2 or len(depths[0]) != 1 or tuple(stages) != (0,):
        raise ValueError(f"rule='two_way' stitches two single-stage anchors (small first) in stage 0, got depths "
                         f"{[list(d) for d in depths]} and stages {list(stages)}")
    ds, dl = depths[0][0], depths[1][0]
    if ds < 2 or dl < ds or dl % ds:
        raise ValueError(f"rule='two_way' needs the large anchor's depth to be a multiple of the small one's "
                         f"(small first, both >= 2 blocks), got depths {ds} and {dl}")
    r = dl // ds
    layers = [LayerSpec(0, 1, 0)] * ds + [LayerSpec(1, 0, 0)] * (ds - 1)
    sl = [(f, (f + 1) * r, f) for f in range(ds)]  # (small block, large block, layer)
    ls = [((m + 1) * r - 1, m + 1, ds + m) for m in range(ds - 1)]  # (large block, small block, layer)
    configs = [StitchConfig(id=0, front=0, back=0), StitchConfig(id=1, front=1, back=1)]

    def add(front: int, cut: tuple[int, int, int], back_cut: Optional[tuple[int, int, int]] = None) -> None:
        j, k, layer = cut
        more = {} if back_cut is None else dict(
            return_block=back_cut[0], return_layer=back_cut[2], resume_block=back_cut[1])
        configs.append(StitchConfig(id=len(configs), front=front, back=1 - front, stage=0, front_block=j,
                                    back_block=k, layer=layer, **more))

    for cut in sl:
        add(0, cut)
    for cut in ls:
        add(1, cut)
    for out in ls:  # LSL: at least one small block between the cuts, and the return lands inside the large anchor
        for back in sl:
            if back[0] != ds - 1 and back[0] >= out[1]:
                add(1, out, back)
    for out in sl:  # SLS: at least one large block between the cuts
        for back in ls:
            if back[0] >= out[1]:
                add(0, out, back)
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
