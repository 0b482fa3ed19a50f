"""The benchmarks cannot rot unseen: `python -m benchmarks.run --smoke` runs every measure (B1-B9) once on tiny
anchors and fails on any error. No timing is asserted (benchmarks print ratios; they are not timed tests)."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_benchmark_runs_once(tmp_path: Path) -> None:
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT)}
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.run', '--smoke', '--output', str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / 'latest.json').read_text())
    assert result['errors'] == {}
    assert {'B1', 'B2', 'B3', 'B4', 'B5', 'B6', 'deploy'} <= set(result)
    assert result['B3'] and result['B4'] and all(result['deploy'][k] for k in ('B7', 'B8', 'B9'))
    assert all(r['max_abs_diff'] == 0 for r in result['B2'])  # anchors run exactly the plain timm model
    assert (tmp_path / 'latest.md').read_text().startswith('#')


def test_measures_do_not_import_the_runner() -> None:
    """`run.py` imports its measures and `common.py`; no benchmark module imports `run.py` back."""
    back = []
    for path in sorted((ROOT / 'benchmarks').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[-1] == 'run':
                back.append(f'{path.name}:{node.lineno}')
    assert not back, back
