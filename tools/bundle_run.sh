#!/usr/bin/env bash
# run.sh of a convlab offline bundle (written by tools/bundle.py): install the bundle with no package index, check the
# packages it assumes and CUDA, then run the steps on the GPU, each step's console output and report in the output
# folder as it goes (a step stopped by --timeout leaves its log). Exit codes: 0 every step passed, 1 a step failed,
# 2 bad arguments, 3 another Python than the bundle's, 4 a package missing or of the wrong version, or the bundle does
# not import, 5 no CUDA (installed and checked, nothing run).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=python3 DIR=/tmp/convlab-install OUT=convlab-run STEPS=quick,gpu_tests,fastbook13,dlwpt08 LIMIT=0
usage() { cat <<EOF
usage: bash run.sh [--python PY] [--dir DIR] [--out OUT] [--steps S1,S2,...] [--timeout SECONDS]
  --python   the Python that has PyTorch (default: python3)
  --dir      where to install (default: /tmp/convlab-install)
  --out      logs and reports (default: ./convlab-run)
  --steps    some of: quick (convlab reproduce --quick), gpu_tests (pytest tests/test_gpu.py),
             fastbook13, dlwpt08 (convlab reproduce --only CHAPTER, the books' settings); default: all, in that order
  --timeout  seconds each step may run (default: 0, no limit)
EOF
}
bad() { echo "run.sh: $*" >&2; usage >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0;;
    --python|--dir|--out|--steps|--timeout) [ $# -ge 2 ] || bad "$1 needs a value"
      case $1 in --python) PY=$2;; --dir) DIR=$2;; --out) OUT=$2;; --steps) STEPS=$2;; --timeout) LIMIT=$2;; esac; shift 2;;
    *) bad "unknown argument $1";;
  esac
done
for s in ${STEPS//,/ }; do
  case $s in quick|gpu_tests|fastbook13|dlwpt08) ;; *) bad "unknown step $s";; esac
done
[[ $LIMIT =~ ^[0-9]+$ ]] || bad "--timeout takes whole seconds, not $LIMIT"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
say() { echo "run.sh: $*"; }

check_python() { # exit 3 unless PY is the Python the wheels are for
  local want have
  want=$("$PY" -c 'import json, sys; print(*json.load(open(sys.argv[1]))["python"].split(".")[:2], sep=".")' "$HERE/bundle.json") \
    || { say "cannot run $PY"; exit 3; }
  have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$have" = "$want" ] || { say "this bundle holds wheels for Python $want, but $PY is Python $have:" \
    "rebuild it with tools/bundle.py --python-version $have, or give --python"; exit 3; }
  say "Python $have at $("$PY" -c 'import sys; print(sys.executable)');" \
    "bundle of convlab $("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["commit"])' "$HERE/bundle.json")"
}

check_assumed() { # exit 4 naming each package the bundle assumes that is missing or of a version it does not accept
  "$PY" - "$HERE/bundle.json" <<'EOF' || exit 4
import json, sys, importlib.metadata as md
try: from packaging.specifiers import SpecifierSet
except ImportError: from pip._vendor.packaging.specifiers import SpecifierSet
need, bad = json.load(open(sys.argv[1]))['assumed'], []
for n, a in need.items():
    by = f" (needed by {', '.join(a['by'])})" if a['by'] else ''
    try: v = md.version(n)
    except md.PackageNotFoundError: bad.append(f'{n}: not installed{by}'); continue
    if not SpecifierSet(a['spec']).contains(v, prereleases=True): bad.append(f"{n}: {v} installed, {a['spec']} wanted{by}")
if bad: sys.exit(f'run.sh: this Python lacks what the bundle assumes is here:\n  ' + '\n  '.join(bad) + '\nInstall these first.')
print(f"run.sh: found {', '.join(f'{n} {md.version(n)}' for n in need)}")
EOF
}

install() { # the wheels into DIR/site and the source into DIR/src (once per bundle), then the environment that uses them
  if ! cmp -s "$HERE/bundle.json" "$DIR/site/.bundle.json"; then
    say "installing $(ls "$HERE"/wheels/*.whl | wc -l) wheels into $DIR/site"
    rm -rf "$DIR/site" "$DIR/src" && mkdir -p "$DIR/src" || exit 4
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
      --target "$DIR/site" "$HERE"/wheels/*.whl || { say "pip install failed"; exit 4; }
    tar -xzf "$HERE/src.tar.gz" -C "$DIR/src" && cp "$HERE/bundle.json" "$DIR/site/.bundle.json" || exit 4
  fi
  # convlab runs from its source, as in a checkout: its `root()`, the folder holding nbs/, is then DIR/src
  export PYTHONPATH="$DIR/src:$DIR/site${PYTHONPATH:+:$PYTHONPATH}" PATH="$DIR/site/bin:$PATH"
  # Jupyter's data: first the kernel spec written below (this Python), then the wheels' files (nbconvert's templates)
  export JUPYTER_PATH="$DIR/jupyter/share/jupyter:$DIR/site/share/jupyter" CONVLAB_DATA_MIRROR="$HERE/data"
  export FASTAI_HOME="${FASTAI_HOME:-$DIR/fastai}" MPLBACKEND=Agg PYTHONUNBUFFERED=1
  "$PY" -m ipykernel install --prefix "$DIR/jupyter" --name python3 >/dev/null 2>"$OUT/import.log" && "$PY" - 2>>"$OUT/import.log" <<'EOF' \
    || { cat "$OUT/import.log"; say "the installed bundle does not work (above): a package is missing, or one here is incompatible"; exit 4; }
import convlab, importlib, nbformat, pkgutil, sys, fastbook, nbdev.test, pytest, distributed
from nbconvert import HTMLExporter
from jupyter_client.kernelspec import get_kernel_spec
for m in pkgutil.iter_modules(convlab.__path__): importlib.import_module(f'convlab.{m.name}')
HTMLExporter().from_notebook_node(nbformat.v4.new_notebook()) # the report's HTML: nbconvert finds its templates
assert get_kernel_spec('python3').argv[0] == sys.executable, f"the notebooks' kernel is not this Python: {get_kernel_spec('python3').argv}"
EOF
}

check_cuda() { # exit 5 where torch finds no GPU
  "$PY" - <<'EOF' || exit 5
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f'run.sh: no CUDA: torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU here; installed, nothing run')
print(f'run.sh: CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda})')
EOF
}

step() { # a step's name, then its command, run in DIR/src; its console output also goes to OUT/name.log
  local name=$1 start=$SECONDS rc; shift
  say "== $name: $* (log: $OUT/$name.log)"
  (cd "$DIR/src" && timeout -k 30 "$LIMIT" "$@") 2>&1 | tee "$OUT/$name.log"; rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && say "$name stopped after --timeout $LIMIT s"
  echo "$name exit $rc, $((SECONDS - start)) s" >> "$OUT/steps.txt"; say "$name: exit $rc in $((SECONDS - start)) s"
  return "$rc"
}

run_steps() { # each of STEPS in turn; 1 if one failed
  local failed=0 s
  : > "$OUT/steps.txt"
  for s in ${STEPS//,/ }; do
    case $s in
      quick) step quick convlab reproduce --quick --out "$OUT/quick";;
      gpu_tests) step gpu_tests "$PY" -m pytest -v -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" tests/test_gpu.py;;
      *) step "$s" convlab reproduce --only "$s" --out "$OUT/$s";;
    esac || failed=1
  done
  say "steps: $(tr '\n' ';' < "$OUT/steps.txt")"
  return $failed
}

main() { check_python && check_assumed && install && check_cuda && run_steps; }
main 2>&1 | tee -a "$OUT/run.log"; exit "${PIPESTATUS[0]}"
