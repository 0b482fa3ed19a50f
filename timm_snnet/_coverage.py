"""Which of timm's pretrained weights can be SN-Net anchors: every architecture with a pretrained tag is built on the
meta device (no weights), its class looked up in the adapters (`can_stitch`), and its tags counted by class."""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import timm
import torch
from timm.models import model_entrypoint
from tqdm.auto import tqdm

from .families import can_stitch

__all__ = ['Coverage', 'coverage']


@dataclass
class Coverage:
    """Pretrained tags by anchor class: which classes can stitch, and the share of tags they hold."""
    tags: Counter = field(default_factory=Counter)  # class name -> pretrained tags
    stitchable: Counter = field(default_factory=Counter)  # class name -> tags of architectures that can be anchors
    failed: dict = field(default_factory=dict)  # architecture -> why it could not be built on meta

    @property
    def supported(self) -> set[str]:
        """Classes with at least one architecture that can be an anchor."""
        return {cls for cls, n in self.stitchable.items() if n}

    @property
    def total(self) -> int:
        return sum(self.tags.values())

    @property
    def covered(self) -> int:
        return sum(self.stitchable.values())

    @property
    def share(self) -> float:
        return self.covered / max(self.total, 1)

    def missing(self, n: int = 10) -> list[tuple[str, int]]:
        """The classes with the most pretrained tags that cannot be anchors yet."""
        return [(cls, k) for cls, k in self.tags.most_common() if cls not in self.supported][:n]

    def table(self, n: int = 10) -> str:
        lines = [f'{self.covered} of {self.total} pretrained tags ({100 * self.share:.1f}%) can be SN-Net anchors',
                 '', f'{"class":<32} {"tags":>5}  anchor']
        lines += [f'{cls:<32} {k:>5}  ' + ('yes' if self.stitchable[cls] == k else
                                         f'{self.stitchable[cls]} of {k}' if self.stitchable[cls] else 'no')
                  for cls, k in self.tags.most_common(n)]
        missing = self.missing(n)
        if missing:
            lines += ['', 'largest classes still missing: ' + ', '.join(f'{c} ({k})' for c, k in missing)]
        if self.failed:
            lines += ['', f'{len(self.failed)} architectures could not be built on the meta device (counted missing)']
        return '\n'.join(lines)


def coverage(architectures: Optional[Sequence[str]] = None, progress: bool = True) -> Coverage:
    """Build each architecture with pretrained weights in timm (or those given) on the meta device and count its tags
    by class, and those of the architectures `can_stitch` accepts."""
    tags = Counter(t.split('.')[0] for t in timm.list_pretrained())
    ours = {a for a in tags if timm.is_model(a) and model_entrypoint(a).__module__.startswith('timm_snnet')}
    archs = sorted(set(tags) - ours) if architectures is None else list(architectures)  # timm's own weights only
    out = Coverage()
    for arch in tqdm(archs, desc='coverage', unit='arch', disable=not progress):
        try:
            with torch.device('meta'), warnings.catch_warnings():
                warnings.simplefilter('ignore')
                model = timm.create_model(arch)
        except Exception as e:  # an architecture timm cannot build without its weights or extra packages
            out.failed[arch] = f'{type(e).__name__}: {e}'
            out.tags['(not built on meta)'] += tags.get(arch, 1)
            continue
        cls = type(model).__name__
        out.tags[cls] += tags.get(arch, 1)
        out.stitchable[cls] += tags.get(arch, 1) if can_stitch(model) else 0
    return out
