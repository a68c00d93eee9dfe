"""The quick verdict of every chapter, as `convlab reproduce --quick` gives it on this machine (a CPU in CI): each chapter with
judged rows passes, each without any ran and says it had nothing to compare, and no task failed"""
import re
import fastcore.test as fct
from convlab.core import CHAPTERS
from convlab.judge import book_results

def judged_rule(r:dict)->bool:
    "Is a book row judged in quick mode (one seed or more)?"
    return bool(r.get('equal')) or r.get('quick_min', r.get('min')) is not None

def test_quick_verdict_of_each_chapter(fastbook13_report, chapters_report):
    got, devices = {}, set()
    for out, res in (fastbook13_report, chapters_report):
        assert (out/'REPORT.md').exists(), res.stdout[-3000:] + res.stderr[-3000:]
        md = (out/'REPORT.md').read_text()
        assert ': FAILED' not in md, md  # every task ran to the end
        got.update(re.findall(r'^## (\S+) — (.+)$', md, re.M))
        devices |= set(re.findall(r'^\*\*Device:\*\* (.+?)\s*$', md, re.M))
    judged = {r['chapter'] for r in book_results() if judged_rule(r)}
    fct.test_eq(got, {c: 'PASS' if c in judged else 'NOT JUDGED' for c in CHAPTERS})
    assert devices, 'no device recorded'
