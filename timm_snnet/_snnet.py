"""SN-Net engine: anchors, stitching layers, the config table and the active stitch.

The engine knows anchors only through their family adapter (stem, units with activation specs, finish, head).
"""
from __future__ import annotations

import json
import math
import operator
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from timm.models._input import get_model_input_config
from timm.models._manipulate import group_with_matcher
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
from tqdm.auto import tqdm

from ._anchors import create_anchor, load_anchor_checkpoints, parse_anchor_checkpoints, shared_kwargs
from ._configs import (
    Join,
    Route,
    Rule,
    Segment,
    StitchConfig,
    assign_layers,
    enumerate_configs,
    junction_depths,
    junction_stages,
)
from ._exported import export_stitch
from ._features import SNNetFeatures
from ._flops import AnchorCosts, anchor_costs, stitching_layer_cost
from ._routes import owned
from ._sampling import Sampler, Sampling, ros_weights
from ._selection import select_stitch
from ._stitching import LeastSquares, average_affine, stitch_rows
from ._training import JoinOffPath, check_off_path, distributed, forget, join_ddp, ledger
from ._utils import eval_mode
from .families import Unit


def _image_batches(data: Union[torch.Tensor, Iterable], num_images: int, chunk: int) -> Iterator[torch.Tensor]:
    """Image chunks from a tensor batch or an iterable of `(images, ...)` batches, at most `num_images` in all."""
    batches = [data] if isinstance(data, torch.Tensor) else data
    seen = 0
    for batch in batches:
        images = batch if isinstance(batch, torch.Tensor) else batch[0]
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f'expected image batches of shape (B, C, H, W), got {type(images).__name__} '
                             f'{tuple(getattr(images, "shape", ()))}')
        yield from images[:num_images - seen].split(chunk)
        seen += min(len(images), num_images - seen)
        if seen >= num_images:
            return


def _build_anchors(
        anchors: Sequence[str],
        anchor_kwargs: Union[None, dict, Sequence[dict]],
        pretrained: bool,
        checkpoints: Optional[Sequence[Optional[str]]],
        common: dict[str, Any],
) -> list[nn.Module]:
    """The anchors as timm models, with the `common` kwargs each takes and its own, loaded from `checkpoints`."""
    if len(anchors) < 2:
        raise ValueError(f'an SN-Net needs at least 2 anchors, got {list(anchors)}')
    if anchor_kwargs is None or isinstance(anchor_kwargs, dict):
        anchor_kwargs = [dict(anchor_kwargs or {}) for _ in anchors]
    if len(anchor_kwargs) != len(anchors):
        raise ValueError(f'anchor_kwargs has {len(anchor_kwargs)} entries for {len(anchors)} anchors')
    sources = parse_anchor_checkpoints(checkpoints, len(anchors))  # bad entries fail before any download
    models = [create_anchor(name, pretrained and src is None, **{**shared_kwargs(name, common), **kw})
              for name, kw, src in zip(anchors, anchor_kwargs, sources)]
    if checkpoints is not None:
        load_anchor_checkpoints(models, anchors, checkpoints)
    return models


def _sampler_field(name: str, doc: str) -> property:
    """An SNNet attribute that its sampler keeps."""
    return property(lambda self: getattr(self.sampler, name), lambda self, v: setattr(self.sampler, name, v), doc=doc)


class SNNet(SNNetFeatures):
    """Stitchable Neural Network over a family of timm anchors (smallest first).

    Args:
        anchors: timm model names of the anchors, smallest first (tags allowed, e.g. `deit_tiny_patch16_224.fb_in1k`).
        anchor_kwargs: extra kwargs for every anchor (a dict) or for each anchor (a list of dicts).
        names: short display names of the anchors (e.g. `('Ti', 'S', 'B')`).
        rule: `'window'` (isotropic models: sliding window over block ids), `'stage'` (hierarchical models) or
            `'two_way'` (SN-Netv2: two anchors, small -> large, large -> small and round trips).
        stages: stages to stitch in (`'stage'` rule); with `join='reduction'`, indices into `junctions`.
        join: `'stage'` (the paper: anchors meet stage to stage, with equal stage counts) or `'reduction'` (any two
            families: one stage per spatial reduction that the anchors' units run at, `junctions`; an anchor has no
            blocks in the stages of reductions it skips; one stitching layer per stitch).
        kernel_size, stride: the sliding window (`'window'` rule).
        layer_assignment: stitching layer of each stitch, in config order; default one layer per window/front block.
        stitch_id: active config at start; default the largest anchor.
        stitch_seed: seed of the training-time stitch sampler (the same on every rank).
        sampling_weights: relative sampling weight of each config in training; default from `sampling`.
        sampling: `'uniform'` (every config alike) or `'ros'` (SN-Netv2's resource-constrained sampling: a FLOPs
            group uniformly, then a config in it). Configs whose route ends in an empty segment are not sampled.
        flops_gap: width of a ROS FLOPs group in GFLOPs (at the model's input size).
        anchor_share: the anchors' total sampling probability in training (e.g. 0.3), the rest uniform over the
            stitches; instead of `sampling_weights` or `sampling='ros'`.
        off_path: `'skip'` (the paper): parameters off every path sampled since the last optimizer step get no
            update; `'zero'` (v1 of this package): they get zero gradients, and optimizers decay and move them.
        stitch_rank: rank of the low-rank update on frozen least-squares stitching layers (0: dense layers).
        stitched_final_norm: stitched paths end with the back anchor's final norm (False reproduces SN-Net v1 DeiT).
        stitch_table: measured results per config (rows of a sweep), carried in checkpoints for `select_stitch`.
        pretrained_anchors: load each anchor's own timm pretrained weights (anchors without a checkpoint).
        anchor_checkpoints: one entry per anchor: a train.py checkpoint (`ema:PATH` for its EMA weights), a
            `.safetensors` file, `hf-hub:`/`local-dir:` timm model, or None; loaded strictly (see `_anchors`).
        num_classes, in_chans, drop_rate, drop_path_rate, global_pool: passed to every anchor.
        img_size: passed to the anchors with a fixed input size (timm's rule for `img_size`).
        input_mean, input_std: the normalisation of the SN-Net's input (default: the first anchor's). An anchor whose
            own differs in value is fed a fixed affine re-normalisation (`RouteNet.set_input_norm`).
    """

    def __init__(
            self,
            anchors: Sequence[str],
            anchor_kwargs: Union[None, dict, Sequence[dict]] = None,
            names: Optional[Sequence[str]] = None,
            rule: Rule = 'window',
            stages: Sequence[int] = (0,),
            join: Join = 'stage',
            kernel_size: int = 2,
            stride: int = 1,
            layer_assignment: Optional[Sequence[int]] = None,
            stitch_id: Optional[int] = None,
            stitch_seed: int = 0,
            sampling_weights: Optional[Sequence[float]] = None,
            sampling: Sampling = 'uniform',
            flops_gap: float = 1.0,
            anchor_share: Optional[float] = None,
            off_path: str = 'skip',
            stitch_rank: int = 0,
            stitched_final_norm: bool = True,
            stitch_table: Optional[Sequence[dict]] = None,
            pretrained_anchors: bool = False,
            anchor_checkpoints: Optional[Sequence[Optional[str]]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            global_pool: Optional[str] = None,
            img_size: Optional[Union[int, Sequence[int]]] = None,
            input_mean: Optional[Sequence[float]] = None,
            input_std: Optional[Sequence[float]] = None,
            device=None,
            dtype=None,
    ):
        common = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                      global_pool=global_pool, img_size=img_size, device=device, dtype=dtype)
        super().__init__(_build_anchors(anchors, anchor_kwargs, pretrained_anchors, anchor_checkpoints, common),
                         stitched_final_norm)
        self.set_input_norm(input_mean, input_std, in_chans)
        self._anchor_args = dict(anchors=tuple(anchors), anchor_kwargs=anchor_kwargs)  # as built: see live_model_args
        self.anchor_names = tuple(names or (n.split('.')[0] for n in anchors))
        if len(self.anchor_names) != len(anchors):
            raise ValueError(f'{len(self.anchor_names)} names for {len(anchors)} anchors')
        self.in_chans, self.global_pool = in_chans, global_pool

        depths = self._join_depths(join, stages)
        configs, layers = enumerate_configs(depths, stages, rule, kernel_size, stride, join)
        if layer_assignment is not None:
            configs, layers = assign_layers(configs, layers, list(layer_assignment))
        self._configs, self._depths = configs, depths
        if isinstance(stitch_rank, bool) or not isinstance(stitch_rank, int) or stitch_rank < 0:
            raise ValueError(f'stitch_rank must be an integer >= 0 (0: dense stitching layers), got {stitch_rank!r}')
        self.stitch_rank = stitch_rank
        self._routes = [self._route(c) for c in configs]
        joins = {layer: (fc, bc) for _, layer, fc, bc in reversed(self._ls_pairs())}  # each layer's first join
        self.stitch_layers = nn.ModuleList([self.join_layer(*joins[i], rank=stitch_rank, device=device, dtype=dtype)
                                            for i in range(len(layers))])

        self.off_path = check_off_path(off_path)
        self.sampler = Sampler([r.is_complete for r in self._routes], stitch_seed, sampling, flops_gap,
                               sampling_weights, anchor_share, num_anchors=len(anchors))
        self.register_buffer('sample_step', torch.zeros((), dtype=torch.long, device=device))
        self.register_load_state_dict_post_hook(_sync_sample_step)
        self._stitch_id = len(anchors) - 1
        self._pruned_to: Optional[int] = None  # set by prune_intermediate_layers: the one stitch left
        if stitch_id is not None:
            self.set_stitch(stitch_id)
        self.register_buffer('stitch_table_json', torch.zeros(0, dtype=torch.uint8, device=device))
        if stitch_table is not None:
            self.set_stitch_table(stitch_table)
        self._costs: dict = {}

    # --- structure -------------------------------------------------------------------------------------------------
    @staticmethod
    def _stage_depths(units: Sequence[Unit]) -> list[int]:
        depths = [0] * (max(u.stage for u in units) + 1)
        for u in units:
            depths[u.stage] += 1
        return depths

    def _unit_index(self, anchor: int, stage: int, block: int) -> int:
        return sum(self._depths[anchor][:stage]) + block

    def _join_depths(self, join: Join, stages: Sequence[int]) -> list[list[int]]:
        """Each anchor's depth per stage: its own stages (`join='stage'`, equal counts), or one stage per spatial
        reduction its units run at (`'reduction'`: `junctions`)."""
        if join == 'stage':
            depths = [self._stage_depths(u) for u in self._units]
            if len({len(d) for d in depths}) > 1:
                listing = '; '.join(f'{self._describe_anchor(i)}: {len(d)} stage(s) of depths {d}'
                                    for i, d in enumerate(depths))
                raise ValueError(f"these anchors cannot be stitched stage to stage: their stage counts differ "
                                 f"({listing}). Join them where their resolutions meet: join='reduction' (the "
                                 f"generic snnet does it by itself)")
            self.junctions = None
            return depths
        if join != 'reduction':
            raise ValueError(f"unknown join {join!r}: valid joins are 'stage' and 'reduction'")
        self.junctions, depths = junction_depths([[u.reduction for u in units] for units in self._units])
        shared = junction_stages(depths)
        if not shared or not all(d[shared[0]] for d in depths):
            listing = '; '.join(f'{self._describe_anchor(i)}: {sorted({u.reduction for u in units})}'
                                for i, units in enumerate(self._units))
            raise ValueError(f'these anchors cannot be stitched: no spatial reduction is shared by all of them '
                             f'(reductions per anchor: {listing}); a stitching layer joins activations of one size')
        bad = [s for s in stages if not (0 <= s < len(self.junctions) and all(d[s] for d in depths))]
        if bad:
            raise ValueError(f'stages {bad} are not shared by every anchor: with join=\'reduction\' a stage is a '
                             f'reduction ({dict(enumerate(self.junctions))}), and the anchors share stages '
                             f'{[s for s in range(len(depths[0])) if all(d[s] for d in depths)]}')
        return depths

    def _route(self, c: StitchConfig) -> Route:
        """The segments a config runs: the front's stem and units up to block j, then the back's from block k."""
        if c.is_anchor:
            return Route((Segment(c.front, 0, len(self._units[c.front])),))
        front = Segment(c.front, 0, self._unit_index(c.front, c.stage, c.front_block) + 1)
        if c.is_round_trip:  # front -> back -> front again
            back = Segment(c.back, self._unit_index(c.back, c.stage, c.back_block),
                           self._unit_index(c.back, c.stage, c.return_block) + 1)
            resume = Segment(c.front, self._unit_index(c.front, c.stage, c.resume_block), len(self._units[c.front]))
            return Route((front, back, resume), (c.layer, c.return_layer))
        back = Segment(c.back, self._unit_index(c.back, c.stage, c.back_block), len(self._units[c.back]))
        return Route((front, back), (c.layer,))

    def route(self, stitch_id: int) -> Route:
        """The segments and stitching layers that config `stitch_id` runs."""
        return self._routes[self.check_id(stitch_id)]

    @property
    def configs(self) -> tuple[StitchConfig, ...]:
        """Every config's structure (ids, anchors, cut blocks, layers), without costs (see `stitch_configs`)."""
        return tuple(self._configs)

    def restrict_to(self, stitch_id: int, route: Route) -> None:
        """Make `route` config `stitch_id`'s route and the only one left (the model was pruned to it): other ids are
        refused, training samples only it, and cached costs and off-path bookkeeping are dropped."""
        self._routes[stitch_id] = route
        self._pruned_to = stitch_id
        self.set_sampling_weights([float(i == stitch_id) for i in range(self.num_configs)])
        forget(self)  # the off-path ledger names parameters that are gone now
        self._costs.clear()

    @property
    def num_configs(self) -> int:
        return len(self._configs)

    @property
    def stitch_id(self) -> int:
        return self._stitch_id

    @property
    def active_route(self) -> Route:
        return self._routes[self._stitch_id]

    @property
    def num_classes(self) -> int:
        return self.anchors[-1].num_classes  # every anchor's head is reset together

    @property
    def feature_dim(self) -> int:
        """Channel axis of `forward_features` (timm's attribute): 1 for NCHW maps, -1 for tokens and NHWC maps."""
        return 1 if self._families[self.active_route.last.anchor].layout == 'nchw' else -1

    # --- stitch selection ------------------------------------------------------------------------------------------
    def check_id(self, stitch_id: Any) -> int:
        valid = f'valid ids are integers 0..{len(self._configs) - 1}'
        if isinstance(stitch_id, bool):
            raise ValueError(f'stitch id must be an integer, got bool {stitch_id}; {valid}')
        try:
            k = operator.index(stitch_id)
        except TypeError:
            raise ValueError(f'stitch id must be an integer, got {type(stitch_id).__name__} {stitch_id!r}; '
                             f'{valid}') from None
        if not 0 <= k < len(self._configs):
            raise ValueError(f'stitch id {k} out of range; {valid}')
        if self._pruned_to is not None and k != self._pruned_to:
            raise ValueError(f'stitch id {k} is gone: this SN-Net was pruned to stitch {self._pruned_to} '
                             f'(prune_intermediate_layers / features_only)')
        return k

    def set_stitch(self, stitch_id: int) -> None:
        """Make `stitch_id` the active config (O(1)). It runs in eval mode and in `forward_features`/`forward_head`."""
        self._stitch_id = self.check_id(stitch_id)

    # --- training-time sampling (see `_sampling.Sampler`) -----------------------------------------------------------
    stitch_seed = _sampler_field('seed', 'Seed of the training-time stitch sampler (the same on every rank).')
    sampling = _sampler_field('sampling', "The sampling rule: 'uniform' or 'ros'.")
    flops_gap = _sampler_field('flops_gap', 'Width of a ROS FLOPs group in GFLOPs.')
    anchor_share = _sampler_field('anchor_share', "The anchors' total sampling probability, or None.")
    _step = _sampler_field('step', 'Draws so far (the `sample_step` buffer saves it).')
    _sampling_weights = _sampler_field('weights', 'Per-config sampling weights; None when uniform.')

    def set_sampling_weights(self, weights: Optional[Sequence[float]] = None, explicit: bool = True) -> None:
        """Relative probability of each config in training-time sampling; None is uniform. Explicit weights replace
        the constructor's `sampling` / `anchor_share` in the saved model_args."""
        self.sampler.set_weights(weights, explicit=explicit)

    def ros_weights(self) -> list[float]:
        """Resource-constrained sampling weights over the configs with complete routes (FLOPs at the input size)."""
        return ros_weights(self._gflops(), self.flops_gap, [r.is_complete for r in self._routes])

    def _gflops(self) -> list[float]:
        return [c.gflops for c in self.stitch_configs()]

    @property
    def _cum_weights(self) -> list[float]:
        """Cumulative sampling weights (pending ROS weights computed now, at the input size)."""
        return self.sampler.cum_weights(self._gflops)

    def sample_stitch(self) -> int:
        """Draw the next training stitch from (stitch_seed, step): identical on every rank, saved in checkpoints."""
        k = self.sampler.draw(self._gflops)
        self.sample_step.fill_(self.sampler.step)
        return k

    # --- measured table (sweep results carried by the model) -------------------------------------------------------
    @property
    def stitch_table(self) -> Optional[list[dict]]:
        """Sweep rows (dicts with at least `id`) stored in the model, or None."""
        if self.stitch_table_json.numel() == 0 or self.stitch_table_json.is_meta:
            return None
        return json.loads(bytes(self.stitch_table_json.cpu().tolist()).decode('utf-8'))

    def set_stitch_table(self, rows: Optional[Sequence[dict]]) -> None:
        """Store sweep rows in the model: saved in its state dict (a uint8 buffer) and in its timm model_args."""
        if rows is not None:
            rows = [dict(r) for r in rows]
            bad = [r for r in rows if self._row_id(r) is None]
            if bad:
                raise ValueError(f'stitch table rows need an integer `id` in 0..{len(self._configs) - 1}: {bad[:2]}')
        data = b'' if rows is None else json.dumps(rows, sort_keys=True).encode('utf-8')
        self.stitch_table_json = torch.tensor(list(data), dtype=torch.uint8, device=self.stitch_table_json.device)

    def _row_id(self, row: dict) -> Optional[int]:
        k = row.get('id')
        return k if isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(self._configs) else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        table = state_dict.get(prefix + 'stitch_table_json')
        if table is not None and table.shape != self.stitch_table_json.shape:  # variable length: take its size
            self.stitch_table_json = torch.empty_like(table, device=self.stitch_table_json.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # --- config table ----------------------------------------------------------------------------------------------
    def input_size(self) -> tuple[int, ...]:
        """The model's current input size (timm's traits: `img_size` kwarg, else the pretrained cfg)."""
        if getattr(self, 'pretrained_cfg', None):
            return tuple(get_model_input_config(self)['input_size'])
        return tuple(get_model_input_config(self.anchors[0])['input_size'])

    def _anchor_costs(self, input_size: tuple[int, ...]) -> tuple[list[AnchorCosts], list[tuple[int, int]]]:
        key = tuple(input_size)
        if key not in self._costs:
            costs = [anchor_costs(m, f, input_size) for m, f in zip(self.anchors, self._families)]
            param = next(self.parameters())
            x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
            with eval_mode(self), torch.no_grad():  # BatchNorm must not learn the zero image's statistics
                acts = [self._activations(i, x) for i in range(len(self.anchors))]
            inputs = {layer: fc for _, layer, fc, _ in self._ls_pairs()}
            layer_costs = [stitching_layer_cost(layer, self._rows(i, inputs[i], acts[inputs[i][0]][inputs[i][1]], 'in')
                                                .shape[0]) for i, layer in enumerate(self.stitch_layers)]
            self._costs[key] = (costs, layer_costs)
        return self._costs[key]

    def stitch_configs(self, input_size: Optional[Sequence[int]] = None) -> tuple[StitchConfig, ...]:
        """Every config with its GFLOPs (fvcore, batch 1) and the params on its path."""
        costs, layer_costs = self._anchor_costs(tuple(input_size or self.input_size()))
        out = []
        for c, route in zip(self._configs, self._routes):
            parts = [costs[s.anchor].span(s.start, s.stop, stem=s is route.first, head=s is route.last)
                     for s in route.segments] + [layer_costs[i] for i in route.layers]
            flops, params = sum(p[0] for p in parts), sum(p[1] for p in parts)
            out.append(StitchConfig(**{**c.as_dict(), 'gflops': flops / 1e9, 'params': params}))
        return tuple(out)

    def describe(self, config: StitchConfig) -> str:
        return config.path(self.anchor_names, self._depths)

    # --- forward: a stitch, then the off-path parameters (see `RouteNet` for the route itself) ------------------------
    def check_input(self, route: Route, x: torch.Tensor) -> None:
        """Raise a clear ValueError for an input that an anchor on the route cannot take (pruned: only the stem's
        anchor is left to ask)."""
        super().check_input(route if self._pruned_to is None else Route(route.segments[:1]), x)

    def _features(self, x: torch.Tensor, stitch_id: int) -> torch.Tensor:
        route = self._routes[stitch_id]
        if self.off_path == 'skip' and self.training and torch.is_grad_enabled() and not is_fx_tracing():
            ledger(self).record(self, stitch_id)  # the optimizer pre-hook updates only what a forward used
        self.check_input(route, x)
        return self.finish(route, self.run(route, x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, self._stitch_id)

    def forward(self, x: torch.Tensor, stitch_id: Optional[int] = None) -> torch.Tensor:
        """Run one stitch: `stitch_id` for this call only; else, in training, a sampled one; else the active one."""
        tracing = is_fx_tracing()
        if stitch_id is not None and not tracing:
            k = self.check_id(stitch_id)
        elif self.training and not tracing:
            k = self.sample_stitch()
        else:
            k = self._stitch_id
        x = self.head(self._routes[k], self._features(x, k))
        if self.training and torch.is_grad_enabled() and (self.off_path == 'zero' or distributed()):
            if self.off_path == 'skip' and not tracing:
                join_ddp(self)  # inside DDP: its buckets are all-reduced only where the sampled paths are
            x = self._join_off_path(x, k, tracing)
        return x

    def _join_off_path(self, x: torch.Tensor, stitch_id: int, tracing: bool) -> torch.Tensor:
        """Join parameters off the path to the graph, so DDP without find_unused_parameters works: with a zero
        gradient (`off_path='zero'`) or an undefined one (`'skip'`: DDP's reducer zero-fills its buckets)."""
        if tracing:  # reach parameters as module attributes so FX records them
            zero = sum(getattr(self.get_submodule(m), p).sum() for m, p in self.off_path_names(stitch_id)) * 0.0
            return x + zero
        params = ledger(self).off_path(self, stitch_id)
        return JoinOffPath.apply(x, self.off_path == 'zero', *params) if params else x

    def off_path_names(self, stitch_id: int) -> list[tuple[str, str]]:
        """(module, parameter) names of every parameter off config `stitch_id`'s route."""
        on = self.route_names(self._routes[stitch_id])
        return [tuple(n.rsplit('.', 1)) for n, _ in self.named_parameters() if not owned(n, on)]

    # --- least-squares init ----------------------------------------------------------------------------------------
    def _activations(self, anchor: int, x: torch.Tensor, keep: Optional[set] = None) -> dict[int, torch.Tensor]:
        """Outputs of the stem (key -1) and of each unit (key = global unit index) of one anchor."""
        out = {}
        x = self.stem(anchor, x)
        if keep is None or -1 in keep:
            out[-1] = x
        last = len(self._units[anchor]) if keep is None else max(keep) + 1
        for u in range(last):
            x = self.run_units(anchor, x, u, u + 1)
            if keep is None or u in keep:
                out[u] = x
        return out

    def _rows(self, layer: int, cut: tuple[int, int], act: torch.Tensor, side: str) -> torch.Tensor:
        """Least-squares rows of the activation at `cut` as stitching layer `layer` reads or writes it."""
        return stitch_rows(self.stitch_layers[layer], act, self._families[cut[0]].layout, side)

    def _ls_pairs(self) -> list[tuple[int, int, tuple[int, int], tuple[int, int]]]:
        """(config id, layer, front cut, back cut) for each join: the layer maps the output of the last unit before it
        to the input of the first unit after it (unit -1 is the stem)."""
        return [(k, layer, (a.anchor, a.stop - 1), (b.anchor, b.start - 1))
                for k, route in enumerate(self._routes) for layer, a, b in route.joins()]

    @torch.no_grad()
    def init_stitching_layers(
            self,
            data: Union[torch.Tensor, Iterable],
            num_images: int = 100,
            batch_size: int = 25,
            progress: bool = True,
    ) -> None:
        """Least-squares init of every stitching layer from `num_images` images (float64, bias column).

        Solved for each (j, k) on all tokens / pixels, then averaged over the configs that share a layer.
        `data` is an image tensor (B, C, H, W) or an iterable of `(images, ...)` batches, already transformed.
        """
        # each (layer, front cut, back cut) once: a v2 layer joins the same cuts in many routes
        pairs = list({(layer, fc, bc): (k, layer, fc, bc) for k, layer, fc, bc in self._ls_pairs()}.values())
        keep: dict[int, set] = {}
        for _, _, (f, fu), (b, bu) in pairs:
            keep.setdefault(f, set()).add(fu)
            keep.setdefault(b, set()).add(bu)
        ls, seen, prefixes = LeastSquares(), 0, {}
        param = next(self.parameters())
        with eval_mode(self), tqdm(total=num_images, desc='LS init', unit='img', disable=not progress) as bar:
            for images in _image_batches(data, num_images, batch_size):
                images = images.to(device=param.device, dtype=param.dtype)
                acts = {a: self._activations(a, images, cuts) for a, cuts in keep.items()}
                # a front cut feeds one layer kind (its anchor's next one), so rows keyed by cut are unambiguous
                xs = {fc: self._rows(layer, fc, acts[fc[0]][fc[1]], 'in') for _, layer, fc, _ in pairs}
                ys = {bc: self._rows(layer, bc, acts[bc[0]][bc[1]], 'out') for _, layer, _, bc in pairs}
                ls.add(xs, ys, [(fc, bc) for _, _, fc, bc in pairs])
                for _, layer, _, (b, bu) in pairs:  # a token back's prefix tokens: their mean at the cut
                    prefix = getattr(self.stitch_layers[layer], 'prefix', None)
                    if prefix is not None:
                        total = acts[b][bu][:, :prefix.shape[1]].double().sum(0)
                        prefixes[layer] = prefixes.get(layer, 0) + total
                seen += len(images)
                bar.update(len(images))
        if not seen:
            raise ValueError('init_stitching_layers got no images: pass a (B, C, H, W) tensor or batches of them')
        for layer_id, layer in enumerate(self.stitch_layers):
            solved = [ls.solve(fc, bc) for _, layer, fc, bc in pairs if layer == layer_id]
            weight, bias = average_affine(solved)
            layer.set_affine(weight.to(layer.weight), bias.to(layer.bias))
            if layer_id in prefixes:
                uses = sum(lid == layer_id for _, lid, _, _ in pairs)
                layer.prefix.data.copy_((prefixes[layer_id] / (seen * uses))[None])

    @torch.no_grad()
    def stitching_error(self, images: torch.Tensor) -> dict[int, float]:
        """Per stitch: mean squared error between the stitching layer's output and the anchor activation it replaces."""
        with eval_mode(self):
            acts = [self._activations(a, images) for a in range(len(self.anchors))]
        errors: dict[int, list[float]] = {}
        for k, layer, (f, fu), (b, bu) in self._ls_pairs():
            pred = self.stitch_layers[layer](acts[f][fu])
            errors.setdefault(k, []).append(float((pred - acts[b][bu]).double().pow(2).mean()))
        return {k: sum(e) / len(e) for k, e in errors.items()}

    # --- budget selection ------------------------------------------------------------------------------------------
    def select_stitch(
            self,
            max_gflops: Optional[float] = None,
            max_latency_ms: Optional[float] = None,
            min_top1: Optional[float] = None,
            table: Optional[Sequence[dict]] = None,
            latency: str = 'b1',
    ) -> int:
        """Best config id within a budget, from `table`, else the stored stitch table, else FLOPs alone.

        With measured rows, best is the highest top-1; with FLOPs alone, the largest-FLOPs config within budget.
        Raises ValueError when no config fits. Apply it with `model.set_stitch(model.select_stitch(...))`.
        """
        rows = table if table is not None else self.stitch_table
        if rows is None:
            rows = [dict(id=c.id, path=self.describe(c), gflops=c.gflops, params=c.params)
                    for c in self.stitch_configs()]
        return select_stitch(rows, max_gflops=max_gflops, max_latency_ms=max_latency_ms, min_top1=min_top1,
                             latency=latency)

    # --- timm model_args: what save_for_hf / push_to_hf_hub write to config.json ------------------------------------
    def live_model_args(self) -> dict[str, Any]:
        """Settings that change after construction, as create_model kwargs. timm reads `_model_args` when it saves,
        and that merges these in, so timm's own save_for_hf / push_to_hf_hub keep the active stitch, the sampling
        settings and the stitch table. Add new runtime settings here."""
        explicit = self.sampler.explicit
        args = dict(**self._anchor_args, names=list(self.anchor_names),  # in the built order (`snnet` sorts them)
                    stitch_id=self._stitch_id, stitch_seed=self.stitch_seed, stitch_table=self.stitch_table,
                    sampling_weights=self._sampling_weights if explicit else None)
        if explicit:  # weights set by hand replace the constructor's sampling rule
            args.update(sampling='uniform', anchor_share=None)
        recorded = self.__dict__.get('_recorded_model_args', {})
        if recorded.get('pretrained_anchors'):
            args['pretrained_anchors'] = False  # the anchors' weights are in the state dict now
        if recorded.get('anchor_checkpoints') is not None:
            args['anchor_checkpoints'] = None  # likewise; and their paths are machine-specific
        return args

    @property
    def _model_args(self) -> dict[str, Any]:
        """timm's reconstruction arguments, read when saving: those recorded at creation, with the live settings."""
        return {**self.__dict__.get('_recorded_model_args', {}), **self.live_model_args()}

    @_model_args.setter
    def _model_args(self, args: dict[str, Any]) -> None:
        self.__dict__['_recorded_model_args'] = dict(args)

    # --- deployment ------------------------------------------------------------------------------------------------
    def export_stitch(self, stitch_id: int) -> nn.Module:
        """Config `stitch_id` as a plain timm model holding only its path's weights (see `timm_snnet._exported`)."""
        return export_stitch(self, stitch_id)

    # --- timm contract (the rest: `RouteNet`) ----------------------------------------------------------------------
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **kwargs: Any) -> None:
        """Reset every anchor's head (`kwargs` such as ConvNeXt's `reset_other` go to the anchors that take them)."""
        self.reset_heads(range(len(self.anchors)), num_classes, global_pool, **kwargs)

    def reset_heads(self, anchors: Iterable[int], num_classes: int, global_pool: Optional[str] = None,
                    **kwargs: Any) -> None:
        """`reset_classifier` on the anchors numbered `anchors` (pruning resets those its route keeps: the others
        are pruned whole, and a head such as Qwen3-VL's cannot be reset without its encoder)."""
        for i in anchors:
            self._families[i].reset_head(self.anchors[i], num_classes, global_pool, **kwargs)
        if global_pool is not None:
            self.global_pool = global_pool
        self._costs.clear()
        forget(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        out = set()
        for i, model in enumerate(self.anchors):
            if hasattr(model, 'no_weight_decay'):
                out.update(f'anchors.{i}.{n}' for n in model.no_weight_decay())
        return out

    @property
    def group_matcher(self):
        """timm's parameter groups (layer decay), when the anchors have them; else no attribute, as for the anchors
        (timm's MetaFormer has none)."""
        if not any(hasattr(m, 'group_matcher') for m in self.anchors):
            raise AttributeError('group_matcher: no anchor of this SN-Net has one')
        return self._group_matcher

    @torch.jit.ignore
    def _group_matcher(self, coarse: bool = False) -> Union[dict[str, Any], Callable[[str], float]]:
        """Each anchor's own groups under `anchors.N.`. Stitching layers match no group: like the heads, they land in
        the last one, so timm's layer decay gives them the full learning rate. Where an anchor's matcher is a function
        (timm's CaiT), each parameter takes its anchor's layer id (timm's `group_with_matcher`)."""
        matchers = [m.group_matcher(coarse=coarse) if hasattr(m, 'group_matcher') else None for m in self.anchors]
        if any(callable(m) for m in matchers):
            ids = {f'anchors.{i}.{name}': layer for i, (model, m) in enumerate(zip(self.anchors, matchers))
                   if m is not None for name, layer in group_with_matcher(model.named_parameters(), m,
                                                                         reverse=True).items()}
            return lambda name: ids.get(name, math.inf)
        groups: dict[str, list] = {}
        for i, matcher in enumerate(matchers):
            if matcher is None:  # e.g. timm's MetaFormer: its parameters join the last group
                continue
            for key, rules in matcher.items():
                if isinstance(rules, str):
                    rules = [(rules, None)]
                groups.setdefault(key, []).extend((_prefixed(i, pattern), suffix) for pattern, suffix in rules)
        return groups


def _prefixed(anchor: int, pattern: str) -> str:
    body = pattern.replace('|^', '|').lstrip('^')
    return rf'^anchors\.(?:{anchor})\.(?:{body})'


def _sync_sample_step(module: SNNet, incompatible_keys) -> None:
    """After load_state_dict, continue the training-stitch sequence from the loaded step."""
    if not module.sample_step.is_meta:
        module.sampler.step = int(module.sample_step)
