"The decoded-items cache: a lock another process never lets go is waited for a bounded time, then the items are decoded here"
import threading, time, warnings
from filelock import FileLock
import torch
import fastcore.test as fct
import convlab.fast as cf

def test_held_cache_lock_is_not_waited_for_ever(tmp_path, monkeypatch):
    monkeypatch.setattr(cf, 'CACHE_WAIT', 1, raising=False)
    fn, out = tmp_path/'items.pt', {}
    with FileLock(f'{fn}.lock'):  # another process making the same cache, stuck
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            t = threading.Thread(target=lambda: out.update(res=cf.load_or_make(fn, lambda: (torch.ones(2),))), daemon=True)
            t.start(); t.join(30)
        assert not t.is_alive(), 'load_or_make still waiting for the lock after 30 s'
    fct.test_eq(out['res'][0], torch.ones(2))
    assert any('items.pt.lock' in str(x.message) for x in w), [str(x.message) for x in w]
