"""FasterNet adapter over timm's FasterNet: NCHW maps, `stages.i` = downsample (patch merging; identity in stage 0)
+ Sequential `blocks` (partial-conv MLP blocks). The stem is `patch_embed`; forward_features ends at the last stage:
pooling, the 1x1 `conv_head` and the classifier are timm's forward_head."""
from timm.models.fasternet import FasterNet

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class FasterNetFamily(CNNFamily):
    model_cls = FasterNet
    stem_names = ('patch_embed',)

    def units(self, model: FasterNet) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
