"""Family adapters: how to cut one timm anchor into stem, blocks (units) and head.

An adapter is stateless; it reads a timm model and answers in module names and activation specs, so the engine
never learns what a ViT, Swin or ResNet is. Importing this package registers every adapter below.
"""
from . import (  # noqa: F401  (each registers its adapter)
    beit,
    byobnet,
    cait,
    convnext,
    cpubone,
    cspnet,
    davit,
    edgenext,
    efficientformer_v2,
    efficientnet,
    efficientvit_mit,
    efficientvit_msra,
    eva,
    fasternet,
    fastvit,
    focalnet,
    ghostnet,
    hgnet,
    iformer,
    levit,
    lowformer,
    mambaout,
    maxxvit,
    metaformer,
    metanext,
    mlp_mixer,
    mobilenetv3,
    nextvit,
    nfnet,
    qwen3_vit,
    regnet,
    repvit,
    resnet,
    resnetv2,
    senet,
    starnet,
    swiftformer,
    swin,
    swin_v2,
    tiny_vit,
    tresnet,
    vit,
    vit_relpos,
    xcit,
)
from ._base import Family, Layout, Unit, can_stitch, family_for, register_family, registered_families

__all__ = ['Family', 'Layout', 'Unit', 'can_stitch', 'family_for', 'register_family', 'registered_families']
