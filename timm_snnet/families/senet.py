"""SENet adapter (legacy SE-ResNet / SE-ResNeXt / SENet-154) over timm's SENet: NCHW maps, stages layer1..layer4.

The stem is `layer0` (a Sequential, tapped by timm's feature_info) and `pool0`; each stage is a Sequential of SE
bottlenecks whose block 0 strides and owns the shortcut downsample. forward_features ends at `layer4`."""
from timm.models.senet import SENet

from ._base import CNNFamily, Unit, register_family, stage_units


@register_family
class SENetFamily(CNNFamily):
    model_cls = SENet
    stem_names = ('layer0', 'pool0')

    def units(self, model: SENet) -> list[Unit]:
        return stage_units(model, [f'layer{i}' for i in range(1, 5)])
