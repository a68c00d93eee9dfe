"Running the tasks: a cluster every worker leaves ends the run, nothing listens beyond this machine, workers start with the environment asked for, --resume reruns what no longer matches"
import json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
import nbformat, psutil, pytest
import fastcore.test as fct
from distributed import Client
import convlab
import convlab.run as cr
import convlab.cli as cli
from convlab.core import write_json

def write_nb(fn:Path, *sources)->Path:
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), fn)
    return fn

def listening()->list:
    "(address, pid) of every TCP socket listening in this process and its children"
    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    return [(c.laddr.ip, p.pid) for p in procs for c in p.net_connections(kind='inet') if c.status == psutil.CONN_LISTEN]

def test_local_cluster_listens_on_loopback_only():
    "The local cluster's scheduler, workers and (by default absent) dashboard: nothing on 0.0.0.0 or another interface"
    before = set(listening())
    with cr.dask_client(workers=2) as client:
        client.submit(sum, [1, 2]).result()
        opened = [s for s in listening() if s not in before]
    assert opened, 'the cluster opened no socket at all?'
    fct.test_eq(sorted({ip for ip, _ in opened}), ['127.0.0.1'])

def test_no_worker_left(tmp_path):
    "Every worker leaves mid-run: the task fails after --wait seconds with the cause named, instead of waiting for ever"
    nb = write_nb(tmp_path/'90_fixleft_demo.ipynb', 'import time; time.sleep(600)')
    specs = cr.task_specs({nb: 'fixleft'}, [0], quick=True, timeout=900)
    cluster = cr.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    out = {}
    with cluster, Client(cluster) as client:
        kw = dict(wait=3) if 'wait' in cr.run_tasks.__code__.co_varnames else {}
        t = threading.Thread(target=lambda: out.update(res=cr.run_tasks(client, specs, **kw)), daemon=True)
        t.start()
        deadline = time.time() + 60
        while not client.processing() or not any(client.processing().values()):
            assert time.time() < deadline, 'the task never started'
            time.sleep(0.2)
        cluster.scale(0)  # every worker leaves
        t.join(90)
        assert not t.is_alive(), 'run_tasks still waiting 90 s after every worker left'
    (r,) = out['res']
    assert r['error'] and r['error']['error'].startswith('RunError: no Dask worker was left on scheduler'), r['error']

def test_resume_reruns_after_a_library_edit(tmp_path, monkeypatch):
    "A saved task is taken only with the same convlab files, library versions and device kind as now"
    nb = write_nb(tmp_path/'90_fixres_demo.ipynb', 'x = 1')
    specs = cr.task_specs({nb: 'fixres'}, [0], quick=True)
    keep = tmp_path/'tasks'
    write_json(cr.task_file(keep, specs[0]), dict(specs[0], rows=[], error=None, seconds=1., where=None))
    assert cr.finished_task(keep, specs[0]) is not None  # the same task: taken
    pkg = tmp_path/'convlab'
    shutil.copytree(Path(convlab.__file__).parent, pkg, ignore=shutil.ignore_patterns('__pycache__'))
    digest = lambda: cr.package_digest(pkg) if hasattr(cr, 'package_digest') else 'none'
    before = digest()
    loop = pkg/'loop.py'; loop.write_text(loop.read_text().replace('def train_run(', 'def train_run(  # edited\n', 1))
    after = digest()
    fct.test_ne(before, after)
    monkeypatch.setattr(cr, 'package_digest', lambda pkg=None: after, raising=False)
    edited = cr.task_specs({nb: 'fixres'}, [0], quick=True)
    assert cr.finished_task(keep, edited[0]) is None, 'a task run before a library edit was taken'

def test_resume_with_every_task_taken_starts_no_cluster(tmp_path, monkeypatch):
    nb = write_nb(tmp_path/'90_fixall_demo.ipynb', "from convlab.core import record\nrecord('fixall', 'e', 'acc', 0.9)")
    book = tmp_path/'book.json'; book.write_text(json.dumps({'results': [dict(chapter='fixall', experiment='e', metric='acc', book=0.9, min=0.85)]}))
    kw = dict(quick=True, out=tmp_path/'out', notebooks=[nb], book=book, workers=1)
    assert cli.reproduce(**kw)  # the first run starts a local cluster, as `convlab reproduce` does without --scheduler
    assert 'ran on a local Dask cluster on this machine (1 worker)' in (tmp_path/'out'/'REPORT.md').read_text()
    def no_cluster(*a, **k): raise AssertionError('a cluster was started with every task taken')
    monkeypatch.setattr(cr, 'dask_client', no_cluster)
    assert cli.reproduce(**kw, resume=True)
    md = (tmp_path/'out'/'REPORT.md').read_text()
    assert 'none ran' in md and '1 task taken from' in md, md
    assert 'ran on a local Dask cluster' not in md, md

def test_local_cluster_workers_start_with_thread_and_allocator_env(monkeypatch):
    "A worker process of `local_cluster(threads=2)` starts with torch on 2 threads; with CONVLAB_KEEP_FREED_MEMORY=0, without MALLOC_ENV"
    from convlab.core import MALLOC_ENV
    def started():
        import torch
        env = dict(kv.split('=', 1) for kv in open('/proc/self/environ').read().split('\0') if '=' in kv)  # as the process started
        return torch.get_num_threads(), {k: env.get(k) for k in ('MALLOC_MMAP_THRESHOLD_', 'OMP_NUM_THREADS')}, os.environ.get('CONVLAB_KEEP_FREED_MEMORY')
    monkeypatch.delenv('MALLOC_MMAP_THRESHOLD_', raising=False)
    monkeypatch.setenv('CONVLAB_KEEP_FREED_MEMORY', '0')
    before = dict(os.environ)
    with cr.local_cluster(1, threads=2) as cluster, Client(cluster) as client:
        fct.test_eq(list(client.run(started).values()), [(2, {'MALLOC_MMAP_THRESHOLD_': None, 'OMP_NUM_THREADS': '2'}, '0')])
    fct.test_eq(dict(os.environ), before)  # this process's environment is put back
    monkeypatch.delenv('CONVLAB_KEEP_FREED_MEMORY')
    fct.test_eq(cr.quiet_env()['MALLOC_MMAP_THRESHOLD_'], MALLOC_ENV['MALLOC_MMAP_THRESHOLD_'])  # and on by default

def test_restarted_worker_starts_with_allocator_env(monkeypatch):
    "A worker of `local_cluster` that its nanny restarts (after a crash, or `client.restart`) starts with `MALLOC_ENV` too"
    from convlab.core import MALLOC_ENV
    def started():
        env = dict(kv.split('=', 1) for kv in open('/proc/self/environ').read().split('\0') if '=' in kv)  # as the process started
        return os.getpid(), {k: env.get(k) for k in MALLOC_ENV}
    monkeypatch.delenv('CONVLAB_KEEP_FREED_MEMORY', raising=False)
    for k in MALLOC_ENV: monkeypatch.delenv(k, raising=False)
    with cr.local_cluster(1) as cluster, Client(cluster) as client:
        [(pid, env)] = client.run(started).values()
        fct.test_eq(env, MALLOC_ENV)
        client.restart()
        [(pid2, env2)] = client.run(started).values()
        fct.test_ne(pid2, pid)  # a new process
        fct.test_eq(env2, MALLOC_ENV)
