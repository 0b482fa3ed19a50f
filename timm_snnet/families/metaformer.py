"""MetaFormer adapter (PoolFormer, ConvFormer, CAFormer) over timm's MetaFormer: NCHW maps between units.

`stages.i` = downsample + Sequential `blocks`. Attention stages (`use_nchw=False`) run their blocks on tokens: the
stage flattens the map before its blocks and restores it after them, so each such block is run on the flattened map
and restored here, the same views timm makes (bit-equal), and every unit still hands the next an NCHW map.
"""
import torch
from timm.models.metaformer import MetaFormer

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class MetaFormerFamily(CNNFamily):
    model_cls = MetaFormer
    # no final norm in forward_features: MetaFormer's is `head.norm`, after pooling

    def units(self, model: MetaFormer) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def run_module(self, model: MetaFormer, name: str, x: torch.Tensor) -> torch.Tensor:
        module = model.get_submodule(name)
        _, stage, part, *_ = name.split('.')
        if part != 'blocks' or model.stages[int(stage)].use_nchw:
            return module(x)
        b, c, h, w = x.shape
        return module(x.reshape(b, c, -1).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
