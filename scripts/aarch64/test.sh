#!/usr/bin/env bash
# `make test-aarch64`: lis on an emulated aarch64 board, end to end.
#
#   1. qemu-user through binfmt_misc, and an arm64 Debian bookworm root (debootstrap);
#   2. lis installed inside from PyPI by its own installer (`scripts/install.sh runtime`),
#      as a user of a Raspberry Pi or Jetson would;
#   3. on this x86_64 host, the reference outputs: the demo models as x86 serves them
#      (MXNet, DLR) on fixed inputs, written to JSON;
#   4. inside the root, the smoke suite tests/aarch64/: `lis models build` (the committed
#      aarch64 artifacts), each runtime against x86's outputs, `lis up` with the demo
#      configuration over HTTP, the seed pages' Lambda code over the SDK.
#
# The root and its virtualenv are cached under build/aarch64/ and rebuilt only when their
# inputs change. Needs root on an x86_64 Debian 12 host, and the dev virtualenv (.venv).
# Environment: A64_DIR (default build/aarch64), VENV (default .venv), PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
A64_DIR=${A64_DIR:-$REPO/build/aarch64}
VENV=${VENV:-.venv}
ROOT=$A64_DIR/rootfs
SRC=/opt/lis/src                     # where the repository goes inside the root
REFERENCE=build/aarch64-reference    # relative to the repository, inside and out
. scripts/aarch64/rootfs.sh

[ "$(id -u)" = 0 ] || { echo "make test-aarch64 needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "make test-aarch64 runs on an x86_64 host" >&2; exit 2; }

started=$(date +%s)
stage_started=$started
stage() {  # the time each stage took, for docs/devices.md
  local now; now=$(date +%s)
  a64_log "$1 done in $((now - stage_started)) s"
  stage_started=$now
}

# The suite runs in a PID namespace of its own (a64_chroot_offline): whatever it leaves
# running, Ray's daemons included, dies with it. Only the mounts need undoing.
cleanup() { a64_raylet_binfmt_off; a64_umount "$ROOT"; }
trap cleanup EXIT

a64_binfmt
a64_rootfs "$ROOT"
stage "arm64 root"

# The repository as git sees it (tracked and untracked, not ignored), fresh each run.
copy_repo() {
  rm -rf "$ROOT$SRC"; mkdir -p "$ROOT$SRC"
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' file; do if [ -e "$file" ]; then printf '%s\0' "$file"; fi; done \
    | tar --null -T - -cf - | tar -xf - -C "$ROOT$SRC"
}
copy_repo
a64_mount "$ROOT"
a64_venv "$ROOT" "$SRC"
stage "lis installed inside"

a64_log "x86 reference outputs (this host: MXNet, DLR)"
"$VENV/bin/lis" models build
"$VENV/bin/python" -m tests.aarch64.x86_reference --out "$REFERENCE"
mkdir -p "$ROOT$SRC/build"; cp -r "$REFERENCE" "$ROOT$SRC/$REFERENCE"
stage "x86 reference"

a64_log "smoke suite inside the arm64 root (qemu-user, no network but loopback)"
a64_raylet_binfmt "$ROOT$A64_VENV/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet"
set +e
# RAY_raylet_start_wait_time_s: how long Ray looks for a starting node in its GCS
# (default 30 s; registration alone can take that long under qemu).
a64_chroot_offline "$ROOT" RAY_USAGE_STATS_ENABLED=0 TOPHUB_LOCATION=NONE \
  RAY_raylet_start_wait_time_s=120 LIS_AARCH64_REFERENCE="$REFERENCE" \
  sh -c "cd $SRC && exec $A64_VENV/bin/python -m pytest tests/aarch64 -p no:cacheprovider \
    -v -rA ${PYTEST_ARGS:-}"
rc=$?
set -e
stage "smoke suite"
a64_log "total $(( $(date +%s) - started )) s; suite exit status $rc"
exit $rc
