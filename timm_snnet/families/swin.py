"""Swin adapter over timm's SwinTransformer: NHWC maps, four stages, patch merging at each stage's start."""
import torch
from timm.models.swin_transformer import SwinTransformer

from ._base import Family, Unit, children_names, register_family, stage_units


@register_family
class SwinFamily(Family):
    model_cls = SwinTransformer
    layout = 'nhwc'
    stem_names = ('patch_embed',)
    norm_names = ('norm',)  # sized for the last stage: only the last stage's feature takes it
    label, fixed_size_reason = 'Swin', 'their attention windows are built for it'

    def units(self, model: SwinTransformer) -> list[Unit]:
        """Block 0 of a stage also runs the stage's patch merging (identity in stage 0), as timm orders them."""
        return stage_units(model, children_names(model, 'layers'), blocks='blocks', downsample='downsample')

    def stem(self, model: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
        return model.patch_embed(x)

    def finish(self, model: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)

    def check_input(self, model: SwinTransformer, x: torch.Tensor) -> None:
        super().check_input(model, x)
        size, pe = tuple(x.shape[-2:]), model.patch_embed
        if any(n % p for n, p in zip(size, pe.patch_size)):
            raise ValueError(f'input image size {size} must be a multiple of the patch size {pe.patch_size}')
