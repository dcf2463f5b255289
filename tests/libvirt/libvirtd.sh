#!/usr/bin/env bash
# A real libvirtd with only the LXC and network drivers, for the libvirt_lxc role's tests (test fixture).
#
#   libvirtd.sh start WORKDIR   start it (fails if another libvirtd runs); WORKDIR/libvirtd.pid, .log
#   libvirtd.sh stop WORKDIR    stop the one started there, by its PID, and wait until it is gone
#
# These machines have no systemd: libvirtd runs in the foreground of a session of its own, with a
# driver directory holding only the LXC and network drivers (with every driver it exits on the missing
# libvirt-qemu user). The host's cgroups are a hybrid whose empty cgroup2 at /sys/fs/cgroup/unified
# makes the LXC driver fail, so libvirtd gets a private mount namespace where that is unmounted.
# Guests outlive libvirtd: destroy them before stopping it.
set -euo pipefail

DRIVER_DIR_SYSTEM=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver
SOCKET=/run/libvirt/libvirt-sock
START_TIMEOUT=30

die() { printf 'libvirtd.sh: %s\n' "$*" >&2; exit 1; }

alive() {  # PID: running and not a zombie (PID 1 here may be slow to reap)
  [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat") != Z ]]
}

other_libvirtd() {
  local pid
  for pid in $(pgrep -x libvirtd || true); do
    if alive "$pid"; then echo "$pid"; return; fi
  done
}

start() {
  local workdir=$1 pid other driver
  command -v libvirtd >/dev/null || die "libvirtd not found (Debian package libvirt-daemon)"
  other=$(other_libvirtd)
  [[ -z $other ]] || die "another libvirtd (PID $other) is running; stop it first"
  mkdir -p "$workdir/drivers"
  for driver in lxc:libvirt-daemon-driver-lxc network:libvirt-daemon; do
    [[ -e $DRIVER_DIR_SYSTEM/libvirt_driver_${driver%%:*}.so ]] ||
      die "$DRIVER_DIR_SYSTEM/libvirt_driver_${driver%%:*}.so not found (Debian package ${driver#*:})"
    ln -sfn "$DRIVER_DIR_SYSTEM/libvirt_driver_${driver%%:*}.so" "$workdir/drivers/"
  done
  LIBVIRT_DRIVER_DIR=$workdir/drivers setsid unshare --mount --propagation private \
    sh -c 'if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; exec libvirtd' \
    </dev/null >"$workdir/libvirtd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$workdir/libvirtd.pid"
  for _ in $(seq $((START_TIMEOUT * 10))); do
    alive "$pid" || die "libvirtd exited at start: $(tail -n 5 "$workdir/libvirtd.log")"
    if [[ -S $SOCKET ]] && virsh -q -c lxc:///system uri >/dev/null 2>&1; then
      echo "libvirtd.sh: libvirtd running, PID $pid" >&2
      return
    fi
    sleep 0.1
  done
  kill "$pid"
  die "libvirtd did not answer within ${START_TIMEOUT}s"
}

stop() {
  local workdir=$1 pid
  [[ -e $workdir/libvirtd.pid ]] || return 0
  pid=$(cat "$workdir/libvirtd.pid")
  if alive "$pid" && [[ $(cat "/proc/$pid/comm") == libvirtd ]]; then
    kill "$pid"
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid"; fi
  fi
  rm -f "$workdir/libvirtd.pid"
}

case ${1:-} in
  start|stop) [[ $# -eq 2 ]] || die "usage: $0 start|stop WORKDIR"; "$1" "$2" ;;
  *) die "usage: $0 start|stop WORKDIR" ;;
esac
