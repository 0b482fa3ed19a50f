"""Hugging Face Hub: SN-Net weights as safetensors through timm's own loading path, model cards, `timm-snnet push`.

Pulling. `timm.create_model(name, pretrained=True)`, `'hf-hub:ORG/REPO'` and `'local-dir:DIR'` all load
`model.safetensors` with timm's `load_pretrained`; `checkpoint_filter_fn` checks every tensor against the model
first. A registry name reads the repo's `config.json` too, so its `model_args` (compatibility settings, active
stitch, stitch table) apply as they do for `hf-hub:` names. Loading failures raise `SNNetLoadError` naming the repo
or folder, the file and what to do, before any model is returned; `load_snnet` also covers the `config.json` step
of `hf-hub:` / `local-dir:` names, which timm runs before any SN-Net code.

Pushing. `push_snnet` / `timm-snnet push` writes the repo with timm's `save_for_hf` (safetensors only; `config.json`
with complete `model_args`), a model card (`README.md`) with the per-stitch table and the Pareto plot, and uploads
it in one commit that also deletes any pickled weights left in the repo.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import timm
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from timm.models import (
    is_model,
    load_model_config_from_hf,
    model_entrypoint,
    parse_model_name,
    resolve_pretrained_cfg,
    save_for_hf,
)
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import hf_split, load_model_config_from_path
from timm.models._input import update_model_args

from .snnet import SNNet
from .utils import file_sha256

__all__ = [
    'SNNetLoadError', 'load_snnet', 'save_snnet', 'push_snnet', 'model_card', 'checkpoint_filter_fn',
    'pretrained_kwargs', 'load_errors', 'record_model_args', 'add_commands',
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
PLOT_NAME = 'pareto.png'
PICKLE_PATTERNS = ['*.bin', '*.pt', '*.pth', '*.pth.tar', '*.ckpt', '*.pkl']  # deleted from the repo on push
PathLike = Union[str, Path]

# SNNet arguments that rebuild the architecture (and its training behaviour); recorded (defaults included) in every
# model's timm model_args
_ARCH_ARGS = ('anchors', 'anchor_kwargs', 'rule', 'stages', 'kernel_size', 'stride', 'layer_assignment',
              'stitched_final_norm', 'stitch_seed', 'sampling', 'flops_gap', 'stitch_rank', 'anchor_share',
              'off_path')


class SNNetLoadError(RuntimeError):
    """SN-Net weights could not be loaded. The message names the repo or folder, the file and what to do."""

    def __init__(self, message: str, location: str = '', filename: str = ''):
        super().__init__(message)
        self.location, self.filename = location, filename


class _Mismatch(ValueError):
    """Tensors that do not fit the model (raised by `checkpoint_filter_fn`, reworded by `load_errors`)."""


@dataclass(frozen=True)
class _Source:
    """Where a file comes from: a Hub repo (`ORG/NAME[@revision]`), a local folder, or a file."""
    kind: str
    location: str
    filename: str

    def __str__(self) -> str:
        where = {'hf-hub': 'Hub repo', 'local-dir': 'folder'}.get(self.kind, 'file')
        return f"{where} '{self.location}', file '{self.filename}'"

    @property
    def model_name(self) -> str:
        return f'{self.kind}:{self.location}' if self.kind in ('hf-hub', 'local-dir') else self.location


# --- model_args --------------------------------------------------------------------------------------------------
def record_model_args(model: SNNet, kwargs: dict[str, Any]) -> None:
    """Record every argument that rebuilds `model` (entry-point defaults included) in its timm model_args."""
    defaults = inspect.signature(SNNet).parameters
    args = {k: kwargs.get(k, defaults[k].default) for k in _ARCH_ARGS}
    update_model_args(model, **args, names=list(model.anchor_names), stitch_id=model.stitch_id,
                      stitch_table=model.stitch_table)


def export_model_args(model: SNNet) -> dict[str, Any]:
    """Changes since construction, for config.json (timm's own save_for_hf reads the same through `_model_args`)."""
    return model.live_model_args()


# --- pulling -----------------------------------------------------------------------------------------------------
def _weights_source(cfg: dict[str, Any]) -> _Source:
    """The weights timm's `load_pretrained` will read for this pretrained cfg."""
    kind, loc = _resolve_pretrained_source(cfg)
    if isinstance(loc, (tuple, list)):
        return _Source(kind, loc[0], loc[1])
    if kind in ('hf-hub', 'local-dir'):
        return _Source(kind, str(loc), WEIGHTS_NAME)
    if kind in ('file', 'url'):
        return _Source(kind, str(loc), Path(str(loc)).name)
    return _Source(kind or 'none', cfg.get('architecture') or '', '')


def _pretrained_cfg(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')).to_dict()


def _is_snnet(name: str) -> bool:
    return is_model(name) and model_entrypoint(name).__module__ == 'timm_snnet.models'


def _snnet_names() -> str:
    return ', '.join(n for n in timm.list_models('snnet*') if _is_snnet(n))


def _check_architecture(arch: str, src: _Source, expected: Optional[str] = None) -> None:
    if not _is_snnet(arch):
        raise SNNetLoadError(
            f"Cannot load {src.model_name!r} as an SN-Net: {src} is for architecture {arch!r}, which is not an "
            f"SN-Net (registered SN-Nets: {_snnet_names()}). Load it with timm.create_model({src.model_name!r}) "
            f"instead, or pick an SN-Net repo (its config.json names one of the models above).",
            src.location, src.filename)
    if expected is not None and arch != expected:
        raise SNNetLoadError(
            f"Cannot load pretrained {expected}: {src} is for architecture {arch!r}, not {expected!r}. "
            f"Create it with timm.create_model({src.model_name!r}, pretrained=True), or point "
            f"pretrained_cfg_overlay=dict(hf_hub_id=...) at a {expected} repo.", src.location, src.filename)


def pretrained_kwargs(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Kwargs that build `variant` for its SN-Net weights: no anchor downloads, and for a registry name whose
    weights are on the Hub, the model_args saved in the repo's config.json as defaults (as timm does for `hf-hub:`).
    """
    kwargs = dict(kwargs)
    if kwargs.pop('pretrained_anchors', False):
        _logger.info('pretrained=True: the SN-Net weights hold the anchors, ignoring pretrained_anchors=True')
    if kwargs.pop('anchor_checkpoints', None) is not None:
        _logger.info('pretrained=True: the SN-Net weights hold the anchors, ignoring anchor_checkpoints')
    cfg = _pretrained_cfg(variant, kwargs)
    if cfg.get('source') in ('hf-hub', 'local-dir'):
        return kwargs  # timm built these kwargs from that config.json already
    weights = _weights_source(cfg)
    if weights.kind != 'hf-hub':
        return kwargs  # a file, url or state dict: nothing saved beside it
    src = _Source('hf-hub', weights.location, CONFIG_NAME)
    with load_errors(src, variant):
        _, arch, saved = load_model_config_from_hf(weights.location, cache_dir=kwargs.get('cache_dir'))
    _check_architecture(arch, src, expected=variant)
    saved = {k: v for k, v in (saved or {}).items() if k not in ('pretrained_anchors', 'anchor_checkpoints')}
    return {**saved, **kwargs}


def pretrained_errors(variant: str, kwargs: dict[str, Any], pretrained: bool):
    """`load_errors` for the weights `build_model_with_cfg` will load (a no-op without `pretrained`)."""
    if not pretrained:
        return nullcontext()
    return load_errors(_weights_source(_pretrained_cfg(variant, kwargs)), variant)


def _as_tuple(value: Any) -> tuple:
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SNNet) -> dict[str, torch.Tensor]:
    """Check SN-Net weights against the model before timm loads them (its load is not strict when heads are reset)."""
    own = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    adapted = ()  # timm adapts these after this filter: heads for other num_classes, stems for other in_chans
    if model.num_classes != cfg.get('num_classes', model.num_classes):
        adapted += tuple(f'{c}.' for c in _as_tuple(cfg.get('classifier')))
    if model.in_chans != (cfg.get('input_size') or (3,))[0]:
        adapted += tuple(f'{c}.weight' for c in _as_tuple(cfg.get('first_conv')))
    missing = [k for k in own if k not in state_dict and not k.startswith(adapted)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and k != 'stitch_table_json' and not k.startswith(adapted)
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return state_dict
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f'{len(shapes)} tensors differ in shape (e.g. {k}: file {tuple(state_dict[k].shape)}, '
                     f'model {tuple(own[k].shape)})')
    if missing:
        parts.append(f'{len(missing)} missing (e.g. {missing[0]})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
    detail = ', '.join(parts)
    if any('.transform.' in k for k in unexpected):
        detail += ('; it looks like an official SN-Net v1 checkpoint: convert it first with '
                   '`timm-snnet convert --from official-v1`')
    raise _Mismatch(detail)


def _cache_dir() -> str:
    return str(constants.HF_HUB_CACHE)


def _cached_path(src: _Source) -> Optional[str]:
    repo, revision = hf_split(src.location)
    path = try_to_load_from_cache(repo, src.filename, revision=revision)
    return path if isinstance(path, str) else None


def _fail(src: _Source, problem: str, todo: str) -> SNNetLoadError:
    return SNNetLoadError(f'Cannot load the SN-Net from {src}: {problem}. {todo}', src.location, src.filename)


@contextmanager
def load_errors(src: _Source, variant: str = 'MODEL') -> Iterator[None]:
    """Re-raise Hub, file-format and mismatch errors as `SNNetLoadError` naming `src` and what to do."""
    from .models import HF_HUB_ORG

    hub = src.kind == 'hf-hub'
    repo = hf_split(src.location)[0] if hub else src.location
    push = f'`timm-snnet push --model {variant} --checkpoint CKPT --repo-id {repo}`'
    write = ('write it with `timm-snnet convert ... --output DIR` or `timm_snnet.hub.save_snnet(model, DIR)` '
             '(config.json + model.safetensors)')
    try:
        yield
    except SNNetLoadError:
        raise
    except _Mismatch as e:
        todo = (f"The weights were saved for other anchors or settings (anchors, anchor_kwargs, img_size, window, "
                f"layer_assignment). Build the model from its own config.json with "
                f"timm.create_model({src.model_name!r}, pretrained=True) and no kwargs that change the architecture"
                if src.kind in ('hf-hub', 'local-dir') else
                'Create the model with the kwargs the checkpoint was saved with')
        raise _fail(src, f'its tensors do not fit the model built here: {e}', todo + '.') from e
    except LocalEntryNotFoundError as e:  # (an EntryNotFoundError too) offline, or the Hub unreachable
        if constants.HF_HUB_OFFLINE:
            problem = (f'the file is not in the local cache ({_cache_dir()}) and HF_HUB_OFFLINE=1 forbids '
                       f'downloading it')
            todo = ('Load it once with network access (unset HF_HUB_OFFLINE) to fill the cache, point HF_HUB_CACHE '
                    'at a cache that holds the repo, or load a local copy with "local-dir:DIR".')
        else:
            problem = f'the Hub ({constants.ENDPOINT}) could not be reached and the local cache ({_cache_dir()}) ' \
                      f'has no copy of the file'
            todo = 'Check your connection, proxy and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 with a filled cache.'
        raise _fail(src, problem, todo) from e
    except RepositoryNotFoundError as e:
        raise _fail(src, 'the repo does not exist, or it is private and you are not logged in',
                    f"Check the repo id (published SN-Nets live under '{HF_HUB_ORG}/', e.g. "
                    f"'hf-hub:{HF_HUB_ORG}/snnet_deit_tsb.in1k'); for a private repo log in (`hf auth login` or "
                    f"HF_TOKEN); to publish it run {push}.") from e
    except RevisionNotFoundError as e:
        raise _fail(src, f'revision {hf_split(src.location)[1]!r} does not exist',
                    "Use an existing branch, tag or commit (the default is 'main').") from e
    except EntryNotFoundError as e:
        what = ('config.json holds the model_args that build the SN-Net' if src.filename == CONFIG_NAME else
                'SN-Net weights are published as model.safetensors (nothing pickled is read from the Hub)')
        raise _fail(src, 'the repo has no such file', f'{what}; publish the repo with {push}.') from e
    except SafetensorError as e:
        if hub:
            cached = _cached_path(src)
            todo = (f'Delete the cached copy ({cached or _cache_dir()}) so that it is downloaded again; if it fails '
                    f'again, the file on the Hub is damaged: publish it again with {push}.')
        else:
            todo = f'Write it again: {write}.'
        raise _fail(src, f'it is not a valid safetensors file ({e})', todo) from e
    except json.JSONDecodeError as e:
        raise _fail(src, f'it is not valid JSON ({e})', f'Publish it again with {push}.' if hub else
                    f'Write it again: {write}.') from e
    except (FileNotFoundError, RuntimeError) as e:  # timm's local-dir errors
        text = str(e)
        if src.kind == 'local-dir' and ('not found' in text or 'No suitable checkpoints' in text
                                        or 'not a directory' in text):
            problem = 'the folder does not hold it' if Path(src.location).is_dir() else 'there is no such folder'
            raise _fail(src, problem, f'Point local-dir: at a folder holding config.json and model.safetensors; '
                                      f'{write}.') from e
        raise


def load_snnet(model_name: str, pretrained: bool = True, **kwargs: Any) -> SNNet:
    """`timm.create_model` for SN-Nets (a registry name, `hf-hub:ORG/REPO[@rev]` or `local-dir:DIR`).

    Every loading failure raises `SNNetLoadError` naming the repo or folder, the file and what to do, before any
    model is returned; plain `timm.create_model` raises it too, except for the `config.json` step of `hf-hub:` and
    `local-dir:` names (timm runs that before any SN-Net code) and for non-SN-Net architectures.
    """
    source, model_id = parse_model_name(model_name)
    if source in ('hf-hub', 'local-dir'):
        src = _Source(source, model_id, CONFIG_NAME)
        with load_errors(src):
            if source == 'hf-hub':
                _, arch, _ = load_model_config_from_hf(model_id, cache_dir=kwargs.get('cache_dir'))
            else:
                _, arch, _ = load_model_config_from_path(model_id)
        _check_architecture(arch, src)
    elif not _is_snnet(model_id.split('.')[0]):
        raise ValueError(f'{model_name!r} is not an SN-Net; registered SN-Nets: {_snnet_names()}')
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


# --- pushing -----------------------------------------------------------------------------------------------------
def _check_model(model: Any) -> SNNet:
    if not isinstance(model, SNNet) or not getattr(model, 'pretrained_cfg', None):
        raise TypeError(f'expected an SN-Net built with timm.create_model, got {type(model).__name__}')
    return model


def _architecture(model: SNNet) -> str:
    return model.pretrained_cfg['architecture']


def read_sweep(sweep: PathLike, model: SNNet) -> dict[str, Any]:
    """A sweep.json (see `timm_snnet.sweep`) checked against `model`: same model name, same path per id."""
    from .sweep import load_sweep

    result = load_sweep(sweep)
    name = str(result.get('model') or '')
    source, model_id = parse_model_name(name) if name else ('', '')
    if not source and name and model_id.split('.')[0] != _architecture(model):
        raise ValueError(f'{sweep} was measured on {name}, not on {_architecture(model)}')
    configs = model.stitch_configs()
    for row in result['rows']:
        k = row.get('id')
        if not isinstance(k, int) or not 0 <= k < len(configs):
            raise ValueError(f'{sweep}: row id {k!r} is not a config of this model (0..{len(configs) - 1})')
        if 'path' in row and row['path'] != model.describe(configs[k]):
            raise ValueError(f'{sweep}: row {k} is {row["path"]!r} but config {k} of this model is '
                             f'{model.describe(configs[k])!r}: the sweep was measured on another model')
    return result


def _card_rows(model: SNNet, table: Optional[Sequence[dict]]) -> list[dict[str, Any]]:
    """Every config (id, path, gflops, params), overlaid with the measured rows."""
    rows = {c.id: dict(id=c.id, path=model.describe(c), gflops=c.gflops, params=c.params)
            for c in model.stitch_configs()}
    for row in table or ():
        rows[row['id']].update(row)
    return [rows[k] for k in sorted(rows)]


def _num(value: Any, digits: int = 2) -> str:
    return f'{value:.{digits}f}' if isinstance(value, (int, float)) and not isinstance(value, bool) else '-'


def _gflops(value: Any) -> str:
    return _num(value, 2 if isinstance(value, (int, float)) and value >= 1 else 4)


def _table(rows: Sequence[dict], default_id: int) -> str:
    accuracy = [k for k in ('top1', 'top5') if any(isinstance(r.get(k), (int, float)) for r in rows)]
    names = {'top1': 'top-1 (%)', 'top5': 'top-5 (%)'}
    head = ['id', 'path', 'GFLOPs', 'params (M)', *(names[k] for k in accuracy)]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [str(r['id']) + (' (default)' if r['id'] == default_id else ''), f'`{r["path"]}`',
                 _gflops(r.get('gflops')), _num(r['params'] / 1e6 if isinstance(r.get('params'), int) else None),
                 *(_num(r.get(k)) for k in accuracy)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_card_table(text: str) -> list[dict[str, str]]:
    """Rows of the per-stitch table of a model card written by `model_card` (cells as text, keyed by header)."""
    lines = [ln for ln in text.splitlines() if ln.startswith('| ')]
    if not lines:
        return []
    head = [c.strip() for c in lines[0].strip('|').split('|')]
    return [dict(zip(head, (c.strip() for c in ln.strip('|').split('|')))) for ln in lines[1:]]


_CITATION = """@inproceedings{pan2023snnet,
  title={Stitchable Neural Networks},
  author={Pan, Zizheng and Cai, Jianfei and Zhuang, Bohan},
  booktitle={CVPR},
  year={2023}
}"""


def _card_inputs(card: Union[None, PathLike, dict]) -> tuple[dict[str, Any], str]:
    """(front-matter metadata, markdown body) of the model-card inputs: a .md file with YAML front matter, or a dict."""
    if card is None:
        return {}, ''
    if isinstance(card, dict):
        card = dict(card)
        return card, card.pop('description', '')
    parsed = ModelCard(Path(card).read_text(encoding='utf-8'), ignore_metadata_errors=False)
    return parsed.data.to_dict(), parsed.text.strip()


def model_card(model: SNNet, repo_id: str, rows: Sequence[dict], card: Union[None, PathLike, dict] = None,
               plot: Optional[str] = None) -> str:
    """README.md in the Hub's model-card format: YAML front matter (library_name: timm, tags, license), details,
    usage (create_model, set_stitch, select_stitch, validate.py), the per-stitch table and the Pareto plot."""
    meta, body = _card_inputs(card)
    tags = list(dict.fromkeys(['image-classification', 'timm', 'snnet', 'stitchable-neural-networks',
                               *(meta.pop('tags', None) or [])]))
    data = ModelCardData(**{'license': model.pretrained_cfg.get('license', 'apache-2.0'),
                            'pipeline_tag': 'image-classification', **meta, 'library_name': 'timm', 'tags': tags})
    arch, k = _architecture(model), model.stitch_id
    configs = model.stitch_configs()
    anchors = [c for c in configs if c.is_anchor]
    budget = sorted(c.gflops for c in configs)[len(configs) // 2]
    args = getattr(model, '_model_args', {})
    compat = {key: args[key] for key in ('stitched_final_norm', 'layer_assignment')
              if key in args and args[key] != inspect.signature(SNNet).parameters[key].default}
    n_stitch = sum(p.numel() for p in model.stitch_layers.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    details = [
        ('Model type', 'image classification, Stitchable Neural Network (SN-Net)'),
        ('Architecture', f'`{arch}`: anchors ' + ', '.join(
            f'{n} (`{m.pretrained_cfg.get("architecture")}`)' for n, m in zip(model.anchor_names, model.anchors))),
        ('Configs', f'{len(configs)} ({len(anchors)} anchors + {len(configs) - len(anchors)} stitches); default '
                    f'stitch {k}, `{model.describe(configs[k])}`'),
        ('Params (M)', f'{n_total / 1e6:.2f} in all ({n_stitch / 1e6:.2f} in stitching layers)'),
        ('Image size', ' x '.join(str(s) for s in model._input_size()[1:])),
        ('Paper', 'Stitchable Neural Networks, https://arxiv.org/abs/2302.06586'),
        ('Original code', 'https://github.com/ziplab/SN-Net'),
    ]
    if compat:
        details.insert(4, ('Compatibility settings', ', '.join(f'`{a}={b}`' for a, b in compat.items()) +
                           " (reproduce the authors' trained networks; new models do not use them)"))
    plot_md = f'\n![Top-1 against GFLOPs, Pareto front]({plot})\n' if plot else ''
    return f"""---
{data.to_yaml()}
---

# Model card for {repo_id.split('/')[-1]}

{body or f'An SN-Net over {", ".join(model.anchor_names)}: one network, {len(configs)} accuracy/efficiency trade-offs.'}

## Model details
{chr(10).join(f'- **{a}:** {b}' for a, b in details)}

## Model usage
```python
import timm
import timm_snnet  # registers the SN-Net models

model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()
model.set_stitch({k})  # any id from the table below, O(1)
model.set_stitch(model.select_stitch(max_gflops={budget:.3g}))  # best stitch within a budget
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)
```

Evaluate one stitch with timm's `validate.py` (from a checkout of pytorch-image-models):
```bash
timm-snnet run validate.py --model hf-hub:{repo_id} --pretrained --data-dir /path/to/imagenet \\
    --model-kwargs stitch_id={k}
```

## Stitches
GFLOPs are fvcore counts at batch 1 (one multiply-add = one FLOP); params count the parameters on each path.

{_table(rows, k)}
{plot_md}
## Citation
```bibtex
{_CITATION}
```
"""


def _plot(rows: Sequence[dict], model: SNNet, folder: Path) -> Optional[str]:
    """The sweep's Pareto plot (timm_snnet.sweep.plot_sweep) as PLOT_NAME in `folder`, when rows have top-1."""
    if not any(isinstance(r.get('top1'), (int, float)) for r in rows):
        return None
    from .sweep import plot_sweep

    anchors = [c.id for c in model.stitch_configs() if c.is_anchor]
    with tempfile.TemporaryDirectory() as tmp:
        sweep_json = Path(tmp) / 'sweep.json'
        sweep_json.write_text(json.dumps(dict(model=_architecture(model), anchors=anchors, rows=list(rows))))
        plot_sweep(sweep_json, folder / PLOT_NAME)
    return PLOT_NAME


def save_snnet(
        model: SNNet,
        save_dir: PathLike,
        sweep: Optional[PathLike] = None,
        card: Union[None, PathLike, dict] = None,
        repo_id: Optional[str] = None,
        readme: bool = True,
        source: Optional[dict] = None,
) -> Path:
    """Write a Hub repo folder: model.safetensors and config.json (timm's save_for_hf, safetensors only) and, with
    `readme`, README.md and pareto.png. `sweep` rows are stored in the model first (`set_stitch_table`)."""
    model = _check_model(model)
    save_dir = Path(save_dir)
    if save_dir.exists() and any(save_dir.iterdir()):
        raise FileExistsError(f'{save_dir} is not empty: pick a new folder (everything in it would be uploaded)')
    if sweep is not None:
        model.set_stitch_table(read_sweep(sweep, model)['rows'])
    model_config: dict[str, Any] = {'pretrained_cfg': {'hf_hub_filename': WEIGHTS_NAME}}
    if source:
        model_config['source_checkpoint'] = source
    save_for_hf(model, save_dir, model_config=model_config, model_args=export_model_args(model),
                safe_serialization=True)
    if readme:
        rows = _card_rows(model, model.stitch_table)
        plot = _plot(rows, model, save_dir)
        text = model_card(model, repo_id or save_dir.name, rows, card=card, plot=plot)
        (save_dir / CARD_NAME).write_text(text, encoding='utf-8')
    return save_dir


def push_snnet(
        model: SNNet,
        repo_id: str,
        sweep: Optional[PathLike] = None,
        card: Union[None, PathLike, dict] = None,
        private: bool = False,
        token: Optional[str] = None,
        revision: Optional[str] = None,
        commit_message: str = 'Add SN-Net weights (safetensors), config and model card',
        save_dir: Optional[PathLike] = None,
):
    """Push an SN-Net to the Hub in one commit: model.safetensors, config.json, README.md, pareto.png.

    Nothing pickled is uploaded, and pickled weights already in the repo (*.bin, *.pth, ...) are deleted. The folder
    is written (in `save_dir`, else a temporary one) before the repo is created, so a failure creates nothing.
    Returns huggingface_hub's CommitInfo.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_snnet(model, save_dir or Path(tmp) / 'repo', sweep=sweep, card=card, repo_id=repo_id)
        api = HfApi(token=token, library_name='timm-snnet')
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message, delete_patterns=PICKLE_PATTERNS)


# --- command line ------------------------------------------------------------------------------------------------

def model_from_checkpoint(
        model_name: str,
        checkpoint: PathLike,
        model_kwargs: Optional[dict] = None,
        num_classes: Optional[int] = None,
        use_ema: bool = False,
) -> SNNet:
    """A folder from `timm-snnet convert` / `save_snnet` (local-dir:), else a train.py or .safetensors checkpoint."""
    path = Path(checkpoint)
    if path.is_dir():
        kwargs = {**(model_kwargs or {}), **({'num_classes': num_classes} if num_classes else {})}
        model = load_snnet(f'local-dir:{path}', **kwargs)
        if _architecture(model) != model_name:
            raise SystemExit(f'{path} holds a {_architecture(model)}, not a {model_name}: pass --model '
                             f'{_architecture(model)}')
        return model
    from .sweep import load_model

    return load_model(model_name, path, model_kwargs, num_classes, use_ema)


def _cmd_push(args: argparse.Namespace) -> int:
    if args.dry_run and not args.save_dir:
        raise SystemExit('--dry-run needs --save-dir DIR (where the repo folder is written)')
    model = model_from_checkpoint(args.model, args.checkpoint, args.model_kwargs, args.num_classes, args.use_ema)
    if args.sweep and Path(args.checkpoint).is_file():
        from .sweep import load_sweep

        measured = (load_sweep(args.sweep).get('checkpoint') or {}).get('sha256')
        if measured and measured != file_sha256(Path(args.checkpoint)):
            print(f'warning: {args.sweep} was measured on another checkpoint (sha256 {measured[:12]}...)')
    if args.dry_run:
        folder = save_snnet(model, args.save_dir, sweep=args.sweep, card=args.card, repo_id=args.repo_id)
        print(f'wrote {folder} ({", ".join(sorted(p.name for p in folder.iterdir()))}); nothing uploaded')
        return 0
    info = push_snnet(model, args.repo_id, sweep=args.sweep, card=args.card, private=args.private,
                      revision=args.revision, save_dir=args.save_dir,
                      **({'commit_message': args.commit_message} if args.commit_message else {}))
    print(f'pushed {args.model} to {info.repo_url} ({info.oid[:12]}); load it with '
          f"timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def add_commands(subparsers) -> None:
    from timm.utils import ParseKwargs

    p = subparsers.add_parser(
        'push', help='push an SN-Net to the Hugging Face Hub (model.safetensors, config.json, model card)',
        description='Load a checkpoint into an SN-Net and push it with timm\'s save_for_hf (safetensors only), a '
                    'config.json that timm.create_model("hf-hub:REPO", pretrained=True) builds it from, and a model '
                    'card with the per-stitch table and Pareto plot. Log in first (`hf auth login` or HF_TOKEN).')
    p.add_argument('--model', required=True, help='registered SN-Net, e.g. snnet_deit_tsb')
    p.add_argument('--checkpoint', required=True,
                   help='train.py checkpoint (.pth.tar/.pth, loaded with weights_only=True), .safetensors, or a '
                        'folder written by `timm-snnet convert`')
    p.add_argument('--repo-id', required=True, help='ORG/NAME on the Hub')
    p.add_argument('--sweep', help='OUT/sweep.json of `timm-snnet sweep`: its rows go into the card and the model')
    p.add_argument('--card', help='model-card inputs: markdown with YAML front matter (e.g. hub/cards/MODEL.md)')
    p.add_argument('--private', action='store_true', help='create the repo private')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='create_model kwargs the checkpoint was trained with (e.g. stitch_id=20)')
    p.add_argument('--num-classes', type=int, help='classes of the checkpoint, if not 1000')
    p.add_argument('--use-ema', action='store_true', help="load the checkpoint's EMA weights")
    p.add_argument('--revision', help='branch to push to (default main)')
    p.add_argument('--commit-message')
    p.add_argument('--save-dir', help='also keep the repo folder here (must be new or empty)')
    p.add_argument('--dry-run', action='store_true', help='write the folder to --save-dir, upload nothing')
    p.set_defaults(func=_cmd_push)
