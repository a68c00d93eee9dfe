"""The DLwPT chapter 8 seeds file and the committed notebook agree.

`convlab/dlwpt08_seeds.json` holds the rows of `convlab reproduce --seeds N --only dlwpt08` at the book's settings;
notebook 20 reads it for figure 8.13 over seeds, and its own outputs are seed 0 of that run. These checks keep the two
together: every design of figure 8.13 has both accuracies in every seed, at 100 epochs, and each accuracy the committed
notebook prints with `vs_book` is seed 0's value in the file.
"""
import json, re
from pathlib import Path
import nbformat
import convlab

SEEDS = Path(convlab.__file__).parent/'dlwpt08_seeds.json'
NB = Path(__file__).resolve().parent.parent/'nbs/20_dlwpt08_convolutions.ipynb'
DESIGNS = ['net', 'net_width', 'net_l2', 'net_dropout', 'net_batchnorm', 'net_depth', 'net_res']  # figure 8.13, without res deep
VS_BOOK = re.compile(r"(\w+), (\d+) epochs: train ([\d.]+) \(book [\d.]+\), val ([\d.]+)")

def rows()->list: return json.loads(SEEDS.read_text())['rows']

def test_every_design_in_every_seed():
    rs = rows(); seeds = sorted({r['seed'] for r in rs})
    assert len(seeds) >= 2, f'{SEEDS.name} has seeds {seeds}: a spread needs two at least'
    missing = [(e, m, s) for e in DESIGNS for m in ('train_acc', 'val_acc') for s in seeds
               if not any((r['experiment'], r['metric'], r['seed']) == (e, m, s) for r in rs)]
    assert not missing, f'missing in {SEEDS.name}: {missing}'
    short = {(r['experiment'], r['seed'], r['epochs']) for r in rs if r['experiment'] in DESIGNS and (r['quick'] or r['epochs'] != 100)}
    assert not short, f"rows not at the book's settings (quick mode or not 100 epochs): {sorted(short)}"

def printed(nb)->dict:
    "(experiment, metric) -> the accuracy each `vs_book` line of the notebook's outputs prints"
    found = {}
    for c in nb.cells:
        for o in c.get('outputs', []):
            text = o.get('text') or o.get('data', {}).get('text/plain', '')
            for m in VS_BOOK.finditer(''.join(text)): found[m[1], 'train_acc'], found[m[1], 'val_acc'] = float(m[3]), float(m[4])
    return found

def test_notebook_shows_seed_0():
    seed0 = {(r['experiment'], r['metric']): r['value'] for r in rows() if r['seed'] == 0}
    shown = printed(nbformat.read(NB, as_version=4))
    assert set(DESIGNS) <= {e for e, _ in shown}, f'vs_book lines found for {sorted({e for e, _ in shown})} only'
    off = [(k, v, seed0.get(k)) for k, v in shown.items() if seed0.get(k) is None or abs(seed0[k] - v) > 5e-5]
    assert not off, f'the notebook prints values that are not seed 0 of {SEEDS.name}: {off}'
