"""ViT / DeiT adapters over timm's VisionTransformer and VisionTransformerDistilled: tokens (B, N, C), one stage of
equal blocks."""
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from ._base import Family, Unit, register_family


@register_family
class ViTFamily(Family):
    model_cls = VisionTransformer
    layout = 'tokens'
    stem_names = ('patch_embed', 'cls_token', 'reg_token', 'pos_embed', 'norm_pre')
    taps = 'block'
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')

    def units(self, model: VisionTransformer) -> list[Unit]:
        reduction = model.patch_embed.patch_size[0]
        return [Unit(0, i, (f'blocks.{i}',), model.embed_dim, reduction) for i in range(len(model.blocks))]

    def stem(self, model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        return model.norm_pre(x)

    def finish(self, model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)

    def prefix_tokens(self, model: VisionTransformer) -> int:
        return model.num_prefix_tokens


@register_family
class DistilledViTFamily(ViTFamily):
    """DeiT with a distillation token: timm's `_pos_embed` adds the token (so the stem owns it) and `forward_head`
    reads both prefix tokens, averaging `head` and `head_dist` (or returning both in distilled training), as in timm.
    The intermediates drop both prefix tokens (`num_prefix_tokens` is 2)."""
    model_cls = VisionTransformerDistilled
    stem_names = ViTFamily.stem_names + ('dist_token',)
