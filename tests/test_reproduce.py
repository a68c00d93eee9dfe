"`convlab reproduce`: a broken notebook fails its rows without losing the others; the HTML report renders in Chromium"
import json, os, shutil, subprocess, sys
from pathlib import Path
import nbformat, pytest
import fastcore.test as fct
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
    rows = {(r['chapter'], r['experiment']): r['value'] for r in json.loads((out/'results.json').read_text())}
    fct.test_eq(rows, {('fixbroken', 'first'): 0.9, ('fixok', 'exp'): 0.95})  # the notebook after the broken one still ran
    md = (out/'REPORT.md').read_text()
    assert '| fixbroken | second | acc |  | 0.9 | missing | ✗ |' in md, md
    assert '| fixok | exp | acc | 0.95 | 0.95 | ± 0.01 | ✓ |' in md, md
    assert 'FAILED at cell 1: RuntimeError: deliberately broken' in md, md
    assert (out/'91_fixbroken_demo.html').exists() and (out/'90_fixok_demo.html').exists()

def chromium():
    exe = shutil.which('chromium') or '/usr/bin/chromium'
    return exe if Path(exe).exists() else None

@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (Debian package chromium); .ci/run installs it')
def test_report_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright
    out = tmp_path/'report'
    res = subprocess.run([CONVLAB, 'reproduce', '--quick', '--only', 'fastbook13', '--out', str(out)], capture_output=True, text=True)
    assert (out/'index.html').exists(), res.stdout[-3000:] + res.stderr[-3000:]
    n_book = sum(r['chapter'] == 'fastbook13' for r in book_results())
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=['--headless', '--no-sandbox', '--disable-gpu',
                                                                '--disable-background-networking'])
        page = b.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto((out/'index.html').as_uri()); page.wait_for_load_state('load')
        rows = page.locator('#results tbody tr')
        assert rows.count() >= n_book
        widths = page.eval_on_selector_all('img', 'imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)')
        assert widths and all(w > 0 for w in widths), widths
        page.screenshot(path=str(out/'index.png'), full_page=True)
        failed = page.locator('tr.fail').all_inner_texts()
        page.goto((out/'10_fastbook13_convolutions.html').as_uri()); page.wait_for_load_state('load')
        errors = page.eval_on_selector_all('[data-mime-type="application/vnd.jupyter.stderr"]',
                                           "els => els.map(e => e.innerText).filter(t => t.includes('Traceback'))")
        fct.test_eq(errors, [])
        chapter_imgs = page.eval_on_selector_all('img', 'imgs => imgs.map(i => i.naturalWidth)')
        assert chapter_imgs and all(w > 0 for w in chapter_imgs)
        page.screenshot(path=str(out/'chapter.png'))
        b.close()
    fct.test_eq(failed, [])
    fct.test_eq(res.returncode, 0)
