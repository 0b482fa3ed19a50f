"""Family adapters: how to cut one timm anchor into stem, blocks (units) and head.

An adapter is stateless; it reads a timm model and answers in module names and activation specs, so the engine
never learns what a ViT, Swin or ResNet is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

Layout = Literal['tokens', 'nhwc', 'nchw']


@dataclass(frozen=True)
class Unit:
    """One cut-able block: the modules it runs in order, its stage, stage-local block id and output spec."""
    stage: int
    block: int
    modules: tuple[str, ...]
    channels: int
    reduction: int


class Family:
    """Base adapter. Subclasses set `model_cls`, `layout`, `stem_names` and implement `units`, `stem`, `finish`."""
    model_cls: type = nn.Module
    layout: Layout = 'tokens'
    stem_names: tuple[str, ...] = ()  # modules / parameters that run before the first unit
    # feature extraction (timm's forward_intermediates semantics for the family)
    taps: Literal['stage', 'block'] = 'stage'  # one feature per stage (at its end), or one per block (ViT)
    norm_names: tuple[str, ...] = ()  # the final norm that `finish` applies
    intermediate_fmts: tuple[str, ...] = ('NCHW',)  # output formats forward_intermediates can give

    def units(self, model: nn.Module) -> list[Unit]:
        raise NotImplementedError

    def stem(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The tail of `forward_features` after the last unit (the final norm), identity by default."""
        return x

    def run_module(self, model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run one of a unit's modules; override when timm's forward passes it more than the activation (e.g. RoPE)."""
        return model.get_submodule(name)(x)

    def head(self, model: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return model.forward_head(x, pre_logits=pre_logits)

    def check_input(self, model: nn.Module, x: torch.Tensor) -> None:
        """Raise a clear ValueError for inputs the anchor cannot take."""

    def stem_taps(self, model: nn.Module) -> list[dict]:
        """timm feature_info entries that sit inside the stem (e.g. ResNet's `act1`); none by default."""
        return []

    def stem_intermediates(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's output and its `stem_taps` features."""
        return self.stem(model, x), []

    def prune_stem(self, model: nn.Module) -> None:
        """Make the stem end at its last tap (features pruned to a stem feature)."""

    def intermediate(self, model: nn.Module, x: torch.Tensor, output_fmt: str, img_size: Sequence[int],
                     reduction: int) -> torch.Tensor:
        """A unit's output (`reduction` of the input `img_size`) as a feature in `output_fmt` (NCHW by default)."""
        return x.permute(0, 3, 1, 2).contiguous() if self.layout == 'nhwc' else x


_FAMILIES: list[Family] = []


def register_family(family: type[Family]) -> type[Family]:
    _FAMILIES.append(family())
    return family


def family_for(model: nn.Module) -> Family:
    for family in _FAMILIES:
        if type(model) is family.model_cls:
            return family
    known = ', '.join(f.model_cls.__name__ for f in _FAMILIES)
    raise TypeError(f'no SN-Net adapter for {type(model).__name__}; supported anchor classes: {known}')
