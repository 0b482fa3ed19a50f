"""Qwen3-VL vision adapters over timm's Qwen3VitEncoder and Qwen3VitClassifier (the encoder under `encoder.`): tokens
(B, N, C) with no prefix tokens, one stage of equal EVA blocks with axial RoPE.

The stem is `patch_embed` and `_pos_embed` (the learned position grid resampled to the patch grid). timm builds the
rotary embedding for each input's patch grid and passes it to every block: `run_module` asks the block's own anchor
for it, on the grid of the built image size where the token count is its own, else a square one (`patch_grid`), so
the anchors take their built size or square inputs (`check_input` refuses others). `finish` restores timm's NHWC
features and, where the encoder has it (`encoder_pool='merge'`), runs the VLM projector `merger`: head-side, as timm's
forward_features ends. The classifier's head is timm's forward_head; the encoder's is what its `forward` runs after
forward_features (the projector, a mean or nothing), as it has no classifier.
"""
import torch
import torch.fx
from timm.models.qwen3_vit import Qwen3VitClassifier, Qwen3VitEncoder, resample_pos_embed_grid
from torch import nn

from ._base import Family, Unit, patch_grid, register_family

# an fx leaf, as timm registers it; fx wraps it where it is called through these globals (timm's own `_pos_embed`
# only while the encoder's `forward` runs, which an SN-Net never calls)
torch.fx.wrap('resample_pos_embed_grid')


def _encoder(model: nn.Module) -> Qwen3VitEncoder:
    return model.encoder if isinstance(model, Qwen3VitClassifier) else model


@register_family
class Qwen3VitEncoderFamily(Family):
    model_cls = Qwen3VitEncoder
    layout = 'tokens'
    prefix = ''  # where the encoder sits in the model
    stem_names = ('patch_embed', 'pos_embed')
    shared_names = ('rope',)  # buffers only: every unit builds its rotary embedding from it
    taps = 'block'
    intermediate_fmts = ('NCHW', 'NLC')

    def units(self, model: nn.Module) -> list[Unit]:
        enc = _encoder(model)
        reduction = enc.patch_embed.feat_ratio()
        return [Unit(0, i, (f'{self.prefix}blocks.{i}',), enc.embed_dim, reduction) for i in range(len(enc.blocks))]

    def stem(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """timm's `_pos_embed` on the patches, less its rotary table (each block's is built in `run_module`)."""
        enc = _encoder(model)
        x = enc.patch_embed(x)
        b, h, w, c = x.shape
        return x.reshape(b, h * w, c) + resample_pos_embed_grid(enc.pos_embed, enc.pos_embed_grid_size, (h, w)).to(
            x.dtype)

    def run_module(self, model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        enc = _encoder(model)
        return model.get_submodule(name)(x, rope=enc.rope.get_embed(shape=patch_grid(enc, x.shape[1])))

    def finish(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        enc = _encoder(model)
        return x.reshape(x.shape[0], *patch_grid(enc, x.shape[1]), x.shape[-1])

    def head(self, model: Qwen3VitEncoder, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.ndim == 3:  # tokens (a stitched route without `finish`)
            x = x.reshape(x.shape[0], *patch_grid(model, x.shape[1]), x.shape[-1])
        if model.merger is not None:
            return model.merger(x, pre_logits=pre_logits)
        return x.mean(dim=(1, 2)) if model.global_pool == 'avg' else x

    def check_input(self, model: nn.Module, x: torch.Tensor) -> None:
        super().check_input(model, x)
        pe = _encoder(model).patch_embed
        grid, built = pe.dynamic_feat_size(tuple(x.shape[-2:])), tuple(pe.grid_size)
        if grid != built and (grid[0] != grid[1] or grid[0] * grid[1] == built[0] * built[1]):
            raise ValueError(f'input size {tuple(x.shape[-2:])} (patch grid {grid}) is not one a Qwen3 ViT anchor '
                             f'takes in an SN-Net: its blocks read the patch grid from their token count, so it takes '
                             f'its built grid {built} (img_size) or square grids of other sizes')


@register_family
class Qwen3VitClassifierFamily(Qwen3VitEncoderFamily):
    model_cls = Qwen3VitClassifier
    prefix = 'encoder.'
    stem_names = ('encoder.patch_embed', 'encoder.pos_embed')
    shared_names = ('encoder.rope',)

    def finish(self, model: Qwen3VitClassifier, x: torch.Tensor) -> torch.Tensor:
        x = super().finish(model, x)
        return x if model.encoder.merger is None else model.encoder.merger(x)

    def head(self, model: Qwen3VitClassifier, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return model.forward_head(x, pre_logits=pre_logits)
