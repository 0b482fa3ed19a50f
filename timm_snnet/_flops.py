"""FLOPs and parameter counts with fvcore (one multiply-add = one FLOP), attention included.

Each anchor is traced once; per-unit costs are cached so a config's cost is a sum over the units it runs.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from timm.models._input import get_model_input_config
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._routes import owned

with warnings.catch_warnings():  # fvcore scripts a loss with torch.jit.script at import, which torch deprecates
    warnings.simplefilter('ignore', FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape
from ._utils import eval_mode
from .families import Family


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """`aten::scaled_dot_product_attention`: Q @ K^T plus attn @ V (fvcore skips this op by default)."""
    q, k, v = (get_shape(i) for i in inputs[:3])
    rows = math.prod(q[:-1])
    return rows * k[-2] * (q[-1] + v[-1])


def count_flops(model: nn.Module, x: torch.Tensor) -> FlopCountAnalysis:
    analysis = FlopCountAnalysis(model, x).set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


@dataclass(frozen=True)
class AnchorCosts:
    """FLOPs and params of an anchor split into stem, units and head (head = the rest, incl. final norm)."""
    flops: int
    params: int
    stem_flops: int
    stem_params: int
    unit_flops: tuple[int, ...]
    unit_params: tuple[int, ...]

    @property
    def head_flops(self) -> int:
        return self.flops - self.stem_flops - sum(self.unit_flops)

    @property
    def head_params(self) -> int:
        return self.params - self.stem_params - sum(self.unit_params)

    def span(self, start: int, stop: int, stem: bool = False, head: bool = False) -> tuple[int, int]:
        """Cost of units [start, stop), with the stem and / or the head (final norm included)."""
        flops = sum(self.unit_flops[start:stop]) + stem * self.stem_flops + head * self.head_flops
        params = sum(self.unit_params[start:stop]) + stem * self.stem_params + head * self.head_params
        return flops, params


def anchor_costs(model: nn.Module, family: Family, input_size: Sequence[int]) -> AnchorCosts:
    """Trace one anchor at batch 1 and split its costs by the family's stem and unit module names. An anchor on the
    meta device is traced as an uninitialised CPU copy (fvcore's tracer cannot run meta tensors; costs need no
    weights), with timm's non-persistent buffers (e.g. Swin's position index) rebuilt."""
    if next(model.parameters()).is_meta:
        model = copy.deepcopy(model).to_empty(device='cpu')
        reinit_non_persistent_buffers(model)
    units = family.units(model)
    param = next(model.parameters())
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        analysis = count_flops(model, torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
        by_module = analysis.by_module()
    named = dict(model.named_parameters())

    def params_of(prefixes: Sequence[str]) -> int:
        return sum(p.numel() for n, p in named.items() if owned(n, prefixes))

    return AnchorCosts(
        flops=int(by_module['']),
        params=sum(p.numel() for p in named.values()),
        stem_flops=sum(int(by_module.get(n, 0)) for n in family.stem_names),
        stem_params=params_of(family.stem_names),
        unit_flops=tuple(sum(int(by_module.get(n, 0)) for n in u.modules) for u in units),
        unit_params=tuple(params_of(u.modules) for u in units),
    )


def stitching_layer_cost(layer: nn.Module, rows: int) -> tuple[int, int]:
    """A Linear or 1x1 conv stitching layer: rows * in * out multiply-adds (fvcore leaves the bias out).

    Params are those of the dense layer it runs as (a low-rank layer's merged weight and bias)."""
    weight, prefix = layer.weight, getattr(layer, 'prefix', None)  # a token back's learnt prefix tokens
    params = weight.numel() + layer.bias.numel() + (0 if prefix is None else prefix.numel())
    return rows * weight.shape[0] * weight.shape[1], params


def meta_flops(model: nn.Module) -> int:
    """Multiply-adds of a timm model built on the meta device, at batch 1 and its input size (torch's FLOP counter
    on meta tensors: no weights, no compute), cheap enough to order anchors."""
    size = get_model_input_config(model)['input_size']
    grads = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)  # the counter's module tracker asks a no-grad view of a parameter (CaiT's class
    try:  # token) for a gradient function
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *size, device='meta'))
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
    return counter.get_total_flops() // 2
