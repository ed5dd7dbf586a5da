"""The docs stay true: the API reference matches the docstrings, links resolve, every public
name is documented. (The examples themselves run as doctests: setup.cfg collects docs/*.md and
the modules' docstrings, but not docs/api/*.md, the generated copies of those docstrings.)"""
import os
import re
import subprocess
import sys

import paramsurgery as ps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')


def test_api_reference_is_generated_from_current_docstrings():
    # PYTHONPATH: the script must import this checkout's package, not the one an editable
    # install of another checkout (or worktree) points the venv to.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    done = subprocess.run([sys.executable, os.path.join(DOCS, 'gen_api.py'), '--check'],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, 'run python docs/gen_api.py: ' + done.stdout + done.stderr


def test_every_public_name_is_in_the_reference():
    text = ''.join(open(os.path.join(DOCS, 'api', f)).read()
                   for f in os.listdir(os.path.join(DOCS, 'api')))
    missing = [name for name in ps.__all__ if '## `%s' % name not in text]
    assert missing == []


def _markdown_files():
    yield os.path.join(ROOT, 'README.md')
    for folder, _, files in os.walk(DOCS):
        for f in files:
            if f.endswith('.md'):
                yield os.path.join(folder, f)


def test_relative_links_resolve():
    broken = []
    for path in _markdown_files():
        for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', open(path).read()):
            if '://' in target:
                continue
            if not os.path.exists(os.path.join(os.path.dirname(path), target)):
                broken.append('%s -> %s' % (os.path.relpath(path, ROOT), target))
    assert broken == []


def test_readme_gives_the_two_commands_first():
    text = open(os.path.join(ROOT, 'README.md')).read()
    first_block = text.split('```')[1]
    assert [l.split('#')[0].strip() for l in first_block.strip().splitlines()] == \
        ['make demo', 'make test']


def test_readme_example_runs(capsys):
    text = open(os.path.join(ROOT, 'README.md')).read()
    code = re.search(r'```python\n(.*?)```', text, re.S).group(1)
    exec(compile(code, 'README.md', 'exec'), {})
    out = capsys.readouterr().out
    assert re.search(r'resnetv\d+_conv0_weight .* 50\.00% +yes', out)
    assert re.search(r'resnetv\d+_stage4_conv1_weight .* 90\.00% +yes', out)


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def _anchors(path):
    with open(path) as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)   # a '#' in code is no heading
    return {_slug(m) for m in re.findall(r'^#+ (.*)$', text, re.M)}


def _user_facing_files():
    yield from _markdown_files()
    yield os.path.join(ROOT, 'CHANGELOG.md')
    package = os.path.join(ROOT, 'paramsurgery')
    for f in sorted(os.listdir(package)):
        if f.endswith('.py'):
            yield os.path.join(package, f)


def test_links_to_docs_anchors_resolve():
    # [text](page.md#anchor) and (#anchor) in Markdown; docs/page.md#anchor in messages and
    # docstrings: a link to a heading that was renamed sends the user nowhere
    broken = []
    for path in _user_facing_files():
        text = open(path).read()
        links = []
        if path.endswith('.md'):
            here = os.path.dirname(path)
            links += [(os.path.join(here, page) if page else path, anchor) for page, anchor in
                      re.findall(r'\]\(([^)#\s:]*)#([^)\s]+)\)', text)]
        links += [(os.path.join(ROOT, 'docs', page), anchor)
                  for page, anchor in re.findall(r'docs/([\w-]+\.md)#([\w-]+)', text)]
        for page, anchor in links:
            if not os.path.exists(page) or anchor not in _anchors(page):
                broken.append('%s -> %s#%s' % (os.path.relpath(path, ROOT),
                                               os.path.relpath(page, ROOT), anchor))
    assert broken == []


def test_no_user_facing_text_cites_the_internal_contract():
    # users have the docs pages, not the sections of the design contract (API.md)
    cites = re.compile(r'[Ss]ection [0-9]+|API\.md|API contract')
    found = ['%s:%d: %s' % (os.path.relpath(path, ROOT), number, line.strip())
             for path in _user_facing_files()
             for number, line in enumerate(open(path), 1) if cites.search(line)]
    assert found == []
