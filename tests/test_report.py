"The report folder: written whole (atomically), a rerun into it leaves only its own files, results merged under a lock, a chapter with nothing judged not headed PASS"
import json, threading, time
from pathlib import Path
import nbformat, pytest
import fastcore.test as fct
import convlab.report as rp
from convlab.core import read_results
from convlab.judge import Status

def result(name:str, chapter:str, seed:int=0, rows:list=(), fig:bool=False)->dict:
    "A finished task of notebook `name`, with a figure when `fig`"
    out = [nbformat.v4.new_output('display_data', data={'image/png': rp.base64.b64encode(b'\x89PNG fake').decode()})] if fig else []
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1', outputs=out)])
    return dict(chapter=chapter, name=name, seed=seed, quick=True, nb=nbformat.writes(nb), rows=list(rows), error=None, seconds=2.,
                where=dict(host='box', worker='local', pid=1, gpu=False))

def run(*chapters): return dict(chapters=list(chapters), seeds=[0], quick=True, cluster='ran on a test')
ROW = dict(experiment='e', metric='acc', value=0.9, seed=0)
BOOK = [dict(chapter='judged', experiment='e', metric='acc', book=0.9, min=0.85)]

def test_rerun_leaves_only_its_own_files(tmp_path):
    rp.write_report(tmp_path, [result('90_first_demo', 'judged', rows=[dict(ROW, chapter='judged')], fig=True)], BOOK, run('judged'))
    assert any('90_first_demo' in p.name for p in (tmp_path/'figures').iterdir())
    rp.write_report(tmp_path, [result('91_second_demo', 'judged', rows=[dict(ROW, chapter='judged')])], BOOK, run('judged'))
    fct.test_eq(sorted(p.name for p in (tmp_path/'notebooks').iterdir()), ['91_second_demo-seed0.html', '91_second_demo-seed0.ipynb'])
    fct.test_eq([p.name for p in (tmp_path/'figures').iterdir() if '90_first_demo' in p.name], [])  # the first run's figures are gone
    fct.test_eq([p.name for p in tmp_path.iterdir() if p.name.startswith('.') and not p.name.endswith('.lock')], [])  # no staging left

def test_report_written_whole(tmp_path, monkeypatch):
    "A write that stops half-way (disk full) leaves the previous REPORT.md and index.html whole"
    rp.write_report(tmp_path, [result('90_first_demo', 'judged', rows=[dict(ROW, chapter='judged')])], BOOK, run('judged'))
    before = {n: (tmp_path/n).read_text() for n in ('REPORT.md', 'index.html')}
    write = Path.write_text
    def half(p, s, *a, **k):
        if p.name.lstrip('.').startswith(('REPORT.md', 'index.html')): write(p, s[:len(s)//2]); raise OSError('disk full')
        return write(p, s, *a, **k)
    monkeypatch.setattr(Path, 'write_text', half)
    with pytest.raises(OSError, match='disk full'):
        rp.write_report(tmp_path, [result('90_first_demo', 'judged', rows=[dict(ROW, chapter='judged', value=0.95)])], BOOK, run('judged'))
    monkeypatch.setattr(Path, 'write_text', write)
    fct.test_eq({n: (tmp_path/n).read_text() for n in before}, before)

def test_results_merged_under_a_lock(tmp_path, monkeypatch):
    "Two reports of different chapters written into one folder at once both keep their rows"
    slow_read = rp.read_results
    def slow(fn): rows = slow_read(fn); time.sleep(0.5); return rows  # widen the read-merge-write window
    monkeypatch.setattr(rp, 'read_results', slow)
    ts = [threading.Thread(target=rp.save_results, args=(tmp_path/'results.json', [dict(ROW, chapter=c)], [c])) for c in ('a', 'b')]
    for t in ts: t.start()
    for t in ts: t.join()
    fct.test_eq(sorted(r['chapter'] for r in read_results(tmp_path/'results.json')), ['a', 'b'])

def test_nothing_judged_is_not_a_pass(tmp_path):
    "A chapter whose rows are all shown (a questionnaire) ran, and says it had nothing to compare; it is not headed PASS"
    res = [result('11_quiz_demo', 'quiz', rows=[dict(ROW, chapter='quiz')])]
    head = rp.write_report(tmp_path, res, [dict(chapter='quiz', experiment='e', metric='acc', book=0.5)], run('quiz'))
    assert head['status'] is not Status.PASS, head
    md = (tmp_path/'REPORT.md').read_text()
    assert '## quiz — PASS' not in md and not md.splitlines()[2].startswith('**PASS**'), md
    assert '## quiz — NOT JUDGED' in md and 'nothing to compare' in md, md
