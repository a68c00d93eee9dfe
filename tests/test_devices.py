"""The notebooks, executed in quick mode on an emulated GPU (`emulated_gpu`): a cell that mixes the CPU and the GPU fails here
as it would on Colab, with its notebook, cell number and error.

The notebooks run `WORKERS` at a time, as `nbdev-test` runs them in `tools/test.sh`, each kernel with its share of the cores;
each notebook's test waits for its own run.

`python tests/test_devices.py nbs/10_fastbook13_convolutions.ipynb [--plain]` runs one notebook and prints what it found
and how long it took (`--plain`: without the emulation, for the comparison)."""
import re, json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import nbformat, pytest
from nbclient import NotebookClient
from nbdev.test import nb_test_cells
from fastcore.basics import num_cpus

TESTS = Path(__file__).resolve().parent
NBS = TESTS.parent/'nbs'
CHAPTERS = sorted(NBS.glob('[1-9][0-9]_*.ipynb'))
LIBRARY = sorted(NBS.glob('0[0-9]_*.ipynb'))
WORKERS = max(1, int(os.environ.get('CONVLAB_TEST_WORKERS', '2')))  # notebooks at a time: tools/test.sh gives nbdev-test as many

_ENABLE = "import sys; sys.path.insert(0, {tests!r})\nimport emulated_gpu; emulated_gpu.enable(log={log!r})"
_USAGE = "import json, resource; print(json.dumps(sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (0, -1)))))"

# torch.compile cannot run under the emulation: dynamo queries the CUDA driver itself ("Found no NVIDIA driver"), even
# for a CPU model, so cells that compile are left out here; tests/test_gpu.py runs them on a real GPU
COMPILE = re.compile(r'\bcompile=(?!False\b)')  # a call that compiles (the library cells that define it still run)

def _first_line(src:str)->str: return next((l for l in src.splitlines() if l.strip() and not l.startswith('#|')), '')

def run_notebook(
    fn:Path, # notebook to execute
    log:Path, # file the emulation appends the mix-ups it finds to
    emulate:bool=True, # False: the notebook as it is, for timing
    timeout:int=1800, # seconds allowed to each cell
    threads:int=None, # torch (OpenMP/MKL/BLAS) threads for the kernel; torch's default when None
)->dict: # mixups, errors (cell, line, error); seconds, cpu_seconds (the kernel and its children), seconds per cell
    "Execute the cells `nbdev-test` would run in `fn`, in quick mode, after a first cell that enables the emulation"
    fn, log = Path(fn), Path(log)
    nb = nbformat.read(fn, as_version=4)
    run = {c.idx_ for c in nb_test_cells(fn, ['notest'])}
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'code' and i not in run: c.source = ''  # `#| eval: false`, `#| notest`: skipped, as nbdev-test does
        if emulate and c.cell_type == 'code' and '#| export' not in c.source and COMPILE.search(c.source): c.source = ''  # dynamo asks the real CUDA driver
    first = _ENABLE.format(tests=str(TESTS), log=str(log)) if emulate else 'pass'
    nb.cells = [nbformat.v4.new_code_cell(first), *nb.cells, nbformat.v4.new_code_cell(_USAGE)]
    found, mixups, errors, times, last = 0, [], [], {}, time.time()
    def _after(cell, cell_index, **kwargs):
        nonlocal found, last
        src, i = _first_line(cell.source), cell_index - 1  # the notebook's own cell number
        times[i], last = round(time.time() - last, 1), time.time()
        lines = log.read_text().splitlines() if log.exists() else []
        mixups.extend(dict(cell=i, line=src, **json.loads(l)) for l in lines[found:])
        found = len(lines)
        errors.extend(dict(cell=i, line=src, error=f"{o.ename}: {o.evalue}".splitlines()[0])
                      for o in cell.get('outputs', []) if o.output_type == 'error')
    env = dict(os.environ, CONVLAB_QUICK='1', IN_TEST='1', MPLBACKEND='Agg')
    if threads: env.update({k: str(threads) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')})
    env.pop('CONVLAB_RESULTS', None)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True, on_cell_executed=_after,
                            resources={'metadata': {'path': str(fn.parent)}})
    start = time.time()
    client.execute(env=env)
    usage = [o for o in nb.cells[-1].get('outputs', []) if o.output_type == 'stream']
    return dict(mixups=mixups, errors=errors, seconds=round(time.time() - start, 1),
                cpu_seconds=round(float(usage[0].text), 1) if usage else None, cells=times)

def timing(fn:Path, res:dict, emulate:bool=True)->str:
    "How long `fn` took, and its slowest cells"
    slow = ', '.join(f'{i}: {s} s' for i, s in sorted(res['cells'].items(), key=lambda o: -o[1])[:5])
    return f"{Path(fn).name}: {'emulated GPU' if emulate else 'plain'}, {res['seconds']} s, {res['cpu_seconds']} CPU s; slowest cells: {slow}"

def describe(fn:Path, res:dict)->str:
    "What went wrong in notebook `fn`, one line per mix-up, then the other errors"
    out = [f"{Path(fn).name}, cell {m['cell']} ({m['cell_line'] or m['line']!r}): {m['error']}" + ('' if m['cell_line'] else f"  [at {m['where']}]")
           for m in res['mixups']]
    seen = {(m['cell'], m['error']) for m in res['mixups']}
    out += [f"{Path(fn).name}, cell {e['cell']} ({e['line']!r}): {e['error']}" for e in res['errors'] if (e['cell'], e['error']) not in seen]
    return '\n'.join(out)

# Emulated, a notebook takes about 1.4 times its plain CPU time (nb10 in quick mode, one thread, on a 2-core AVX-512 CPU:
# 59 CPU s against 41); nb20 is the longest (105 s here), as on the emulated GPU it also trains its 100-block ResNet.

@pytest.fixture(scope='module')
def emulated_runs(request, tmp_path_factory)->dict:
    """notebook -> the future of its `run_notebook`, for every notebook this session's tests ask for, all started at once and run
    `WORKERS` at a time, the largest (the chapters, whose outputs come from training) first"""
    if not os.environ.get('CONVLAB_DATA_MIRROR'): pytest.skip('CONVLAB_DATA_MIRROR is not set: the notebooks need their data')
    wanted = {i.callspec.params['fn'] for i in request.session.items if i.originalname == 'test_notebook_on_emulated_gpu'}
    logs, threads = tmp_path_factory.mktemp('emulated'), max(1, num_cpus() // WORKERS) if WORKERS > 1 else None
    with ThreadPoolExecutor(WORKERS) as ex:
        runs = {fn: ex.submit(run_notebook, fn, logs/f'{fn.stem}.jsonl', threads=threads)
                for fn in sorted(wanted, key=lambda p: -p.stat().st_size)}
        yield runs
        for f in runs.values(): f.cancel()  # those not started yet, when the session stops early

@pytest.mark.parametrize('fn', CHAPTERS + LIBRARY, ids=lambda p: p.stem)
def test_notebook_on_emulated_gpu(fn, emulated_runs):
    "Every cell runs on the emulated GPU, and no cell mixes devices (not even one that catches the error)"
    res = emulated_runs[fn].result()
    print(timing(fn, res))  # shown by `pytest -rA`
    assert not res['mixups'] and not res['errors'], f"device mix-ups or errors on the emulated GPU:\n{describe(fn, res)}"

if __name__ == '__main__':
    import tempfile
    fn, emulate = Path(sys.argv[1]), '--plain' not in sys.argv
    res = run_notebook(fn, Path(tempfile.mkdtemp())/'mixups.jsonl', emulate)
    print(describe(fn, res) or 'no mix-ups, no errors')
    print(timing(fn, res, emulate))
