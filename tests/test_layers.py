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
    ('analysis', 'masks', '_owner_index'), ('analysis', 'masks', '_owners_checked'),
    ('analysis', 'pruning', '_apply'),
    ('channels', 'masks', '_check_mode'), ('cli', 'channels', '_input_names'),
    ('pruning', 'masks', '_apply_masks'), ('pruning', 'masks', '_check_mode'),
    ('_exported', 'masks', '_quiet_input_types'), ('channels', 'pruning_core', '_check_amount'),
    ('analysis', 'pruning_core', '_check_amount'), ('_exported', 'pruning_core', '_check_amount'),
    ('onnx_export', 'channels', '_Trace'), ('onnx_export', 'channels', '_batches'),
    ('onnx_export', 'channels', '_input_shapes'), ('onnx_export', 'shrinking', '_layer_of'),
    ('onnx_export', 'channels', '_finish_deferred'), ('onnx_export', 'channels', '_flat_outputs'),
    ('onnx_export', 'shrinking', '_contexts'), ('compact', 'masks', '_mode_of'),
    ('latency', 'channels', '_Trace'), ('latency', 'channels', '_finish_deferred'),
    ('latency', 'channels', '_flat_outputs'), ('latency', 'channels', '_input_shapes'),
    ('latency', 'channels', '_require_hybrid'), ('latency', 'channels', '_build'),
    ('latency', 'channels', '_selected_groups'), ('latency', '_exported', '_deletions'),
    ('latency', '_exported', '_rewrite'), ('analysis', 'channels', '_FastCounts'),
    ('analysis', 'channels', '_rounding'),
}


def layers():
    """``{module: (line, stage)}`` from the package docstring's layer list."""
    doc = ast.get_docstring(ast.parse(_source('__init__')))
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
    with open(os.path.join(ROOT, module + '.py'), encoding='utf-8') as f:
        return f.read()


def modules():
    return sorted(f[:-3] for f in os.listdir(ROOT)
                  if f.endswith('.py') and f not in ('__init__.py', '__main__.py'))


def imports(module):
    """``[(target module, [imported names])]`` for every relative import in ``module``."""
    found = []
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [a.name for a in node.names]
            if node.module:
                found.append((node.module.split('.')[0], names))
            else:
                # ``from . import __version__`` names an attribute, not a module
                found.extend((name, []) for name in names if name in modules())
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('paramsurgery'):
            pytest.fail('%s imports %s absolutely: use a relative import' % (module, node.module))
    return found


def test_every_module_is_placed_once():
    place = layers()
    assert sorted(place) == modules()


@pytest.mark.parametrize('module', modules())
def test_imports_only_from_above(module):
    place = layers()
    line, stage = place[module]
    for target, _ in imports(module):
        t_line, t_stage = place[target]
        assert t_line < line or (t_line == line and t_stage < stage), (
            '%s (line %d of the layering) imports %s (line %d): move one of them, or the import'
            % (module, line, target, t_line))


def test_no_private_names_across_lines():
    place = layers()
    crossings = {(module, target, name)
                 for module in modules() for target, names in imports(module)
                 for name in names
                 if name.startswith('_') and place[target][0] != place[module][0]}
    assert crossings - KNOWN_CROSSINGS == set(), 'new private imports across features'
    assert KNOWN_CROSSINGS - crossings == set(), 'gone: remove them from KNOWN_CROSSINGS'


def test_the_check_sees_a_violation(monkeypatch):
    """The checks above read real source: an upward import planted in a module is found."""
    real = _source

    def planted(module):
        text = real(module)
        return text + '\nfrom .cli import main\n' if module == 'errors' else text

    monkeypatch.setitem(globals(), '_source', planted)
    with pytest.raises(AssertionError, match='errors .* imports cli'):
        test_imports_only_from_above('errors')
