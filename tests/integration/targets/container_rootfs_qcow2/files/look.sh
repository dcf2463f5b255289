#!/usr/bin/env bash
# A read-only look into a qcow2 image (and its backing chain), as the tests need it:
#   look.sh up IMAGE WORK   mounts the image's filesystem read-only at WORK/mnt (WORK must not exist)
#   look.sh down WORK       takes it down again (safe to call when up failed half-way, or twice)
set -euo pipefail
case $1 in
  up)
    image=$(realpath "$2") work=$3
    mkdir -m 0700 "$work"
    : > "$work/export.raw"
    # --daemonize changes directory to /: absolute paths only.
    qemu-storage-daemon --blockdev "driver=file,node-name=file,filename=$image,read-only=on" \
      --blockdev driver=qcow2,node-name=disk,file=file,read-only=on \
      --export "type=fuse,id=export,node-name=disk,mountpoint=$work/export.raw,writable=off" \
      --pidfile "$work/pid" --daemonize
    cp "$work/pid" "$work/daemon"
    losetup --find --show --read-only "$work/export.raw" > "$work/loop"
    mkdir "$work/mnt"
    mount -o ro,noload,nosuid,nodev "$(cat "$work/loop")" "$work/mnt"
    ;;
  down)
    work=$2
    [[ -d $work ]] || exit 0
    if mountpoint -q "$work/mnt"; then umount "$work/mnt"; fi
    if [[ -s $work/loop ]]; then losetup --detach "$(cat "$work/loop")" || true; fi
    if [[ -s $work/daemon ]]; then
      pid=$(cat "$work/daemon")
      kill "$pid" 2>/dev/null || true
      # Not kill -0: where PID 1 reaps late, a zombie answers it.
      while [[ -r /proc/$pid/stat ]] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$pid/stat"; do sleep 0.05; done
    fi
    if mountpoint -q "$work/export.raw"; then umount "$work/export.raw"; fi
    rm -rf "$work"
    ;;
  *) echo "usage: look.sh up IMAGE WORK | down WORK" >&2; exit 2 ;;
esac
