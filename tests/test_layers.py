"""The package's layers: each module imports only from its own layer and below, and there are no import cycles.

Parsed from the source (no torch, nothing imported). An upward import is allowed only under `TYPE_CHECKING`; an
import inside a function counts like any other (it is allowed for optional dependencies, which are not ours).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'timm_snnet'

# lowest first; a module imports only from its own layer and below
LAYERS = {
    'pure': ('_configs', '_sampling', '_selection', '_results', '_errors', '_utils', '_releases', '_inputs'),
    'blocks': ('families', '_stitching', '_flops', '_routes', '_routenet', '_pickle', '_anchors'),
    'engine': ('_snnet', '_features', '_training', '_exported', '_dense'),
    'glue': ('_models',),
    'weights': ('_trust', '_convert', '_sources', '_load'),
    'tools': ('_publish', '_plot', '_onnx', '_latency', '_evaluate', '_coverage', '_serve', '_servebench', '_dist',
              '_distill', '_zoo'),
    'api': ('__init__',),
    'cli': ('cli',),
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def module_name(path: Path) -> str:
    return '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts).removesuffix('.__init__')


def top(name: str) -> str:
    """The layer key of a module: `timm_snnet.families.vit` -> `families`, `timm_snnet` -> `__init__`."""
    parts = name.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace('.', '/')
    return path.with_suffix('.py').exists() or path.is_dir()


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and 'TYPE_CHECKING' in ast.unparse(node.test)


def imports(path: Path) -> set[str]:
    """Modules of ours that `path` imports (outside `if TYPE_CHECKING:` blocks), as full dotted names."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    out = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                target = f'{base}.{node.module}' if node.module else base
            else:
                target = node.module or ''
            if target.split('.')[0] == 'timm_snnet':
                subs = {f'{target}.{a.name}' for a in node.names if _is_module(f'{target}.{a.name}')}
                out.update(subs)
                if len(subs) < len(node.names):  # names defined in `target` itself
                    out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split('.')[0] == 'timm_snnet')
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob('*.py'))}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_every_module_has_a_layer():
    unknown = sorted({top(m) for m in graph()} - set(RANK))
    assert not unknown, f'modules with no layer in LAYERS: {unknown}'


def test_imports_go_down_the_layers():
    upward = [f'{m} ({top(m)}) imports {t} ({top(t)})' for m, targets in graph().items() for t in targets
              if top(t) in RANK and top(m) in RANK and RANK[top(t)] > RANK[top(m)]
              and not (top(m) == '__init__' and top(t) != 'cli')]
    assert not upward, '\n'.join(upward)


def test_packages_import_down_only_with_reason():
    """A function-level import of our own code would hide a cycle: none are allowed."""
    hidden = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or '').startswith(
                            'timm_snnet')):
                        hidden.append(f'{module_name(path)}:{inner.lineno}')
                    elif isinstance(inner, ast.Import) and any(a.name.startswith('timm_snnet') for a in inner.names):
                        hidden.append(f'{module_name(path)}:{inner.lineno}')
    assert not hidden, f'imports of our own modules inside functions: {hidden}'


def test_examples_use_the_public_api_only():
    """The examples import `timm_snnet`'s exported names, nothing internal; and every name they import is exported."""
    import timm_snnet

    bad = []
    for path in sorted((PACKAGE.parent / 'examples').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('timm_snnet'):
                if node.module != 'timm_snnet' or any(a.name not in timm_snnet.__all__ for a in node.names):
                    bad.append(f'{path.name}:{node.lineno} from {node.module} import {[a.name for a in node.names]}')
            elif isinstance(node, ast.Import) and any(a.name.startswith('timm_snnet.') for a in node.names):
                bad.append(f'{path.name}:{node.lineno}')
    assert not bad, bad


def test_architecture_doc_follows_the_table():
    """docs/architecture.md explains `LAYERS`: its table names the same layers, lowest first."""
    text = (PACKAGE.parent / 'docs' / 'architecture.md').read_text()
    section = text.split('## The layers\n', 1)[1].split('\n## ', 1)[0]
    rows = [line.split('|')[1].strip() for line in section.splitlines() if line.startswith('| ')]
    assert rows[1:] == list(LAYERS), rows
