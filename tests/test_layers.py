"""The package's import layering, as the docstring of ``paramsurgery/__init__.py`` states it,
checked against the real imports of every module (module level and inside functions)."""
import ast
import os
import re

import pytest

import paramsurgery

ROOT = os.path.dirname(paramsurgery.__file__)

# Private names imported from another line of the layering: each is a piece of a feature
# reaching into another's internals. The layout work moves these behind the owning feature's
# package; until then they are listed, so that a new one fails and a removed one is noticed.
KNOWN_CROSSINGS = {
    ('analysis', 'channels', '_IMPORTANCES'), ('analysis', 'channels', '_build'),
    ('analysis', 'channels', '_channel_rows'), ('analysis', 'channels', '_check_owners'),
('analysis', 'channels', '_finish_deferred'),
    ('analysis', 'channels', '_input_shapes'), ('analysis', 'channels', '_op_counts'),
    ('analysis', 'channels', '_require_hybrid'), ('analysis', 'channels', '_selected_groups'),
    ('analysis', 'pruning', '_apply'),
    ('channels', 'masks', '_check_mode'), ('cli', 'channels', '_input_names'),
    ('_exported', 'masks', '_quiet_input_types'), ('channels', 'pruning_core', '_check_amount'),
    ('analysis', 'pruning_core', '_check_amount'), ('_exported', 'pruning_core', '_check_amount'),
    ('onnx_export', 'channels', '_Trace'), ('onnx_export', 'channels', '_batches'),
    ('onnx_export', 'channels', '_input_shapes'), ('onnx_export', 'shrinking', '_layer_of'),
    ('onnx_export', 'channels', '_finish_deferred'), ('onnx_export', 'channels', '_flat_outputs'),
    ('onnx_export', 'shrinking', '_contexts'),
    ('latency', 'channels', '_Trace'), ('latency', 'channels', '_finish_deferred'),
    ('latency', 'channels', '_flat_outputs'), ('latency', 'channels', '_input_shapes'),
    ('latency', 'channels', '_require_hybrid'), ('latency', 'channels', '_build'),
    ('latency', 'channels', '_selected_groups'), ('latency', '_exported', '_deletions'),
    ('latency', '_exported', '_rewrite'), ('analysis', 'channels', '_FastCounts'),
    ('analysis', 'channels', '_rounding'),
}


def layers(package=''):
    """``{module: (line, stage)}`` from the layer list in the docstring of ``package``'s
    ``__init__`` (the top level, or a subpackage such as ``'masks'``)."""
    doc = ast.get_docstring(ast.parse(_source(package + '/__init__' if package else '__init__')))
    listing = doc.split('::', 1)[1].strip('\n').split('\n\n')[0]
    place = {}
    for line_no, line in enumerate(listing.splitlines()):
        # the module column (names joined by ', ' and ' -> '), two spaces, the description
        column = re.split(r'\s{2,}', line.strip(), maxsplit=1)[0]
        for stage, names in enumerate(column.split('->')):
            for name in names.split(','):
                assert name.strip() not in place, 'placed twice: %s' % name
                place[name.strip()] = (line_no, stage)
    return place


def _source(module):
    """The source of ``module`` (``'masks/apply'``, ``'select'``) or of a subpackage's
    ``__init__`` (``'masks'``)."""
    path = os.path.join(ROOT, module)
    if os.path.isdir(path):
        path = os.path.join(path, '__init__')
    with open(path + '.py', encoding='utf-8') as f:
        return f.read()


def subpackages():
    return sorted(f for f in os.listdir(ROOT)
                  if os.path.isfile(os.path.join(ROOT, f, '__init__.py')))


def modules():
    """Every entry of the top-level layering: modules and subpackages."""
    return sorted([f[:-3] for f in os.listdir(ROOT)
                   if f.endswith('.py') and f not in ('__init__.py', '__main__.py')]
                  + subpackages())


def inner_modules(package):
    return sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, package))
                  if f.endswith('.py') and f != '__init__.py')


def files():
    """``[(path under the package, top-level entry, inner module or None)]``: every file."""
    found = [(m, m, None) for m in modules()]
    for package in subpackages():
        found.extend(('%s/%s' % (package, m), package, m) for m in inner_modules(package))
    return found


def imports(module):
    """``[(top-level entry, inner module or None, [imported names])]`` for every relative
    import in ``module`` (a path from :func:`files`; a subpackage means its ``__init__``)."""
    inside = module.split('/')[0] if '/' in module or module in subpackages() else None
    found = []
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.ImportFrom) and node.level:
            names = [a.name for a in node.names]
            base = [inside] if inside and node.level == 1 else []
            parts = base + (node.module.split('.') if node.module else [])
            if not parts:
                # ``from . import __version__`` names an attribute, not a module
                found.extend((name, None, []) for name in names if name in modules())
            elif len(parts) == 1 and parts[0] in subpackages() and not node.module:
                # ``from . import forward`` inside a subpackage
                found.extend((parts[0], name, []) for name in names
                             if name in inner_modules(parts[0]))
            else:
                inner = parts[1] if len(parts) > 1 and parts[0] in subpackages() else None
                found.append((parts[0], inner, names))
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('paramsurgery'):
            pytest.fail('%s imports %s absolutely: use a relative import' % (module, node.module))
    return found


def test_every_module_is_placed_once():
    assert sorted(layers()) == modules()
    for package in subpackages():
        assert sorted(layers(package)) == inner_modules(package), package


@pytest.mark.parametrize('module', [f[0] for f in files()])
def test_imports_only_from_above(module):
    place = layers()
    entry = module.split('/')[0]
    line, stage = place[entry]
    inner_place = layers(entry) if '/' in module else None
    for target, inner, _ in imports(module):
        if target == entry:
            # within a subpackage: its own layering (its __init__ may import every module)
            if inner_place is not None and inner is not None:
                mine, theirs = inner_place[module.split('/')[1]], inner_place[inner]
                assert theirs[0] < mine[0] or (theirs[0] == mine[0] and theirs[1] < mine[1]), (
                    '%s imports %s.%s: against the layering in %s/__init__.py'
                    % (module, entry, inner, entry))
            continue
        t_line, t_stage = place[target]
        assert t_line < line or (t_line == line and t_stage < stage), (
            '%s (line %d of the layering) imports %s (line %d): move one of them, or the import'
            % (module, line, target, t_line))


def test_no_private_names_across_lines():
    place = layers()
    crossings = {(module.split('/')[0], target, name)
                 for module, _, _ in files() for target, _, names in imports(module)
                 for name in names
                 if name.startswith('_') and place[target][0] != place[module.split('/')[0]][0]}
    assert crossings - KNOWN_CROSSINGS == set(), 'new private imports across features'
    assert KNOWN_CROSSINGS - crossings == set(), 'gone: remove them from KNOWN_CROSSINGS'


@pytest.mark.parametrize('module, line, message', [
    ('errors', 'from .cli import main', 'errors .* imports cli'),
    # against a subpackage's own layering
    ('masks/forward', 'from .files import save_masks', 'masks/forward imports masks.files'),
])
def test_the_check_sees_a_violation(monkeypatch, module, line, message):
    """The checks above read real source: an upward import planted in a module is found."""
    real = _source

    def planted(name):
        text = real(name)
        return text + '\n' + line + '\n' if name == module else text

    monkeypatch.setitem(globals(), '_source', planted)
    with pytest.raises(AssertionError, match=message):
        test_imports_only_from_above(module)
