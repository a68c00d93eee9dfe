#!/usr/bin/env bash
# Install convlab and its dev tools into .venv, then run every check CI runs, in CI's order:
# notebooks clean, library in sync with the notebooks, every notebook executed, pytest.
# Quick mode (small data, few epochs) is the default here; CONVLAB_QUICK=0 runs the notebooks at full settings.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONVLAB_QUICK="${CONVLAB_QUICK:-1}"
[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"

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
nbdev-test --timing --n-workers "${CONVLAB_TEST_WORKERS:-2}" --skip-file-re '^[1-9][0-9]_'
pytest -q -p no:cacheprovider --durations=15 tests  # --durations: the slowest tests, to see where the time goes
