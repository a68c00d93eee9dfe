"`convlab reproduce`: a broken notebook fails its rows without losing the others, a cell that never returns ends at its time limit, the console stays quiet; the HTML report renders each kind of row as what it is in Chromium"
import base64, io, json, re, shutil, subprocess, sys, time
from pathlib import Path
import nbformat, pytest
import fastcore.test as fct
from convlab.core import read_results
from convlab.judge import book_results
from test_dask import alive, wait_for

CONVLAB = str(Path(sys.executable).parent/'convlab')
NOISE = ['without encryption', 'torch.jit.script', '█']  # the kernels' TCP warning, torch's deprecation warning, a progress bar

def write_nb(fn, *sources):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), fn)
    return fn

def test_broken_notebook_fails_alone(tmp_path, cluster):
    ok = write_nb(tmp_path/'90_fixok_demo.ipynb', "from convlab.core import record\nrecord('fixok', 'exp', 'acc', 0.95)")
    broken = write_nb(tmp_path/'91_fixbroken_demo.ipynb', "from convlab.core import record\nrecord('fixbroken', 'first', 'acc', 0.9)",
                      "raise RuntimeError('deliberately broken')", "record('fixbroken', 'second', 'acc', 0.9)")
    book = tmp_path/'book.json'
    book.write_text(json.dumps({'results': [
        dict(chapter='fixok', experiment='exp', metric='acc', book=0.95, min=0.94),
        dict(chapter='fixbroken', experiment='first', metric='acc', book=0.9, min=0.89),
        dict(chapter='fixbroken', experiment='second', metric='acc', book=0.9, min=0.89)]}))
    out = tmp_path/'out'
    res = subprocess.run([CONVLAB, 'reproduce', '--quick', '--out', str(out), '--book', str(book),
                          '--notebook', str(broken), '--notebook', str(ok), '--scheduler', cluster], capture_output=True, text=True)
    fct.test_eq(res.returncode, 1)
    rows = {(r['chapter'], r['experiment']): r['value'] for r in read_results(out/'results.json')}
    fct.test_eq(rows, {('fixbroken', 'first'): 0.9, ('fixok', 'exp'): 0.95})  # the other notebook's task still ran
    md = (out/'REPORT.md').read_text()
    for line in ['## fixbroken — FAIL', '| second | acc | 0.9000 |  |  | missing in seed 0 |  | ✗ fail |',
                 '| first | acc | 0.9000 | 0.9000 (N=1) | 0.0000 | ≥ 0.89 every seed |  | ✓ pass |',
                 '## fixok — PASS', '| exp | acc | 0.9500 | 0.9500 (N=1) | 0.0000 | ≥ 0.94 every seed |  | ✓ pass |',
                 'seed 0: FAILED at cell 1: RuntimeError: deliberately broken']:
        assert line in md, (line, md)
    fct.test_eq(md.index('| second |') < md.index('| first |'), True)  # failing rows first
    fct.test_eq([(out/'notebooks'/f'{n}-seed0.html').exists() for n in ('91_fixbroken_demo', '90_fixok_demo')], [True, True])
    fct.test_eq([n for n in NOISE if n in res.stdout + res.stderr], [])  # progress lines and the verdict only
    fct.test_eq(re.findall(r'^\[\d/2\] \S+ seed 0', res.stdout, re.M) != [] and res.stdout.rstrip().splitlines()[-1].startswith('FAIL: '), True)

def test_cell_that_never_returns(tmp_path, cluster):
    pid = tmp_path/'kernel.pid'
    nb = write_nb(tmp_path/'90_fixhang_demo.ipynb', "import json, os\nrow = dict(chapter='fixhang', experiment='before', metric='acc', value=0.9, seed=0)\n"
                  f"open(os.environ['CONVLAB_RESULTS'], 'w').write(json.dumps([row])); open({str(pid)!r}, 'w').write(str(os.getpid()))",
                  "import time; time.sleep(1000)")  # no imports: the first cell takes no time
    start = time.time()
    res = subprocess.run([CONVLAB, 'reproduce', '--quick', '--out', str(tmp_path/'out'), '--notebook', str(nb), '--cell-timeout', '5',
                          '--scheduler', cluster], capture_output=True, text=True, timeout=300)
    fct.test_eq((res.returncode, time.time() - start < 120), (1, True))
    wait_for(lambda: not alive(int(pid.read_text())), 30, 'the kernel outlived its time limit')  # nothing left on the shared cluster
    md = (tmp_path/'out'/'REPORT.md').read_text()
    assert 'seed 0: FAILED at cell 1: TimeoutError: cell 1 did not finish within 5 s; if it needs longer, raise the limit with `convlab reproduce --cell-timeout SECONDS`' in md, md
    assert re.search(r'^\[1/1\] 90_fixhang_demo seed 0: FAILED: TimeoutError: cell 1 did not finish within 5 s', res.stdout, re.M), res.stdout
    fct.test_eq([r['experiment'] for r in read_results(tmp_path/'out'/'results.json')], ['before'])  # what it recorded before is kept

def chromium():
    exe = shutil.which('chromium') or '/usr/bin/chromium'
    return exe if Path(exe).exists() else None

def png()->str:
    "A small real PNG, base64 as a notebook output holds it"
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 1)); fig.subplots().plot([0, 1], [1, 0])
    buf = io.BytesIO(); fig.savefig(buf, format='png'); return base64.b64encode(buf.getvalue()).decode()

KINDS = {  # experiment -> (book row, values by seed, the row's class, verdict, words the rule column must hold)
    'passes': (dict(book=0.88, tol=0.02), [0.87, 0.88, 0.89], 'pass', '✓ pass', '95% PI'),
    'fails': (dict(book=0.97, min=0.96), [0.97, 0.95, 0.97], 'fail', '✗ fail', '≥ 0.96 every seed'),
    'shown': (dict(book=0.5), [0.4, 0.5, 0.6], 'shown', '– not judged', 'shown'),
    'needs_gpu': (dict(book=0.86, tol=0.025, gpu_only=True), [], 'not-run', '○ not run', 'not run: needs a GPU'),
    'diverges': (dict(book=0.1135, diverged_below=0.2), [0.1135, 0.97, 0.98], 'shown', '– not judged', 'diverged in 1 of 3 seeds'),
    'seed_missing': (dict(book=0.9, tol=0.02), [0.9, 0.91], 'fail', '✗ fail', 'missing in seed 2')}

def synthetic_report(out:Path)->dict:
    "A report of three seeds of chapter 'syn', written from made-up results: one row of each kind, a count, a captioned figure"
    from convlab.report import write_report
    book = [dict(chapter='syn', experiment=e, metric='acc', **ref) for e, (ref, *_) in KINDS.items()]
    rows = [dict(chapter='syn', experiment=e, metric='acc', value=v, seed=s, device='CPU: test, 1 thread')
            for e, (_, vs, *_) in KINDS.items() for s, v in enumerate(vs)]
    rows += [dict(chapter='syn', experiment='more_seeds', metric='n_diverged', value=v, seed=s) for s, v in enumerate([1, 2, 1])]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('## Training a net'), nbformat.v4.new_code_cell(
        "record('syn', 'passes', 'acc', 0.87)\nlearn.activation_stats.plot_layer_stats(-2)",
        outputs=[nbformat.v4.new_output('display_data', data={'image/png': png()})])])
    where = dict(host='box', worker='tcp://127.0.0.1:4321', pid=1, gpu=False)
    results = [dict(chapter='syn', name='90_syn_demo', seed=s, quick=True, nb=nbformat.writes(nb), rows=[r for r in rows if r['seed'] == s],
                    error=None, seconds=3., where=where) for s in range(3)]
    return write_report(out, results, book, dict(chapters=['syn'], seeds=[0, 1, 2], quick=True, cluster='ran on a test'))

@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (Debian package chromium); .ci/run installs it')
def test_each_kind_of_row_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright
    out = tmp_path/'report'
    head = synthetic_report(out)
    fct.test_eq(head['status'].word, 'fail')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'])
        page = b.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto((out/'index.html').as_uri()); page.wait_for_load_state('load')
        rows = page.eval_on_selector_all('#syn table.results tbody tr', """trs => trs.map(t => [t.dataset.key, t.className,
            t.querySelector('td.verdict').innerText, t.querySelector('td.rule').innerText, t.innerText])""")
        got = {k.split('/')[1]: (cls, verdict, rule) for k, cls, verdict, rule, _ in rows}
        for e, (_, _, cls, verdict, words) in KINDS.items():
            fct.test_eq(got[e][:2], (cls, verdict))
            assert words in got[e][2], (e, got[e])
        count = next(text for k, *_, text in rows if k == 'syn/more_seeds/n_diverged')
        assert '1–2 (N=3)' in count and '.' not in count.split('\t')[3], count  # a count, in whole numbers
        fct.test_eq([k.split('/')[1] for k, *_ in rows][:2], ['fails', 'seed_missing'])  # failing rows first
        passes = next(text for k, *_, text in rows if k == 'syn/passes/acc')
        assert '0.8303 – 0.9297' in passes, passes  # our interval beside the verdict: 0.88 ± 4.303 · 0.01 · √(4/3) = ± 0.0497
        fct.test_eq(page.inner_text('#verdict').split()[0], 'FAIL')
        assert 'prediction interval' in page.inner_text('.legend')
        assert page.inner_text('#syn .runs li').startswith('90_syn_demo, seed 0: ran in 3 s on the CPU of box, Dask worker tcp://127.0.0.1:4321')
        captions = page.eval_on_selector_all('#syn figure', """fs => fs.map(f => [f.querySelector('img').naturalWidth,
            f.querySelector('figcaption').innerText, f.querySelector('figcaption').getBoundingClientRect().height])""")
        fct.test_eq([(w > 0, c, h > 0) for w, c, h in captions],
                    [(True, 'Training a net (passes) · cell 1: learn.activation_stats.plot_layer_stats(-2)', True)])
        fct.test_eq(page.eval_on_selector('img.seeds', 'i => i.naturalWidth') > 0, True)
        page.screenshot(path=str(out/'index.png'), full_page=True)
        b.close()

@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (Debian package chromium); .ci/run installs it')
def test_report_in_chromium(fastbook13_report):
    "The real report of a chapter renders: a row per book number, the device, the figures, a page per seed (whatever the training gave)"
    from playwright.sync_api import sync_playwright
    out, res = fastbook13_report
    assert (out/'index.html').exists(), res.stdout[-3000:] + res.stderr[-3000:]
    book = {f"{r['chapter']}/{r['experiment']}/{r['metric']}" for r in book_results() if r['chapter'] == 'fastbook13'}
    devices = sorted({r['device'] for r in read_results(out/'results.json')})
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'])
        page = b.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto((out/'index.html').as_uri()); page.wait_for_load_state('load')
        fct.test_eq(page.eval_on_selector_all('section.chapter', 'ss => ss.map(s => s.id)'), ['fastbook13'])
        keys = page.eval_on_selector_all('#fastbook13 table.results tbody tr', 'trs => trs.map(t => t.dataset.key)')
        fct.test_eq(book - set(keys), set())  # a row per book number
        fct.test_eq(len(keys), len(set(keys)))  # ... and each once
        fct.test_eq(sorted(page.inner_text('#fastbook13 .device').removeprefix('Device').strip().split('; ')), devices)
        widths = page.eval_on_selector_all('img', 'imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)')
        assert len(widths) >= 2 and all(w > 0 for w in widths), widths  # the seeds figure and the notebook's own
        captions = page.eval_on_selector_all('#fastbook13 figcaption', 'cs => cs.map(c => c.innerText)')
        fct.test_eq((len(captions) == len(widths) - 1, len(set(captions)) == len(captions)), (True, True))  # each figure named, no two alike
        pages = page.eval_on_selector_all('#fastbook13 .runs a', 'as => as.map(a => a.getAttribute("href"))')
        fct.test_eq(pages, [f'notebooks/10_fastbook13_convolutions-seed{k}.html' for k in (0, 1)])
        page.goto((out/pages[0]).as_uri()); page.wait_for_load_state('load')
        chapter_imgs = page.eval_on_selector_all('img', 'imgs => imgs.map(i => i.naturalWidth)')
        assert chapter_imgs and all(w > 0 for w in chapter_imgs)
        b.close()
