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
#      configuration over HTTP, the seed pages' Lambda code over the SDK;
#   5. the root as a board over TVM's RPC: its TVM runtime (lis's own install) serves a TVM
#      RPC server, and `lis compile` on this host tunes the demo classifier on it and runs
#      the demo classifier and SSD there, compared with MXNet here (`--rpc-tracker`).
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

# The root as a board over TVM's RPC, as docs/models.md sets one up: a tracker here, the
# root's runtime-only TVM serving RPC (with the host's network: it registers on loopback),
# and `lis compile --rpc-tracker` here. The server's namespace dies with its unshare.
RPC_KEY=lis-emulated-aarch64
RPC_OUT=build/aarch64-rpc
RPC_TARGET="llvm -mtriple=aarch64-linux-gnu -mattr=+neon -mcpu=cortex-a72"
rpc_board() {
  local port tracker server rc=0
  a64_log "RPC board: lis compile here, tuned and verified on the arm64 root over TVM's RPC"
  port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  rm -rf "$RPC_OUT"; mkdir -p "$RPC_OUT"
  setsid "$VENV/bin/python" -m tvm.exec.rpc_tracker --host 127.0.0.1 --port "$port" \
    --port-end $((port + 1)) > "$RPC_OUT/tracker.log" 2>&1 &
  tracker=$!
  unshare --pid --fork --kill-child --mount-proc="$ROOT/proc" chroot "$ROOT" "${_A64_ENV[@]}" \
    TVM_USE_RUNTIME_LIB=1 "$A64_VENV/bin/python" -m tvm.exec.rpc_server --host 127.0.0.1 \
    --tracker "127.0.0.1:$port" --key "$RPC_KEY" > "$RPC_OUT/server.log" 2>&1 &
  server=$!
  local tries=0
  until "$VENV/bin/python" -m tvm.exec.query_rpc_tracker --host 127.0.0.1 --port "$port" \
      2>/dev/null | grep -q "server:$RPC_KEY"; do
    tries=$((tries + 1))
    if [ $tries -gt 60 ] || ! kill -0 "$server" 2>/dev/null; then
      a64_log "RPC board: the server never registered"; cat "$RPC_OUT/server.log"; rc=1; break
    fi
  done
  if [ $rc = 0 ]; then
    LIS_TUNING_CACHE="$RPC_OUT/cache" "$VENV/bin/lis" compile models/shapes-classifier \
      --target "$RPC_TARGET" --tune --tune-minutes 0.5 --rpc-tracker "127.0.0.1:$port" \
      --rpc-key "$RPC_KEY" -o "$RPC_OUT/shapes-classifier" || rc=1
    LIS_TUNING_CACHE="$RPC_OUT/cache" "$VENV/bin/lis" compile models/shapes-ssd/shapes-ssd \
      --preprocessing models/shapes-ssd/preprocessing.json --labels models/shapes-ssd/labels.txt \
      --target "$RPC_TARGET" --rpc-tracker "127.0.0.1:$port" --rpc-key "$RPC_KEY" \
      -o "$RPC_OUT/shapes-ssd" || rc=1
  fi
  # unshare ignores SIGTERM while its child runs; SIGKILL ends it, and --kill-child the root's
  # namespace with it. The tracker's own session holds TVM's worker process too.
  kill -KILL "$server" 2>/dev/null; kill -- -"$tracker" 2>/dev/null
  wait "$server" "$tracker" 2>/dev/null
  [ $rc = 0 ] && "$VENV/bin/python" - "$RPC_OUT" "$RPC_KEY" <<'CHECK' || rc=1
import json, sys
from pathlib import Path
out, key = Path(sys.argv[1]), sys.argv[2]
for model in ("shapes-classifier", "shapes-ssd"):
    info = json.loads((out / model / "lis-compile.json").read_text())
    board = info["verified_on_device"]
    assert board["rpc_key"] == key and board["max_abs_diff"] < 1e-3, info
    print(f"RPC board: {model} verified on the emulated board, max abs difference "
          f"{board['max_abs_diff']:.3g}")
tuning = json.loads((out / "shapes-classifier" / "lis-compile.json").read_text())["tuning"]
assert tuning["measured_on"] == f"rpc:{key}" and tuning["trials"] >= tuning["tasks"] > 0, tuning
print(f"RPC board: shapes-classifier tuned on the emulated board: {tuning['tasks']} tasks, "
      f"{tuning['trials']} trials in {tuning['seconds']} s")
CHECK
  return $rc
}

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
stage "smoke suite"
rpc_board; rpc_rc=$?
set -e
stage "RPC board"
a64_log "total $(( $(date +%s) - started )) s; suite exit status $rc; RPC board exit status $rpc_rc"
[ "$rc" = 0 ] && exit $rpc_rc
exit $rc
