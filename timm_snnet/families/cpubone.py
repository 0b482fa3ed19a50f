"""CPUBone adapter over timm's CPUBone: NCHW maps, `stages.i` is a Sequential of blocks whose block 0 (a residual
block) strides and sets the width. forward_features ends at the last stage; the head (`ClsHead`) is timm's."""
from timm.models.cpubone import CPUBone

from ._base import CNNFamily, Unit, children_names, register_family, stage_units


@register_family
class CPUBoneFamily(CNNFamily):
    model_cls = CPUBone

    def units(self, model: CPUBone) -> list[Unit]:
        return stage_units(model, children_names(model, 'stages'))
