"""Training speed of both chapters, the books' code path beside convlab's faster ones, measured in one run.

    .venv/bin/python bench/bench.py [--reps 3] [--chapter] [--only fastbook|dlwpt] [--deep-blocks 10]

Each figure is the median of `--reps` timed runs after one warm-up run (the rows of a table take turns), with the
process's peak resident memory during those runs and the images per second it implies. Nothing here asserts a time: it prints figures and ratios.
`--chapter` also times the whole fastbook chapter's training at the book's settings (about 8 minutes by the book's
path on a 2-core CPU), once per path.
"""
import argparse, os, platform, statistics, threading, time, warnings
from functools import partial
warnings.filterwarnings('ignore', message=r'.*torch\.jit\.script.*', category=FutureWarning)  # raised inside fastai's import
warnings.filterwarnings('ignore', message=r'You are shadowing an attribute \(modules\)')  # ActivationStats, harmless
import psutil, torch, fastai
import torch.nn.functional as F
from torch.utils.data import DataLoader
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, PILImageBW, GrandparentSplitter, Normalize,
                               get_image_files, parent_label, Learner, accuracy, set_seed, URLs)
from fastai.callback.hook import ActivationStats
from fastai.torch_core import default_device
from convlab.data import untar_data
from convlab.cnn import simple_cnn
from convlab.fast import in_memory
from convlab.nets import Net, NetWidth, NetBatchNorm, NetResDeep
from convlab.core import describe_device
from convlab.data import cifar_subset
from convlab.loop import stack_pairs, training_loop, train_run, train_runs

MNIST_CHANS = (1, 8, 16, 32, 64, 10)

class Peak:
    "Context manager: the largest resident set size of this process while the block runs, in MB"
    def __enter__(self):
        self.proc, self.mb, self.stop = psutil.Process(), 0., threading.Event()
        def watch():
            while not self.stop.wait(0.02): self.mb = max(self.mb, self.proc.memory_info().rss/2**20)
        self.t = threading.Thread(target=watch, daemon=True); self.t.start()
        return self
    def __exit__(self, *a): self.stop.set(); self.t.join(); self.mb = max(self.mb, self.proc.memory_info().rss/2**20)

def measure(rows, reps):
    """`rows` of (name, fn) -> (name, seconds of each timed call, peak MB): one warm-up call each, then `reps` rounds
    that call every fn in turn, so a slow spell of the machine falls on all rows alike"""
    for _, fn in rows: fn()
    times, peaks = [[] for _ in rows], [0.] * len(rows)
    for _ in range(reps):
        for i, (_, fn) in enumerate(rows):
            with Peak() as p:
                t = time.perf_counter(); fn(); times[i].append(time.perf_counter() - t)
            peaks[i] = max(peaks[i], p.mb)
    return [(name, t, mb) for (name, _), t, mb in zip(rows, times, peaks)]

def show(title, rows, n_images):
    "Print one table: median seconds (and range), ratio to the first row, images per second, peak memory"
    print(f'\n{title}')
    base = statistics.median(rows[0][1])
    for name, times, mb in rows:
        secs = statistics.median(times)
        spread = f'({min(times):.2f}-{max(times):.2f})' if len(times) > 1 else ''
        rate = f'{n_images/secs:9.0f} img/s' if n_images else f"{'':>15}"
        peak = f'{mb:7.0f} MB peak' if mb is not None else ''
        print(f'  {name:<44} {secs:8.2f} s {spread:>13}  {base/secs:5.2f}x  {rate}  {peak}')

# fastbook 13: full MNIST, the chapter's batchnorm model, one epoch of 1cycle at bs 512 with ActivationStats
def mnist_dls(bs=512):
    return DataBlock(blocks=(ImageBlock(cls=PILImageBW), CategoryBlock), get_items=get_image_files,
                     splitter=GrandparentSplitter('training', 'testing'), get_y=parent_label,
                     batch_tfms=Normalize()).dataloaders(untar_data(URLs.MNIST), bs=bs)  # the book's call: fastai's default workers

def fit_fastai(dls, epochs=1, lr=0.06, bn=True, one_cycle=True, hist=True):
    learn = Learner(dls, simple_cnn(MNIST_CHANS, first_ks=5, bn=bn), loss_func=F.cross_entropy, metrics=accuracy,
                    cbs=ActivationStats(with_hist=True) if hist else None)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr) if one_cycle else learn.fit(epochs, lr)
    return learn

def raw_epoch(xs, ys, vxs, vys, bs=512, lr=0.06):
    "The floor: the same model and data as plain tensors, a bare PyTorch epoch (train and validate), no hooks"
    model = simple_cnn(MNIST_CHANS, first_ks=5, bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5)  # fastai's default optimiser
    model.train()
    for idx in torch.randperm(len(xs)).split(bs):
        if len(idx) < bs: break
        loss = F.cross_entropy(model(xs[idx]), ys[idx]); opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad(): return sum((model(vxs[i:i+bs]).argmax(1) == vys[i:i+bs]).sum().item() for i in range(0, len(vxs), bs))

def plain(dl):
    "The batches of fastai loader `dl` as plain tensors, normalised, all in memory"
    xs, ys = dl.items
    return dl.after_batch((xs, ys))[0].as_subclass(torch.Tensor), ys.as_subclass(torch.Tensor)

def fastbook(reps, chapter):
    set_seed(42)
    book = mnist_dls()
    fast = in_memory(book)
    xs, ys = plain(fast.train); vxs, vys = plain(fast.valid)
    rows = measure([('book: DataBlock + Learner + ActivationStats', lambda: fit_fastai(book)),
                    ('convlab: in_memory(dls), same Learner', lambda: fit_fastai(fast)),
                    ('floor: plain tensors, bare loop, no hooks', lambda: raw_epoch(xs, ys, vxs, vys))], reps)
    show('fastbook 13, batchnorm 1cycle epoch, bs 512, ActivationStats(with_hist=True) (60,000 + 10,000 images)',
         rows, 70_000)
    ratios = [f / b for f, b in zip(rows[1][1], rows[2][1])]  # round by round
    print(f'  fast path / floor: {statistics.median(rows[1][1])/statistics.median(rows[2][1]):.2f}x the floor '
          f'(per round {min(ratios):.2f}-{max(ratios):.2f})')
    if not chapter: return
    sample = untar_data(URLs.MNIST_SAMPLE)
    def chapter_training(fast):
        "Every training run of the chapter at the book's settings, as the book builds its data or as our notebook does"
        d37 = DataBlock((ImageBlock(cls=PILImageBW), CategoryBlock), get_items=get_image_files,
                        splitter=GrandparentSplitter(), get_y=parent_label).dataloaders(sample, bs=64)
        if fast: d64 = in_memory(mnist_dls(64)); d512 = in_memory(d64, bs=512)  # decoded once, for both batch sizes
        else: d64, d512 = mnist_dls(64), mnist_dls(512)
        l = Learner(d37, simple_cnn(), loss_func=F.cross_entropy, metrics=accuracy)
        with l.no_bar(), l.no_logging(): l.fit_one_cycle(2, 0.01)
        accs = {'3v7': l.recorder.values[-1][-1]}
        for name, kw in (('fit bs64', dict(dls=d64, bn=False, one_cycle=False)),
                         ('fit bs512', dict(dls=d512, bn=False, one_cycle=False)),
                         ('1cycle', dict(dls=d512, bn=False)), ('batchnorm', dict(dls=d512)),
                         ('batchnorm 5 epochs', dict(dls=d512, epochs=5, lr=0.1))):
            accs[name] = fit_fastai(**kw).recorder.values[-1][-1]
        return accs
    out = []
    for name, fast in (('book: DataBlock path', False), ('convlab: in_memory, as notebook 10', True)):
        set_seed(42)
        with Peak() as p:
            t = time.perf_counter(); accs = chapter_training(fast); secs = time.perf_counter() - t
        out.append((name, [secs], p.mb))
        print(f'  {name}: accuracies ' + ', '.join(f'{k} {v:.4f}' for k, v in accs.items()))
    show('fastbook 13, the whole chapter\'s training at the book\'s settings (one run each)', out, None)

# DLwPT 8: one training epoch of CIFAR-2 (10,000 images, batch 64, SGD) for three of the chapter's models, the book's way
# and through the chapter's fast path (convlab.loop.train_run / train_runs, exactly what notebook 20 calls)
def dlwpt(reps, deep_blocks):
    path = untar_data(URLs.CIFAR)
    cifar2, cifar2_val = cifar_subset(path, 'train'), cifar_subset(path, 'test')
    data = (*stack_pairs(cifar2), *stack_pairs(cifar2_val))
    def book_epoch(make):
        "The book's path: a DataLoader over the list of pairs, default memory layout, this process's threads"
        set_seed(0); model = make().to(default_device())
        loader = DataLoader(cifar2, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
        t = time.perf_counter()
        training_loop(1, torch.optim.SGD(model.parameters(), lr=1e-2), model, torch.nn.CrossEntropyLoss(), loader, bar=False)
        return time.perf_counter() - t
    def fast_epoch(make): return train_run(make, data, 1)['seconds']  # batches from memory, channels_last on a CPU
    def fast_pair(make):
        "Two one-epoch trainings side by side in single-thread processes: the time per epoch of the pair"
        rs = train_runs({'a': dict(make_model=make, n_epochs=1), 'b': dict(make_model=make, n_epochs=1, seed=1)}, data, n_workers=2)
        return max(r['seconds'] for r in rs.values())/2
    makes = [('Net', Net), ('NetWidth', NetWidth), ('NetBatchNorm', NetBatchNorm)]
    if deep_blocks: makes.append((f'NetResDeep({deep_blocks} blocks)', partial(NetResDeep, n_blocks=deep_blocks)))
    for name, make in makes:
        rows = [('book: DataLoader over a list', book_epoch), (f'fast path, one training ({torch.get_num_threads()} threads)', fast_epoch)]
        if default_device().type == 'cpu' and torch.get_num_threads() > 1:
            rows.append(('fast path, two side by side (1 thread each)', fast_pair))
        times = [[] for _ in rows]
        for f in (fn for _, fn in rows): f(make)  # warm-up
        for _ in range(reps):
            for i, (_, fn) in enumerate(rows): times[i].append(fn(make))
        show(f'DLwPT 8, {name}, one training epoch (10,000 images, batch 64), seconds of training only',
             [(n, t, None) for (n, _), t in zip(rows, times)], len(cifar2))

def machine():
    "What ran the benchmark: the device (GPU name, or CPU model and torch's threads), cores, versions"
    return (f'{describe_device()}; {os.cpu_count()} logical cores\n'
            f'python {platform.python_version()}, torch {torch.__version__}, fastai {fastai.__version__}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=3, help='timed repetitions after the warm-up (median reported)')
    p.add_argument('--chapter', action='store_true', help="also time the fastbook chapter's whole training, once per path")
    p.add_argument('--deep-blocks', type=int, default=0, help='also time NetResDeep with this many residual blocks (the book: 100)')
    p.add_argument('--only', choices=['fastbook', 'dlwpt'], help='one chapter only')
    a = p.parse_args()
    print(machine())
    if a.only in (None, 'fastbook'): fastbook(a.reps, a.chapter)
    if a.only in (None, 'dlwpt'): dlwpt(a.reps, a.deep_blocks)
