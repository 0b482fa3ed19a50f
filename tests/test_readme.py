"""The README's Python blocks, and the docs' blocks that start with `import timm`, run as printed (offline,
full-size models with random weights); an output block right after a README block is what it prints."""
import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'


def python_blocks() -> list[str]:
    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), re.S)
    for doc in sorted((ROOT / 'docs').glob('*.md')):
        blocks += [b for b in re.findall(r'```python\n(.*?)```', doc.read_text(), re.S) if b.startswith('import timm')]
    return blocks


@pytest.mark.slow
@pytest.mark.parametrize('index', range(len(python_blocks())))
def test_readme_python_block_runs(index: int) -> None:
    code = python_blocks()[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f'README.md python block {index}', 'exec'), {})
    printed = out.getvalue()
    for line in code.splitlines():  # `print(...)  # expected` comments state the output
        m = re.search(r'print\(.*\)\s+# (.+)$', line)
        if m:
            assert m.group(1).strip() in printed, (m.group(1), printed)
    text = README.read_text()
    if code not in text:
        return
    block_end = text.index(code) + len(code) + 3
    following = re.match(r'\s*```\n(.*?)```', text[block_end:], re.S)  # an output block right after the code
    if following:
        assert printed.strip() == following.group(1).strip()
