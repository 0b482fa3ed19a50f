"""Training-time stitch sampling: the `Sampler` (per-config weights, counter-based draws) and its weight rules
(pure Python, no torch).

Resource-constrained sampling (ROS, SN-Netv2): configs are split into FLOPs groups; a step draws a group uniformly,
then a config inside it uniformly. That equals per-config weights 1 / (groups * |group|), which the sampler draws.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Callable, Literal, Optional, Sequence

Sampling = Literal['uniform', 'ros']
SAMPLINGS = ('uniform', 'ros')
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def counter_uniform(seed: int, step: int) -> float:
    """Uniform [0, 1) from (seed, step) alone: every DDP rank draws the same stitch without communication."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64)) >> 11) / float(1 << 53)


def anchor_share_weights(num_anchors: int, num_configs: int, share: float) -> list[float]:
    """Sampling weights giving the anchors `share` of the steps in all, the rest uniform over the stitches."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f'anchor_share is the anchors\' total sampling probability, a number in [0, 1]; '
                         f'got {share!r}')
    stitches = num_configs - num_anchors
    if stitches <= 0:
        raise ValueError(f'anchor_share needs stitches to share the steps with; {num_configs} configs, '
                         f'{num_anchors} anchors')
    return [share / num_anchors] * num_anchors + [(1.0 - share) / stitches] * stitches


def flops_groups(gflops: dict[int, float], gap: float = 1.0) -> list[list[int]]:
    """The authors' greedy groups: in ascending FLOPs, a config more than `gap` GFLOPs from the current group's
    leader starts a new group (led by it); otherwise it joins the current one. Ties keep id order.

    The first leader is 0 GFLOPs, as in the authors' code."""
    if not gap > 0:
        raise ValueError(f'flops_gap must be a positive number of GFLOPs, got {gap!r}')
    groups: list[list[int]] = [[]]
    leader = 0.0  # as the authors: the first group reaches from 0 to `gap` unless the smallest config lies beyond
    for k, f in sorted(gflops.items(), key=lambda kv: (kv[1], kv[0])):
        if abs(f - leader) > gap:
            if groups[-1]:
                groups.append([])
            leader = f
        groups[-1].append(k)
    return [g for g in groups if g]


def ros_weights(gflops: Sequence[float], gap: float = 1.0, eligible: Optional[Sequence[bool]] = None) -> list[float]:
    """Per-config ROS weights, 1 / (groups * |group|) for eligible configs and 0 for the rest; they sum to 1."""
    eligible = [True] * len(gflops) if eligible is None else list(eligible)
    groups = flops_groups({k: f for k, (f, ok) in enumerate(zip(gflops, eligible)) if ok}, gap)
    weights = [0.0] * len(gflops)
    for group in groups:
        for k in group:
            weights[k] = 1.0 / (len(groups) * len(group))
    return weights


class Sampler:
    """Training-time stitch sampler: per-config weights and a counter-based draw.

    Draw number `step` depends on (seed, step, weights) alone, so every DDP rank draws the same stitch without
    communication, and a saved step resumes the sequence. ROS weights need each config's FLOPs, known once the model
    is built: they are computed at the first draw, from the `gflops` callable it is given (FLOPs are deterministic,
    so every rank gets the same weights).

    Args:
        eligible: per config, whether training draws it by default (SN-Net: its route ends in a non-empty segment).
        seed: the seed of the draws (the same on every rank).
        sampling: `'uniform'` (every eligible config alike) or `'ros'` (resource-constrained sampling).
        flops_gap: width of a ROS FLOPs group in GFLOPs.
        weights: relative weight of each config, instead of `sampling`'s.
        anchor_share: the anchors' total probability (the first `num_anchors` configs), the rest uniform over the
            eligible stitches; instead of `weights` or `sampling='ros'`.
    """

    def __init__(
            self,
            eligible: Sequence[bool],
            seed: int = 0,
            sampling: Sampling = 'uniform',
            flops_gap: float = 1.0,
            weights: Optional[Sequence[float]] = None,
            anchor_share: Optional[float] = None,
            num_anchors: int = 0,
    ):
        self.eligible = [bool(e) for e in eligible]
        self.seed, self.step = int(seed), 0
        self.anchor_share = anchor_share
        explicit = weights is not None
        if anchor_share is not None:
            if weights is not None or sampling != 'uniform':
                raise ValueError(f'pass one of anchor_share, sampling_weights and sampling=\'ros\', not several '
                                 f'(got anchor_share={anchor_share!r}, sampling={sampling!r})')
            shares = anchor_share_weights(num_anchors, len(self.eligible), anchor_share)
            weights = [w * ok for w, ok in zip(shares, self.eligible)]
        if sampling not in SAMPLINGS:
            raise ValueError(f'unknown sampling {sampling!r}: valid values are {", ".join(map(repr, SAMPLINGS))}')
        if isinstance(flops_gap, bool) or not isinstance(flops_gap, (int, float)) or not flops_gap > 0:
            raise ValueError(f'flops_gap must be a positive number of GFLOPs, got {flops_gap!r}')
        if sampling == 'ros' and weights is not None:
            raise ValueError("sampling='ros' sets the sampling weights; pass sampling_weights only with 'uniform'")
        self.sampling, self.flops_gap = sampling, float(flops_gap)
        self.set_weights([float(ok) for ok in self.eligible] if weights is None else weights, explicit=explicit)
        self.pending = weights is None and sampling == 'ros'  # ROS weights wait for the FLOPs: see `cum_weights`

    def set_weights(self, weights: Optional[Sequence[float]] = None, explicit: bool = True) -> None:
        """Relative probability of each config; None is uniform. `explicit`: set by hand (they replace the sampling
        rule in saved settings). They win over pending ROS weights."""
        self.explicit = explicit
        weights = [1.0] * len(self.eligible) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.eligible) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f'sampling weights need {len(self.eligible)} non-negative values with a positive sum')
        self.weights = None if len(set(weights)) == 1 else weights
        self.cum = list(itertools.accumulate(weights))
        self.pending = False

    def ros_weights(self, gflops: Sequence[float]) -> list[float]:
        """ROS weights over the eligible configs, from each config's GFLOPs."""
        return ros_weights(gflops, self.flops_gap, self.eligible)

    def cum_weights(self, gflops: Optional[Callable[[], Sequence[float]]] = None) -> list[float]:
        """Cumulative weights; pending ROS weights are computed here, from `gflops()`."""
        if self.pending:
            if gflops is None:
                raise ValueError("sampling='ros' needs the configs' GFLOPs at the first draw")
            self.set_weights(self.ros_weights(gflops()), explicit=False)
        return self.cum

    def draw(self, gflops: Optional[Callable[[], Sequence[float]]] = None) -> int:
        """The config of draw number `step` (then the next step)."""
        cum = self.cum_weights(gflops)
        u = counter_uniform(self.seed, self.step) * cum[-1]
        self.step += 1
        return min(bisect.bisect_right(cum, u), len(cum) - 1)
