"""Training-time behaviour of an SN-Net: stitch sampling weights and what the optimizer does off the sampled path.

The paper's semantics (`off_path='skip'`, the default): a parameter that no training forward since the last
optimizer step used gets no update at all (no weight decay, no momentum), as in the authors' DDP training with
`find_unused_parameters`, and on-path parameters get exactly that loop's update. Two parts make it so:
- Without a process group, off-path parameters never enter the graph: their gradient stays None (after
  `zero_grad()`, set_to_none by default), and every torch / timm optimizer skips parameters without a gradient.
- Under DDP (timm's plain `DistributedDataParallel`, no `find_unused_parameters`), every parameter must join the
  graph. They join with an undefined gradient: DDP's reducer then zero-fills their bucket slots itself (no
  allocation in autograd). A global optimizer step pre-hook drops the gradient (`p.grad = None`) of every parameter
  of an SN-Net that no training forward since the last step used (the union of the sampled routes, so gradient
  accumulation works), so the optimizer skips them there too.
`off_path='zero'` keeps this package's v1 behaviour: off-path parameters get exact zero gradients every step, and
optimizers update them (weight decay, momentum).
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

if TYPE_CHECKING:
    from ._snnet import SNNet

OFF_PATH_MODES = ('skip', 'zero')


def check_off_path(mode: str) -> str:
    if mode not in OFF_PATH_MODES:
        raise ValueError(f"off_path must be 'skip' (the paper: no update off the sampled path) or 'zero' "
                         f"(zero gradients, optimizers still update), got {mode!r}")
    return mode


def anchor_share_weights(num_anchors: int, num_configs: int, share: float) -> list[float]:
    """Sampling weights giving the anchors `share` of the steps in all, the rest uniform over the stitches."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f'anchor_share is the anchors\' total sampling probability, a number in [0, 1]; '
                         f'got {share!r}')
    stitches = num_configs - num_anchors
    if stitches <= 0:
        raise ValueError(f'anchor_share needs stitches to share the steps with; {num_configs} configs, '
                         f'{num_anchors} anchors')
    return [share / num_anchors] * num_anchors + [(1.0 - share) / stitches] * stitches


def distributed() -> bool:
    """A process group is initialised (DDP may wrap the model)."""
    return dist.is_available() and dist.is_initialized()


class JoinOffPath(torch.autograd.Function):
    """Identity on `x` with `params` as inputs, so DDP sees every parameter in the graph.

    Their gradient is zero (`zero=True`, v1 semantics) or undefined (DDP zero-fills its buckets; nothing allocated).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, zero: bool, *params: torch.Tensor) -> torch.Tensor:
        ctx.specs = [(p.shape, p.dtype, p.device) for p in params] if zero else [None] * len(params)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        zeros = (None if s is None else torch.zeros(s[0], dtype=s[1], device=s[2]) for s in ctx.specs)
        return (grad, None, *zeros)


class PathLedger:
    """Per model: the routes its training forwards used since the last optimizer step, and per-route parameter caches.

    Holds the model's parameters (not the model), so ids stay unique while it lives.
    """

    def __init__(self, model: SNNet):
        self.params = {id(p): p for p in model.parameters()}
        self.off_params: dict[int, list[torch.Tensor]] = {}
        self.on_ids: dict[int, frozenset[int]] = {}
        self.used: set[int] = set()
        self.stepped = False

    def off_path(self, model: SNNet, stitch_id: int) -> list[torch.Tensor]:
        if stitch_id not in self.off_params:
            names = model.off_path_names(stitch_id)
            self.off_params[stitch_id] = [getattr(model.get_submodule(m), p) for m, p in names]
        return self.off_params[stitch_id]

    def record(self, model: SNNet, stitch_id: int) -> None:
        if self.stepped:  # the first forward after an optimizer step starts a new union
            self.used.clear()
            self.stepped = False
        if stitch_id not in self.on_ids:
            off = {id(p) for p in self.off_path(model, stitch_id)}
            self.on_ids[stitch_id] = frozenset(i for i in self.params if i not in off)
        self.used.add(stitch_id)

    def drop_unused_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """Set `grad = None` on this model's parameters in `optimizer` that no forward since the last step used."""
        on = frozenset().union(*(self.on_ids[k] for k in self.used))
        for group in optimizer.param_groups:
            for p in group['params']:
                if p.grad is not None and self.params.get(id(p)) is p and id(p) not in on:
                    p.grad = None
        self.stepped = True


_LEDGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ledger(model: SNNet) -> PathLedger:
    book = _LEDGERS.get(model)
    if book is None:
        book = _LEDGERS[model] = PathLedger(model)
    return book


def forget(model: SNNet) -> None:
    """Drop a model's caches (after its parameters were replaced, e.g. by `reset_classifier`)."""
    _LEDGERS.pop(model, None)


def _skip_off_path(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Global optimizer step pre-hook: no update for SN-Net parameters off every path used since the last step."""
    for model, book in list(_LEDGERS.items()):
        if book.used and model.off_path == 'skip':
            book.drop_unused_grads(optimizer)


_hook = register_optimizer_step_pre_hook(_skip_off_path)

