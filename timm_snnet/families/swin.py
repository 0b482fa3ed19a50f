"""Swin adapter over timm's SwinTransformer: NHWC maps, four stages, patch merging at each stage's start."""
import torch
from timm.models.swin_transformer import SwinTransformer

from ._base import Family, Unit, register_family


@register_family
class SwinFamily(Family):
    model_cls = SwinTransformer
    layout = 'nhwc'
    stem_names = ('patch_embed',)
    norm_names = ('norm',)  # sized for the last stage: only the last stage's feature takes it

    def units(self, model: SwinTransformer) -> list[Unit]:
        """Block 0 of a stage also runs the stage's patch merging (identity in stage 0), as timm orders them."""
        out = []
        for s, (stage, info) in enumerate(zip(model.layers, model.feature_info)):
            for b in range(len(stage.blocks)):
                modules = (f'layers.{s}.downsample',) * (b == 0) + (f'layers.{s}.blocks.{b}',)
                out.append(Unit(s, b, modules, info['num_chs'], info['reduction']))
        return out

    def stem(self, model: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
        return model.patch_embed(x)

    def finish(self, model: SwinTransformer, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)

    def check_input(self, model: SwinTransformer, x: torch.Tensor) -> None:
        size, pe = tuple(x.shape[-2:]), model.patch_embed
        if pe.strict_img_size and size != tuple(pe.img_size):
            raise ValueError(f'input size {size} does not match the Swin anchors\' fixed image size '
                             f'{tuple(pe.img_size)} (their attention windows are built for it); '
                             f'build the model with img_size={size[0]} or resize')
        if any(n % p for n, p in zip(size, pe.patch_size)):
            raise ValueError(f'input image size {size} must be a multiple of the patch size {pe.patch_size}')
