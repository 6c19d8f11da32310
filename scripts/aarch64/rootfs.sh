#!/usr/bin/env bash
# Builds (or reuses) the arm64 Debian bookworm root the emulated suite runs in,
# and lis's Python environment inside it, installed from PyPI as a user of an
# aarch64 board would. Sourced by scripts/aarch64/test.sh; needs root.
#
# Two cached stages under $A64_DIR (build/aarch64/, gitignored), each redone
# only when its inputs change (a stamp holds the SHA-256 of the inputs):
#   rootfs/          debootstrap of bookworm arm64 + Python 3.11   (~15 min first time)
#   rootfs/opt/lis-venv   scripts/install.sh runtime (pip from PyPI)  (~10 min first time)

A64_MIRROR=${A64_MIRROR:-http://deb.debian.org/debian}
A64_SUITE=bookworm
# What the board needs from Debian: Python 3.11 and its venv, certificates for pip.
A64_PACKAGES=python3.11,python3.11-venv,python3-pip,ca-certificates,procps
A64_VENV=/opt/lis-venv

a64_log() { printf '[aarch64 %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# qemu-user runs arm64 binaries through binfmt_misc; register it if the host has not.
a64_binfmt() {
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || ! command -v debootstrap >/dev/null \
      || [ ! -x /usr/bin/qemu-aarch64-static ]; then
    a64_log "installing qemu-user-static, debootstrap, binfmt-support (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap binfmt-support
    update-binfmts --enable qemu-aarch64 || true
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 is not registered with binfmt_misc" >&2; return 1; }
}

# The registered interpreter path is looked up inside the chroot unless the
# kernel opened it at registration (flag F): put the static qemu at that path.
a64_install_qemu() {
  local root=$1 interp
  interp=$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)
  for path in /usr/bin/qemu-aarch64-static "$interp"; do
    mkdir -p "$root$(dirname "$path")"
    cp -f /usr/bin/qemu-aarch64-static "$root$path"
  done
}

a64_digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

a64_mount() {
  local root=$1
  mountpoint -q "$root/sys" || mount -t sysfs sysfs "$root/sys"
  mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
  mountpoint -q "$root/dev/pts" || mount --bind /dev/pts "$root/dev/pts"
  # Ray's object store lives in /dev/shm and wants 30 % of RAM there, else it falls
  # back to a file under /tmp: give the root its own, as large as a board's would be.
  mkdir -p "$root/dev/shm"
  mountpoint -q "$root/dev/shm" || mount -t tmpfs -o size=50% tmpfs "$root/dev/shm"
  cp -f /etc/resolv.conf "$root/etc/resolv.conf"
  a64_trust_host_cas "$root"
}

a64_umount() {
  local root=$1 m
  for m in dev/shm dev/pts dev sys proc root/.cache/pip; do
    mountpoint -q "$root/$m" && umount -l "$root/$m"
  done
  return 0
}

# Everything inside the root runs in its own PID namespace with its own /proc: it sees
# only its own processes (so `ray stop` there cannot touch the host's Ray), and when the
# command ends (or this script is stopped: --kill-child) the kernel kills whatever it
# left behind, Ray's daemons included.
_A64_ENV=(/usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
  LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt)

# Run a command inside the root as root, with a clean environment (VAR=value first).
a64_chroot() {
  local root=$1; shift
  unshare --pid --fork --kill-child --mount-proc="$root/proc" chroot "$root" "${_A64_ENV[@]}" "$@"
}

# The same, with no network but its own loopback: the suite proves lis downloads
# nothing at run time, and its port 8000 is not the host's.
a64_chroot_offline() {
  local root=$1; shift
  unshare --net --pid --fork --kill-child --mount-proc="$root/proc" \
    sh -c 'ip link set lo up && exec "$@"' sh chroot "$root" "${_A64_ENV[@]}" "$@"
}

# A host behind a TLS-inspecting proxy trusts its CA locally; the root must too,
# or pip cannot reach PyPI. A host without local CAs copies nothing.
a64_trust_host_cas() {
  local root=$1 dir=/usr/local/share/ca-certificates
  [ -n "$(ls -A "$dir" 2>/dev/null)" ] || return 0
  if ! diff -rq "$dir" "$root$dir" >/dev/null 2>&1; then
    mkdir -p "$root$dir"; cp -f "$dir"/* "$root$dir/"
    a64_chroot "$root" update-ca-certificates >/dev/null
  fi
}

a64_rootfs() {
  local root=$1 want stamp=$1/.lis-rootfs
  want=$(printf '%s\n' "$A64_SUITE" "$A64_PACKAGES" "$A64_MIRROR" | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    a64_log "arm64 root: cached ($root)"; return 0
  fi
  a64_log "arm64 root: debootstrap $A64_SUITE into $root (first stage, then the second under qemu)"
  a64_umount "$root"
  # Never delete through a mount (a bound /dev is the host's).
  if grep -q " $root/" /proc/mounts; then
    echo "$root still has mounts; unmount them before rebuilding it" >&2; return 1
  fi
  rm -rf "$root"
  debootstrap --arch=arm64 --foreign --variant=minbase --include="$A64_PACKAGES" \
    "$A64_SUITE" "$root" "$A64_MIRROR"
  a64_install_qemu "$root"
  # Its own mount namespace: the mounts debootstrap makes inside die with it.
  unshare --mount --pid --fork --mount-proc="$root/proc" \
    chroot "$root" /debootstrap/debootstrap --second-stage
  echo "$want" > "$stamp"
  a64_log "arm64 root: ready"
}

# lis's runtime install from PyPI, by its own installer, as on the board:
# `scripts/install.sh runtime` from the repository copied to $src inside the root.
# pytest (the constraints' pin) is the harness's, for the smoke suite.
a64_venv() {
  local root=$1 src=$2 want stamp=$1$A64_VENV/.lis-venv
  want=$(a64_digest "$root$src/requirements.txt" "$root$src/constraints.txt" \
    "$root$src/scripts/install.sh" "$root$src/pyproject.toml")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    a64_log "venv: cached ($A64_VENV)"; return 0
  fi
  a64_log "venv: scripts/install.sh runtime inside the arm64 root (pip, under qemu)"
  rm -rf "$root$A64_VENV"
  mkdir -p "$A64_DIR/pip-cache" "$root/root/.cache/pip"
  # pip's download cache lives outside the root, so a rebuilt root reuses it.
  mountpoint -q "$root/root/.cache/pip" || mount --bind "$A64_DIR/pip-cache" "$root/root/.cache/pip"
  a64_chroot "$root" VENV=$A64_VENV PYTHON=python3.11 EDITABLE=1 \
    sh -c "cd $src && scripts/install.sh runtime"
  a64_chroot "$root" "$A64_VENV/bin/python" -m pip --disable-pip-version-check -q install \
    -c "$src/constraints.txt" pytest
  umount "$root/root/.cache/pip"
  echo "$want" > "$stamp"
  a64_log "venv: ready"
}

# A driver joining a running Ray (`ray.init(address=...)`, as `lis up` does) finds the
# local raylet by the name in its argv[0], read from /proc. qemu-user puts its own path
# there for every emulated process, so under emulation Ray finds no raylet where a board's
# Ray would. Register qemu once more for the raylet binary alone (matched by its first
# 128 bytes: its ELF and program headers) under a path named `raylet`: the emulated
# process table then names the raylet as a board's does. Nothing else changes.
A64_RAYLET_BINFMT=lis-aarch64-raylet
A64_RAYLET_QEMU=/usr/libexec/lis-qemu/raylet

a64_raylet_binfmt() {
  local raylet=$1 magic
  a64_raylet_binfmt_off
  mkdir -p "$(dirname "$A64_RAYLET_QEMU")"
  cp -f /usr/bin/qemu-aarch64-static "$A64_RAYLET_QEMU"
  magic=$(head -c 128 "$raylet" | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g')
  # F: the kernel opens the interpreter now, so it need not exist inside the root.
  echo ":$A64_RAYLET_BINFMT:M:0:$magic::$A64_RAYLET_QEMU:F" > /proc/sys/fs/binfmt_misc/register
}

a64_raylet_binfmt_off() {
  local entry=/proc/sys/fs/binfmt_misc/$A64_RAYLET_BINFMT
  if [ -e "$entry" ]; then echo -1 > "$entry"; fi
  return 0
}
