#!/usr/bin/env bash
# Install convlab into .venv, then reproduce both chapters: `convlab reproduce` builds the datasets, executes the
# chapter notebooks and writes reports/ (REPORT.md, index.html, the executed notebooks and their figures).
# Arguments go to `convlab reproduce`, e.g. `--quick` or `--only fastbook13`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
exec .venv/bin/convlab reproduce "$@"
