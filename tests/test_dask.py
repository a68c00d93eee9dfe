"`convlab reproduce` on a Dask cluster of separate processes: every seed's rows come back, and a worker killed mid-run leaves no silent gap"
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
import nbformat, pytest
import fastcore.test as fct
from distributed import Client, LocalCluster
from fastcore.basics import num_cpus
from convlab.core import read_results
from convlab.judge import book_results

CONVLAB = str(Path(sys.executable).parent/'convlab')

def test_two_seeds_on_a_cluster_of_processes(fastbook13_report, cluster):
    out, res = fastbook13_report
    assert (out/'REPORT.md').exists(), res.stdout[-3000:] + res.stderr[-3000:]
    rows = read_results(out/'results.json')
    seeds = {}
    for r in rows: seeds.setdefault((r['experiment'], r['metric']), set()).add(r['seed'])
    book = [(r['experiment'], r['metric']) for r in book_results() if r['chapter'] == 'fastbook13']
    fct.test_eq({k: seeds.get(k) for k in book}, {k: {0, 1} for k in book})  # every book row, in both seeds
    n = max(1, num_cpus() // 2)  # this machine's cores shared by the cluster's 2 single-threaded workers
    if not any('(cuda)' in r['device'] or '(mps)' in r['device'] for r in rows):
        fct.test_eq({r['device'].rsplit(', ', 1)[-1] for r in rows}, {f"{n} thread{'s'*(n != 1)}"})
    md = (out/'REPORT.md').read_text()
    with Client(cluster) as c: addrs = set(c.scheduler_info(n_workers=-1)['workers'])
    workers = re.findall(r'seed (\d): ran in \d+ s on (?:the CPU|a GPU) of [^,]+, Dask worker (tcp://127\.0\.0\.1:\d+)', md)
    fct.test_eq((sorted(s for s, _ in workers), {w for _, w in workers} <= addrs), (['0', '1'], True))  # each seed ran, on a worker of the cluster
    fct.test_eq(re.findall(r'^\[(\d)/2\]', res.stdout, re.M), ['1', '2'])  # one progress line per task, not a bar, in a log
    assert f'ran on the Dask cluster at {cluster} (2 workers)' in md, md  # in words, then the address
    fct.test_eq([w for w in ('without encryption', 'torch.jit.script', '█') if w in res.stdout + res.stderr], [])  # a quiet console

# rows go straight to CONVLAB_RESULTS (as `record` writes them, less the device) so that the kernel starts in a second
KILLABLE = ["import json, os, time, pathlib\nmark = pathlib.Path({mark!r})\n"
            "attempt = mark.read_text().count('attempt') + 1 if mark.exists() else 1\n"
            "with mark.open('a') as f: f.write(f'attempt {{attempt}} worker {{os.getppid()}} kernel {{os.getpid()}}\\n')\n"
            "rows = []\ndef record(e):\n    rows.append(dict(chapter='fixkill', experiment=e, metric='acc', value=0.9, seed=0))\n"
            "    pathlib.Path(os.environ['CONVLAB_RESULTS']).write_text(json.dumps(rows))",
            "record('before')",
            "if attempt == 1:\n    with mark.open('a') as f: f.write('sleeping\\n')\n    time.sleep(600)",
            "record('after')"]

def wait_for(cond, timeout:float=180, what:str=''):
    "Poll `cond()` until it is true"
    end = time.time() + timeout
    while not cond():
        if time.time() > end: raise TimeoutError(what)
        time.sleep(0.5)

def alive(pid:int)->bool:
    "Is process `pid` still running?"
    try: os.kill(pid, 0); return True
    except ProcessLookupError: return False

def set_allowed_failures(addr:str, n:int):
    "How many dead workers the scheduler at `addr` accepts for one task before it gives up on it"
    with Client(addr) as c:
        c.wait_for_workers(2, timeout=120)  # the nanny restarts a killed worker
        c.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, 'allowed_failures', n))

@pytest.mark.parametrize('allowed_failures', [3, 0])
def test_worker_killed_mid_notebook(cluster, tmp_path, allowed_failures):
    mark, nb, book = tmp_path/'mark.txt', tmp_path/'90_fixkill_demo.ipynb', tmp_path/'book.json'
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s.format(mark=str(mark))) for s in KILLABLE]), nb)
    book.write_text(json.dumps({'results': [dict(chapter='fixkill', experiment=e, metric='acc', book=0.9, min=0.89) for e in ('before', 'after')]}))
    set_allowed_failures(cluster, allowed_failures)
    try:
        run = subprocess.Popen([CONVLAB, 'reproduce', '--quick', '--out', str(tmp_path/'out'), '--notebook', str(nb), '--book', str(book),
                                '--scheduler', cluster], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: mark.exists() and 'sleeping' in mark.read_text(), what='the notebook never reached its sleeping cell')
        worker, kernel = map(int, re.match(r'attempt 1 worker (\d+) kernel (\d+)', mark.read_text()).groups())
        os.kill(worker, signal.SIGKILL)
        log = run.communicate(timeout=300)[0]
    finally: set_allowed_failures(cluster, 3)
    wait_for(lambda: not alive(kernel), 30, 'the kernel outlived its worker')
    md = (tmp_path/'out'/'REPORT.md').read_text()
    if allowed_failures:  # Dask gave the task to another worker, which ran it to the end
        fct.test_eq((run.returncode, mark.read_text().count('attempt')), (0, 2))
        for e in ('before', 'after'): assert f'| {e} | acc | 0.9000 | 0.9000 (N=1) | 0.0000 | ≥ 0.89 every seed |  | ✓ pass |' in md, md
    else:  # Dask gave up: the task is a failure and its rows are ✗, not absent
        fct.test_eq((run.returncode, mark.read_text().count('attempt')), (1, 1))
        for e in ('before', 'after'): assert f'| {e} | acc | 0.9000 |  |  | missing in seed 0 |  | ✗ fail |' in md, md
        assert 'seed 0: FAILED: KilledWorker' in md, md
    assert re.search(r'^\[1/1\] 90_fixkill_demo seed 0', log, re.M), log

def test_scheduler_without_workers(tmp_path):
    "A --scheduler that no worker joins ends the run within --wait seconds, saying what was waited for and what to do"
    nb = tmp_path/'90_fixwait_demo.ipynb'
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')]), nb)
    with LocalCluster(n_workers=0, dashboard_address=None) as empty:
        start = time.time()
        res = subprocess.run([CONVLAB, 'reproduce', '--quick', '--out', str(tmp_path/'out'), '--notebook', str(nb), '--scheduler',
                              empty.scheduler_address, '--wait', '3'], capture_output=True, text=True, timeout=120)
    fct.test_eq((res.returncode, time.time() - start < 60), (1, True))
    assert res.stderr.startswith(f'convlab: no Dask workers joined scheduler {empty.scheduler_address} within 3 s: '
                                 f'start workers with `dask worker {empty.scheduler_address}`'), res.stderr
