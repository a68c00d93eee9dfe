"""Training speed of both chapters, the books' code path beside convlab's faster ones, measured in one run.

    .venv/bin/python bench/bench.py [--reps 3] [--chapter] [--deep-blocks 10]

Each figure is the median of `--reps` timed runs after one warm-up run (the rows of a table take turns), with the
process's peak resident memory during those runs and the images per second it implies. Nothing here asserts a time: it prints figures and ratios.
`--chapter` also times the whole fastbook chapter's training at the book's settings (about 8 minutes by the book's
path on a 2-core CPU), once per path.
"""
import argparse, os, platform, statistics, threading, time, warnings
warnings.filterwarnings('ignore', message=r'.*torch\.jit\.script.*', category=FutureWarning)  # raised inside fastai's import
warnings.filterwarnings('ignore', message=r'You are shadowing an attribute \(modules\)')  # ActivationStats, harmless
from contextlib import nullcontext
import psutil, torch, fastai
import torch.nn.functional as F
from torch.utils.data import DataLoader
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, PILImageBW, GrandparentSplitter, Normalize,
                               get_image_files, parent_label, Learner, accuracy, set_seed, URLs)
from fastai.callback.hook import ActivationStats
from convlab.data import untar_data
from convlab.cnn import simple_cnn
from convlab.fast import in_memory
from convlab.nets import Net, NetWidth, NetResDeep
from convlab.loop import cifar_subset, get_device, training_loop

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
        print(f'  {name:<44} {secs:8.2f} s {spread:>13}  {base/secs:5.2f}x  {rate}  {mb:7.0f} MB peak')

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

# DLwPT 8: one epoch of CIFAR-2 (10,000 images, batch 64, SGD) for three of the chapter's models
def dlwpt(reps, deep_blocks, bf16):
    device = get_device()
    cifar2 = cifar_subset(untar_data(URLs.CIFAR), 'train')
    xs, ys = torch.stack([x for x, _ in cifar2]).to(device), torch.tensor([y for _, y in cifar2]).to(device)
    def loop_epoch(make):
        model = make().to(device)
        training_loop(1, torch.optim.SGD(model.parameters(), lr=1e-2), model, torch.nn.CrossEntropyLoss(),
                      DataLoader(cifar2, batch_size=64, shuffle=True), log_every=10**9)
    def tensor_epoch(make, amp, cl=False):
        model = make().to(device).train()
        if cl: model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
        x_all = xs.contiguous(memory_format=torch.channels_last) if cl else xs
        for idx in torch.randperm(len(xs), device=device).split(64):
            with ctx: loss = F.cross_entropy(model(x_all[idx]), ys[idx])
            opt.zero_grad(); loss.backward(); opt.step()
    for name, make in (('Net', Net), ('NetWidth', NetWidth), (f'NetResDeep({deep_blocks} blocks)', lambda: NetResDeep(n_blocks=deep_blocks))):
        rows = [('book: DataLoader over a list, fp32 loop', lambda: loop_epoch(make)),
                ('in-memory tensor batches, fp32', lambda: tensor_epoch(make, False)),
                ('in-memory, channels_last, fp32', lambda: tensor_epoch(make, False, cl=True))]
        if bf16: rows.append(('in-memory tensor batches, bf16 autocast', lambda: tensor_epoch(make, True)))
        show(f'DLwPT 8, {name}, one training epoch (10,000 images, batch 64)', measure(rows, reps), len(xs))
    if not bf16: print('\n  bf16 autocast not timed: this CPU has no bf16 arithmetic (avx512_bf16, amx_bf16) and there is no GPU;\n'
                       '  emulated bf16 is slower than fp32. --bf16 times it anyway.')

def cpuinfo(): return open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''

def has_bf16():
    "Whether bf16 arithmetic runs natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX"
    if torch.cuda.is_available(): return torch.cuda.is_bf16_supported()
    flags = cpuinfo()
    return 'avx512_bf16' in flags or 'amx_bf16' in flags

def machine():
    info = cpuinfo()
    cpu = next((l.split(':', 1)[1].strip() for l in info.splitlines() if l.startswith('model name')), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
    return (f'CPU {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, '
            f"AVX-512 BF16 {'yes' if 'avx512_bf16' in info else 'no'}, GPU {gpu}\n"
            f'python {platform.python_version()}, torch {torch.__version__}, fastai {fastai.__version__}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=3, help='timed repetitions after the warm-up (median reported)')
    p.add_argument('--chapter', action='store_true', help="also time the fastbook chapter's whole training, once per path")
    p.add_argument('--deep-blocks', type=int, default=10, help='residual blocks of NetResDeep (the book: 100)')
    p.add_argument('--only', choices=['fastbook', 'dlwpt'], help='one chapter only')
    p.add_argument('--bf16', action='store_true', help='time bf16 autocast even without bf16 hardware (slow)')
    a = p.parse_args()
    print(machine())
    if a.only in (None, 'fastbook'): fastbook(a.reps, a.chapter)
    if a.only in (None, 'dlwpt'): dlwpt(a.reps, a.deep_blocks, a.bf16 or has_bf16())
