"""On a machine with a CUDA GPU: every notebook runs in quick mode on it, `convlab reproduce --quick` names it in its report,
and the emulated GPU's rules (`emulated_gpu`, `test_emulated_gpu.py`) are CUDA's. Without CUDA every test here is skipped."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch
from emulated_gpu import is_enabled
from test_emulated_gpu import ALLOWED, MIXUPS, correct_device_code, torch_internals

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def _cmd(name:str)->str: # a console script: beside this Python (a venv), else on PATH (an install with --target, as the bundle's)
    return str(BIN/name) if (BIN/name).exists() else shutil.which(name) or name

def _no_cuda()->str: # why these tests cannot run here, or '' when they can
    if torch.cuda.is_available(): return ''
    return f'no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU here'

NO_CUDA = _no_cuda()
pytestmark = pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)

@pytest.fixture
def quick_env(monkeypatch):
    "Quick mode, with the data mirror the notebooks need; the real torch (no emulation left on)"
    if not os.environ.get('CONVLAB_DATA_MIRROR'): pytest.skip('CONVLAB_DATA_MIRROR is not set: the notebooks need their data')
    assert not is_enabled(), 'the emulated GPU is still on in this process'
    monkeypatch.setenv('CONVLAB_QUICK', '1')
    monkeypatch.delenv('CONVLAB_RESULTS', raising=False)

def _run(args, timeout)->subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

def test_notebooks_run_on_the_gpu(quick_env):
    "`nbdev-test` over every notebook, in quick mode, where fastai's default device is the GPU"
    res = _run([_cmd('nbdev-test'), '--timing', '--do-print'], timeout=3600)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-10000:]

def test_reproduce_names_the_gpu(quick_env, tmp_path):
    "`convlab reproduce --quick` passes, its report names the GPU, and every recorded row trained on it"
    name, out = torch.cuda.get_device_name(0), tmp_path/'report'
    res = _run([_cmd('convlab'), 'reproduce', '--quick', '--out', str(out)], timeout=3600)
    report = (out/'REPORT.md').read_text() if (out/'REPORT.md').exists() else ''
    assert name in report, f'{name!r} not in REPORT.md:\n{report}\n{res.stdout[-3000:]}{res.stderr[-3000:]}'
    rows = json.loads((out/'results.json').read_text())
    assert rows and all(name in r['device'] for r in rows if 'device' in r), {r.get('device') for r in rows}
    assert res.returncode == 0, report + res.stdout[-3000:] + res.stderr[-3000:]

# The emulation's rules, checked against the real thing: what it takes for correct code runs on CUDA, what it calls a mix-up
# fails on CUDA with the same exception.
def test_correct_device_code_runs_on_cuda(tmp_path):
    correct_device_code(tmp_path)
    torch_internals()

@pytest.mark.parametrize('mixup,exc,msg', MIXUPS, ids=[m[0].__name__[1:] for m in MIXUPS])
def test_mixup_raises_on_cuda(mixup, exc, msg, tmp_path):
    if mixup.__name__ == '_second_gpu' and torch.cuda.device_count() > 1: pytest.skip('this machine has a second GPU')
    with pytest.raises(exc, match=msg): mixup(tmp_path)

@pytest.mark.parametrize('case', ALLOWED, ids=[c.__name__[1:] for c in ALLOWED])
def test_allowed_on_cuda(case):
    case()
