"""HGNet / HGNetV2 adapter over timm's HighPerfGpuNet: NCHW maps, `stages.i` = downsample (identity where the stage
keeps its stride) + Sequential `blocks` of HG blocks. forward_features ends at the last stage: pooling, the last
1x1 conv and the classifier are timm's forward_head."""
from timm.models.hgnet import HighPerfGpuNet

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class HighPerfGpuNetFamily(CNNFamily):
    model_cls = HighPerfGpuNet

    def units(self, model: HighPerfGpuNet) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'), blocks='blocks', downsample='downsample')
