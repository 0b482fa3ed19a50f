"""ResNet adapter over timm's ResNet: NCHW maps, stages layer1..layer4, downsampling in each stage's block 0."""
import torch
from timm.models.resnet import ResNet
from torch import nn

from ._base import Family, Unit, register_family


@register_family
class ResNetFamily(Family):
    model_cls = ResNet
    layout = 'nchw'
    stem_names = ('conv1', 'bn1', 'act1', 'maxpool')

    def units(self, model: ResNet) -> list[Unit]:
        out = []
        for s, info in enumerate(model.feature_info[1:]):  # feature_info[0] is the stem
            name, stage = info['module'], model.get_submodule(info['module'])
            out += [Unit(s, b, (f'{name}.{b}',), info['num_chs'], info['reduction']) for b in range(len(stage))]
        return out

    def stem(self, model: ResNet, x: torch.Tensor) -> torch.Tensor:
        return self.stem_intermediates(model, x)[0]

    def stem_taps(self, model: ResNet) -> list[dict]:
        return [dict(model.feature_info[0])]  # act1, at reduction 2

    def stem_intermediates(self, model: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = model.act1(model.bn1(model.conv1(x)))
        return model.maxpool(x), [x]

    def prune_stem(self, model: ResNet) -> None:
        model.maxpool = nn.Identity()
