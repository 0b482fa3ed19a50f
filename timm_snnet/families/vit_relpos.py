"""ViT with relative position bias adapter over timm's VisionTransformerRelPos: tokens (B, N, C), one stage of equal
blocks (pre-norm, or residual post-norm in the '_rpn' models), each owning its relative position bias (sized for
the patch grid: the anchors take their fixed image size).

The stem is `patch_embed` and the class token (where the model has one); `norm` ends forward_features (identity
where `fc_norm` pools in the head). A bias shared by all blocks (`shared_rel_pos=True`: a learnable module every
block reads) is refused.
"""
import torch
from timm.models.vision_transformer_relpos import VisionTransformerRelPos

from ._base import Family, Unit, block_units, register_family


@register_family
class VisionTransformerRelPosFamily(Family):
    model_cls = VisionTransformerRelPos
    layout = 'tokens'
    stem_names = ('patch_embed', 'cls_token')
    taps = 'block'
    norm_names = ('norm',)
    intermediate_fmts = ('NCHW', 'NLC')
    label, fixed_size_reason = 'ViT-RelPos', 'their relative position biases are built for it'

    def units(self, model: VisionTransformerRelPos) -> list[Unit]:
        if model.shared_rel_pos is not None:
            raise ValueError('VisionTransformerRelPos anchors with a shared relative position bias '
                             '(shared_rel_pos=True) are not supported: its learnable module feeds every block, so no '
                             'block could be cut from it')
        return block_units(model)

    def stem(self, model: VisionTransformerRelPos, x: torch.Tensor) -> torch.Tensor:
        x = model.patch_embed(x)
        if model.cls_token is not None:
            x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x

    def finish(self, model: VisionTransformerRelPos, x: torch.Tensor) -> torch.Tensor:
        return model.norm(x)

    def prefix_tokens(self, model: VisionTransformerRelPos) -> int:
        return model.num_prefix_tokens
