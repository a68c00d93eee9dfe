"The emulated GPU (`emulated_gpu`): correct device code runs, each kind of CPU/GPU mix-up raises as on CUDA, and CPU tensors stay CPU tensors"
import copy, json, re
import numpy as np, pytest, torch
import torch.nn.functional as F
from torch import nn
import fastcore.test as fct
import emulated_gpu
from emulated_gpu import NAME, emulated, device_of

MIXUP = 'Expected all tensors to be on the same device'
NUMPY = "can't convert cuda:0 device type tensor to numpy"
CONV = r'Input type \(torch\.cuda\.FloatTensor\) and weight type \(torch\.FloatTensor\) should be the same'  # cuDNN's check, in `_convolution`

@pytest.fixture
def log(tmp_path):
    "The emulation on for one test, writing the mix-ups it finds to the file it yields"
    fn = tmp_path/'mixups.jsonl'
    with emulated(log=fn): yield fn

def cnn(): return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

def test_torch_and_fastai_see_one_gpu(log):
    from fastai.torch_core import default_device
    fct.test_eq((torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name(0)), (True, 1, NAME))
    fct.test_eq(default_device(), torch.device('cuda', 0))
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.manual_seed_all(0)  # harmless
    x = torch.ones(2, device='cuda')
    fct.test_eq((x.device, x.is_cuda, x.get_device(), x.cpu().device, x.cpu().is_cuda), (torch.device('cuda', 0), True, 0, torch.device('cpu'), False))

def test_other_devices_are_torchs(log):
    "Devices other than the CPU and CUDA ('meta' here) are torch's own business"
    m = nn.Linear(3, 2).to('meta')
    fct.test_eq((m.weight.device.type, torch.zeros(2, device='meta').device.type, torch.ones(2).to('meta').device.type), ('meta',)*3)
    fct.test_eq(m(torch.ones(4, 3, device='meta')).shape, (4, 2))

def test_disable_restores_torch():
    before = torch.cuda.is_available
    with emulated(): assert torch.cuda.is_available is not before
    assert torch.cuda.is_available is before and not emulated_gpu.is_enabled()
    assert torch.Generator is torch._C.Generator and 'pin_memory' not in vars(torch.Tensor)
    torch.ones(2) + torch.ones(2)  # plain torch again

def correct_device_code(tmp_path):
    "Device code that is right on CUDA (`test_gpu.py` runs it there too)"
    torch.manual_seed(0)
    dev = torch.device('cuda')
    m = cnn().to(dev)
    assert all(p.device.type == 'cuda' for p in m.parameters()) and m[1].running_mean.is_cuda
    x, y = torch.randn(8, 1, 6, 6).to(dev), torch.randint(0, 2, (8,)).cuda()
    for opt in torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(m.parameters()):
        loss = F.cross_entropy(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
    assert all(p.grad.is_cuda for p in m.parameters())
    z = torch.zeros(8, device=x.device) + x.new_tensor([1.]) + x.new_zeros(8)  # following x.device keeps working
    fct.test_eq((z.device.type, torch.ones(2).type_as(x).device.type), ('cuda', 'cuda'))
    fct.test_eq((x * torch.tensor(2.)).device.type, 'cuda')  # a CPU 0-dim tensor is a scalar, as on CUDA
    idx = torch.tensor([0, 2]); x[idx] = 0.; x[torch.arange(8) < 4].sum()  # CPU indices into a GPU tensor
    buf = torch.empty(8); buf.copy_(z); z.copy_(buf)  # copies across devices
    loss.item(), float(x.sum()), x.tolist()  # values come back to the host
    assert m(x).detach().cpu().numpy().shape == (8, 2) and np.asarray(x.cpu()).shape == (8, 1, 6, 6)
    m2 = copy.deepcopy(m)
    assert all(p.is_cuda for p in m2.parameters()) and not m2.cpu()[0].weight.is_cuda
    m2(x.cpu())
    torch.save(m.state_dict(), tmp_path/'m.pt')
    for loc, want in (('cpu', 'cpu'), ('cuda', 'cuda'), (dev, 'cuda'), (None, 'cuda')):  # saved from the GPU, loaded back there by default
        fct.test_eq({v.device.type for v in torch.load(tmp_path/'m.pt', map_location=loc).values()}, {want})
    m2.load_state_dict(torch.load(tmp_path/'m.pt'))  # load_state_dict copies across devices

def test_correct_device_code_runs(log, tmp_path):
    correct_device_code(tmp_path)
    assert not log.exists()

def test_fastai_tensor_types_keep_their_device(log):
    from fastai.torch_core import TensorImage, TensorCategory, to_cpu, to_device
    x = TensorImage(torch.rand(2, 1, 4, 4)).cuda()
    y = (x * 2 - x.mean()).as_subclass(TensorImage)
    fct.test_eq((type(y), y.device.type, type(x.cpu()), x.cpu().device.type), (TensorImage, 'cuda', TensorImage, 'cpu'))
    t = to_device(TensorCategory([0, 1]))
    fct.test_eq((type(t), t.device.type, to_cpu(t).device.type), (TensorCategory, 'cuda', 'cpu'))

def test_fastai_learner_trains_on_the_gpu(log, tmp_path):
    "A `Learner` with `ActivationStats` trains on `DataLoaders` (two worker processes) built from image files"
    from PIL import Image
    from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, PILImageBW, GrandparentSplitter, get_image_files,
                                   parent_label, Normalize, Learner, accuracy, first, to_cpu, set_seed)
    from fastai.callback.hook import ActivationStats
    rng = np.random.default_rng(0)
    for split in ('train', 'valid'):
        for label, base in (('dark', 40), ('light', 200)):
            d = tmp_path/split/label; d.mkdir(parents=True)
            for i in range(16): Image.fromarray(rng.integers(base - 30, base + 30, (8, 8), dtype=np.uint8)).save(d/f'{i}.png')
    set_seed(0)
    dls = DataBlock((ImageBlock(cls=PILImageBW), CategoryBlock), get_items=get_image_files, splitter=GrandparentSplitter(),
                    get_y=parent_label, batch_tfms=Normalize()).dataloaders(tmp_path, bs=8, num_workers=2)
    fct.test_eq(dls.device, torch.device('cuda', 0))
    xb, yb = first(dls.valid)
    fct.test_eq((xb.device.type, yb.device.type), ('cuda', 'cuda'))
    kernels = torch.randn(2, 1, 3, 3)
    with pytest.raises(RuntimeError, match=CONV): F.conv2d(xb, kernels)  # the chapter's bug: a CPU kernel on a GPU batch
    fct.test_eq(F.conv2d(to_cpu(xb), kernels).device.type, 'cpu')             # the book's fix
    learn = Learner(dls, cnn(), loss_func=F.cross_entropy, metrics=accuracy, cbs=ActivationStats(with_hist=True))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 0.05)
    assert next(learn.model.parameters()).is_cuda
    fct.test_eq(len(learn.activation_stats.stats), 2*len(dls.train))
    fct.test_eq(learn.activation_stats.hist(0).shape, (40, 2*len(dls.train)))
    assert learn.recorder.values[-1][2] > 0.9, learn.recorder.values  # two well-separated classes
    preds, targs = learn.get_preds()
    fct.test_eq((preds.device.type, targs.device.type, preds.shape), ('cpu', 'cpu', (32, 2)))
    learn.path = tmp_path; learn.save('model'); learn.load('model')
    assert next(learn.model.parameters()).is_cuda
    fct.test_eq([json.loads(l)['error'].split(':')[0] for l in log.read_text().splitlines()], ['RuntimeError'])  # the one above

def _cpu_model_gpu_batch(tmp):
    nn.Conv2d(1, 2, 3)(torch.randn(1, 1, 5, 5, device='cuda'))
def _gpu_model_cpu_batch(tmp):
    nn.Conv2d(1, 2, 3).cuda()(torch.randn(1, 1, 5, 5))
def _conv_cpu_kernel(tmp):
    F.conv2d(torch.randn(1, 1, 5, 5).cuda(), torch.randn(2, 1, 3, 3))
def _loss_cpu_targets(tmp):
    F.cross_entropy(torch.randn(4, 2, device='cuda'), torch.tensor([0, 1, 1, 0]))
def _cat(tmp):
    torch.cat([torch.ones(2).cuda(), torch.ones(2)])
def _from_numpy(tmp):
    torch.ones(3, device='cuda') + torch.from_numpy(np.ones(3, dtype=np.float32))
def _gpu_index_cpu_tensor(tmp):
    torch.ones(3)[torch.tensor([0, 1]).cuda()]
def _loss_cpu_class_weights(tmp):
    F.cross_entropy(torch.randn(4, 2, device='cuda'), torch.tensor([0, 1, 1, 0]).cuda(), weight=torch.tensor([1., 2.]))
def _grad_on_other_device(tmp):
    p = nn.Parameter(torch.ones(2).cuda()); p.grad = torch.ones(2)
def _second_gpu(tmp):
    torch.ones(2).cuda(1)
def _checkpoint_on_cpu_model(tmp):
    torch.save(nn.Linear(2, 2).cuda().state_dict(), tmp/'gpu.pt')
    sd = torch.load(tmp/'gpu.pt')  # no map_location: on the GPU, as it was saved
    F.linear(torch.ones(1, 2), sd['weight'])
def _numpy(tmp):
    torch.ones(2).cuda().numpy()
def _asarray(tmp):
    np.asarray(torch.ones(2, device='cuda'))
def _imshow(tmp):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    plt.imshow(torch.rand(4, 4).cuda())

# CUDA exempts a CPU 0-dim tensor (a scalar) only where an op's kernel skips the device check generated for it
# (`device_check: NoCheck` in native_functions.yaml: TensorIterator's elementwise ops, `where`, `masked_fill`)
def _stack_cpu_scalar(tmp):
    torch.stack([torch.ones(3, device='cuda').sum(), torch.tensor(0.)])
def _index_select_cpu_scalar(tmp):
    torch.ones(3, device='cuda').index_select(0, torch.tensor(1))
def _clamp_cpu_scalar(tmp):
    torch.ones(3, device='cuda').clamp(min=torch.tensor(0.))
def _embedding_cpu_scalar(tmp):
    F.embedding(torch.tensor(1), torch.ones(3, 2, device='cuda'))
def _cuda_op_cpu_generator(tmp):
    torch.randn(3, device='cuda', generator=torch.Generator())
def _cpu_op_cuda_generator(tmp):
    torch.randn(3, generator=torch.Generator(device='cuda'))
def _pin_gpu_tensor(tmp):
    torch.ones(2, device='cuda').pin_memory()

GEN = "Expected a '{}' device type for generator but found '{}'"
# each mix-up (given a scratch folder), the exception CUDA raises and a pattern of its message (`test_gpu.py` checks them on CUDA).
# A CPU input into a GPU model: CUDA's CPU convolution raises one of two messages, as the kernel it picks (MKLDNN or not) does.
MIXUPS = [(_cpu_model_gpu_batch, RuntimeError, CONV),
          (_gpu_model_cpu_batch, RuntimeError, rf'{MIXUP}|Input type \(torch\.FloatTensor\) and weight type \(torch\.cuda\.FloatTensor\) should be the same'),
          (_conv_cpu_kernel, RuntimeError, CONV),
          (_loss_cpu_targets, RuntimeError, MIXUP), (_loss_cpu_class_weights, RuntimeError, MIXUP), (_cat, RuntimeError, MIXUP),
          (_from_numpy, RuntimeError, MIXUP), (_gpu_index_cpu_tensor, RuntimeError, f'{MIXUP}|indices should be either on cpu'),
          (_grad_on_other_device, RuntimeError, "attempting to assign a gradient with device type 'cpu' to a tensor with device type 'cuda'"),
          (_second_gpu, RuntimeError, 'invalid device ordinal'), (_checkpoint_on_cpu_model, RuntimeError, MIXUP),
          (_numpy, TypeError, NUMPY), (_asarray, TypeError, NUMPY), (_imshow, TypeError, NUMPY),
          (_stack_cpu_scalar, RuntimeError, f'{MIXUP}, but got tensors is on cpu'),
          (_index_select_cpu_scalar, RuntimeError, f'{MIXUP}, but got index is on cpu, different from other tensors on cuda:0 '
                                                   r'\(when checking argument in method wrapper_CUDA__index_select\)'),
          (_clamp_cpu_scalar, RuntimeError, f'{MIXUP}, but got min is on cpu, different from other tensors on cuda:0 '
                                            r'\(when checking argument in method wrapper_CUDA_clamp_Tensor\)'),
          (_embedding_cpu_scalar, RuntimeError, f'{MIXUP}, but got ind'),
          (_cuda_op_cpu_generator, RuntimeError, GEN.format('cuda', 'cpu')), (_cpu_op_cuda_generator, RuntimeError, GEN.format('cpu', 'cuda')),
          (_pin_gpu_tensor, RuntimeError, r"cannot pin 'torch\.cuda\.FloatTensor' only dense CPU tensors can be pinned")]

@pytest.mark.parametrize('mixup,exc,msg', MIXUPS, ids=[m[0].__name__[1:] for m in MIXUPS])
def test_mixup_raises_as_on_cuda(mixup, exc, msg, log, tmp_path):
    with pytest.raises(exc, match=msg): mixup(tmp_path)
    rows = [json.loads(l) for l in log.read_text().splitlines()]
    fct.test_eq(len(rows), 1)
    assert re.search(msg, rows[0]['error']) and 'test_emulated_gpu.py' in rows[0]['where'], rows  # logged with the line that did it

def _cpu_scalars_in_elementwise_ops():
    x = torch.arange(4., device='cuda')
    outs = (x + torch.tensor(1.), x > torch.tensor(1.), x ** torch.tensor(2.), torch.where(x > 1, x, torch.tensor(0.)),
            x.masked_fill(x > 1, torch.tensor(0.)))
    fct.test_eq({o.device.type for o in outs}, {'cuda'})
def _cuda_generator():
    g = torch.Generator(device='cuda')
    fct.test_eq((g.device, isinstance(g, torch.Generator)), (torch.device('cuda'), True))
    a, b = (torch.randn(3, device='cuda', generator=g.manual_seed(0)) for _ in range(2))
    fct.test_eq((a.device.type, a.tolist()), ('cuda', b.tolist()))
def _pinned_copy():
    t = torch.ones(3)
    p = t.pin_memory()
    fct.test_eq((t.is_pinned(), p.is_pinned(), p.device.type, p.pin_memory() is p, p[1:].is_pinned()), (False, True, 'cpu', True, True))
    fct.test_eq((p.cuda(non_blocking=True).is_pinned(), torch.empty(2, pin_memory=True).is_pinned()), (False, True))
def _dataloader_pins_batches():
    for workers in (0, 2):
        b = next(iter(torch.utils.data.DataLoader(torch.arange(8.), batch_size=4, pin_memory=True, num_workers=workers)))
        fct.test_eq((b.device.type, b.is_pinned(), b.cuda(non_blocking=True).device.type), ('cpu', True, 'cuda'))

# what CUDA takes, where a stricter or a laxer emulation would not (`test_gpu.py` runs them on CUDA)
ALLOWED = [_cpu_scalars_in_elementwise_ops, _cuda_generator, _pinned_copy, _dataloader_pins_batches]

@pytest.mark.parametrize('case', ALLOWED, ids=[c.__name__[1:] for c in ALLOWED])
def test_allowed_as_on_cuda(case, log):
    case()
    assert not log.exists(), log.read_text()

def test_caught_mixup_is_logged(log):
    try: F.conv2d(torch.randn(1, 1, 5, 5, device='cuda'), torch.randn(2, 1, 3, 3))
    except RuntimeError: pass
    fct.test_eq(len(log.read_text().splitlines()), 1)

def test_no_false_positives_from_reused_storage(log):
    "Storage addresses get reused: a CPU tensor made where a GPU tensor was freed is still a CPU tensor"
    for _ in range(200):
        g = torch.randn(256).cuda(); del g
        c = torch.randn(256)
        assert c.device.type == 'cpu' and device_of(c) != 'cuda'
        c.numpy(); c + torch.ones(256)

def torch_internals():
    "Ops whose kernels or backward formulas make their own tensors, as on CUDA (`test_gpu.py` runs it there too)"
    x = torch.randn(4, 3, 8, 8, device='cuda', requires_grad=True)
    idx = torch.tensor([0, 2], device='cuda')
    out = (F.max_pool2d(x, 2).sum() + x[idx].sum() + x[torch.tensor([1, 3])].sum() + F.one_hot(idx, 5).sum()
           + F.embedding(idx, x.flatten(1)).sum() + torch.where(x > 0, x, torch.tensor(0.)).sum() + x.gather(0, idx[:, None, None, None].expand(2, 3, 8, 8)).sum())
    out.backward()
    fct.test_eq(x.grad.device.type, 'cuda')
    torch.nn.utils.clip_grad_norm_([x], 1.)
    fct.test_eq(F.interpolate(x, scale_factor=2).device.type, 'cuda')

def test_no_false_positives_from_torch_internals(log):
    torch_internals()
    assert not log.exists()

def test_no_false_positives_across_a_move(log):
    "A CPU leaf moved to the GPU gets its gradient on the CPU, and the other way round, as on CUDA"
    w, g = torch.ones(3, requires_grad=True), torch.ones(3, device='cuda', requires_grad=True)
    (w.cuda()*2).sum().backward(); (g.cpu()*2).sum().backward()
    fct.test_eq((w.grad.device.type, g.grad.device.type), ('cpu', 'cuda'))
    with torch.no_grad(): w -= w.grad; g -= g.grad
    assert not log.exists()

def test_no_false_positives_from_workers_and_numpy(log):
    "Tensors made outside the ops torch dispatches (from numpy, in DataLoader workers) are CPU tensors"
    a = torch.from_numpy(np.ones(3))
    fct.test_eq((a.device.type, a.numpy().sum()), ('cpu', 3.))
    dl = torch.utils.data.DataLoader(torch.arange(12.), batch_size=4, num_workers=2)
    b = next(iter(dl))
    fct.test_eq((b.device.type, (b + torch.ones(4)).device.type, b.cuda().device.type), ('cpu', 'cpu', 'cuda'))
    g = torch.ones(2, device='cuda')
    fct.test_eq((g.to('cuda') is g, torch.tensor([g.sum(), g.mean()]).device.type), (True, 'cpu'))  # numbers read off the GPU
    assert not log.exists()
