"""Every notebook in nbs/ is committed clean: no empty HTML outputs, no `<style>` blobs, no error outputs, under 1 MB.

Executed notebooks pick up outputs that only make sense while a kernel runs: a finished fastprogress bar
(`leave=False`) leaves an empty `<IPython.core.display.HTML object>`, fastprogress writes its CSS as an output of its
own, and `learn.summary()` leaves an empty `<div></div>`. Readers on GitHub see them as noise. To clean a notebook
after executing it (the progress bars stay in the code, for people who run it):

    python tests/test_notebooks_clean.py nbs/10_fastbook13_convolutions.ipynb   # in place; then nbdev-clean --fname it

The `<style>` of a pandas table (`<style scoped>`, or a `Styler`'s colours) is part of that table and stays.
"""
import re, sys
from pathlib import Path
import nbformat, pytest

NBS = sorted((Path(__file__).resolve().parent.parent/'nbs').glob('*.ipynb'))
MAX_BYTES = 1_000_000
STYLE = re.compile(r'<style[^>]*>.*?</style>', re.S)
TAG = re.compile(r'<[^>]+>')
PROGRESS_CSS = re.compile(r'<style[^>]*>[^<]*\bprogress\s*\{[^<]*</style>', re.S)  # the CSS fastprogress writes with its bars

def _html(out)->str: return out.get('data', {}).get('text/html', '') if out.get('output_type') in ('display_data', 'execute_result') else ''

def _visible(html:str)->str: return TAG.sub('', STYLE.sub('', html)).strip()

def kind(out)->str|None:
    "What is wrong with one output: 'error', 'empty html', 'style-only', 'progress css', or None"
    if out.get('output_type') == 'error': return 'error'
    html, data = _html(out), out.get('data', {})
    if 'text/html' not in data or any(k.startswith('image/') for k in data): return None
    if not _visible(html): return 'style-only' if STYLE.search(html) else 'empty html'
    return 'progress css' if PROGRESS_CSS.search(html) else None

def problems(nb)->list:
    "(cell index, kind) for every output that `kind` objects to"
    return [(i, k) for i, c in enumerate(nb.cells) for o in c.get('outputs', []) if (k := kind(o))]

def clean(nb):
    "Drop empty-HTML and style-only outputs and fastprogress's CSS from `nb`, in place; error outputs are left to be seen"
    for c in nb.cells:
        if 'outputs' not in c: continue
        c.outputs = [o for o in c.outputs if kind(o) not in ('empty html', 'style-only')]
        for o in c.outputs:
            if kind(o) == 'progress css': o.data['text/html'] = PROGRESS_CSS.sub('', o.data['text/html'])  # keep the rest
    return nb

def _check(fn, wanted):
    found = [i for i, k in problems(nbformat.read(fn, as_version=4)) if k in wanted]
    assert not found, f"{fn.name}: {'/'.join(wanted)} outputs in cells {found}; clean it with `python {__file__} {fn}`"

@pytest.mark.parametrize('fn', NBS, ids=[p.name for p in NBS])
def test_no_empty_html(fn): _check(fn, ('empty html',))

@pytest.mark.parametrize('fn', NBS, ids=[p.name for p in NBS])
def test_no_style_blobs(fn): _check(fn, ('style-only', 'progress css'))

@pytest.mark.parametrize('fn', NBS, ids=[p.name for p in NBS])
def test_no_errors(fn): _check(fn, ('error',))

@pytest.mark.parametrize('fn', NBS, ids=[p.name for p in NBS])
def test_under_1mb(fn): assert fn.stat().st_size <= MAX_BYTES, f'{fn.name} is {fn.stat().st_size/1e6:.2f} MB (limit 1 MB): draw its figures smaller'

def test_kind_objects_to_each_case():
    "The checks can fail: one output of each kind, and the outputs that must pass"
    html = lambda h, plain='<IPython.core.display.HTML object>': nbformat.v4.new_output('display_data', {'text/html': h, 'text/plain': plain})
    bar_css = '\n<style>\n    progress { appearance: none; border: none; }\n</style>\n'
    assert kind(html('')) == 'empty html' and kind(html('<div></div>')) == 'empty html'
    assert kind(html(bar_css)) == 'style-only'
    assert kind(html(bar_css + '<div><table class="fastprogress"><tr><td>0</td></tr></table></div>')) == 'progress css'
    assert kind(nbformat.v4.new_output('error', ename='ValueError', evalue='x', traceback=[])) == 'error'
    table = '<div>\n<style scoped>\n .dataframe tbody tr th { vertical-align: top; }\n</style>\n<table><tr><td>0.99</td></tr></table></div>'
    assert kind(html(table)) is None and kind(html('<div><table class="fastprogress"><tr><td>0</td></tr></table></div>')) is None
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x')])
    nb.cells[0].outputs = [html(''), html(bar_css), html(bar_css + '<div>epoch 0</div>'), html(table)]
    assert problems(nb) == [(0, 'empty html'), (0, 'style-only'), (0, 'progress css')]
    assert problems(clean(nb)) == [] and [_visible(_html(o)) for o in nb.cells[0].outputs] == ['epoch 0', '0.99']

if __name__ == '__main__':
    for fn in sys.argv[1:]:
        nb = nbformat.read(fn, as_version=4)
        nbformat.write(clean(nb), fn)
        print(f'{fn}: {len(problems(nb))} problems left')
