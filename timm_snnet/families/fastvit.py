"""FastViT / MobileCLIP image tower adapter over timm's FastVit: NCHW maps.

`stages.i` runs its `downsample` (patch embedding; identity in stage 0), its `pos_emb` (conditional positional
encoding, identity where absent) then its `blocks`: the first two go in block 0's unit, as timm orders them.
`final_conv` (a MobileOne block, in forward_features) is head-side, after the last unit. Models built with
`fork_feat=True` (a dense-prediction backbone whose forward_features returns a list) are refused.
"""
import torch
from timm.models.fastvit import FastVit

from ._base import CNNFamily, Unit, register_family


@register_family
class FastVitFamily(CNNFamily):
    model_cls = FastVit

    def units(self, model: FastVit) -> list[Unit]:
        if model.fork_feat:
            raise ValueError('FastVit anchors built with fork_feat=True (normed multi-scale outputs, no classifier) '
                             'are not supported: build the classification model')
        out = []
        for s, (stage, info) in enumerate(zip(model.stages, model.feature_info)):
            for b in range(len(stage.blocks)):
                pre = (f'stages.{s}.downsample', f'stages.{s}.pos_emb') if b == 0 else ()
                out.append(Unit(s, b, pre + (f'stages.{s}.blocks.{b}',), info['num_chs'], info['reduction']))
        return out

    def finish(self, model: FastVit, x: torch.Tensor) -> torch.Tensor:
        return model.final_conv(x)
