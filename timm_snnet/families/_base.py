"""The adapter base: `Family` (how to cut one timm anchor into stem, units and head), the registry, `can_stitch`,
and what several adapters share (the input-size check, tokens to NCHW maps, stages from timm's feature_info, CNN
stems)."""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence, Union

import timm
import torch
from timm.models._input import get_model_input_config
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing

Layout = Literal['tokens', 'nhwc', 'nchw']


@dataclass(frozen=True)
class Unit:
    """One cut-able block: the modules it runs in order, its stage, stage-local block id and output spec."""
    stage: int
    block: int
    modules: tuple[str, ...]
    channels: int
    reduction: int


class Family:
    """Base adapter. Subclasses set `model_cls`, `layout`, `stem_names` and implement `units`, `stem`, `finish`."""
    model_cls: type = nn.Module
    layout: Layout = 'tokens'
    stem_names: tuple[str, ...] = ()  # modules / parameters that run before the first unit
    # feature extraction (timm's forward_intermediates semantics for the family)
    taps: Literal['stage', 'block'] = 'stage'  # one feature per stage (at its end), or one per block (ViT)
    norm_names: tuple[str, ...] = ()  # the final norm that `finish` applies (and `forward_intermediates(norm=True)`)
    shared_names: tuple[str, ...] = ()  # modules without parameters that every unit of the anchor reads (Eva's RoPE)
    intermediate_fmts: tuple[str, ...] = ('NCHW',)  # output formats forward_intermediates can give
    head_keeps_pool: bool = False  # the head pools ahead of its own layers, timm cannot turn it off (EarlyPool)
    # what the input-size error says of a fixed-size anchor: its family and why its size is fixed
    label: str = ''  # e.g. 'Swin'
    fixed_size_reason: str = ''  # e.g. 'their attention windows are built for it'

    def units(self, model: nn.Module) -> list[Unit]:
        raise NotImplementedError

    def stem(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The tail of `forward_features` after the last unit (the final norm), identity by default."""
        return x

    def feature_norm(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The final norm alone (`norm_names`), as timm's `forward_intermediates(norm=True)` applies it; never a head
        conv that `finish` may also run (EfficientNet's conv_head, RegNet's final_conv)."""
        for name in self.norm_names:
            x = model.get_submodule(name)(x)
        return x

    def run_module(self, model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run one of a unit's modules; override when timm's forward passes it more than the activation (e.g. RoPE)."""
        return model.get_submodule(name)(x)

    def head(self, model: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return model.forward_head(x, pre_logits=pre_logits)

    def reset_head(self, model: nn.Module, num_classes: int, global_pool: Optional[str] = None, **kwargs) -> None:
        """timm's `reset_classifier` on the anchor, with the `kwargs` it takes (ConvNeXt's `reset_other`)."""
        accepted = inspect.signature(model.reset_classifier).parameters
        extra = {k: v for k, v in kwargs.items() if k in accepted}
        if global_pool is None:
            model.reset_classifier(num_classes, **extra)
        else:
            model.reset_classifier(num_classes, global_pool, **extra)

    def prefix_tokens(self, model: nn.Module) -> int:
        """Tokens before the patch tokens (class, distillation, register tokens) in the `tokens` layout."""
        return 0

    def check_input(self, model: nn.Module, x: torch.Tensor) -> None:
        """Raise a clear ValueError for inputs the anchor cannot take: any size but the fixed one of an anchor that
        timm's input config says takes one size only (an override adds the family's own checks)."""
        size, fixed = tuple(x.shape[-2:]), fixed_input_size(model)
        if fixed is not None and size != fixed:
            whose = f'the {self.label} anchors\'' if self.label else 'the anchors\''
            why = f' ({self.fixed_size_reason})' if self.fixed_size_reason else ''
            raise ValueError(f'input size {size} does not match {whose} fixed image size {fixed}{why}; build the model '
                             f'with img_size={size[0] if size[0] == size[1] else size} or resize')

    def stem_taps(self, model: nn.Module) -> list[dict]:
        """timm feature_info entries that sit inside the stem (e.g. ResNet's `act1`); none by default."""
        return []

    def stem_intermediates(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's output and its `stem_taps` features."""
        return self.stem(model, x), []

    def prune_stem(self, model: nn.Module) -> None:
        """Make the stem end at its last tap (features pruned to a stem feature)."""

    def intermediate(self, model: nn.Module, x: torch.Tensor, output_fmt: str, img_size: Sequence[int],
                     reduction: int) -> torch.Tensor:
        """A unit's output (`reduction` of the input `img_size`) as a feature in `output_fmt` (NCHW by default), as
        timm's forward_intermediates gives it: tokens without the prefix tokens, as NLC or on the patch grid."""
        if self.layout == 'nhwc':
            return x.permute(0, 3, 1, 2).contiguous()
        if self.layout == 'tokens':
            x = x[:, self.prefix_tokens(model):]
            return x if output_fmt == 'NLC' else tokens_to_nchw(x, img_size, reduction)
        return x


_FAMILIES: list[Family] = []


def register_family(family: type[Family]) -> type[Family]:
    _FAMILIES.append(family())
    return family


def registered_families() -> tuple[Family, ...]:
    """Every registered adapter, in registration order."""
    return tuple(_FAMILIES)


def family_for(model: nn.Module) -> Family:
    """The adapter of `model`'s class or, for a subclass, of its nearest registered base class."""
    for cls in type(model).__mro__:
        for family in _FAMILIES:
            if family.model_cls is cls:
                return family
    name = type(model).__name__
    known = sorted(f.model_cls.__name__ for f in _FAMILIES)
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f'nearest supported: {", ".join(near)}' if near else f'supported anchor classes: {", ".join(known)}'
    raise TypeError(f'no SN-Net adapter for {name} ({type(model).__module__}); {hint}')


def can_stitch(model_or_name: Union[nn.Module, str]) -> bool:
    """Whether an anchor (a model, or a timm model name, built on the meta device) has an adapter giving it units."""
    if isinstance(model_or_name, str):
        with torch.device('meta'):
            model = timm.create_model(model_or_name)
    else:
        model = model_or_name
    try:
        return len(family_for(model).units(model)) > 0
    except (TypeError, AttributeError, KeyError, ValueError):
        return False


def pools_first(name: str) -> bool:
    """Whether timm model `name` (tags allowed) is of a class whose head pools ahead of its own layers (`EarlyPool`),
    read from the module of its entry point: nothing is built (a saved config's build stays within its budget)."""
    source, arch = timm.models.parse_model_name(name)
    arch = timm.models.split_model_name_tag(arch)[0]
    if source or not timm.models.is_model(arch):
        return False
    module = timm.models.model_entrypoint(arch).__module__
    families = [f for f in _FAMILIES if f.model_cls.__module__ == module]
    return bool(families) and all(f.head_keeps_pool for f in families)


# --- helpers shared by the adapters ---------------------------------------------------------------------------------
def fixed_input_size(model: nn.Module) -> Optional[tuple[int, int]]:
    """The (H, W) an anchor takes, from timm's input config, where that is its only size; None where it takes any."""
    cfg = get_model_input_config(model)
    return tuple(cfg['input_size'][1:]) if cfg['fixed_input_size'] else None


def tokens_to_nchw(x: torch.Tensor, img_size: Sequence[int], reduction: int) -> torch.Tensor:
    """Patch tokens (B, H * W, C) of an `img_size` input at `reduction` as an NCHW map: the grid rounds down (a
    patch conv's), or up where that is the token count (padding: dynamic_img_pad, LeViT's strided convs)."""
    h, w = (n // reduction for n in img_size)
    if h * w != x.shape[1]:
        h, w = (-(-n // reduction) for n in img_size)
    return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


def patch_grid(model: nn.Module, tokens: int, prefix: int = 0) -> tuple[int, int]:
    """The patch grid (Hp, Wp) of `tokens` tokens (`prefix` of them before the patches) of a token model: the grid
    of its built image size (`patch_embed.grid_size`) where the count is that grid's, else a square grid (a
    dynamic-size anchor's other inputs, or a back anchor whose `patch_embed` an exported stitch pruned). Under fx
    tracing the count is symbolic: the graph computes the square grid's side from it (a square built grid)."""
    n, grid = tokens - prefix, getattr(model.patch_embed, 'grid_size', None)
    if is_fx_tracing():
        if grid is not None and grid[0] != grid[1]:
            raise ValueError(f'fx cannot trace an anchor built for a non-square patch grid {tuple(grid)}')
        side = n.__pow__(0.5).__round__()  # recorded as graph ops on the symbolic count
        return side, side
    if grid is not None and grid[0] * grid[1] == n:
        return tuple(grid)
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f'cannot recover the patch grid of {n} tokens: not the anchor\'s built grid, nor square')
    return side, side


def stage_specs(model: nn.Module, stages: Sequence[str],
                channels_of: Optional[Callable[[int], int]] = None) -> list[tuple[int, int]]:
    """(channels, reduction) of each stage module, from timm's `feature_info`.

    timm lists a stage only where the stride changes after it (EfficientNet, MobileNet, ByobNet); an unlisted stage
    runs at the reduction of the next listed stage (or of the last feature, e.g. ByobNet's `final_conv`), and its
    channels come from `channels_of(stage index)`.
    """
    info = {f['module']: f for f in model.feature_info}
    out = []
    for s, name in enumerate(stages):
        if name in info:
            out.append((info[name]['num_chs'], info[name]['reduction']))
            continue
        if channels_of is None:
            raise KeyError(f'stage {name} of {type(model).__name__} is not in its feature_info')
        after = [info[n]['reduction'] for n in stages[s + 1:] if n in info]
        out.append((channels_of(s), after[0] if after else model.feature_info[-1]['reduction']))
    return out


def stage_units(model: nn.Module, stages: Sequence[str], blocks: str = '', downsample: str = '',
                specs: Optional[Sequence[tuple[int, int]]] = None,
                block_channels: Optional[Callable[[int, int], int]] = None) -> list[Unit]:
    """Units of stages named `stages`: one per child of `<stage>.<blocks>` (of the stage itself if `blocks` is '');
    a stage's `<stage>.<downsample>` module, where it has one, runs first in its block 0 (timm's order).

    With `block_channels(stage, block)` (output channels of each block), a block whose output is not yet at the
    stage's width (e.g. MobileOne's stride-2 depthwise block 0, MobileNetV4's wider first block) joins the next
    block in one unit: every unit of a stage hands on the stage's (channels, reduction), so any cut can be stitched.
    """
    specs = stage_specs(model, stages) if specs is None else specs
    out = []
    for s, (name, (channels, reduction)) in enumerate(zip(stages, specs)):
        stage = model.get_submodule(name)
        container = f'{name}.{blocks}' if blocks else name
        modules = [f'{name}.{downsample}'] if downsample and hasattr(stage, downsample) else []
        children = [child for child, _ in model.get_submodule(container).named_children()]
        for b, child in enumerate(children):
            modules.append(f'{container}.{child}')
            if b == len(children) - 1 or block_channels is None or block_channels(s, b) == channels:
                out.append(Unit(s, sum(u.stage == s for u in out), tuple(modules), channels, reduction))
                modules = []
    return out


def block_units(model: nn.Module) -> list[Unit]:
    """One unit per block of a one-stage model (`blocks.i`), channels and reduction from timm's `feature_info`."""
    return [Unit(0, i, (f'blocks.{i}',), info['num_chs'], info['reduction'])
            for i, info in enumerate(model.feature_info)]


def children_names(model: nn.Module, name: str) -> list[str]:
    """Full names of a container module's children (e.g. `['stages.0', 'stages.1', ...]`)."""
    return [f'{name}.{child}' for child, _ in model.get_submodule(name).named_children()]


def last_conv_channels(module: nn.Module) -> int:
    """Output channels of the last conv a module defines (its output channels for timm's CNN blocks)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f'{type(module).__name__} has no conv to read its output channels from')
    return convs[-1].out_channels


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + '.') for p in prefixes)


class PerPosition(nn.Module):
    """A head's global pool with pooling off: NCHW -> NHWC, so the head's layers after it (linear, norm, activation)
    run at every position. `pool_type` is what timm reads back (`get_model_args`)."""
    pool_type = ''

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class EarlyPool:
    """Mixin for families whose timm head pools ahead of its own layers and asserts on global_pool='' (EfficientViT,
    InceptionNeXt: timm's EARLY_POOL_MODELS). The SN-Net takes global_pool='' all the same, as timm's conv heads do:
    the pool becomes `PerPosition` and the output returns to NCHW, so each position of the map gets what the head
    gives a 1x1 map of that position (the pre-logits features with num_classes=0, else per-position logits)."""
    head_keeps_pool = True

    def drop_pool(self, model: nn.Module) -> None:
        model.head.global_pool = PerPosition().train(model.head.training)
        model.global_pool = ''  # kept in sync with the head, as timm's reset_classifier does

    def reset_head(self, model: nn.Module, num_classes: int, global_pool: Optional[str] = None, **kwargs) -> None:
        super().reset_head(model, num_classes, None if global_pool == '' else global_pool, **kwargs)
        if global_pool == '':
            self.drop_pool(model)

    def head(self, model: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = super().head(model, x, pre_logits=pre_logits)
        return x.permute(0, 3, 1, 2) if isinstance(model.head.global_pool, PerPosition) else x


class CNNFamily(Family):
    """An NCHW family whose stem is the modules `stem_names` run in order (timm's CNNs); the stem's features are
    timm's feature_info entries at or inside those modules (a Sequential stem is run child by child to take them)."""
    layout: Layout = 'nchw'
    stem_names = ('stem',)

    def stem(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for name in self.stem_names:
            x = model.get_submodule(name)(x)
        return x

    def stem_taps(self, model: nn.Module) -> list[dict]:
        return [dict(f) for f in model.feature_info if _under(f['module'], self.stem_names)]

    def stem_intermediates(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taps, out = {f['module'] for f in self.stem_taps(model)}, []
        for name in self.stem_names:
            module = model.get_submodule(name)
            if isinstance(module, nn.Sequential) and any(t.startswith(name + '.') for t in taps):
                for child, layer in module.named_children():
                    x = layer(x)
                    if f'{name}.{child}' in taps:
                        out.append(x)
            else:
                x = module(x)
            if name in taps:
                out.append(x)
        return x, out

    def prune_stem(self, model: nn.Module) -> None:
        """Everything in the stem after its last tap becomes nn.Identity."""
        taps = self.stem_taps(model)
        if not taps:
            return
        last, done = taps[-1]['module'], False
        for name in self.stem_names:
            if done:
                parent, _, attr = name.rpartition('.')
                setattr(model.get_submodule(parent), attr, nn.Identity())
            elif last.startswith(name + '.'):
                module = model.get_submodule(name)
                children = [c for c, _ in module.named_children()]
                for child in children[children.index(last[len(name) + 1:]) + 1:]:
                    setattr(module, child, nn.Identity())
            done = done or _under(last, (name,))
