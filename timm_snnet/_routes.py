"""Dotted-name helpers for what a route owns: `owned` (a name under some prefixes) and `prune` (drop the rest).

`_routenet.RouteNet` runs routes and names what each one owns; the FLOPs table counts with the same names.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

__all__ = ['owned', 'prune']


def owned(name: str, prefixes: Sequence[str]) -> bool:
    """`name` is one of `prefixes` or lies under one of them (dotted module paths)."""
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def prune(model: nn.Module, keep: Callable[[str], bool]) -> None:
    """Drop every module and tensor of `model` holding nothing that `keep` accepts: a module becomes `nn.Identity`
    (so sequence indices stay), a parameter or buffer of a kept module becomes None."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    kept = {n for n in names if keep(n)}
    needed = {'.'.join(n.split('.')[:i]) for n in kept for i in range(1, n.count('.') + 2)}
    for name in names:
        if name in kept:
            continue
        parts = name.split('.')
        i = next(i for i in range(1, len(parts) + 1) if '.'.join(parts[:i]) not in needed)
        parent, attr = model.get_submodule('.'.join(parts[:i - 1])), parts[i - 1]
        if attr in parent._modules:
            parent._modules[attr] = nn.Identity()
        elif attr in parent._parameters or attr in parent._buffers:
            setattr(parent, attr, None)
