"""Stitching layers and their least-squares initialisation."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
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


def create_stitching_layer(
        in_features: int,
        out_features: int,
        in_layout: Layout,
        out_layout: Layout,
        device=None,
        dtype=None,
) -> nn.Module:
    if in_layout == 'nchw':
        return ConvStitch(in_features, out_features, out_layout, device=device, dtype=dtype)
    if out_layout == 'nchw':
        raise ValueError(f'cannot stitch a {in_layout} front onto an NCHW back; stitch CNN -> transformer instead')
    if (in_layout == 'tokens') != (out_layout == 'tokens'):
        raise ValueError(f'cannot stitch {in_layout} activations onto {out_layout} activations')
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
        for x_key, y_key in pairs:
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
