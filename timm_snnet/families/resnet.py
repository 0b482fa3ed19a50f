"""ResNet adapter over timm's ResNet: NCHW maps, stages layer1..layer4, downsampling in each stage's block 0."""
import torch
from timm.models.resnet import ResNet

from . import Family, Unit, register_family


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
        return model.maxpool(model.act1(model.bn1(model.conv1(x))))
