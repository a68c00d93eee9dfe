"""Training speed of both chapters, the books' code path beside convlab's faster ones, measured in one run.

    .venv/bin/python bench/bench.py [--reps 3] [--chapter] [--only fastbook|dlwpt|set|ops|alloc|stack|layout] [--deep-blocks 10] [--set-epochs 5]

Each figure is the median of `--reps` timed runs after one warm-up run (the rows of a table take turns), with the
process's peak resident memory during those runs and the images per second it implies. Nothing here asserts a time: it prints figures and ratios.
`--chapter` also times the whole fastbook chapter's training at the book's settings (about 8 minutes by the book's
path on a 2-core CPU), once per path. `--only set` times the DLwPT figure-8.13 trainings as landed and as now, each
in fresh processes (glibc's allocator settings hold for a whole process), taking turns round by round. `--only ops`
profiles a training step of the tanh models and times the ops it spends most on. `--only alloc` times training steps
under glibc's allocator, with freed memory kept, and under jemalloc and tcmalloc where they are installed (preloaded in
fresh processes). `--only stack` times K seeds stacked in one model with `torch.func.vmap` against one model at a time. `--only layout` times
the two layouts of `train_runs` (one training at a time with all threads, or one single-thread process per training side
by side) on whole epochs, beside what `probe_layout` measures in a few steps and which layout it picks.
"""
import argparse, itertools, json, os, platform, statistics, subprocess, sys, threading, time, warnings
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
from convlab.fastbook13 import simple_cnn, conv, bn_conv, MNIST_CHANS
from convlab.fast import in_memory
from convlab.dlwpt08 import Net, NetWidth, NetDropout, NetBatchNorm, NetDepth, NetRes, NetResDeep, training_loop
from convlab.core import describe_device
from convlab.data import cifar_subset
import convlab.loop
from convlab.loop import stack_pairs, train_run, train_runs, keep_freed_memory, probe_layout, _here, _on_workers


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
    learn = Learner(dls, simple_cnn(MNIST_CHANS, first_ks=5, block=bn_conv if bn else conv), loss_func=F.cross_entropy, metrics=accuracy,
                    cbs=ActivationStats(with_hist=True) if hist else None)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr) if one_cycle else learn.fit(epochs, lr)
    return learn

def raw_epoch(xs, ys, vxs, vys, bs=512, lr=0.06):
    "The floor: the same model and data as plain tensors, a bare PyTorch epoch (train and validate), no hooks"
    model = simple_cnn(MNIST_CHANS, first_ks=5, block=bn_conv)
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
def cifar2():
    "CIFAR-2's training and validation pairs, as notebook 20 builds them"
    path = untar_data(URLs.CIFAR)
    return cifar_subset(path, 'train'), cifar_subset(path, 'test')

def book_epoch(make, pairs):
    "The book's path: a DataLoader over the list of pairs, default memory layout, this process's threads"
    set_seed(0); model = make().to(default_device())
    loader = DataLoader(pairs, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    training_loop(1, torch.optim.SGD(model.parameters(), lr=1e-2), model, torch.nn.CrossEntropyLoss(), loader, log_every=0)
    return time.perf_counter() - t

def dlwpt(reps, deep_blocks):
    cifar2_train, cifar2_val = cifar2()
    data = (*stack_pairs(cifar2_train), *stack_pairs(cifar2_val))
    keep_freed_memory()  # what train_run does: every row below runs with it (the `set` table compares with glibc's default)
    def fast_epoch(make): return train_run(make, data, 1, compile=False)['seconds']  # batches from memory, channels_last on a CPU
    def fast_pair(make):
        "Two one-epoch trainings side by side in single-thread processes: the time per epoch of the pair"
        rs = train_runs({'a': dict(make_model=make, n_epochs=1, compile=False), 'b': dict(make_model=make, n_epochs=1, seed=1, compile=False)}, data, n_workers=2)
        return max(r['seconds'] for r in rs.values())/2
    makes = [('Net', Net), ('NetWidth', NetWidth), ('NetBatchNorm', NetBatchNorm)]
    if deep_blocks: makes.append((f'NetResDeep({deep_blocks} blocks)', partial(NetResDeep, n_blocks=deep_blocks)))
    for name, make in makes:
        rows = [('book: DataLoader over a list', lambda make: book_epoch(make, cifar2_train)), (f'fast path, one training ({torch.get_num_threads()} threads)', fast_epoch)]
        if default_device().type == 'cpu' and torch.get_num_threads() > 1:
            rows.append(('fast path, two side by side (1 thread each)', fast_pair))
        times = [[] for _ in rows]
        for f in (fn for _, fn in rows): f(make)  # warm-up
        for _ in range(reps):
            for i, (_, fn) in enumerate(rows): times[i].append(fn(make))
        show(f'DLwPT 8, {name}, one training epoch (10,000 images, batch 64), seconds of training only, freed memory kept',
             [(n, t, None) for (n, _), t in zip(rows, times)], len(cifar2_train))

# DLwPT 8, figure 8.13: the whole set of trainings, as landed (glibc's default allocator, eager, one after another) and
# as train_runs now trains them by default, each job in a fresh process (mallopt holds for a whole process)
FIG_8_13 = dict(net=dict(make_model=Net), net_width=dict(make_model=NetWidth), net_l2=dict(make_model=Net, l2_lambda=0.001),
                net_dropout=dict(make_model=NetDropout), net_batchnorm=dict(make_model=NetBatchNorm),
                net_depth=dict(make_model=NetDepth), net_res=dict(make_model=NetRes))  # as notebook 20 trains them

SET_JOBS = {
    'landed: glibc default, eager, one at a time': 'landed',
    'now: freed memory kept, one at a time': 'now-1',
    'now: freed memory kept, 2 single-thread processes': 'now-2',
    'book path: Net epoch, DataLoader, glibc default': 'book-net',
    'now: Net epoch, train_run': 'now-net',
}

def set_job(job:str, epochs:int, n_images:int=None)->dict:
    "Run one job of `SET_JOBS` in this process and return its seconds, threads and allocator setting"
    if job in ('landed', 'book-net'): convlab.loop.keep_freed_memory = lambda *a: False  # the landed code: glibc's default
    kept = job not in ('landed', 'book-net') and keep_freed_memory()
    train_pairs, val_pairs = cifar2()
    if job not in ('book-net', 'now-net'): train_pairs = train_pairs[:n_images]  # the first n: a shorter epoch, the same steps
    data = (*stack_pairs(train_pairs), *stack_pairs(val_pairs))
    runs = {k: dict(kw, n_epochs=epochs) for k, kw in FIG_8_13.items()}
    t = time.perf_counter()
    if job == 'book-net': secs = book_epoch(Net, train_pairs)
    elif job == 'now-net': secs = train_run(Net, data, 1)['seconds']
    elif job == 'landed': train_runs({k: dict(kw, compile=False) for k, kw in runs.items()}, data, n_workers=1)
    else: train_runs(runs, data, n_workers=int(job[-1]))
    if job not in ('book-net', 'now-net'): secs = time.perf_counter() - t
    return dict(seconds=secs, threads=torch.get_num_threads(), malloc='mmap/trim thresholds 2e9 (mallopt)' if kept else 'glibc default')

def fresh_python(args:list, **env)->dict:
    "This script run with `args` in a new Python process that starts from glibc's allocator defaults (no MALLOC_* variables, no LD_PRELOAD) plus `env`; the JSON it prints last"
    base = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_') and k != 'LD_PRELOAD'}
    out = subprocess.run([sys.executable, __file__, *args], env=base | env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

def in_fresh_process(job:str, epochs:int, n_images:int=None)->dict:
    "`set_job` in a new Python process, so that each job starts from glibc's defaults"
    return fresh_python(['--set-job', job, '--set-epochs', str(epochs)] + ['--set-images', str(n_images)]*bool(n_images))

def fig_8_13_set(reps:int, epochs:int, n_images:int=None):
    "Time the jobs of `SET_JOBS` in fresh processes, taking turns round by round; print their times and ratios"
    times = {name: [] for name in SET_JOBS}
    for r in range(reps):
        for name, job in SET_JOBS.items():
            d = in_fresh_process(job, epochs, n_images); times[name].append(d['seconds'])
            print(f'  round {r+1}: {name:<50} {d["seconds"]:8.2f} s  torch threads {d["threads"]}, allocator {d["malloc"]}, '
                  f'load {os.getloadavg()[0]:.1f}', flush=True)
    names = list(SET_JOBS)
    show(f'DLwPT 8, figure 8.13: {len(FIG_8_13)} trainings of {epochs} epochs of {n_images or 10_000:,} images each, fresh processes (load average '
         f'{", ".join(f"{x:.1f}" for x in os.getloadavg())})', [(n, times[n], None) for n in names[:3]], None)
    ratio = lambda a, b: [x/y for x, y in zip(times[a], times[b])]
    for a, b in ((names[0], names[1]), (names[0], names[2]), (names[3], names[4])):
        rs = ratio(a, b)
        print(f'  {a} / {b}: {statistics.median(rs):.2f}x (per round {min(rs):.2f}-{max(rs):.2f})')

# DLwPT 8: where a training step of the tanh models spends its time on this CPU, and what pooling before tanh would save
class NetWidthPoolFirst(NetWidth):
    "`NetWidth` with each max-pool before its tanh: tanh is increasing, so the values are the same, from a quarter of the tanh calls' work"
    def forward(self, x):
        out = torch.tanh(F.max_pool2d(self.conv1(x), 2))
        out = torch.tanh(F.max_pool2d(self.conv2(out), 2))
        return self.fc2(torch.tanh(self.fc1(out.flatten(1))))

def ms_per_call(fn, n:int)->float:
    "Milliseconds per call of `fn`, over `n` calls after 5 untimed ones"
    for _ in range(5): fn()
    t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t)/n*1e3

def random_cifar2(memory_format=torch.channels_last):
    "Random data in CIFAR-2's shape: 10,000 images in `memory_format`, and labels"
    return torch.randn(10_000, 3, 32, 32).contiguous(memory_format=memory_format), torch.randint(0, 2, (10_000,))

def training_step(model, xs, ys, memory_format=torch.channels_last):
    "A function doing one SGD step of `model` on the next batch of 64 from `xs`, `ys`, as `train_run` does on a CPU"
    model = model.to(memory_format=memory_format); opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    batches = itertools.cycle(torch.randperm(len(xs), generator=torch.Generator().manual_seed(0)).split(64))
    def step():
        i = next(batches)
        loss = F.cross_entropy(model(xs[i]), ys[i]); opt.zero_grad(); loss.backward(); opt.step()
    return step

def ops(reps:int, steps:int=100):
    keep_freed_memory()  # as train_run: without it each activation is a fresh mapping and the figures measure page faults
    x = torch.randn(64, 32, 32, 32).contiguous(memory_format=torch.channels_last)  # NetWidth's first activation at batch 64
    elementwise = dict(tanh=lambda: torch.tanh(x), sigmoid=lambda: torch.sigmoid(x), relu=lambda: torch.relu(x),
                       max_pool2d=lambda: F.max_pool2d(x, 2), **{'tanh(max_pool2d)': lambda: torch.tanh(F.max_pool2d(x, 2))})
    times = {k: [ms_per_call(f, 50) for _ in range(reps)] for k, f in elementwise.items()}
    print(f'\nDLwPT 8: one op on a [64,32,32,32] channels-last activation (NetWidth\'s first, batch 64), ms per call, median of {reps}')
    for k, ts in times.items(): print(f'  {k:<18} {statistics.median(ts):7.3f} ms  ({min(ts):.3f}-{max(ts):.3f})')
    xs, ys = random_cifar2()
    stepper = partial(training_step, xs=xs, ys=ys)
    set_seed(0); book = NetWidth(); pool_first = NetWidthPoolFirst(); pool_first.load_state_dict(book.state_dict())
    with torch.no_grad(): same = torch.equal(book(xs[:256]), pool_first(xs[:256]))
    rows = [('NetWidth as the book writes it (tanh, then pool)', stepper(book)), ('NetWidth, pool then tanh', stepper(pool_first))]
    step_ms = [[] for _ in rows]
    for _ in range(reps):
        for i, (_, step) in enumerate(rows): step_ms[i].append(ms_per_call(step, steps))
    print(f'\nDLwPT 8: NetWidth training steps (batch 64, SGD, random data in CIFAR-2\'s shape), ms per step, median of {reps} rounds of {steps}')
    for (name, _), ts in zip(rows, step_ms):
        print(f'  {name:<50} {statistics.median(ts):7.2f} ms  ({min(ts):.2f}-{max(ts):.2f})  {statistics.median(step_ms[0])/statistics.median(ts):.2f}x')
    print(f'  same outputs from the same weights: {same}')
    from torch.profiler import profile, ProfilerActivity
    step = stepper(NetWidth())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20): step()
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in top)
    print('  where a step of the book\'s NetWidth spends its time (self CPU, 20 steps): '
          + ', '.join(f'{e.key} {e.self_cpu_time_total/total:.0%}' for e in top[:6]))

# DLwPT 8: the allocators a CPU training could run under. glibc's default maps and faults in each step's activations
# afresh; `train_run` keeps freed memory through `mallopt`; jemalloc and tcmalloc, where this machine has them, replace
# malloc only when preloaded before Python starts (LD_PRELOAD), which a pip install cannot do for a learner's kernel
STEP_MODELS = dict(Net=Net, NetWidth=NetWidth, NetBatchNorm=NetBatchNorm)

def alloc_job(alloc:str, steps:int)->dict:
    "In this process: ms per training step of each of `STEP_MODELS` (median of 3 rounds of `steps`), under `alloc`"
    if alloc == 'mallopt': assert keep_freed_memory(), "no mallopt in this C library"
    xs, ys = random_cifar2()
    def ms(make):
        set_seed(0); step = training_step(make(), xs, ys)
        return statistics.median(ms_per_call(step, steps) for _ in range(3))
    return {name: ms(make) for name, make in STEP_MODELS.items()}

def allocators(reps:int, steps:int=100):
    "Time `alloc_job` in fresh processes under each allocator found here, taking turns round by round"
    import ctypes.util
    libs = {'jemalloc': ctypes.util.find_library('jemalloc'), 'tcmalloc': ctypes.util.find_library('tcmalloc_minimal') or ctypes.util.find_library('tcmalloc')}
    rows = {'glibc default': ('default', {}), 'glibc, freed memory kept (mallopt, as train_run)': ('mallopt', {})}
    rows |= {f'{k} ({lib}, LD_PRELOAD)': ('default', dict(LD_PRELOAD=lib)) for k, lib in libs.items() if lib}
    times = {name: [] for name in rows}
    for _ in range(reps):
        for name, (alloc, env) in rows.items(): times[name].append(fresh_python(['--alloc-job', alloc, '--steps', str(steps)], **env))
    print(f'\nDLwPT 8: ms per training step (batch 64, SGD, channels-last, random data in CIFAR-2\'s shape) by allocator, '
          f'fresh processes, median of {reps} rounds; not installed here: {", ".join(k for k, lib in libs.items() if not lib) or "none"}')
    print(f'  {"allocator":<52}' + ''.join(f'{m:>14}' for m in STEP_MODELS))
    base = {m: statistics.median(r[m] for r in times['glibc default']) for m in STEP_MODELS}
    for name, rs in times.items():
        med = {m: statistics.median(r[m] for r in rs) for m in STEP_MODELS}
        print(f'  {name:<52}' + ''.join(f'{med[m]:7.2f} ({base[m]/med[m]:.2f}x)' for m in STEP_MODELS))

# DLwPT 8: the third multi-seed layout, K seeds stacked in one model (torch.func's stack_module_state and vmap, which
# batch each convolution of the K models into one grouped convolution) against one model at a time
def stacked_step(make, K:int, xs, ys, memory_format=torch.channels_last, lr=1e-2):
    "A function doing one SGD step of K models from `make`, stacked, each on its own batch of 64"
    from torch.func import stack_module_state, functional_call, grad, vmap
    models = [make().to(memory_format=memory_format) for _ in range(K)]
    params, bufs = stack_module_state(models)
    shape = models[0].to('meta')
    def loss(p, b, x, y): return F.cross_entropy(functional_call(shape, (p, b), (x,)), y)
    grads = vmap(grad(loss))
    batches = itertools.cycle(torch.randperm(len(xs), generator=torch.Generator().manual_seed(0)).split(64*K))
    def step():
        i = next(batches)
        if len(i) < 64*K: i = next(batches)
        g = grads(params, bufs, xs[i].unflatten(0, (K, 64)), ys[i].unflatten(0, (K, 64)))
        with torch.no_grad():
            for k, v in params.items(): v.sub_(g[k], alpha=lr)
    return step

def stacking(reps:int, steps:int=50, Ks=(2, 4)):
    keep_freed_memory()
    print(f'\nDLwPT 8: K seeds stacked in one model (vmap) against one model at a time, ms per training step and model, '
          f'median of {reps} rounds of {steps} steps, freed memory kept')
    for make in (Net, NetWidth):
        for fmt in (torch.contiguous_format, torch.channels_last):
            xs, ys = random_cifar2(fmt)
            set_seed(0)
            rows = [('one model', training_step(make(), xs, ys, fmt), 1)] + [(f'{K} stacked', stacked_step(make, K, xs, ys, fmt), K) for K in Ks]
            ms = [[] for _ in rows]
            for _ in range(reps):
                for i, (_, step, K) in enumerate(rows): ms[i].append(ms_per_call(step, steps)/K)
            meds = [statistics.median(t) for t in ms]
            print(f'  {make.__name__:<9} {"channels-last" if fmt == torch.channels_last else "contiguous":<14}'
                  + ''.join(f'  {name} {m:6.2f} ms ({meds[0]/m:.2f}x)' for (name, _, _), m in zip(rows, meds)))

# DLwPT 8: the two layouts `train_runs` chooses between, timed on whole epochs of CIFAR-2 (the cluster started once,
# outside the timings), beside the few steps `probe_layout` times to choose, and its choice
def layouts(reps:int, epochs:int=1):
    from distributed import Client
    from convlab.run import local_cluster
    n = torch.get_num_threads()
    if default_device().type != 'cpu' or n < 2: print('\nlayout: needs a CPU and more than one thread; train_runs trains one at a time here'); return
    cifar2_train, cifar2_val = cifar2()
    data = (*stack_pairs(cifar2_train), *stack_pairs(cifar2_val))
    t = time.perf_counter()
    with local_cluster(n) as cluster, Client(cluster) as client:
        client.run(lambda: __import__('convlab.loop'))  # the workers' imports, also outside the timings
        print(f'\nDLwPT 8: {n} trainings of {epochs} epoch(s) of 10,000 images (batch 64), one at a time with {n} threads or side by side '
              f'in {n} single-thread processes; seconds a training, medians of {reps} rounds; load average {os.getloadavg()[0]:.1f} '
              f'(starting the {n} workers took {time.perf_counter() - t:.1f} s, paid by each train_runs call that trains side by side)')
        for name, make in (('Net', Net), ('NetWidth', NetWidth), ('NetBatchNorm', NetBatchNorm)):
            runs = {f'seed{i}': dict(make_model=make, n_epochs=epochs, seed=i) for i in range(n)}
            t = time.perf_counter(); p = probe_layout(runs['seed0'], data, client); probe_s = time.perf_counter() - t
            rows = measure([(f'one at a time ({n} threads)', lambda: _here(runs, data)),
                            (f'side by side ({n} x 1 thread)', lambda: _on_workers(runs, data, client))], reps)
            show(f'{name}: both layouts (the second row\'s ratio > 1: side by side is faster)', [(k, [x/n for x in ts], None) for k, ts, _ in rows], epochs*10_000)
            won = 'side by side' if statistics.median(rows[1][1]) < statistics.median(rows[0][1]) else 'one at a time'
            picked = 'side by side' if p['n_workers'] > 1 else 'one at a time'
            print(f"  probe ({probe_s:.1f} s): a step {p['one_ms']:.1f} ms one at a time, {p['side_ms']:.1f} ms side by side "
                  f"({p['side_ms']/n:.1f} ms a training, {p['one_ms']/(p['side_ms']/n):.2f}x): picks {picked}; the epochs above: {won} "
                  f"{'(agrees)' if picked == won else '(DISAGREES)'}", flush=True)

def cpu_flags()->str:
    "The vector extensions of this CPU that torch's kernels use (AVX2, AVX-512, AMX), from /proc/cpuinfo"
    info = '/proc/cpuinfo'
    flags = next((l.split(':', 1)[1].split() for l in open(info) if l.startswith('flags')), []) if os.path.exists(info) else []
    return ' '.join(f for f in flags if f.startswith(('avx2', 'avx512', 'amx'))) or 'none of avx2/avx512/amx'

def machine():
    "What ran the benchmark: the device (GPU name, or CPU model and torch's threads), cores, versions"
    return (f'{describe_device()}; {os.cpu_count()} logical cores; {cpu_flags()}\n'
            f'python {platform.python_version()}, torch {torch.__version__}, fastai {fastai.__version__}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=3, help='timed repetitions after the warm-up (median reported)')
    p.add_argument('--chapter', action='store_true', help="also time the fastbook chapter's whole training, once per path")
    p.add_argument('--deep-blocks', type=int, default=0, help='also time NetResDeep with this many residual blocks (the book: 100)')
    p.add_argument('--only', choices=['fastbook', 'dlwpt', 'set', 'ops', 'alloc', 'stack', 'layout'], help='one table only')
    p.add_argument('--set-epochs', type=int, default=5, help='epochs of each figure-8.13 training in the `set` table')
    p.add_argument('--set-images', type=int, help='train the `set` table on the first n images only (default: all 10,000; the Net-epoch rows always use all)')
    p.add_argument('--layout-epochs', type=int, default=1, help='epochs of each training in the `layout` table')
    p.add_argument('--steps', type=int, default=100, help='training steps a round in the `alloc` table')
    p.add_argument('--set-job', choices=list(SET_JOBS.values()), help=argparse.SUPPRESS)  # one job, in a fresh process
    p.add_argument('--alloc-job', choices=['default', 'mallopt'], help=argparse.SUPPRESS)  # likewise
    a = p.parse_args()
    if a.set_job: print(json.dumps(set_job(a.set_job, a.set_epochs, a.set_images))); sys.exit()
    if a.alloc_job: print(json.dumps(alloc_job(a.alloc_job, a.steps))); sys.exit()
    print(machine())
    if a.only in (None, 'fastbook'): fastbook(a.reps, a.chapter)
    if a.only in (None, 'dlwpt'): dlwpt(a.reps, a.deep_blocks)
    if a.only in (None, 'set'): fig_8_13_set(a.reps, a.set_epochs, a.set_images)
    if a.only in (None, 'ops'): ops(a.reps)
    if a.only in (None, 'alloc'): allocators(a.reps, a.steps)
    if a.only in (None, 'stack'): stacking(a.reps)
    if a.only in (None, 'layout'): layouts(a.reps, a.layout_epochs)
