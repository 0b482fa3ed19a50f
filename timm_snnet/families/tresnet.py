"""TResNet adapter over timm's TResNet: NCHW maps, `body` = space-to-depth, `conv1`, stages layer1..layer4.

The stem is `body.s2d` and `body.conv1`; each stage is a Sequential of blocks whose block 0 strides (anti-aliased)
and owns the shortcut downsample. forward_features ends at `body.layer4`; pooling and the classifier are `head`."""
from timm.models.tresnet import TResNet

from ._base import CNNFamily, Unit, register_family, stage_units


@register_family
class TResNetFamily(CNNFamily):
    model_cls = TResNet
    stem_names = ('body.s2d', 'body.conv1')

    def units(self, model: TResNet) -> list[Unit]:
        return stage_units(model, [f'body.layer{i}' for i in range(1, 5)])
