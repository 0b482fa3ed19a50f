"""Publishing SN-Nets: the Hub repo folder (weights, config, model card with the per-stitch table and the Pareto
plot) and `push_snnet`, which uploads it in one commit that also deletes any pickled weights left in the repo."""
from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from huggingface_hub import HfApi, ModelCard, ModelCardData
from timm.models import parse_model_name

from ._load import architecture, check_snnet, write_snnet
from ._plot import plot_sweep
from ._results import load_sweep
from ._snnet import SNNet
from ._utils import atomic_folder, check_new_folder

__all__ = ['save_snnet', 'push_snnet', 'model_card', 'parse_card_table', 'read_sweep']

PathLike = Union[str, Path]
PICKLE_PATTERNS = ['*.bin', '*.pt', '*.pth', '*.pth.tar', '*.ckpt', '*.pkl']  # deleted from the repo on push
CARD_NAME = 'README.md'
PLOT_NAME = 'pareto.png'


def read_sweep(sweep: PathLike, model: SNNet) -> dict[str, Any]:
    """A sweep.json (see `timm_snnet._evaluate`) checked against `model`: same model name, same path per id."""
    result = load_sweep(sweep)
    name = str(result.get('model') or '')
    source, model_id = parse_model_name(name) if name else ('', '')
    if not source and name and model_id.split('.')[0] != architecture(model):
        raise ValueError(f'{sweep} was measured on {name}, not on {architecture(model)}')
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
    arch, k = architecture(model), model.stitch_id
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
        ('Image size', ' x '.join(str(s) for s in model.input_size()[1:])),
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
    """The sweep's Pareto plot (timm_snnet._plot.plot_sweep) as PLOT_NAME in `folder`, when rows have top-1."""
    if not any(isinstance(r.get('top1'), (int, float)) for r in rows):
        return None
    anchors = [c.id for c in model.stitch_configs() if c.is_anchor]
    with tempfile.TemporaryDirectory() as tmp:
        sweep_json = Path(tmp) / 'sweep.json'
        sweep_json.write_text(json.dumps(dict(model=architecture(model), anchors=anchors, rows=list(rows))))
        plot_sweep(sweep_json, folder / PLOT_NAME)
    return PLOT_NAME


def save_snnet(
        model: SNNet,
        save_dir: PathLike,
        sweep: Optional[PathLike] = None,
        card: Union[None, PathLike, dict] = None,
        repo_id: Optional[str] = None,
        readme: bool = True,
) -> Path:
    """Write a Hub repo folder, all or nothing: model.safetensors and config.json (`write_snnet`) and, with `readme`,
    README.md and pareto.png. `sweep` rows are stored in the model first (`set_stitch_table`)."""
    model = check_snnet(model)
    save_dir = check_new_folder(save_dir)
    if sweep is not None:
        model.set_stitch_table(read_sweep(sweep, model)['rows'])
    with atomic_folder(save_dir) as folder:
        write_snnet(model, folder)
        if readme:
            rows = _card_rows(model, model.stitch_table)
            plot = _plot(rows, model, folder)
            text = model_card(model, repo_id or save_dir.name, rows, card=card, plot=plot)
            (folder / CARD_NAME).write_text(text, encoding='utf-8')
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
