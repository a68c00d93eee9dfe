"""The prose of the committed chapter notebooks states what their outputs show.

Two checks a reader cannot make at a glance:

- no drafting marker (`<<TODO`, `TODO:`) is left in a notebook;
- every measured-looking number in the prose (a decimal with three or more places: 0.9865, 3.371) is shown by an
  output of the same notebook, to the places the prose gives (0.028 is shown by a table's 0.0279), or is one of the
  book's numbers or our tolerances in `convlab/book_results.json`. The few that are neither are listed in `ELSEWHERE`
  with where they come from.

Run it after re-executing a notebook and editing its prose; a failure names the cell and the sentence.
"""
import re
from pathlib import Path
import nbformat, pytest
from convlab.judge import book_results

NBS = sorted((Path(__file__).resolve().parent.parent/'nbs').glob('[1-9]*.ipynb'))  # the chapter notebooks
PROSE = re.compile(r'(?<![\w.])\d+\.\d{3,}(?![\w])')
SHOWN = re.compile(r'(?<![\w.])\d+\.\d+(?![\w.])')
MARKERS = re.compile(r'<<TODO|\bTODO:')
ELSEWHERE = {  # notebook stem -> numbers its prose takes from somewhere other than its outputs, and from where
    '20_dlwpt08_convolutions': {'0.975': "the quantile of Student's t in the report's rule, not a measurement"},
    '21_dlwpt08_exercises': {'0.8745': "the chapter notebook's `Net` after 100 epochs (nb20's output)"},
}

def outputs_text(nb)->str:
    "Every text an output of `nb` shows: streams, plain text, HTML tables"
    return ' '.join(''.join(o.get('text', '')) + ' '.join(''.join(v) for k, v in o.get('data', {}).items() if k.startswith('text/'))
                    for c in nb.cells for o in c.get('outputs', []))

def allowed_values()->set:
    "The book's numbers and our tolerances and floors"
    return {float(r[k]) for r in book_results() for k in ('book', 'tol', 'min', 'quick_min', 'diverged_below')
            if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)}

def unshown(nb, extra:dict=None)->list:
    "(cell, number, context) for each decimal of the prose that no output shows to its places"
    text, book, extra = outputs_text(nb), allowed_values(), extra or {}
    shown = [(float(s), len(s.split('.')[1])) for s in SHOWN.findall(text)]
    found = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'markdown': continue
        for m in PROSE.finditer(c.source):
            n = m.group(); f, places = float(n), len(n.split('.')[1])
            if n in text or n in extra or f in book: continue
            if any(abs(round(v, places) - f) < 1e-9 for v, p in shown if p >= places): continue
            found.append((i, n, c.source[max(0, m.start()-60):m.end()+20].replace('\n', ' ')))
    return found

def test_unshown_catches():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('we reach 0.9865 and 0.028, the book 0.9912'),
                                         nbformat.v4.new_code_cell('x', outputs=[nbformat.v4.new_output('stream', text='0.02794\n')])])
    test = unshown(nb)
    assert [n for _, n, _ in test] == ['0.9865'], test  # 0.028 is 0.02794 rounded; 0.9912 is the book's
    assert unshown(nb, {'0.9865': 'elsewhere'}) == []

@pytest.mark.parametrize('fn', NBS, ids=[p.stem for p in NBS])
def test_no_markers(fn):
    nb = nbformat.read(fn, as_version=4)
    found = [i for i, c in enumerate(nb.cells) if MARKERS.search(c.source)]
    assert not found, f'{fn.name}: drafting markers in cells {found}'

@pytest.mark.parametrize('fn', NBS, ids=[p.stem for p in NBS])
def test_prose_numbers_shown(fn):
    found = unshown(nbformat.read(fn, as_version=4), ELSEWHERE.get(fn.stem))
    assert not found, f'{fn.name}: numbers in the prose that no output shows:\n' + '\n'.join(f'  cell {i}: {n} in "…{ctx}…"' for i, n, ctx in found)
