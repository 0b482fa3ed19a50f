"""Stitching layers and their least-squares initialisation."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .families import Layout


def to_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Activation -> (samples, channels): one row per token or pixel."""
    if layout == 'nchw':
        x = x.permute(0, 2, 3, 1)
    return x.reshape(-1, x.shape[-1])


class LinearStitch(nn.Linear):
    """Stitching layer over channels-last activations: tokens (B, N, C) or NHWC maps."""

    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)


class ConvStitch(nn.Conv2d):
    """1x1 conv stitching layer over NCHW maps; `out_layout='nhwc'` hands a CNN front to a channels-last back."""

    def __init__(self, in_features: int, out_features: int, out_layout: Layout = 'nchw', device=None, dtype=None):
        super().__init__(in_features, out_features, kernel_size=1, bias=True, device=device, dtype=dtype)
        self.out_layout = out_layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x.permute(0, 2, 3, 1) if self.out_layout == 'nhwc' else x

    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weight[:, :, None, None])
            self.bias.copy_(bias)


class GridStitch(nn.Linear):
    """Stitching layer between layouts at one spatial reduction (a CNN's map and a ViT's tokens, a Swin's NHWC map and
    a CNN's NCHW one): the front's patch grid channels-last (its prefix tokens dropped), a Linear over channels, then
    the back's layout. A back with prefix tokens (class / register) gets `prefix`, learnt and least-squares
    initialised to the mean of the back anchor's own prefix tokens at that cut. `grid` (H, W) is the patch grid that
    tokens from the front lay on (the front anchor's fixed input size at this reduction)."""

    def __init__(self, in_features: int, out_features: int, in_layout: Layout, out_layout: Layout,
                 grid: Optional[tuple[int, int]] = None, in_prefix: int = 0, out_prefix: int = 0, device=None,
                 dtype=None):
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        if in_layout == 'tokens' and out_layout != 'tokens' and grid is None:
            raise ValueError('a tokens -> map stitching layer needs the patch grid of the front anchor\'s tokens')
        self.in_layout, self.out_layout, self.grid = in_layout, out_layout, tuple(grid) if grid else None
        self.in_prefix = in_prefix
        self.prefix = nn.Parameter(torch.zeros(1, out_prefix, out_features, device=device, dtype=dtype)) \
            if out_prefix else None

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The front's activation as channels-last patches: (B, H, W, C) for maps, (B, N, C) for tokens."""
        if self.in_layout == 'nchw':
            return x.permute(0, 2, 3, 1)
        return x[:, self.in_prefix:] if self.in_layout == 'tokens' else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(self.patches(x))
        if self.out_layout == 'tokens':
            x = x.flatten(1, 2) if x.ndim == 4 else x
            return x if self.prefix is None else torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        if x.ndim == 3:  # tokens -> map
            h, w = self.grid
            if x.shape[1] != h * w:
                raise ValueError(f'this stitching layer lays {h}x{w} patch tokens on a map, got {x.shape[1]} tokens: '
                                 f'the front anchor takes its fixed input size only')
            x = x.reshape(x.shape[0], h, w, x.shape[-1])
        return x.permute(0, 3, 1, 2) if self.out_layout == 'nchw' else x

    def rows(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """Least-squares rows (one per patch) of the front's activation (`side='in'`) or of the back's (`'out'`)."""
        if side == 'in':
            return self.patches(x).reshape(-1, self.in_features)
        if self.out_layout == 'tokens':
            x = x[:, 0 if self.prefix is None else self.prefix.shape[1]:]
        return to_rows(x, self.out_layout)

    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, {self.in_layout} -> {self.out_layout}, grid={self.grid}, '
                f'prefix {self.in_prefix} -> {0 if self.prefix is None else self.prefix.shape[1]}')


def stitch_rows(layer: nn.Module, x: torch.Tensor, layout: Layout, side: str) -> torch.Tensor:
    """Rows of an activation as a stitching layer reads (`side='in'`) or writes (`'out'`) it."""
    return layer.rows(x, side) if isinstance(layer, GridStitch) else to_rows(x, layout)


class LowRankLinearStitch(nn.Module):
    """SN-Netv2's low-rank stitching layer: `y = x (W + B A / r)^T + b` over channels-last activations.

    `weight` (W, the least-squares solution) is a frozen buffer, saved in the state dict; `lora_A` (r, in),
    `lora_B` (out, r, zero at init) and `bias` train. The update is added functionally in every forward, never
    merged into `weight` in place, so train / eval switches, state-dict round trips and DDP cannot count it twice.
    `merged_weight()` is the dense weight that eval and export use. Scaling is alpha / r with alpha = 1, as the
    authors'.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float = 1.0, device=None, dtype=None):
        super().__init__()
        if rank < 1 or rank > min(in_features, out_features):
            raise ValueError(f'stitch_rank must be in 1..{min(in_features, out_features)} for a {in_features} -> '
                             f'{out_features} stitching layer (0 for a dense layer), got {rank}')
        kw = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scaling = alpha / rank
        self.register_buffer('weight', torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw))
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W and b as nn.Linear initialises them (least-squares init replaces both), A as loralib does, B zero."""
        if self.weight.is_meta:
            return
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.merged_weight(), self.bias)

    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the frozen weight and the bias (least-squares init); the low-rank update is kept."""
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}'


def create_stitching_layer(
        in_features: int,
        out_features: int,
        in_layout: Layout,
        out_layout: Layout,
        device=None,
        dtype=None,
        rank: int = 0,
        grid: Optional[tuple[int, int]] = None,
        prefix: tuple[int, int] = (0, 0),
) -> nn.Module:
    """A dense stitching layer for the layouts, or a low-rank one (`rank` > 0, channels-last layouts only). Different
    layouts (and token fronts or backs with different prefix tokens) meet through a `GridStitch` on the patch grid
    (`grid`: the front's tokens' grid; `prefix`: the front's and the back's prefix tokens)."""
    cross = in_layout != out_layout and not (in_layout == 'nchw' and out_layout == 'nhwc')
    if cross or prefix[0] != prefix[1]:
        if rank:
            raise ValueError(f'low-rank stitching layers (stitch_rank={rank}) join activations of one layout; a '
                             f'{in_layout} -> {out_layout} stitch needs stitch_rank=0')
        return GridStitch(in_features, out_features, in_layout, out_layout, grid, *prefix, device=device, dtype=dtype)
    if rank and 'nchw' in (in_layout, out_layout):
        raise ValueError(f'low-rank stitching layers (stitch_rank={rank}) are linear over channels-last activations; '
                         f'a {in_layout} -> {out_layout} stitch needs stitch_rank=0')
    if in_layout == 'nchw':
        return ConvStitch(in_features, out_features, out_layout, device=device, dtype=dtype)
    if rank:
        return LowRankLinearStitch(in_features, out_features, rank, device=device, dtype=dtype)
    return LinearStitch(in_features, out_features, device=device, dtype=dtype)


class LeastSquares:
    """Streaming least squares with a bias column, in float64: accumulates X^T X per input and X^T Y per pair."""

    def __init__(self) -> None:
        self.gram: dict = {}
        self.cross: dict = {}

    @staticmethod
    def _augment(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)

    def add(self, xs: dict, ys: dict, pairs: Sequence[tuple]) -> None:
        """Add one batch: rows of each front cut (`xs`) and back cut (`ys`) for the (x key, y key) `pairs`.

        Each front cut is converted once and multiplied by all of its targets in one GEMM.
        """
        ys = {k: y.to(torch.float64) for k, y in ys.items()}
        targets: dict = {}
        for x_key, y_key in dict.fromkeys(pairs):  # a repeated pair must not add its cross terms twice
            targets.setdefault(x_key, []).append(y_key)
        for x_key, y_keys in targets.items():
            xa = self._augment(xs[x_key])
            self.gram[x_key] = self.gram.get(x_key, 0) + xa.T @ xa
            cross = xa.T @ torch.cat([ys[k] for k in y_keys], dim=1)
            for y_key, part in zip(y_keys, cross.split([ys[k].shape[1] for k in y_keys], dim=1)):
                self.cross[(x_key, y_key)] = self.cross.get((x_key, y_key), 0) + part

    def solve(self, x_key, y_key) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimum-norm solution (stable when rows are rank deficient); returns (weight [out, in], bias [out]).

        Directions of X below 1e-5 of its largest singular value (1e-10 on the Gram) are dropped, so round-off in
        the float64 sums cannot flip a near-null direction in or out.
        """
        gram, cross = self.gram[x_key].cpu(), self.cross[(x_key, y_key)].cpu()
        sol = torch.linalg.lstsq(gram, cross, rcond=1e-10, driver='gelsd').solution
        sol = torch.nan_to_num(sol)
        return sol[:-1].T.contiguous(), sol[-1].contiguous()


def average_affine(solutions: list[tuple[torch.Tensor, torch.Tensor]]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    if not solutions:
        return None
    return torch.stack([w for w, _ in solutions]).mean(0), torch.stack([b for _, b in solutions]).mean(0)
