"""Training-time behaviour of an SN-Net off the sampled path: what the optimizer and DDP do there (sampling: see
`_sampling.Sampler`).

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

Communication under DDP (`off_path='skip'`): DDP's reducer would all-reduce every gradient bucket of the whole SN-Net
each step, though off-path slots hold zeros on every rank and every rank knows which (all draw the same stitches).
At its first training forward inside a `DistributedDataParallel`, an SN-Net registers a DDP communication hook
(`path_comm_hook`) on it. It finds that DDP without any change to train.py: DDP runs the wrapped module's forward
inside `DistributedDataParallel._inside_ddp_forward()`, which sets the class attribute
`DistributedDataParallel._active_ddp_module` to itself (torch keeps it for TorchDynamo's DDP optimizer), so
`SNNet.forward` reads the DDP that is running it. For each bucket the hook all-reduces only the slice from the first
to the last parameter on the union of the routes used since the last optimizer step (the ledger below; with
gradient accumulation under `no_sync`, that union is what the synchronising backward carries), scaled by 1/world
first exactly as DDP's reducer does; a bucket with nothing on that union is returned as it is (zeros), without
communication. Off the union every rank holds zeros (undefined gradients zero-filled by the reducer), and the
optimizer pre-hook sets those gradients to None anyway, so parameters and optimizer state are bit-identical to the
full all-reduce. Where the hook cannot be installed safely (the DDP already has a communication hook, e.g. mixed
precision or compression hooks; the SN-Net is not inside the running DDP; DDP under torch.compile's python reducer,
which sets no active module; `ddp.join()` for uneven inputs at backward time) one line is logged and every bucket is
all-reduced as before.
"""
from __future__ import annotations

import logging
import weakref
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

# the SN-Net these hooks serve (`_snnet.SNNet`, the layer above, passes itself): typed as the module it is
SNNetLike = torch.nn.Module

_logger = logging.getLogger(__name__)

OFF_PATH_MODES = ('skip', 'zero')


def check_off_path(mode: str) -> str:
    if mode not in OFF_PATH_MODES:
        raise ValueError(f"off_path must be 'skip' (the paper: no update off the sampled path) or 'zero' "
                         f"(zero gradients, optimizers still update), got {mode!r}")
    return mode


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

    def __init__(self, model: SNNetLike):
        self.params = {id(p): p for p in model.parameters()}
        self.off_params: dict[int, list[torch.Tensor]] = {}
        self.on_ids: dict[int, frozenset[int]] = {}
        self.used: set[int] = set()
        self.stepped = False

    def off_path(self, model: SNNetLike, stitch_id: int) -> list[torch.Tensor]:
        if stitch_id not in self.off_params:
            names = model.off_path_names(stitch_id)
            self.off_params[stitch_id] = [getattr(model.get_submodule(m), p) for m, p in names]
        return self.off_params[stitch_id]

    def record(self, model: SNNetLike, stitch_id: int) -> None:
        if self.stepped:  # the first forward after an optimizer step starts a new union
            self.used.clear()
            self.stepped = False
        if stitch_id not in self.on_ids:
            off = {id(p) for p in self.off_path(model, stitch_id)}
            self.on_ids[stitch_id] = frozenset(i for i in self.params if i not in off)
        self.used.add(stitch_id)

    def on_union(self) -> frozenset[int]:
        """Ids of this model's parameters on some route used since the last optimizer step."""
        key = frozenset(self.used)
        if self._union_key != key:
            self._union_key, self._union = key, frozenset().union(*(self.on_ids[k] for k in key))
        return self._union

    _union_key: Optional[frozenset] = None
    _union: frozenset = frozenset()

    def drop_unused_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """Set `grad = None` on this model's parameters in `optimizer` that no forward since the last step used."""
        on = self.on_union()
        for group in optimizer.param_groups:
            for p in group['params']:
                if p.grad is not None and self.params.get(id(p)) is p and id(p) not in on:
                    p.grad = None
        self.stepped = True


_LEDGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ledger(model: SNNetLike) -> PathLedger:
    book = _LEDGERS.get(model)
    if book is None:
        _register_hook()
        book = _LEDGERS[model] = PathLedger(model)
    return book


def forget(model: SNNetLike) -> None:
    """Drop a model's caches (after its parameters were replaced, e.g. by `reset_classifier`)."""
    _LEDGERS.pop(model, None)


def _skip_off_path(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Global optimizer step pre-hook: no update for SN-Net parameters off every path used since the last step."""
    for model, book in list(_LEDGERS.items()):
        if book.used and model.off_path == 'skip':
            book.drop_unused_grads(optimizer)


_hook: Optional[RemovableHandle] = None


def _register_hook() -> None:
    """Register `_skip_off_path` once, with the first ledger: importing the package changes no optimizer."""
    global _hook
    if _hook is None:
        _hook = register_optimizer_step_pre_hook(_skip_off_path)



# --- DDP: communicate only the sampled paths ------------------------------------------------------------------------
class PathComm:
    """State of `path_comm_hook` on one DDP: the SN-Nets inside it, per-bucket plans, and byte counts.

    Counts (cumulative; take differences per step): `bytes_reduced` all-reduced by the hook, `bytes_full` what DDP's
    default hook would have all-reduced, `bytes_buckets` the whole buckets with something on a used route (what
    skipping whole buckets only would send), `buckets` / `buckets_skipped` seen / not communicated, `syncs`
    backward passes that synchronised (the last bucket of each).

    With 2 ranks (or 1) the hook all-reduces the slice of a bucket between its first and last on-path parameter:
    a sum of two addends does not depend on how the collective splits the buffer, so this is bit-exact. With more
    ranks a ring all-reduce's summation order depends on the chunking, so a bucket is all-reduced whole or not at
    all, which keeps the result bit-identical to DDP's own all-reduce.

    Off-path gradients: DDP's reducer gives a parameter without a gradient a fresh copy of its (zero) bucket slot
    after the all-reduce (with `gradient_as_bucket_view=False`, train.py's default); for a whole SN-Net that is a
    full-model allocation and copy per step, dropped again by the optimizer pre-hook. The hook instead sets such a
    parameter's `.grad` to a view of its zero slot, laid out as the reducer's own view, which the reducer's copy
    then skips (same memory). The next training forward replaces any such view still set (no optimizer step came
    in between) by a copy, as the reducer asserts that no gradient aliases its bucket.
    """

    def __init__(self, ddp: torch.nn.Module):
        self.group = ddp.process_group
        self.world = self.group.size()
        self.ddp = weakref.ref(ddp)  # the reducer holds this state: no strong cycle through it
        self.whole = self.world > 2  # see the class docstring
        self.alias = not ddp.gradient_as_bucket_view  # with bucket views the reducer allocates nothing itself
        self.enabled = True  # False: every bucket all-reduced whole, as DDP's own hook (benchmarks compare both)
        self.models: list[weakref.ref] = []
        self.plans: dict[tuple, tuple[int, int, tuple]] = {}
        self.aliased: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bytes_reduced = self.bytes_full = self.bytes_buckets = self.buckets = self.buckets_skipped = 0
        self.syncs = 0

    def add(self, model: SNNetLike) -> None:
        if not self.holds(model):
            self.models.append(weakref.ref(model))

    def holds(self, model: SNNetLike) -> bool:
        return any(r() is model for r in self.models)

    def _paths(self) -> tuple:
        """Per SN-Net in this DDP whose off-path slots are known zeros: (ledger, union key); others count as on."""
        out = []
        for ref in self.models:
            model = ref()
            book = None if model is None or model.off_path != 'skip' else _LEDGERS.get(model)
            if book is not None and book.used:
                out.append((book, frozenset(book.used)))
        return tuple(out)

    def plan(self, bucket, buf: torch.Tensor) -> tuple[int, int, tuple]:
        """[start, stop) elements of the bucket to all-reduce ((0, 0): none), from its first to its last parameter on
        a route used since the last step; and (parameter, offset) of each parameter off those routes."""
        params = bucket.parameters()
        paths = self._paths()
        key = (tuple(map(id, params)), tuple((id(b), u) for b, u in paths))
        found = self.plans.get(key)
        if found is None:
            books = [b for b, _ in paths]
            unions = [b.on_union() for b in books]
            base, lo, hi, off = buf.storage_offset(), None, 0, []
            for p, g in zip(params, bucket.gradients()):
                start = g.storage_offset() - base
                owner = next((i for i, b in enumerate(books) if b.params.get(id(p)) is p), None)
                if owner is None or id(p) in unions[owner]:  # not an SN-Net's (or unknown): always communicated
                    lo, hi = start if lo is None else min(lo, start), max(hi, start + g.numel())
                elif p.is_contiguous() and p.dtype == buf.dtype:
                    off.append((p, start))
            if len(self.plans) > 4096:
                self.plans.clear()
            lo, hi = (0, 0) if lo is None else (0, buf.numel()) if self.whole else (lo, hi)
            found = self.plans[key] = (lo, hi, tuple(off))
        return found

    def unalias(self) -> None:
        """Before a forward: no gradient may still be a view of a bucket (the reducer asserts it)."""
        for p, view in self.aliased:
            if p.grad is view:
                p.grad = view.clone()
        self.aliased.clear()


def path_comm_hook(state, bucket):  # no annotations: DDP checks them against dist.GradBucket / Future[Tensor]
    """DDP communication hook: all-reduce (average) only the bucket's slice on the routes used since the last step."""
    buf = bucket.buffer()
    ddp = state.ddp()
    size = buf.numel() * buf.element_size()
    state.buckets += 1
    state.bytes_full += size
    state.syncs += bucket.is_last()
    joining = ddp is None or ddp._join_config.enable  # uneven inputs: joined ranks shadow every bucket in full
    lo, hi, off = (0, buf.numel(), ()) if joining or buf.is_sparse or not state.enabled else state.plan(bucket, buf)
    if state.alias:
        for p, start in off:  # zero slots on every rank: the reducer's copy into a fresh gradient is skipped
            if p.grad is None:
                p.grad = view = buf.as_strided(p.shape, p.stride(), buf.storage_offset() + start)
                state.aliased.append((p, view))
    if hi <= lo:
        state.buckets_skipped += 1
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut
    part = buf if (lo, hi) == (0, buf.numel()) else buf[lo:hi]
    state.bytes_buckets += size
    state.bytes_reduced += part.numel() * part.element_size()
    part.mul_(1.0 / state.world)  # DDP's reducer multiplies by 1 / world size while it fills the bucket

    def done(fut: torch.futures.Future) -> torch.Tensor:
        fut.value()  # raises if the all-reduce failed
        return buf

    return dist.all_reduce(part, group=state.group, async_op=True).get_future().then(done)


_COMMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # DDP -> PathComm, or None where refused
_NOTED: weakref.WeakSet = weakref.WeakSet()  # models told once that they run outside DDP


def _refusal(ddp: torch.nn.Module, model: SNNetLike) -> Optional[str]:
    if getattr(ddp, 'reducer', None) is None or getattr(ddp, '_delay_all_reduce_all_params', False):
        return 'this DDP has no reducer of its own (delay_all_reduce / python reducer)'
    if getattr(ddp, '_comm_hooks', None):
        names = ', '.join(getattr(h, '__qualname__', repr(h)) for h, _ in ddp._comm_hooks)
        return f'this DDP already has a communication hook ({names}); DDP takes one'
    if not any(m is model for m in ddp.module.modules()):
        return 'the running DistributedDataParallel does not wrap this SN-Net'
    return None


def join_ddp(model: SNNetLike) -> None:
    """At a training forward under a process group (off_path='skip'): install `path_comm_hook` on the DDP running it.

    The DDP is `DistributedDataParallel._active_ddp_module`, which DDP sets around its call of the wrapped module.
    Once per DDP; a refusal is logged once and leaves DDP's own full all-reduce in place.
    """
    ddp = getattr(DistributedDataParallel, '_active_ddp_module', None)
    if ddp is None:
        if model not in _NOTED:
            _NOTED.add(model)
            _logger.info('SN-Net: training under a process group outside a DistributedDataParallel forward; '
                         'no communication hook (gradients are communicated however the wrapper does it)')
        return
    state = _COMMS.get(ddp, False)
    if state is False:
        why = _refusal(ddp, model)
        if why is not None:
            _COMMS[ddp] = None
            _logger.warning(f'SN-Net: every gradient bucket is all-reduced, off-path ones too: {why}')
            return
        state = _COMMS[ddp] = PathComm(ddp)
        state.add(model)
        ddp.register_comm_hook(state, path_comm_hook)
        _logger.info('SN-Net: DDP communication hook installed: gradient buckets are all-reduced only where the '
                     'sampled paths are')
    elif state is not None:
        if state.aliased:
            state.unalias()
        if not state.holds(model):
            state.add(model)


def path_comm(ddp: torch.nn.Module) -> Optional[PathComm]:
    """The communication hook's state (byte counts) on `ddp`, or None if none was installed."""
    return _COMMS.get(ddp)
