"""MaxxVit adapter (MaxViT, CoAtNet, MaxxViT) over timm's MaxxVit: NCHW maps, `stages.i.blocks` (block 0 strides)."""
import torch
from timm.models.maxxvit import MaxxVit

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class MaxxVitFamily(CNNFamily):
    model_cls = MaxxVit
    norm_names = ('norm',)  # identity when the head holds the norm (head_hidden_size models)
    label, fixed_size_reason = 'MaxxVit', 'their attention windows / grids are built for it'

    def units(self, model: MaxxVit) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks')

    def finish(self, model: MaxxVit, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
