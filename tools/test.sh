#!/usr/bin/env bash
# Install convlab and its dev tools into .venv, then run every check CI runs, in CI's order:
# notebooks clean, library in sync with the notebooks, every notebook executed, pytest.
# Quick mode (small data, few epochs) is the default here; CONVLAB_QUICK=0 runs the notebooks at full settings.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONVLAB_QUICK="${CONVLAB_QUICK:-1}"
# More processes than cores run at once below: an OpenMP thread that waits should sleep rather than spin on a core another
# process needs (the whole command from a fresh clone, one run each on a 2-core CPU: 1,103 CPU s with this set, 1,227 without)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
[ -d .venv ] || python3 -m venv .venv
# uv installs torch's CUDA build (about 7 GB in the venv) in a fraction of pip's time: it fetches in parallel and compiles
# no bytecode, so each module is compiled when a process first imports it and cached for the next ones (a machine that sets
# PYTHONDONTWRITEBYTECODE would have every process compile torch afresh: unset here). uv does not read pip's
# configuration; where it cannot install, pip does.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/pip install -q uv && .venv/bin/uv pip install -q --python .venv/bin/python -e ".[dev]" \
  || { echo "uv could not install: pip installs instead"; .venv/bin/pip install -q -e ".[dev]"; }
export PATH="$PWD/.venv/bin:$PATH"
# what it runs on, for comparing times: they differ by 2x or more between machines (the README's test paragraph)
python -c "import os, torch; print('== on', os.cpu_count(), 'cores, torch', torch.__version__, 'with', torch.backends.cpu.get_cpu_capability())"

state() { { git diff; git status --porcelain; } | sha1sum; }
before=$(state); nbdev-clean
[ "$(state)" = "$before" ] || { echo "nbdev-clean changed files: run it and commit"; git status --short; exit 1; }
nbdev-export
[ "$(state)" = "$before" ] || { echo "nbdev-export changed files: the library is not in sync with nbs/"; git status --short; exit 1; }
# nbconvert, not nbdev-readme: nbdev 3's README command needs Quarto (`quarto render`, a separate ~100 MB install) and an nbs/nbdev.yml
jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir . --output README
[ "$(state)" = "$before" ] || { echo "README.md is not in sync with nbs/index.ipynb"; git status --short; exit 1; }

# The chapter notebooks (10_…, 20_…) are executed top to bottom by pytest instead: in quick mode on this machine's device
# by tests/test_chapters_quick.py (through `convlab reproduce`, which also judges them) and on the emulated GPU by
# tests/test_devices.py; nbdev-test would run each a third time. `nbdev-test` alone still tests every notebook.
#
# Two lanes side by side. The notebooks (nbdev-test's, then the pytest tests marked `shared`, which read the quick
# reports and emulated-GPU runs the session builds once: tests/conftest.py) keep both cores busy and go at lower
# priority; the other tests mostly wait on the processes they start, and some time them, so they go at normal priority.
# Jupyter starts each kernel in a session of its own, which Linux's autogroup scheduling (sched(7)) treats as a group as
# large as all the other processes together whatever its nice: nice lowers the lane's other processes, not its kernels.
# Each lane's pytest ends with its slowest tests (--durations).
notebooks=$(mktemp); lane=
# job control gives the lane a process group of its own: stopping this script (Ctrl-C, a failure, the end) stops all of it
# (its kernels, in sessions of their own, end with the process that started them: ipykernel watches its parent)
trap '[ -z "$lane" ] || kill -TERM -- -$lane 2>/dev/null; rm -f "$notebooks"' EXIT; trap 'exit 130' INT TERM
set -m
nice -n 10 bash -c 'set -e
  nbdev-test --timing --n-workers "${CONVLAB_TEST_WORKERS:-2}" --skip-file-re "^[1-9][0-9]_"
  pytest -q -p no:cacheprovider -m shared --durations=10 tests' > "$notebooks" 2>&1 &
lane=$!; set +m
echo "== pytest: the tests that are not marked shared (nbdev-test and the shared ones run beside them; their output follows)"
others=0; pytest -q -p no:cacheprovider -m "not shared" --durations=15 tests || others=$?
shared=0; wait $lane || shared=$?; lane=
echo "== nbdev-test of the library notebooks, then pytest -m shared"
cat "$notebooks"
[ $others -eq 0 ] && [ $shared -eq 0 ] || { echo "failed: pytest -m 'not shared' exit $others; nbdev-test/pytest -m shared exit $shared"; exit 1; }
