"""EVA / EVA-02 adapter over timm's Eva: tokens (B, N, C), one stage of equal blocks, rotary embeddings per block.

timm's `Eva.forward_features` computes the rotary embedding once in `_pos_embed` and passes it to every block as
`rope=` (learnable `rope_type='mixed'` embeddings are refused). The stem keeps the tokens only; `run_module` asks
the block's own anchor for its embedding, as `_pos_embed` does, so a stitched back anchor gets its own (its head dim
may differ). With `dynamic_img_size=True` (DINOv3, Sapiens2, ...) timm builds that embedding for each input's patch
grid, which a block cannot read from its tokens: the grid is the built one where the token count is its own, else
square (`patch_grid`), so such an anchor takes its built image size or square inputs; `check_input` refuses others.
The rope module is `shared_names`: every segment of the anchor keeps it, so an exported stitch keeps each anchor's
rope buffers (rope has no parameters and costs no FLOPs at a fixed image size).
"""
import torch
from timm.models.eva import Eva

from ._base import Unit, patch_grid, register_family
from .vit import ViTFamily


@register_family
class EvaFamily(ViTFamily):
    model_cls = Eva
    # buffers only (learnable ropes are refused): the stem's `_pos_embed` and every unit use it
    shared_names = ('rope',)

    def units(self, model: Eva) -> list[Unit]:
        if model.rope is not None and any(True for _ in model.rope.parameters()):
            raise ValueError(f'Eva anchors with learnable rotary embeddings ({type(model.rope).__name__}, e.g. '
                             f"rope_type='mixed') are not supported: every block of a stitched back anchor would train "
                             f'its rope parameters, which the SN-Net counts in the stem')
        return super().units(model)

    def stem(self, model: Eva, x: torch.Tensor) -> torch.Tensor:
        x = model.patch_embed(x)
        x, _ = model._pos_embed(x)
        return model.norm_pre(x)

    def _rope(self, model: Eva, x: torch.Tensor):
        """The rotary embedding timm's `_pos_embed` gives the blocks (the built image size, no patch dropout)."""
        rope = model.rope
        if rope is None:
            return None
        if getattr(rope, 'feat_shape', None) is not None:
            return rope.get_embed()
        # dynamic_img_size, or a rope without a feat_shape (e.g. MRoPE): the grid shape is explicit
        return rope.get_embed(shape=patch_grid(model, x.shape[1], model.num_prefix_tokens))

    def run_module(self, model: Eva, name: str, x: torch.Tensor) -> torch.Tensor:
        return model.get_submodule(name)(x, rope=self._rope(model, x))

    def check_input(self, model: Eva, x: torch.Tensor) -> None:
        super().check_input(model, x)
        if model.rope is not None and model.dynamic_img_size:
            grid, built = model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])), model.patch_embed.grid_size
            if grid != tuple(built) and (grid[0] != grid[1] or grid[0] * grid[1] == built[0] * built[1]):
                raise ValueError(f'input size {tuple(x.shape[-2:])} (patch grid {grid}) is not one this Eva anchor '
                                 f'takes in an SN-Net: with rotary embeddings and dynamic_img_size=True its blocks '
                                 f'read the patch grid from their token count, so it takes its built grid '
                                 f'{tuple(built)} or square grids of other sizes')
        if model.rope is not None and model.training:
            if model.patch_drop is not None:
                raise ValueError('Eva anchors with rotary embeddings cannot train with patch dropout in an SN-Net: the '
                                 'kept-token indices would have to reach every block; set patch_drop_rate=0')
            if getattr(model.rope, 'aug_active', False):
                raise ValueError('Eva anchors with train-time RoPE coordinate augmentation (rope_shift_coords, '
                                 'rope_jitter_coords, rope_rescale_coords) are not supported in an SN-Net: timm draws '
                                 'one augmentation per forward, shared by all blocks')
