"Bad input gets one line and exit status 2 before any work starts; an installed convlab (a wheel, no clone) runs `data` and refuses `reproduce` in one line"
import os, shutil, subprocess, sys, time
from pathlib import Path
import pytest
import fastcore.test as fct

CONVLAB = str(Path(sys.executable).parent/'convlab')

def convlab(*args, cwd=None, timeout=120)->tuple:
    "(exit status, stdout, stderr, seconds) of one `convlab` command"
    start = time.time()
    r = subprocess.run([CONVLAB, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return r.returncode, r.stdout, r.stderr, time.time() - start

def one_line(err:str)->str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]

@pytest.mark.parametrize('case', ['out', 'book_missing', 'book_not_json', 'book_not_books', 'notebook_missing'])
def test_bad_input_one_line_exit_2(tmp_path, case):
    bad = {'book_not_json': '{"results": [', 'book_not_books': '{"rows": [1, 2]}'}
    if case in bad: (tmp_path/'book.json').write_text(bad[case])
    args = {'out': ['--out', '/proc/nope'], 'book_missing': ['--book', str(tmp_path/'missing.json')],
            'book_not_json': ['--book', str(tmp_path/'book.json')], 'book_not_books': ['--book', str(tmp_path/'book.json')],
            'notebook_missing': ['--notebook', str(tmp_path/'nowhere.ipynb')]}[case]
    out = [] if case == 'out' else ['--out', str(tmp_path/'report')]
    code, stdout, err, secs = convlab('reproduce', '--quick', '--only', 'fastbook13', *out, *args)
    fct.test_eq((code, stdout), (2, ''))  # nothing started: no cluster line, no data built
    line = one_line(err)
    assert line.startswith('convlab reproduce: error: '), line

def test_scheduler_that_does_not_answer(tmp_path):
    code, stdout, err, secs = convlab('reproduce', '--quick', '--only', 'fastbook13', '--out', str(tmp_path/'r'),
                                      '--scheduler', 'tcp://127.0.0.1:1', '--wait', '3')
    fct.test_eq((code, stdout), (2, ''))
    assert 'no Dask scheduler answered within 3 s' in one_line(err), err
    assert secs < 25, secs  # --wait bounds it, not Dask's 30 s default

def test_installed_convlab(tmp_path, home):
    "A wheel installed outside any clone: `convlab data` builds, `convlab reproduce` says in one line what it needs"
    root, src = Path(__file__).resolve().parent.parent, tmp_path/'src'  # built from a copy: the build leaves nothing in the clone
    shutil.copytree(root/'convlab', src/'convlab', ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('pyproject.toml', 'README.md', 'LICENSE'):
        if (root/f).exists(): shutil.copy(root/f, src/f)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(tmp_path/'dist'), str(src)],
                   check=True, capture_output=True, timeout=300)
    (whl,) = (tmp_path/'dist').glob('convlab-*.whl')
    site = tmp_path/'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--target', str(site), str(whl)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path/'elsewhere'; elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONNOUSERSITE='1')
    run = lambda *a: subprocess.run([sys.executable, '-c', 'import sys, convlab.cli; sys.exit(convlab.cli.main())', *a],
                                    capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    where = subprocess.run([sys.executable, '-c', 'import convlab; print(convlab.__file__)'], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the installed copy, not the clone
    r = run('reproduce', '--quick', '--out', str(tmp_path/'report'))
    fct.test_eq((r.returncode, r.stdout), (2, ''))
    assert 'clone' in one_line(r.stderr), r.stderr
    d = run('data', 'mnist_sample', '--quick')
    fct.test_eq(d.returncode, 0)
    fct.test_eq(d.stdout.strip().splitlines()[-1], str(home/'data'/'mnist_sample_quick'))
