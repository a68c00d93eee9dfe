"The books' numbers file: every quick-mode floor lies above chance, so a model that learned nothing cannot pass"
from convlab.judge import book_results

CHANCE = {('fastbook13', 'simple_cnn_3v7'): 0.5, 'fastbook13': 0.1, 'dlwpt08': 0.5}  # 3s v 7s; ten digits; CIFAR-2

def chance(r:dict)->float: return CHANCE.get((r['chapter'], r['experiment']), CHANCE.get(r['chapter']))

def test_quick_floors_above_chance():
    floors = [r for r in book_results() if 'quick_min' in r]
    assert floors, 'no quick floors found'
    low = [(r['experiment'], r['metric'], r['quick_min'], chance(r)) for r in floors if not r['quick_min'] > chance(r)]
    assert not low, f'quick floors at or below chance: {low}'
