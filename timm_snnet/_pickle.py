"""Reading untrusted pickled checkpoints: `torch.load(weights_only=True)` with one small allowlist.

Tensors and plain containers, plus the run configurations that training scripts pickle beside the weights:
`argparse.Namespace` (timm's train.py `args`, the authors' DeiT and ResNet `args`) and yacs `CfgNode` (the authors'
Swin `config`), which is rebuilt as a plain OrderedDict: its class is never imported or run. Anything else fails
before a single object is built, naming the globals.
"""
from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from typing import Any, Union

import torch

from ._errors import UnsafeCheckpointError

__all__ = ['SAFE_GLOBALS', 'UnsafeCheckpointError', 'read_pickle']


class _ConfigAsDict:
    """Stands in for a pickled config class (yacs CfgNode): its content is rebuilt as a plain OrderedDict."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:
        return OrderedDict()


SAFE_GLOBALS = [argparse.Namespace, (_ConfigAsDict, 'yacs.config.CfgNode')]
_SAFE_NAMES = ('argparse.Namespace', 'yacs.config.CfgNode')


def read_pickle(path: Union[str, os.PathLike]) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, allowing only SAFE_GLOBALS beyond tensors and containers."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        other = [g for g in unsafe if g not in _SAFE_NAMES]
        raise UnsafeCheckpointError(
            f'{path} holds pickled objects that weights_only=True does not build ({", ".join(other) or e}). '
            f'Only tensors, plain containers, argparse.Namespace and yacs CfgNode are read; nothing else is '
            f'unpickled or run. Only if you trust the file: save its state dict as .safetensors yourself and pass '
            f'that file.') from e
