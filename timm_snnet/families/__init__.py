"""Family adapters: how to cut one timm anchor into stem, blocks (units) and head.

An adapter is stateless; it reads a timm model and answers in module names and activation specs, so the engine
never learns what a ViT, Swin or ResNet is. Importing this package registers every adapter.
"""
from . import resnet, swin, vit  # noqa: F401  (each registers its adapter)
from ._base import Family, Layout, Unit, family_for, register_family

__all__ = ['Family', 'Layout', 'Unit', 'family_for', 'register_family']
