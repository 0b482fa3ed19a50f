"""StarNet adapter over timm's StarNet: NCHW maps, `stages.i` is a Sequential of a strided ConvBN (the stage's
downsample, run in its block 0) and star blocks; `norm` (BatchNorm) last."""
import torch
from timm.models.starnet import StarNet

from ._base import CNNFamily, Unit, children_names, register_family, stage_specs


@register_family
class StarNetFamily(CNNFamily):
    model_cls = StarNet
    norm_names = ('norm',)

    def units(self, model: StarNet) -> list[Unit]:
        stages, out = children_names(model, 'stages'), []
        for s, (name, (channels, reduction)) in enumerate(zip(stages, stage_specs(model, stages))):
            blocks = children_names(model, name)  # [downsample, block, block, ...]
            modules = [(blocks[0], blocks[1])] + [(b,) for b in blocks[2:]]
            out += [Unit(s, b, m, channels, reduction) for b, m in enumerate(modules)]
        return out

    def finish(self, model: StarNet, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)
