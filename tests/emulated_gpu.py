"""An emulated CUDA GPU for machines without one, so that CI catches CPU/GPU mix-ups (issue 13).

Learners run the notebooks on a GPU, where fastai puts every batch on `cuda:0`; a cell that combines such a batch with
a kernel or a model made on the CPU works on a CPU-only machine and fails on Colab. Under this emulation torch and
fastai see one CUDA device (`default_device()` is `cuda:0`), tensors "on the GPU" compute on the CPU, and CUDA's
device rules are enforced:

    import emulated_gpu
    emulated_gpu.enable()                 # for the rest of this thread (and its forked DataLoader workers)
    with emulated_gpu.emulated(): ...     # or for a block

How it works:
- where a tensor lives is a mark on its storage's Python object (`'cuda'`, `'cpu'`, or none yet). Views, `.data`,
  `as_subclass`, `nn.Parameter` and the copies autograd saves for backward share the storage, so they share the
  mark, and a mark dies with its storage (no addresses that get reused).
- a `TorchDispatchMode` sees every aten op, forward and backward, and raises CUDA's `RuntimeError` where one mixes a
  tensor on the GPU with a CPU tensor, by CUDA's rules: a CUDA kernel's generated device check (every tensor argument
  on one device, 0-dim CPU tensors too: `torch.stack`, `index_select`, `clamp(min=t)`, `F.embedding`) unless
  `native_functions.yaml` (shipped with torch, in `torchgen`) marks the op `device_check: NoCheck`; such an op checks
  for itself, and takes a CPU 0-dim tensor as a scalar (TensorIterator's elementwise ops, `where`, `masked_fill`) and
  CPU indices into a GPU tensor (`gpu[cpu_idx]`); a convolution of a GPU input checks the types of its weight and bias
  (cuDNN's path). Copies across devices are allowed. The outputs of an op with a GPU input are on the GPU.
- a `TorchFunctionMode` sees the Python API: `.device`, `.is_cuda`, `.to`/`.cuda`/`.cpu` (so `Module.to`), `device=`
  arguments of factories, `.numpy()` and `np.asarray` of a GPU tensor (CUDA's `TypeError`). A tensor that reaches
  user code without a mark (`torch.from_numpy`, a DataLoader worker's output) is a CPU tensor; one that C++ code
  makes inside an op (`at::zeros(..., grad.options())` in a backward formula) stays unmarked, and follows the device
  of what it is combined with, so that CUDA's own internals never raise.
- `torch.cuda.is_available()` and friends say there is one GPU, named `NAME`; `torch.save` writes a GPU tensor's
  location as `cuda:0`, and `torch.load` gives it back on the GPU unless `map_location` says otherwise.
- `torch.Generator(device='cuda')` is a CPU generator that says it is on the GPU; a random op on one device with a
  generator of the other raises as CUDA does. `pin_memory()` (and a DataLoader's `pin_memory=True`, in its own thread)
  gives a CPU tensor whose `is_pinned()` is True, as on CUDA.

Limits. Checks it misses: ops in threads other than the one that enabled it (the modes are thread-local) and in
processes started by spawn; mixes inside torch's own Python functions between tensors they make there and CPU tensors;
the finer rules of ops marked `NoCheck` (a TensorIterator built without `allow_cpu_scalars` takes no CPU scalar, one
built with it one at most). A composite op (no CUDA kernel of its own, as `stack`) is checked as a whole: its message
names its own argument and no wrapper, where CUDA's names those of the op it calls (`cat`). A CPU input into a
convolution with GPU weights raises the generated check's message, where CUDA's kernel for that input may raise its own
type check. Not emulated: memory (no out-of-memory), streams, events, CUDA graphs, AMP, legacy `torch.cuda.FloatTensor`
types, `torch.set_default_device('cuda')`, `torch.compile`; a GPU tensor prints without `device='cuda:0'`. Code that
takes a GPU-only path (bigger models when a GPU is found) does that work on the CPU.
"""
import contextlib, importlib.util, json, os, re, traceback
from pathlib import Path
from types import SimpleNamespace
import torch, torch.utils.data
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['NAME', 'GPU', 'enable', 'disable', 'emulated', 'is_enabled', 'device_of']

NAME = 'emulated GPU (CPU underneath)'
GPU = torch.device('cuda', 0)
_KEY = '_emulated_device'  # attribute on a storage's Python object: 'cuda' or 'cpu'
_state = {}                # while enabled: the modes, the functions patched over, the log file
aten = torch.ops.aten

# Marks
def _storage(t):
    try: return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError): return None  # sparse, nested, meta: not tracked

def device_of(
    t:torch.Tensor, # any tensor
)->str: # 'cuda', 'cpu', or None when no op has told yet
    "Where the emulation believes `t` lives"
    s = _storage(t)
    return None if s is None else getattr(s, _KEY, None)

def _mark(o, dev:str, force:bool=False):
    "Put the tensors in `o` (a tensor, or a list or tuple of them) on `dev`; only those without a mark unless `force`"
    for t in _tensors(o):
        s = _storage(t)
        if s is not None and (force or getattr(s, _KEY, None) is None): setattr(s, _KEY, dev)
    return o

def _tensors(*objs):
    "The tensors in `objs`, looking one level into lists, tuples and dicts"
    for o in objs:
        if isinstance(o, torch.Tensor): yield o
        elif isinstance(o, (list, tuple)): yield from (t for t in o if isinstance(t, torch.Tensor))
        elif isinstance(o, dict): yield from (t for t in o.values() if isinstance(t, torch.Tensor))

# Mix-ups: logged, then raised
def _where()->dict:
    "The innermost lines of the caller's own code, and of a notebook cell (IPython's cell files), for the log"
    frames = [f for f in traceback.extract_stack()[:-3] if 'site-packages' not in f.filename and f.filename != __file__]
    cells = [f for f in frames if 'ipykernel_' in f.filename or f.filename.startswith('<ipython-input')]
    fmt = lambda f: f'{f.filename}:{f.lineno}: {f.line}'
    return dict(where=fmt(frames[-1]) if frames else '', cell_line=cells[-1].line if cells else None)

def _fail(exc:Exception):
    "Log a mix-up the emulation found (even one the caller catches), then raise it"
    fn = _state.get('log')
    if fn:
        with open(fn, 'a') as f: f.write(json.dumps(dict(pid=os.getpid(), error=f'{type(exc).__name__}: {exc}', **_where())) + '\n')
    raise exc

def _mixup(what, cpu:torch.Tensor):
    _fail(RuntimeError(f'Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! '
                       f'({what}: a CPU tensor of shape {tuple(cpu.shape)} beside a tensor on cuda:0; emulated GPU)'))

# The aten level: device rules, and where outputs live
_ANY_DEVICE = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default,
               aten.lift_fresh.default, aten.lift_fresh_copy.default, aten.set_.source_Tensor, aten.set_.source_Storage,
               aten.set_.source_Storage_storage_offset}
# CUDA takes CPU indices into a GPU tensor (`gpu[cpu_idx]`, `gpu[cpu_idx] = v`): op -> position of the indices
_INDEXED = {**dict.fromkeys([aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default,
                             aten._unsafe_index.Tensor, aten._unsafe_index_put.default], 1),
            **dict.fromkeys([aten.index_fill.int_Scalar, aten.index_fill.int_Tensor, aten.index_fill_.int_Scalar,
                             aten.index_fill_.int_Tensor], 2)}

def _checked_ops()->dict:
    "aten op name -> whether its CUDA kernel comes with the generated device check (`device_check` in native_functions.yaml)"
    spec = importlib.util.find_spec('torchgen')  # torch's code generator, shipped with torch with the yaml it generated from
    fn = Path(spec.submodule_search_locations[0])/'packaged'/'ATen'/'native'/'native_functions.yaml'
    res = {}
    for entry in re.split(r'^- func: ', fn.read_text(), flags=re.M)[1:]:
        res[entry[:entry.index('(')]] = (not re.search(r'^\s+device_check:\s*NoCheck', entry, re.M),
                                         bool(re.search(r'^\s+structured(_delegate)?:', entry, re.M)))
    return res

_CHECKED = _checked_ops()
_CONV = {aten.convolution.default, aten._convolution.default}

def _dev(d:str)->str: return 'cuda:0' if d == 'cuda' else d

def _method(func)->str:
    "The name the generated CUDA wrapper of `func` gives in its device check (torchgen's `RegisterDispatchKey`)"
    s = func._schema
    out = '_out' if any(a.is_out for a in s.arguments) else ''
    name, ovl, key = s.name.split('::')[-1] + out, s.overload_name, f'{s.name}.{s.overload_name}'.rstrip('.')
    if not torch._C._dispatch_has_kernel_for_dispatch_key(key, 'CUDA'):  # composite: the check is an op's it calls
        return f'wrapper_CUDA_... of an op that {key} calls; emulated GPU'
    return f"wrapper_CUDA_{name}{'_' + ovl if ovl else ''}" if _CHECKED[key.split('::')[-1]][1] else f'wrapper_CUDA_{ovl}_{name}'

def _exact_same(func, args, kwargs):
    "The generated device check of CUDA kernels: every tensor argument (0-dim CPU tensors too) on the first one's device"
    common = None
    for i, a in enumerate(func._schema.arguments):
        if a.kwarg_only and not a.is_out: continue  # the generated check skips keyword-only arguments other than `out`
        v = args[i] if i < len(args) else kwargs.get(a.name)
        for t in _tensors(v):
            d = device_of(t)
            if d is None: continue
            if common is None: common = d
            elif d != common:
                _fail(RuntimeError(f'Expected all tensors to be on the same device, but got {a.name} is on {_dev(d)}, different '
                                   f'from other tensors on {_dev(common)} (when checking argument in method {_method(func)})'))

def _type(t)->str:
    "A tensor's type as CUDA's messages name it (torch 2.11 on an H200): `torch.cuda.FloatTensor`, `torch.LongTensor`"
    name = torch.Tensor.type(t)  # the real torch's legacy name of the CPU tensor: torch.FloatTensor...
    return name.replace('torch.', 'torch.cuda.', 1) if device_of(t) == 'cuda' else name

def _conv_types(func, args, kwargs):
    "`_convolution` on a GPU input (cuDNN): input, weight and bias of one type, device included; on a CPU input, its kernels' checks"
    if device_of(args[0]) != 'cuda': return _exact_same(func, args, kwargs)
    for what, p in (('weight', args[1]), ('bias', args[2])):
        if p is not None and device_of(p) == 'cpu':
            _fail(RuntimeError(f'Input type ({_type(args[0])}) and {what} type ({_type(p)}) should be the same'))

def _tensor_iterator(func, args, kwargs):
    "What ops without the generated check (TensorIterator's, indexing) take: CPU tensors of dimension 0, CPU indices"
    cpu = next((t for t in _tensors(*args, *kwargs.values()) if device_of(t) == 'cpu' and t.dim()), None)
    i = _INDEXED.get(func)
    if cpu is not None and i and device_of(args[0]) == 'cuda':
        cpu = next((t for t in _tensors(*args[:i], *args[i+1:], *kwargs.values()) if device_of(t) == 'cpu' and t.dim()), None)
    if cpu is not None: _mixup(func, cpu)

def _check(func, args, kwargs):
    "Raise as CUDA does where aten op `func` mixes the GPU and the CPU"
    if func in _ANY_DEVICE: return
    if func in _CONV: return _conv_types(func, args, kwargs)
    name = func._schema.name.split('::')[-1] + (f'.{func._schema.overload_name}' if func._schema.overload_name else '')
    if _CHECKED.get(name, (False,))[0]: _exact_same(func, args, kwargs)
    else: _tensor_iterator(func, args, kwargs)

class _DeviceRules(TorchDispatchMode):
    "Raise where an aten op mixes a GPU tensor with a CPU tensor as CUDA does; outputs of GPU inputs are on the GPU"
    @classmethod
    def _should_skip_dynamo(cls): return False  # no torch.compile here: spare every op the wrapper that turns Dynamo off
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._is_torch_function_mode_enabled():  # an op run outside any torch function: keep `_DeviceApi` out of it
            with torch._C.DisableTorchFunction(): return self.__torch_dispatch__(func, types, args, kwargs)
        devs = {device_of(t) for t in _tensors(*args, *kwargs.values())}
        if 'cuda' not in devs: return func(*args, **kwargs)
        if 'cpu' in devs: _check(func, args, kwargs)
        return _mark(func(*args, **kwargs), 'cuda')

# The Python level: devices as torch and fastai ask for them
class _Move(torch.autograd.Function):
    "A copy to the other device whose gradient goes back to the first one, as with CUDA's `to`"
    @staticmethod
    def forward(ctx, t, dev, kw):
        ctx.dev = device_of(t) or 'cpu'
        return _mark(torch.Tensor.to(t, 'cpu', copy=True, **kw), dev, force=True)
    @staticmethod
    def backward(ctx, g): return _mark(g.clone(), ctx.dev, force=True), None, None

def _move(t, dev, dtype=None, non_blocking=False, copy=False, memory_format=None):
    "`t` on `dev` ('cuda' or 'cpu'): `t` itself when it is there already (and no copy is asked), else a copy"
    kw = dict(dtype=dtype, non_blocking=non_blocking, memory_format=memory_format or torch.preserve_format)
    if dev == (device_of(t) or 'cpu'): return _mark(torch.Tensor.to(t, 'cpu', copy=copy, **kw), dev)
    if t.requires_grad and torch.is_grad_enabled():
        res = _Move.apply(t, dev, kw)
        return res if type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter) else res.as_subclass(type(t))
    return _mark(torch.Tensor.to(t, 'cpu', copy=True, **kw), dev, force=True)

def _target(d)->str:
    "'cuda' or 'cpu' for a device argument; raises as CUDA does for a GPU other than the first"
    d = torch.device(d)
    if d.type == 'cuda' and d.index not in (None, 0): _fail(RuntimeError('CUDA error: invalid device ordinal (emulated GPU: one device)'))
    return d.type

def _to(t, *args, **kwargs):
    copy = kwargs.pop('copy', False)
    device, dtype, non_blocking, fmt = torch._C._nn._parse_to(*args, **kwargs)
    if args and isinstance(args[0], torch.Tensor) and device_of(args[0]) == 'cuda': device = GPU  # `to(other)`: other's device
    if device is not None and device.type not in ('cpu', 'cuda') or t.device.type != 'cpu':  # meta, mps...: torch's own answer
        return torch.Tensor.to(t, *args, copy=copy, **kwargs)
    return _move(t, _target(device) if device is not None else device_of(t) or 'cpu', dtype, non_blocking, copy, fmt)

def _host(t):
    if device_of(t) == 'cuda':
        _fail(TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."))
    return t

def _numpy(t, *, force=False): return torch.Tensor.numpy(t if force else _host(t), force=force)
def _array(t, *args, **kwargs): return torch.Tensor.__array__(_host(t), *args, **kwargs)

def _set_grad(t, g):
    if g is not None and (device_of(t) == 'cuda') != (device_of(g) == 'cuda'):
        have, want = (('cuda' if device_of(x) == 'cuda' else 'cpu') for x in (g, t))
        _fail(RuntimeError(f"attempting to assign a gradient with device type '{have}' to a tensor with device type '{want}'. "
                           'Please ensure that the gradient and the tensor are on the same device'))
    torch._C.TensorBase.grad.__set__(t, g)

# Pinned memory: a mark on the storage, as pinning is the storage's
_PINNED = '_emulated_pinned'
def _is_pinned(t, device=None)->bool: return bool(getattr(_storage(t), _PINNED, False))

def _pinned(t:torch.Tensor)->torch.Tensor:
    s = _storage(t)
    if s is not None: setattr(s, _PINNED, True)
    return t

def _pin_memory(t, device=None):
    "A pinned copy of CPU tensor `t` (`t` itself when pinned already), as on CUDA; in any thread (DataLoader pins in its own)"
    if device_of(t) == 'cuda': _fail(RuntimeError(f"cannot pin '{_type(t)}' only dense CPU tensors can be pinned"))
    return t if _is_pinned(t) else _pinned(t.clone())

_B = torch._C.TensorBase
_GETTERS = {_B.device: lambda t: GPU if device_of(t) == 'cuda' else _B.device.__get__(t),
            _B.is_cuda: lambda t: device_of(t) == 'cuda',
            _B.is_cpu: lambda t: device_of(t) != 'cuda' and _B.is_cpu.__get__(t)}
_METHODS = {_B.to: _to, _B.cuda: lambda t, device=None, non_blocking=False, **kw: _move(t, _target(device or 'cuda'), None, non_blocking, **kw),
            _B.cpu: lambda t, **kw: _move(t, 'cpu', **kw), _B.numpy: _numpy, torch.Tensor.__array__: _array,
            _B.type_as: lambda t, other: _move(t, device_of(other) or 'cpu', other.dtype),
            _B.get_device: lambda t: 0 if device_of(t) == 'cuda' else _B.get_device(t),
            _B.grad.__set__: _set_grad}

class _CudaGenerator(torch._C.Generator):
    "What `torch.Generator(device='cuda')` gives while emulated: a CPU generator that says it is on the GPU"
    device = property(lambda self: torch.device('cuda'))  # no index, as CUDA's own generator says

class _GeneratorType(type):
    "`torch.Generator` while emulated: makes `_CudaGenerator`s for the GPU, and counts every generator as one"
    def __call__(cls, device='cpu'): return _CudaGenerator() if _target(device) == 'cuda' else torch._C.Generator(device)
    def __instancecheck__(cls, o): return isinstance(o, torch._C.Generator)
    def __subclasscheck__(cls, c): return issubclass(c, torch._C.Generator)

class _Generator(metaclass=_GeneratorType): "torch.Generator, emulated"

def _check_generator(gen, dev:str):
    "CUDA's kernels take only CUDA generators, the CPU's only CPU ones (`check_generator`)"
    have = 'cuda' if isinstance(gen, _CudaGenerator) else gen.device.type
    if have in ('cpu', 'cuda') and have != dev:
        _fail(RuntimeError(f"Expected a '{dev}' device type for generator but found '{have}'"))

_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}  # their data's device, or the CPU when the data is no tensor
_MethodWrapper = type(_B.device.__get__)

class _DeviceApi(TorchFunctionMode):
    "Answer torch's device questions as if a CUDA GPU held the tensors marked 'cuda'"
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if type(func) is _MethodWrapper and func.__name__ == '__get__':  # a property: only `device` and friends change
            get = _GETTERS.get(func.__self__)
            return get(*args) if get else func(*args, **kwargs)
        special = _METHODS.get(func)
        if special: return special(*args, **kwargs)
        on_gpu = False
        for t in _tensors(*args, *kwargs.values()):  # a tensor that reaches the caller unmarked is a CPU tensor
            s = _storage(t)
            if s is None: continue
            d = getattr(s, _KEY, None)
            if d is None: setattr(s, _KEY, 'cpu')
            elif d == 'cuda': on_gpu = True
        dev = kwargs.get('device') if func is not torch._C._nn._parse_to else None  # `_parse_to` only reads its arguments
        if dev is not None:
            dev = _target(dev)
            if dev == 'cuda': kwargs['device'] = 'cpu'
            elif dev != 'cpu': return func(*args, **kwargs)  # mps, meta...: torch's own answer
        elif func in _FROM_DATA and args and not isinstance(args[0], torch.Tensor): dev = 'cpu'
        gen = kwargs.get('generator')
        if isinstance(gen, torch._C.Generator): _check_generator(gen, dev or ('cuda' if on_gpu else 'cpu'))
        pin = kwargs.get('pin_memory')
        if pin:  # `torch.empty(..., pin_memory=True)`: pinned CPU memory, as with CUDA
            if dev == 'cuda': _fail(RuntimeError('Only dense CPU tensors can be pinned'))
            kwargs['pin_memory'] = False
        out = func(*args, **kwargs)
        if pin: _pinned(out)
        if dev is None: return _mark(out, 'cuda') if on_gpu else out
        if isinstance(out, torch.Tensor):  # a factory: the device it was asked for, never an input's storage
            if any(_storage(out) is _storage(t) for t in _tensors(*args)): out = _pinned(out.clone()) if pin else out.clone()
            _mark(out, dev, force=True)
        return out

# torch.cuda, torch.save and torch.load
def _name(device=None)->str:
    if device is not None: _target(device)
    return NAME

def _set_device(device): _target(device)

_STREAM = SimpleNamespace(is_capturing=lambda: False, synchronize=lambda: None, query=lambda: True)
_PATCHES = {torch.cuda: dict(is_available=lambda: True, device_count=lambda: 1, current_device=lambda: 0, set_device=_set_device,
                             get_device_name=_name, get_device_capability=lambda device=None: (8, 0), is_bf16_supported=lambda *a, **k: False,
                             get_device_properties=lambda device=None: SimpleNamespace(name=_name(device), major=8, minor=0,
                                                                                       total_memory=16*2**30, multi_processor_count=1),
                             synchronize=lambda device=None: None, empty_cache=lambda: None, memory_allocated=lambda device=None: 0,
                             max_memory_allocated=lambda device=None: 0, reset_peak_memory_stats=lambda device=None: None,
                             get_rng_state_all=lambda: [], set_rng_state_all=lambda states: None,
                             current_stream=lambda device=None: _STREAM, is_current_stream_capturing=lambda: False),
            torch.accelerator: dict(current_device_index=lambda: 0, set_device_index=_set_device, current_stream=lambda device=None: _STREAM,
                                    synchronize=lambda device=None: None),  # the rest of torch.accelerator asks torch.cuda
            torch.Tensor: dict(pin_memory=_pin_memory, is_pinned=_is_pinned),  # for every thread: DataLoader pins in its own
            torch: dict(Generator=_Generator)}

def _tag(storage):
    "torch.save's location of a storage on the emulated GPU"
    s = getattr(storage, '_untyped_storage', storage)
    return 'cuda:0' if _state and getattr(s, _KEY, None) == 'cuda' else None

def _restore(storage, location:str):
    "torch.load's storage for location `cuda...`: the CPU storage, marked as on the GPU"
    if not (_state and location.startswith('cuda')): return None
    _target(location)
    setattr(getattr(storage, '_untyped_storage', storage), _KEY, 'cuda')
    return storage

torch.serialization.register_package(1, _tag, _restore)  # before torch's own (10: cpu, 20: cuda); inert while disabled

# Switching it on and off
def is_enabled()->bool: return bool(_state)

def enable(
    log:str=None, # a file to append one JSON line to for each mix-up found (even one the caller catches)
):
    "Emulate a CUDA GPU in this thread (and the DataLoader worker processes it forks) until `disable()`"
    if _state: return
    _state.update(log=log or os.environ.get('EMULATED_GPU_LOG'), modes=[_DeviceApi(), _DeviceRules()],
                  old=[(m, k, vars(m).get(k)) for m, fs in _PATCHES.items() for k in fs])  # None: inherited (torch.Tensor's)
    for m, fs in _PATCHES.items():
        for k, f in fs.items(): setattr(m, k, f)
    for m in _state['modes']: m.__enter__()

def disable():
    "Back to the real torch"
    if not _state: return
    for m in reversed(_state['modes']): m.__exit__(None, None, None)
    for m, k, f in _state['old']:
        if f is None: delattr(m, k)
        else: setattr(m, k, f)
    _state.clear()

@contextlib.contextmanager
def emulated(log:str=None):
    "Emulate a CUDA GPU inside the `with` block"
    enable(log)
    try: yield
    finally: disable()
