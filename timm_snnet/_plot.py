"""The FLOPs (or latency) / accuracy plot of a sweep, with its Pareto front and the authors' reference points.

matplotlib is imported when a plot is drawn."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ._results import load_sweep, read_reference
from ._selection import pareto_front
from ._utils import atomic_file

__all__ = ['plot_sweep']

PathLike = Union[str, os.PathLike]


# --- plot ----------------------------------------------------------------------------------------------------------
X_AXES = {'gflops': ('gflops', 'GFLOPs'), 'latency': ('latency_ms_b1', 'latency, batch 1 (ms)'),
           'latency_bN': ('latency_ms_bN', 'latency, batch {n} (ms)')}


def plot_sweep(
        sweep_json: PathLike,
        output: Optional[PathLike] = None,
        x: str = 'gflops',
        reference: Optional[PathLike] = None,
        overwrite: bool = True,
) -> Path:
    """Pareto plot (PNG, Agg) of top-1 against GFLOPs or latency: every stitch labelled by id, anchors marked.
    Without `overwrite` an existing `output` is refused."""
    # matplotlib loads here: it is slow to import and only plots need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in X_AXES:
        raise ValueError(f'--x must be one of {", ".join(X_AXES)}, got {x!r}')
    result = load_sweep(sweep_json)
    key, label = X_AXES[x]
    label = label.format(n=result.get('batch_size', 'N'))
    # a latency table from `timm-snnet profile` has no accuracies: draw GFLOPs against latency instead
    y = 'top1' if any(isinstance(r.get('top1'), (int, float)) for r in result['rows']) or key == 'gflops' else 'gflops'
    rows = [r for r in result['rows'] if all(isinstance(r.get(k), (int, float)) for k in (key, y))]
    if not rows:
        raise ValueError(f'{sweep_json} has no rows with both {key} and {y} to plot')
    anchors = set(result.get('anchors') or [r['id'] for r in rows if '->' not in str(r.get('path', ''))])
    if output is None:
        base = Path(sweep_json) if Path(sweep_json).is_dir() else Path(sweep_json).parent
        output = base / f'pareto_{x}.png'
    output = Path(output)

    scale = 1.0
    if key == 'gflops' and max(r[key] for r in rows) < 0.1:  # small models: MFLOPs, as the tables print them
        scale, label = 1e3, 'MFLOPs'
        rows = [{**r, key: r[key] * scale} for r in rows]
    fig = Figure(figsize=(7, 4.8), dpi=110, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        if key != 'gflops':
            raise ValueError('reference points carry FLOPs only: use --x gflops with --reference')
        ref = read_reference(reference)
        ax.scatter([r['gflops'] * scale for r in ref], [r['top1'] for r in ref], s=22, facecolors='none',
                   edgecolors='0.55', label='official (paper)', zorder=1)
    stitched = [r for r in rows if r['id'] not in anchors]
    ax.scatter([r[key] for r in stitched], [r[y] for r in stitched], s=16, color='tab:blue', alpha=0.75,
               label='stitches', zorder=2)
    if y == 'top1':
        front = {k: None for k in pareto_front(rows, key, 'top1')}
        by_id = {r['id']: r for r in rows}
        ax.plot([by_id[k][key] for k in front], [by_id[k]['top1'] for k in front], color='tab:orange', lw=1.4,
                label='Pareto front', zorder=3)
    marked = [r for r in rows if r['id'] in anchors]
    ax.scatter([r[key] for r in marked], [r[y] for r in marked], marker='*', s=160, color='tab:red',
               edgecolors='k', linewidths=0.5, label='anchors', zorder=4)
    labelled = set(front) if y == 'top1' else {r['id'] for r in rows}  # ids on the front only: no pile of labels
    for r in rows:
        if r['id'] in labelled and r['id'] not in anchors:
            ax.annotate(str(r['id']), (r[key], r[y]), xytext=(3, 3), textcoords='offset points', fontsize=7)
    for r in marked:
        ax.annotate(str(r.get('path', r['id'])), (r[key], r[y]), xytext=(6, -10), textcoords='offset points',
                    fontsize=8, color='tab:red')
    ax.set_xlabel(label)
    ax.set_ylabel('top-1 (%)' if y == 'top1' else 'GFLOPs')
    if y == 'top1':
        ax.text(0.01, 0.01, 'labels: ids on the Pareto front', transform=ax.transAxes, fontsize=7, color='0.4')
    measured = result.get('profile') or result  # latencies merged from `timm-snnet profile` name its device
    where = f' on {measured.get("device_name") or measured.get("device")}' if key != 'gflops' else ''
    ax.set_title(f'{_model_title(result)}: {len(rows)} configs{where}', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    with atomic_file(output, overwrite) as tmp:
        fig.savefig(tmp)
    return output


def _model_title(result: dict) -> str:
    """The model's name: its architecture (`architecture` key) or registry name, never a local path."""
    model = str(result.get('architecture') or result.get('model') or 'SN-Net')
    if model.startswith(('local-dir:', 'file:')) or '/' in model and not model.startswith('hf-hub:'):
        return Path(model.split(':', 1)[-1]).name
    return model
