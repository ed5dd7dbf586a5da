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
KNOWN_CROSSINGS = set()


def layers(package=''):
    """``{module: (line, stage)}`` from the layer list in the docstring of the package's
    (or a subpackage's) ``__init__.py``."""
    doc = ast.get_docstring(ast.parse(_source(os.path.join(package, '__init__'))))
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


def subpackages():
    return sorted(d for d in os.listdir(ROOT)
                  if os.path.isfile(os.path.join(ROOT, d, '__init__.py')))


def modules(package=''):
    """The entries of a layering: the package's modules and subpackages (each one entry),
    or a subpackage's own modules."""
    folder = os.path.join(ROOT, package)
    found = [f[:-3] for f in os.listdir(folder)
             if f.endswith('.py') and f not in ('__init__.py', '__main__.py')]
    return sorted(found + ([] if package else subpackages()))


def imports(module, package=''):
    """``[(target, [imported names])]`` for every relative import of ``module``: with no
    ``package``, its imports of the package's entries (a subpackage's are those of all its
    files); in a subpackage, the module's imports of its siblings."""
    files = [os.path.join(package, module)]
    if not package and module in subpackages():
        files = [os.path.join(module, m) for m in ['__init__'] + modules(module)]
    found = []
    for path in files:
        inside = os.path.dirname(path) != ''       # a file of a subpackage
        siblings = modules(os.path.dirname(path)) if package else modules()
        for node in ast.walk(ast.parse(_source(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                # level 1 in a subpackage's file names its siblings, level 2 the package
                if node.level != (1 if package else 1 + inside):
                    continue
                names = [a.name for a in node.names]
                if node.module:
                    parts = node.module.split('.')
                    # a private module inside a subpackage counts as a private name
                    found.append((parts[0], names + [p for p in parts[1:] if p.startswith('_')]))
                else:
                    # ``from . import __version__`` names an attribute, not a module
                    found.extend((name, []) for name in names if name in siblings)
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
                    'paramsurgery'):
                pytest.fail('%s imports %s absolutely: use a relative import' % (path,
                                                                                node.module))
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


@pytest.mark.parametrize('package', subpackages())
def test_every_module_of_a_subpackage_is_placed_once(package):
    assert sorted(layers(package)) == modules(package)


@pytest.mark.parametrize('package, module', [(p, m) for p in subpackages() for m in modules(p)])
def test_subpackage_modules_import_only_from_above(package, module):
    place = layers(package)
    line, stage = place[module]
    for target, names in imports(module, package):
        t_line, t_stage = place[target]
        assert t_line < line or (t_line == line and t_stage < stage), (
            '%s.%s (line %d of its layering) imports %s (line %d): move one of them, or the '
            'import' % (package, module, line, target, t_line))
        # inside a subpackage, ``_name`` is local to its file
        assert not [n for n in names if n.startswith('_')], (
            '%s.%s imports the file-local %s from %s: drop the underscore (it is meant for '
            'the siblings) or keep the use in one file' % (package, module, names, target))


def test_the_checks_see_violations_in_a_subpackage(monkeypatch):
    """Planted in the real source: an upward import inside channels/, a file-local name taken
    from a sibling, and a private name taken from a subpackage's module by another entry."""
    real = _source
    plants = {os.path.join('channels', 'graph'): '\nfrom .shrink import shrink\n',
              os.path.join('channels', 'shrink'): '\nfrom .trace import _Spaces\n',
              'cli': '\nfrom .channels.trace import _Spaces\n'}

    def planted(module):
        return real(module) + plants.get(module, '')

    monkeypatch.setitem(globals(), '_source', planted)
    with pytest.raises(AssertionError, match=r'channels.graph .* imports shrink'):
        test_subpackage_modules_import_only_from_above('channels', 'graph')
    with pytest.raises(AssertionError, match=r'channels.shrink imports the file-local'):
        test_subpackage_modules_import_only_from_above('channels', 'shrink')
    with pytest.raises(AssertionError, match='new private imports across features'):
        test_no_private_names_across_lines()


def test_setup_cfg_lists_every_subpackage():
    """A subpackage missing from setup.cfg's ``packages`` is left out of a wheel or a
    non-editable install, where ``import paramsurgery`` then fails."""
    import configparser
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, '..', 'setup.cfg'))
    listed = {p.strip() for p in config['options']['packages'].replace('\n', ',').split(',')
              if p.strip()}
    assert listed == {'paramsurgery'} | {'paramsurgery.' + p for p in subpackages()}
