#!/usr/bin/env bash
# Installs lis and its pinned stack into a virtualenv. The Makefile and the
# Dockerfile both call this script, so a node image and a developer machine
# install exactly the same thing.
#
#   scripts/install.sh runtime   # serve only
#   scripts/install.sh compile   # + TVM for `lis compile` (make run builds the demo models)
#   scripts/install.sh dev       # + tests, training (gluoncv), benchmarks
#
# Environment: VENV (default .venv), PYTHON (default python3.11), EDITABLE (1 = pip -e).
set -euo pipefail
cd "$(dirname "$0")/.."

level=${1:-runtime}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
EDITABLE=${EDITABLE:-1}

case "$level" in
  runtime) reqs=(-r requirements.txt) ;;
  compile) reqs=(-r requirements.txt -r requirements-compile.txt) ;;
  dev) reqs=(-r requirements.txt -r requirements-compile.txt -r requirements-dev.txt) ;;
  *) echo "usage: $0 runtime|compile|dev" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)

echo "lis install ($level) into $VENV"
"${pip[@]}" install -c constraints.txt pip wheel setuptools
"${pip[@]}" install -c constraints.txt "${reqs[@]}"

if [ "$level" = dev ] && ! "$py" -c "import gluoncv" 2>/dev/null; then
  # gluoncv's wheel requires the GUI build opencv-python, which would clash
  # with opencv-python-headless (both own cv2): that requirement becomes the
  # headless build. It also requires pandas, for its gluoncv.auto package
  # only, which lis does not use; Ray Serve imports pandas in every Serve
  # process when it is installed (27 MB each, 150 MB for the demo stack), so
  # that requirement goes. Everything else is the released wheel.
  tmp=$(mktemp -d)
  "${pip[@]}" download --no-deps -d "$tmp" gluoncv==0.10.5.post0
  "$py" -m wheel unpack -d "$tmp/src" "$tmp"/gluoncv-*.whl >/dev/null
  sed -i -e 's/^Requires-Dist: opencv-python$/Requires-Dist: opencv-python-headless/' \
    -e '/^Requires-Dist: pandas$/d' "$tmp"/src/gluoncv-*/gluoncv-*.dist-info/METADATA
  mkdir -p "$tmp/out"
  "$py" -m wheel pack -d "$tmp/out" "$tmp"/src/gluoncv-* >/dev/null
  "${pip[@]}" install -c constraints.txt "$tmp"/out/gluoncv-*.whl
  rm -rf "$tmp"
fi

if [ "$EDITABLE" = 1 ]; then
  "${pip[@]}" install --no-deps -e .
else
  "${pip[@]}" install --no-deps .
fi

# The tests of `lis compile --target aarch64` link with Debian's cross linker:
# installed here where apt can (root on Debian, as CI), else those tests skip.
if [ "$level" = dev ] && ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      g++-aarch64-linux-gnu >/dev/null \
      || echo "lis install: g++-aarch64-linux-gnu could not be installed:" \
              "the aarch64 cross-compile tests will skip" >&2
  else
    echo "lis install: no aarch64-linux-gnu-g++ (Debian: apt-get install" \
         "g++-aarch64-linux-gnu): the aarch64 cross-compile tests will skip" >&2
  fi
fi

# Switch DLR's telemetry off at install time too (see deployments/_dlr.py).
"$py" -c "from deployments._dlr import disable_phone_home; disable_phone_home()"
"$py" -m pip check
echo "lis install ($level): done"
