"`convlab reproduce`: a broken notebook fails its rows without losing the others; the HTML report renders in Chromium"
import json, shutil, subprocess, sys
from pathlib import Path
import nbformat, pytest
import fastcore.test as fct
from convlab.core import read_results
from convlab.report import book_results

CONVLAB = str(Path(sys.executable).parent/'convlab')

def write_nb(fn, *sources):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), fn)
    return fn

def test_broken_notebook_fails_alone(tmp_path):
    ok = write_nb(tmp_path/'90_fixok_demo.ipynb', "from convlab.core import record\nrecord('fixok', 'exp', 'acc', 0.95)")
    broken = write_nb(tmp_path/'91_fixbroken_demo.ipynb', "from convlab.core import record\nrecord('fixbroken', 'first', 'acc', 0.9)",
                      "raise RuntimeError('deliberately broken')", "record('fixbroken', 'second', 'acc', 0.9)")
    book = tmp_path/'book.json'
    book.write_text(json.dumps({'results': [
        dict(chapter='fixok', experiment='exp', metric='acc', book=0.95, tol=0.01),
        dict(chapter='fixbroken', experiment='first', metric='acc', book=0.9, tol=0.01),
        dict(chapter='fixbroken', experiment='second', metric='acc', book=0.9, tol=0.01)]}))
    out = tmp_path/'out'
    res = subprocess.run([CONVLAB, 'reproduce', '--quick', '--out', str(out), '--book', str(book),
                          '--notebook', str(broken), '--notebook', str(ok)], capture_output=True, text=True)
    fct.test_eq(res.returncode, 1)
    rows = {(r['chapter'], r['experiment']): r['value'] for r in read_results(out/'results.json')}
    fct.test_eq(rows, {('fixbroken', 'first'): 0.9, ('fixok', 'exp'): 0.95})  # the other notebook's task still ran
    md = (out/'REPORT.md').read_text()
    for line in ['## fixbroken — FAIL', '| second | acc | 0.9000 |  |  | missing in seed 0 | ✗ |',
                 '| first | acc | 0.9000 | 0.9000 (N=1) | 0.0000 | ± 0.01 | ✓ |',
                 '## fixok — PASS', '| exp | acc | 0.9500 | 0.9500 (N=1) | 0.0000 | ± 0.01 | ✓ |',
                 'seed 0: FAILED at cell 1: RuntimeError: deliberately broken']:
        assert line in md, (line, md)
    fct.test_eq(md.index('| second |') < md.index('| first |'), True)  # failing rows first
    fct.test_eq([(out/'notebooks'/f'{n}-seed0.html').exists() for n in ('91_fixbroken_demo', '90_fixok_demo')], [True, True])

def chromium():
    exe = shutil.which('chromium') or '/usr/bin/chromium'
    return exe if Path(exe).exists() else None

@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (Debian package chromium); .ci/run installs it')
def test_report_in_chromium(fastbook13_report):
    from playwright.sync_api import sync_playwright
    out, res = fastbook13_report
    assert (out/'index.html').exists(), res.stdout[-3000:] + res.stderr[-3000:]
    book = {f"{r['chapter']}/{r['experiment']}/{r['metric']}" for r in book_results() if r['chapter'] == 'fastbook13'}
    devices = sorted({r['device'] for r in read_results(out/'results.json')})
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=['--headless', '--no-sandbox', '--disable-gpu',
                                                                '--disable-background-networking'])
        page = b.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto((out/'index.html').as_uri()); page.wait_for_load_state('load')
        fct.test_eq(page.eval_on_selector_all('section.chapter', 'ss => ss.map(s => s.id)'), ['fastbook13'])
        keys = page.eval_on_selector_all('#fastbook13 table.results tbody tr', 'trs => trs.map(t => t.dataset.key)')
        fct.test_eq(book - set(keys), set())  # a row per book number
        fct.test_eq(len(keys), len(set(keys)))  # ... and each once
        fct.test_eq(sorted(page.inner_text('#fastbook13 .device').removeprefix('Device').strip().split('; ')), devices)
        widths = page.eval_on_selector_all('img', 'imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)')
        assert len(widths) >= 2 and all(w > 0 for w in widths), widths  # the seeds figure and the notebook's own
        pages = page.eval_on_selector_all('#fastbook13 .runs a', 'as => as.map(a => a.getAttribute("href"))')
        fct.test_eq(pages, [f'notebooks/10_fastbook13_convolutions-seed{k}.html' for k in (0, 1)])
        page.screenshot(path=str(out/'index.png'), full_page=True)
        failed = page.locator('tr.fail').all_inner_texts()
        page.goto((out/pages[0]).as_uri()); page.wait_for_load_state('load')
        errors = page.eval_on_selector_all('[data-mime-type="application/vnd.jupyter.stderr"]',
                                           "els => els.map(e => e.innerText).filter(t => t.includes('Traceback'))")
        fct.test_eq(errors, [])
        chapter_imgs = page.eval_on_selector_all('img', 'imgs => imgs.map(i => i.naturalWidth)')
        assert chapter_imgs and all(w > 0 for w in chapter_imgs)
        page.screenshot(path=str(out/'chapter.png'))
        b.close()
    fct.test_eq(failed, [])
    fct.test_eq(res.returncode, 0)
