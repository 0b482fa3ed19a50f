"""TinyViT adapter over timm's TinyVit: NCHW maps between units, `stages.0` a Sequential `blocks` of MBConvs, the
other stages `downsample` (patch merging, NCHW) + Sequential `blocks` of window-attention blocks.

The attention blocks take NHWC maps: the stage permutes before and after them, so each such block is run on the
permuted map and permuted back here (the same views timm makes, bit-equal), and every unit hands on an NCHW map.
forward_features ends at the last stage; the norm, pooling and classifier are timm's `head`.
"""
import torch
from timm.models.tiny_vit import ConvLayer, TinyVit

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class TinyVitFamily(CNNFamily):
    model_cls = TinyVit
    stem_names = ('patch_embed',)

    def units(self, model: TinyVit) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')

    def run_module(self, model: TinyVit, name: str, x: torch.Tensor) -> torch.Tensor:
        module = model.get_submodule(name)
        _, stage, part, *_ = name.split('.')
        if part != 'blocks' or isinstance(model.stages[int(stage)], ConvLayer):
            return module(x)
        return module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
