"""The library notebooks (nbs/00_*.ipynb … nbs/08_*.ipynb) read like fastcore's: an exported function has its test or example
cell right under it, and the examples are committed with their outputs.

Two mechanical checks, each tried on a small notebook built to fail it (`test_*_catches`):

- every top-level `def` and `class` of an exported cell (`#| export`, `#| exports`) is named, outside comments, in a code cell
  that is not exported and that comes after it and before the next exported cell: the test cell under the function;
- at least half (`MIN_SHOWN`) of a notebook's non-exported code cells have an output.

Why half: a fastcore-style notebook alternates an example, which shows its result, with a check (`test_eq`, `expect_fail`),
which by design shows nothing when it passes, and keeps a few silent cells (imports, `#| hide`). Such a notebook committed with
its outputs lands at about half or above; one committed without outputs has none, and one with a few outputs left over from
an old run (01_data had 3 of 41 code cells, 05_loop 2 of 26) stays far below. A higher bar would push checks into example
cells or make cells print for the sake of the count.

`python tests/test_library_notebooks.py [nbs/01_data.ipynb ...]` prints what each check finds, without pytest.
"""
import ast, io, re, sys, tokenize
from pathlib import Path
import nbformat, pytest
from fastcore.nbio import read_nb

NBS = Path(__file__).resolve().parent.parent/'nbs'
LIBRARY = sorted(NBS.glob('0[0-8]*_*.ipynb'))  # the library's notebooks, 06a and 06b included; not the chapters (10-21), not index
MIN_SHOWN = 0.5  # the share of non-exported code cells that must show an output

def is_export(cell)->bool: return cell.cell_type == 'code' and (cell.has_directive('export') or cell.has_directive('exports'))

def defined(src:str)->list:
    "Names of the top-level functions and classes defined in `src`"
    return [n.name for n in ast.parse(src).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]

def _names(src:str)->set:
    "Every word `src` uses as code: its names, and the words inside its f-strings; comments and plain strings are left out"
    try: toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError): return set(re.findall(r'\w+', re.sub(r'#.*', '', src)))
    out = {t.string for t in toks if t.type == tokenize.NAME}
    out |= {w for t in toks if t.type == tokenize.STRING and re.match(r'(?i)[rb]?f', t.string) for w in re.findall(r'\w+', t.string)}
    return out

def untested(nb)->list:
    "(cell index, name) of each exported function or class that no non-exported code cell between its cell and the next exported one names"
    cells, out = [c for c in nb.cells if c.cell_type == 'code'], []
    for i, c in enumerate(cells):
        if not is_export(c): continue
        after = []
        for d in cells[i+1:]:
            if is_export(d): break
            after.append(d)
        used = set().union(*(_names(d.source) for d in after))
        out += [(c.idx_, n) for n in defined(c.source) if n not in used]
    return out

def shown(nb)->tuple:
    "(cells with an output, non-exported code cells with any source) of `nb`"
    cells = [c for c in nb.cells if c.cell_type == 'code' and not is_export(c) and c.source.strip()]
    return sum(bool(c.get('outputs')) for c in cells), len(cells)

def _read(cells:list, tmp_path:Path):
    fn = tmp_path/'bad.ipynb'
    out = lambda t: [nbformat.v4.new_output('stream', text=t)]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s, outputs=out(o) if o else []) for s, o in cells]), fn)
    return read_nb(fn)

def test_untested_catches(tmp_path):
    "An exported function named only in a comment, or only in a later export section, or nowhere, is found; one tested below is not"
    nb = _read([("#| export\ndef tested(x): return x\n\ndef only_in_comment(): pass", None),
                ("test_eq(tested(1), 1)  # only_in_comment is not called here", None),
                ("#| exports\nclass Later: pass", None),
                ("#| export\ndef _private(): pass", None),
                ("Later(); _private()", '<Later>'),  # names Later, but after another export cell
                ("#| hide\n#| export\nasync def nowhere(): pass", None),
                ("f'{tested(2)}'", '2')], tmp_path)
    assert untested(nb) == [(0, 'only_in_comment'), (2, 'Later'), (5, 'nowhere')], untested(nb)
    nb.cells[5].source = "#| export\nasync def nowhere(): pass"
    nb.cells[6].source = "await nowhere()  # an f-string names a function too: " + nb.cells[6].source
    nb.cells[1].source += "\nonly_in_comment()"
    del nb.cells[2]  # Later's cell gone: the next cell's Later() is a plain name again
    assert [n for _, n in untested(nb)] == [], untested(nb)

def test_shown_catches(tmp_path):
    "Exported cells and empty cells do not count; a notebook with one output in three example cells is below the bar"
    nb = _read([("#| export\ndef f(): return 1", 'exported cells are not counted'),
                ("f()", '1'), ("test_eq(f(), 1)", None), ("import math", None), ("", None)], tmp_path)
    assert shown(nb) == (1, 3), shown(nb)
    assert shown(nb)[0] < MIN_SHOWN * shown(nb)[1]
    nb.cells[3].outputs = [nbformat.v4.new_output('stream', text='3.14\n')]
    assert shown(nb) == (2, 3) and shown(nb)[0] >= MIN_SHOWN * shown(nb)[1]

@pytest.mark.parametrize('fn', LIBRARY, ids=[p.stem for p in LIBRARY])
def test_exported_functions_have_a_test_cell(fn):
    found = untested(read_nb(fn))
    assert not found, f'{fn.name}: exported functions with no test or example cell under them (cell: name): ' + \
                      ', '.join(f'{i}: {n}' for i, n in found)

@pytest.mark.parametrize('fn', LIBRARY, ids=[p.stem for p in LIBRARY])
def test_examples_show_their_outputs(fn):
    n, total = shown(read_nb(fn))
    assert total and n >= MIN_SHOWN * total, \
        f'{fn.name}: {n} of {total} non-exported code cells have outputs (at least {MIN_SHOWN:.0%} wanted): execute it and commit the outputs'

if __name__ == '__main__':
    for fn in map(Path, sys.argv[1:] or LIBRARY):
        nb = read_nb(fn); n, total = shown(nb)
        print(f'{fn.name}: {n}/{total} cells with outputs; untested: {untested(nb) or "none"}')
