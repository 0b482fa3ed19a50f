"""Training-time sampling weights over configs (pure functions, no torch).

Resource-constrained sampling (ROS, SN-Netv2): configs are split into FLOPs groups; a step draws a group uniformly,
then a config inside it uniformly. That equals per-config weights 1 / (groups * |group|), which the engine's
counter-based, rank-synchronised sampler draws.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

Sampling = Literal['uniform', 'ros']
SAMPLINGS = ('uniform', 'ros')


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
