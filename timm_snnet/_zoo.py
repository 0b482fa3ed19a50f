"""One SN-Net against timm's model zoo (the SN-Net paper's headline figure): its configs' GMACs and ImageNet top-1
beside timm's published results, and the timm models a stitch dominates (no more GMACs and no less top-1).

The zoo is `reference/timm_zoo_imagenet.csv`, derived from timm's `results/` tables (its header names the files,
the commit and the timm version). FLOPs here are fvcore's: one multiply-add is one FLOP, so the SN-Net's "GFLOPs"
and timm's `infer_gmacs` are the same unit (GMACs, batch 1). matplotlib is imported when the figure is drawn."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import timm
from timm.models import parse_model_name
from tqdm.auto import tqdm

from ._convert import official_rows
from ._load import create_snnet
from ._releases import OFFICIAL, REFERENCE_DIR
from ._results import load_sweep
from ._selection import pareto_front
from ._trust import is_snnet
from ._utils import atomic_file, check_new_file, write_atomic

__all__ = ['ZOO_TABLE', 'ZooModel', 'read_zoo', 'snnet_points', 'dominance', 'zoo_plot']

PathLike = Union[str, os.PathLike]
ZOO_TABLE = REFERENCE_DIR / 'timm_zoo_imagenet.csv'
UNIT = 'GMACs (10^9 multiply-adds, batch 1; = "GFLOPs" as fvcore and the SN-Net papers count)'
RULE = ('a stitch (a config that is not a plain anchor) dominates a timm model when its GMACs, rounded to the '
        "table's 0.01, are no more and its top-1 no less")


@dataclass(frozen=True)
class ZooModel:
    """One row of the zoo table: a pretrained weight (`model.tag`) at one evaluated image size."""
    model: str
    img_size: int
    top1: float
    gmacs: float


def read_zoo(path: PathLike = ZOO_TABLE) -> tuple[list[ZooModel], dict[str, str]]:
    """(rows, metadata) of a zoo table: CSV `model,img_size,top1,gmacs` after `# ` comment lines; a comment
    `# key: value` (commit, timm_version) is metadata."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'cannot read the zoo table {path}: {e}') from e
    meta = {}
    for line in lines:
        if line.startswith('#') and ':' in line:
            key, _, value = line[1:].strip().partition(':')
            if key.strip().isidentifier():
                meta[key.strip()] = value.strip()
    reader = csv.DictReader(line for line in lines if line.strip() and not line.startswith('#'))
    rows = []
    for n, r in enumerate(reader, 2):
        try:
            rows.append(ZooModel(r['model'], int(r['img_size']), float(r['top1']), float(r['gmacs'])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{path}: row {n} is not model,img_size,top1,gmacs ({e})') from e
    if not rows:
        raise ValueError(f'{path} has no zoo rows (expected a CSV with model,img_size,top1,gmacs)')
    return rows, meta


def _check_name(model: str) -> None:
    source, name = parse_model_name(model)
    if not source and not (timm.is_model(name) and is_snnet(name.split('.')[0])):
        known = ', '.join(sorted(OFFICIAL))
        raise ValueError(f'unknown SN-Net {model!r}: name a registered SN-Net (with published results: {known})')


def snnet_points(model: str, table: Optional[PathLike] = None,
                 progress: bool = True) -> tuple[list[dict[str, Any]], str]:
    """(rows with id, path, gmacs, top1 and anchor, where the top-1 comes from). With `table` (a sweep.json from
    `timm-snnet sweep`, or its folder) its rows; else the authors' published top-1 of a released SN-Net, beside the
    GMACs of each config of the full-size model built on the meta device (no weights)."""
    _check_name(model)
    if table is not None:
        result = load_sweep(table)
        rows = [r for r in result['rows'] if all(isinstance(r.get(k), (int, float)) for k in ('gflops', 'top1'))]
        if not rows:
            raise ValueError(f'{table} has no rows with both gflops and top1 (a `timm-snnet profile` table has no '
                             'accuracies: pass the sweep.json of `timm-snnet sweep`)')
        anchors = set(result.get('anchors') or [r['id'] for r in rows if '->' not in str(r.get('path', ''))])
        source = f'sweep table {table}'
    else:
        release = OFFICIAL.get(model)
        if release is None or release.reference is None:
            published = ', '.join(k for k, r in OFFICIAL.items() if r.reference)
            raise ValueError(f'no published per-config top-1 for {model!r} (published: {published}); pass the '
                             'sweep.json of `timm-snnet sweep` with --table')
        net = create_snnet(model, device='meta')
        with tqdm(total=1, desc=f'GMACs of {model} (fvcore, meta device)', disable=not progress) as bar:
            rows = official_rows(net, model)
            bar.update()
        if rows is None:
            raise ValueError(f'the configs of {model} are not the published ones; pass a sweep table with --table')
        anchors = {r['id'] for r in rows if '->' not in r['path']}
        source = f'{release.results}, as published ({release.reference})'
    points = [dict(id=r['id'], path=str(r.get('path', r['id'])), gmacs=float(r['gflops']), top1=float(r['top1']),
                   anchor=r['id'] in anchors) for r in rows]
    return sorted(points, key=lambda p: p['id']), source


def dominance(points: Sequence[dict], zoo: Sequence[ZooModel]) -> list[dict[str, Any]]:
    """The zoo rows some point dominates (GMACs rounded to 0.01, as timm's table, no more; top-1 no less), each
    with the cheapest point that does (`by`, ties: the more accurate) and how many do (`count`)."""
    out = []
    for z in zoo:
        beat = [p for p in points if round(p['gmacs'], 2) <= z.gmacs and p['top1'] >= z.top1]
        if beat:
            by = min(beat, key=lambda p: (p['gmacs'], -p['top1']))
            out.append(dict(**asdict(z), by=dict(id=by['id'], path=by['path'], gmacs=round(by['gmacs'], 4),
                                                 top1=round(by['top1'], 3)), count=len(beat)))
    return out


def _select(zoo: list[ZooModel], patterns: Optional[Sequence[str]], max_gmacs: Optional[float]) -> list[ZooModel]:
    if max_gmacs is not None and not (isinstance(max_gmacs, (int, float)) and max_gmacs > 0):
        raise ValueError(f'--max-gmacs must be a positive number, got {max_gmacs!r}')
    kept = [z for z in zoo if (not patterns or any(fnmatch(z.model.lower(), p.lower()) for p in patterns))
            and (max_gmacs is None or z.gmacs <= max_gmacs)]
    if not kept:
        raise ValueError(f'no zoo model matches --zoo-filter {" ".join(patterns or ())} --max-gmacs {max_gmacs} '
                         f'(of {len(zoo)}; patterns are fnmatch globs on model.tag, e.g. "resnet*" or "*in22k*")')
    return kept


def _check_output(output: PathLike, overwrite: bool) -> Path:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'--output {out} is a file: pass a folder (zoo.png and zoo.json go in it)')
    for name in ('zoo.png', 'zoo.json'):
        check_new_file(out / name, overwrite)
    return out


def zoo_plot(
        model: str,
        output: PathLike,
        table: Optional[PathLike] = None,
        zoo_table: PathLike = ZOO_TABLE,
        zoo_filter: Optional[Sequence[str]] = None,
        max_gmacs: Optional[float] = None,
        overwrite: bool = False,
        progress: bool = True,
) -> dict[str, Any]:
    """Write OUTPUT/zoo.png (the SN-Net's configs against timm's zoo, GMACs vs ImageNet top-1) and OUTPUT/zoo.json
    (the counts, the sources, every dominated timm model and the stitch that dominates it); return zoo.json's dict.
    Without `overwrite` existing files are refused, before anything is computed."""
    out = _check_output(output, overwrite)
    zoo, meta = read_zoo(zoo_table)
    zoo = _select(zoo, zoo_filter, max_gmacs)
    points, source = snnet_points(model, table, progress)
    stitches = [p for p in points if not p['anchor']]
    anchors = [p for p in points if p['anchor']]
    dominated = dominance(stitches, zoo)
    by_anchor = {(d['model'], d['img_size']) for d in dominance(anchors, zoo)}
    summary = dict(
        model=model, snnet_source=source, unit=UNIT, rule=RULE,
        dominated=len(dominated), zoo_models=len(zoo), zoo_weights=len({z.model for z in zoo}),
        stitches=len(stitches), anchors=[dict(id=p['id'], path=p['path']) for p in anchors],
        dominated_by_anchors=len(by_anchor),
        dominated_only_by_stitches=sum((d['model'], d['img_size']) not in by_anchor for d in dominated),
        zoo=dict(file=ZOO_TABLE.name if Path(zoo_table) == ZOO_TABLE else str(zoo_table),
                 source='github.com/huggingface/pytorch-image-models results/',
                 commit=meta.get('commit'), timm_version=meta.get('timm_version'),
                 zoo_filter=list(zoo_filter or []) or None, max_gmacs=max_gmacs,
                 note='one zoo model = one pretrained weight (model.tag) at one evaluated image size'),
        configs=[{**p, 'gmacs': round(p['gmacs'], 4), 'top1': round(p['top1'], 3)} for p in points],
        dominated_models=sorted(dominated, key=lambda d: (d['gmacs'], -d['top1'])),
    )
    out.mkdir(parents=True, exist_ok=True)
    _draw(summary, zoo, out / 'zoo.png', overwrite)
    write_atomic(out / 'zoo.json', json.dumps(summary, indent=2) + '\n', overwrite)
    return summary


def _draw(summary: dict, zoo: list[ZooModel], path: Path, overwrite: bool) -> None:
    # matplotlib loads here: it is slow to import and only the figure needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = summary['configs']
    hit = {(d['model'], d['img_size']) for d in summary['dominated_models']}
    fig = Figure(figsize=(8, 5.4), dpi=110, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rest = [z for z in zoo if (z.model, z.img_size) not in hit]
    ax.scatter([z.gmacs for z in rest], [z.top1 for z in rest], s=7, color='0.72', linewidths=0,
               label=f'timm models ({len(zoo)})', zorder=1)
    beaten = [z for z in zoo if (z.model, z.img_size) in hit]
    ax.scatter([z.gmacs for z in beaten], [z.top1 for z in beaten], s=14, color='tab:orange', linewidths=0,
               label=f'dominated by a stitch ({len(beaten)})', zorder=2)
    stitched = [p for p in points if not p['anchor']]
    ax.scatter([p['gmacs'] for p in stitched], [p['top1'] for p in stitched], s=14, color='tab:blue',
               label=f'{summary["model"]} stitches ({len(stitched)})', zorder=3)
    front = {k: None for k in pareto_front([{**p, 'gflops': p['gmacs']} for p in points], 'gflops', 'top1')}
    by_id = {p['id']: p for p in points}
    ax.plot([by_id[k]['gmacs'] for k in front], [by_id[k]['top1'] for k in front], color='tab:blue', lw=1.3,
            zorder=3)
    anchors = [p for p in points if p['anchor']]
    ax.scatter([p['gmacs'] for p in anchors], [p['top1'] for p in anchors], marker='*', s=150, color='tab:red',
               edgecolors='k', linewidths=0.5, label='anchors', zorder=4)
    for p in anchors:
        ax.annotate(p['path'], (p['gmacs'], p['top1']), xytext=(-4, 7), textcoords='offset points', fontsize=8,
                    ha='right', color='tab:red', bbox=dict(boxstyle='round,pad=0.15', fc='white', ec='none', alpha=0.8),
                    zorder=5)
    ax.set_xscale('log')
    low = min(p['top1'] for p in points)
    ax.set_ylim(max(min(z.top1 for z in zoo), low - 15) - 0.5, max(max(z.top1 for z in zoo), *(p['top1'] for p in
                                                                                                points)) + 0.5)
    hidden = sum(z.top1 < ax.get_ylim()[0] for z in zoo)
    ax.set_xlabel(f'{UNIT.split(" (")[0]}, log scale: giga multiply-adds, batch 1 (= "GFLOPs" in fvcore / SN-Net)')
    ax.set_ylabel('ImageNet-1k top-1 (%)')
    zoo_meta = summary['zoo']
    ax.set_title(f'{summary["model"]}: its stitches dominate {summary["dominated"]} of {summary["zoo_models"]} timm '
                 f'models (its {len(anchors)} anchors alone: {summary["dominated_by_anchors"]})', fontsize=10)
    note = (f'zoo: timm results-imagenet.csv + benchmark GMACs, timm {zoo_meta["timm_version"]}, '
            f'commit {str(zoo_meta["commit"])[:8]}' + (f'; {hidden} below {ax.get_ylim()[0]:.0f}% not shown'
                                                        if hidden else ''))
    ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color='0.4')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right', bbox_to_anchor=(1, 0.04))
    with atomic_file(path, overwrite) as tmp:
        fig.savefig(tmp)
