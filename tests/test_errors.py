"""errors: the exception hierarchy's contract, and install_hint for the missing-extra messages."""
import configparser
import os

import paramsurgery as ps
from paramsurgery import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_install_hint_in_a_source_checkout():
    assert os.path.isfile(os.path.join(ROOT, 'setup.py'))   # the tests run from a checkout
    assert errors.install_hint('plot') == "pip install -e '.[plot]'"
    assert errors.install_hint('demo') == "pip install -e '.[demo]'"


def test_install_hint_for_an_installed_package(tmp_path, monkeypatch):
    package = tmp_path / 'site-packages' / 'paramsurgery'
    package.mkdir(parents=True)
    monkeypatch.setattr(errors, '__file__', str(package / 'errors.py'))
    assert errors.install_hint('plot') == "pip install 'paramsurgery[plot]'"
    (tmp_path / 'site-packages' / 'setup.py').write_text('')
    assert errors.install_hint('plot') == "pip install -e '.[plot]'"


def test_the_hinted_extras_exist_and_keep_numpy_below_1_24():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    assert {'plot', 'demo'} <= set(cfg['options.extras_require'])
    assert 'numpy>=1.16,<1.24' in cfg['options']['install_requires'].split()


def test_missing_dependency_is_an_import_error():
    assert issubclass(ps.MissingDependencyError, ImportError)
    assert issubclass(ps.MissingDependencyError, ps.ParamSurgeryError)
