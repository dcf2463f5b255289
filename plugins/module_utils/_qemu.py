# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""qcow2 images mounted on the host: qemu-img, qemu-storage-daemon's FUSE export, a loop device, mount.

Everything a mount needs (the exported raw file, the daemon's pid file, the mount point) lives in
a private work directory that the caller keeps beside dest, so that what a killed run leaves
behind can be found from there and taken down by the next run (release_debris).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import threading
import time
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import _occupancy as occupancy
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, ToolError

# The Debian package that brings each program.
PACKAGES = {
    'qemu-img': 'qemu-utils',
    'qemu-storage-daemon': 'qemu-system-common',
    'mkfs.ext4': 'e2fsprogs',
    'mke2fs': 'e2fsprogs',
    'debugfs': 'e2fsprogs',
    'mkfs.xfs': 'xfsprogs',
    'losetup': 'mount',
    'mount': 'mount',
    'umount': 'mount',
    'guestfish': 'libguestfs-tools',
    'resize2fs': 'e2fsprogs',
    'xfs_growfs': 'xfsprogs',
}
FILESYSTEMS = ('ext4', 'xfs')
EXPORT_NAME = 'export.raw'
PIDFILE_NAME = 'qsd.pid'
MOUNT_NAME = 'mnt'
# Messages quote at most this much of a tool's stderr.
_STDERR_SHOWN = 600
_DAEMON_STOP_TIMEOUT = 30.0
_LOOP_SYSFS = '/sys/block'
# Also searched: an Ansible task's PATH often lacks the sbin directories where mkfs and losetup live.
SYSTEM_PATH = '/usr/sbin:/sbin:/usr/bin:/bin'


class Interrupted(BootstrapError):
    """SIGTERM arrived while an image was mounted: everything was taken down before this is raised."""


def tool(name: str) -> str:
    """The path of program `name`, or a ToolError naming the Debian package that brings it."""
    found = shutil.which(name) or (shutil.which(name, path=SYSTEM_PATH) if SYSTEM_PATH else None)
    if found is None:
        raise ToolError('%s is not installed: install the Debian package %s' % (name, PACKAGES.get(name, name)))
    return found


def run_tool(argv: t.Sequence[str], what: str) -> str:
    """Run a program to completion; its failure is a ToolError quoting its stderr. Returns stdout."""
    command = [tool(argv[0])] + list(argv[1:])
    try:
        completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, close_fds=True,
                                   env=dict(os.environ, LC_ALL='C'), check=False)
    except OSError as exc:
        raise ToolError('%s: cannot run %s: %s' % (what, argv[0], exc.strerror))
    if completed.returncode != 0:
        stderr = completed.stderr.decode('utf-8', 'replace').strip()
        raise ToolError('%s: %s failed (exit %d)%s' % (what, argv[0], completed.returncode,
                                                       ': ' + stderr[-_STDERR_SHOWN:] if stderr else ''))
    return completed.stdout.decode('utf-8', 'replace')


def create_image(path: str, size: t.Optional[int] = None, backing: t.Optional[str] = None) -> None:
    """A new qcow2 at `path`: `size` bytes, or an overlay of `backing` (a name relative to `path`'s directory)."""
    argv = ['qemu-img', 'create', '-q', '-f', 'qcow2']
    if backing is not None:
        # Relative and with its format: the chain still opens after the directory moves, and qemu never probes.
        argv += ['-b', backing, '-F', 'qcow2']
    argv.append(path)
    if size is not None:
        argv.append(str(size))
    run_tool(argv, 'creating %s' % os.path.basename(path))


def flatten_raw(raw_path: str, image_path: str) -> None:
    """A qcow2 without backing holding the raw image `raw_path`."""
    run_tool(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw_path, image_path],
             'converting %s' % os.path.basename(image_path))


def make_ext4_from(tree: str, raw_path: str, size: int) -> None:
    """A raw ext4 image of `size` bytes at `raw_path` holding the tree at `tree` (no mount, no loop device).

    mke2fs gives the root directory its own mode, owner and times: the tree's root's are set afterwards.
    """
    info = os.lstat(tree)
    # A size without a unit is KiB to mke2fs; -T default: below 512 MiB it would pick 1 KiB blocks.
    run_tool(['mke2fs', '-q', '-F', '-t', 'ext4', '-T', 'default', '-d', tree,
              '-E', 'root_owner=%d:%d' % (info.st_uid, info.st_gid), raw_path, '%dk' % (size // 1024)],
             'making a %d MiB ext4 filesystem from the tree (too small? give a larger qcow2_size)' % (size >> 20))
    commands = ['sif / mode 0%o' % info.st_mode,
                'sif / mtime @%d' % (info.st_mtime_ns // 1_000_000_000),
                # The nanoseconds, as ext4 keeps them: shifted past the two epoch bits.
                'sif / mtime_extra %d' % ((info.st_mtime_ns % 1_000_000_000) << 2)]
    work = os.path.dirname(raw_path)
    for index, name in enumerate(sorted(os.listxattr(tree, follow_symlinks=False))):
        value_path = os.path.join(work, 'xattr-%d' % index)
        with open(value_path, 'wb') as stream:
            stream.write(os.getxattr(tree, name, follow_symlinks=False))
        commands.append('ea_set -f %s / %s' % (value_path, name))
    script = os.path.join(work, 'debugfs-commands')
    with open(script, 'w', encoding='utf-8') as stream:
        stream.write('\n'.join(commands) + '\n')
    try:
        run_tool(['debugfs', '-w', '-f', script, raw_path], "setting the root directory's attributes")
    finally:
        for name in os.listdir(work):
            if name.startswith('xattr-') or name == 'debugfs-commands':
                os.unlink(os.path.join(work, name))


def require_host_mounts(filesystem: str, make_filesystem: bool = True) -> None:
    """Refuse, with what is missing, before any work: mounting images on the host needs these."""
    if filesystem not in FILESYSTEMS:
        raise BootstrapError('filesystem %r is not one of: %s' % (filesystem, ', '.join(FILESYSTEMS)))
    for name in ('qemu-img', 'qemu-storage-daemon', 'losetup', 'mount', 'umount'):
        tool(name)
    if make_filesystem:
        tool('mkfs.' + filesystem)
    if os.geteuid() != 0:
        raise ToolError('qcow2 images are mounted on the host through loop devices, which needs root (running as '
                        'uid %d); qcow2_method: appliance writes them through libguestfs instead' % os.geteuid())
    if not os.path.exists('/dev/fuse'):
        raise ToolError('no /dev/fuse here (modprobe fuse?): qemu-storage-daemon exports each image through FUSE; '
                        'qcow2_method: appliance writes them through libguestfs instead')
    if not os.path.exists('/dev/loop-control'):
        raise ToolError('no loop devices here (/dev/loop-control is missing; modprobe loop?); qcow2_method: '
                        'appliance writes the images through libguestfs instead')


def host_mounts_work(filesystem: str, probe_dir: str) -> bool:
    """Whether images can be mounted on the host: the tools, root, and a loop device that really attaches
    (a container may show /dev/loop-control and still refuse). The probe file lives in `probe_dir`, where
    release_debris finds a loop device a killed probe left."""
    try:
        require_host_mounts(filesystem)
    except ToolError:
        return False
    probe = os.path.join(probe_dir, 'loop-probe')
    with open(probe, 'xb') as stream:
        stream.truncate(1 << 20)
    try:
        device = run_tool(['losetup', '--find', '--show', '--read-only', probe], 'probing loop devices').strip()
        _detach_loop(device)
    except ToolError:
        return False
    finally:
        os.unlink(probe)
    return True


@contextlib.contextmanager
def mounted_image(image_path: str, work_dir: str, filesystem: str, make_filesystem: bool = False,
                  read_only: bool = False, grow: bool = False) -> t.Iterator[str]:
    """Mount the filesystem in qcow2 `image_path` (and its backing chain) on the host; yields the mount point.

    `work_dir` must not exist and its parent must be private: it is made 0700 and holds the export,
    the daemon's pid file and the mount point, and is removed afterwards. Whatever happens, including
    SIGTERM (raised as Interrupted), the filesystem is unmounted, the loop device detached and the
    daemon stopped before this returns or raises. `grow`: the image's disk is bigger than its filesystem,
    which is grown to fill it first.
    """
    require_host_mounts(filesystem, make_filesystem)
    with _TermGuard() as guard, contextlib.ExitStack() as undo:
        # Each step and the registration of its undo are one: a SIGTERM between them waits for both.
        with guard.deferred():
            os.mkdir(work_dir, 0o700)
            undo.push(_undo(_remove_work_dir, work_dir))
        export = os.path.join(work_dir, EXPORT_NAME)
        with guard.deferred():
            pid = _start_export(os.path.abspath(image_path), export, read_only)
            undo.push(_undo(_stop_daemon, pid, export))
        if make_filesystem:
            # On the exported file, not the loop device: mkfs then discards the whole disk and knows the
            # inode tables read as zeros, so the kernel has none left to zero later (in upper layers).
            _make_filesystem(export, filesystem)
        if grow and filesystem == 'ext4':
            # Offline, on the exported file: growing a mounted ext4 needs CAP_SYS_RESOURCE, which containers drop.
            run_tool(['resize2fs', '-f', export], 'growing the ext4 filesystem to the bigger disk')
        with guard.deferred():
            device = run_tool(['losetup', '--find', '--show'] + (['--read-only'] if read_only else []) + [export],
                              'attaching %s to a loop device' % os.path.basename(image_path)).strip()
            undo.push(_undo(_detach_loop, device))
        point = os.path.join(work_dir, MOUNT_NAME)
        os.mkdir(point, 0o700)
        options = ['nosuid', 'nodev', 'noatime'] + (['ro'] + _read_only_options(filesystem) if read_only else [])
        with guard.deferred():
            run_tool(['mount', '-t', filesystem, '-o', ','.join(options), device, point],
                     'mounting %s' % os.path.basename(image_path))
            undo.push(_undo(_unmount, point))
        undo.callback(guard.disarm)  # runs first: taking the mount down is not cut short
        if grow and filesystem == 'xfs':
            run_tool(['xfs_growfs', point], 'growing the xfs filesystem to the bigger disk')  # online only
        yield point


def _undo(action: t.Callable[..., None], *arguments: t.Any) -> t.Callable[..., bool]:
    """An exit callback for ExitStack that runs `action`; when it fails while an error is on its way out, that
    error stays the one raised, and says what the cleanup could not do."""
    def undo(_type: t.Any, error: t.Optional[BaseException], _traceback: t.Any) -> bool:
        try:
            action(*arguments)
        except (ToolError, OSError) as failure:
            if error is None:
                raise
            _note_cleanup_failure(error, failure)
        return False
    return undo


def _note_cleanup_failure(error: BaseException, failure: BaseException) -> None:
    note = 'and then cleaning up failed: %s' % failure
    if isinstance(error, BootstrapError) and error.args and isinstance(error.args[0], str):
        error.args = ('%s (%s)' % (error.args[0], note),) + error.args[1:]
    else:
        notes = getattr(error, '__notes__', None)
        setattr(error, '__notes__', (notes or []) + [note])


def _read_only_options(filesystem: str) -> t.List[str]:
    # A read-only look must never replay a journal: the loop device is read-only, and a running guest's
    # image would be corrupted.
    return ['noload'] if filesystem == 'ext4' else ['norecovery']


def _make_filesystem(export: str, filesystem: str) -> None:
    if filesystem == 'ext4':
        # -T default: below 512 MiB mke2fs would pick 1 KiB blocks and tiny inodes.
        argv = ['mkfs.ext4', '-q', '-F', '-T', 'default', export]
    else:
        argv = ['mkfs.xfs', '-q', '-f', export]
    run_tool(argv, 'making the %s filesystem' % filesystem)


def _start_export(image_path: str, export: str, read_only: bool) -> int:
    """qemu-storage-daemon exporting the qcow2 as a raw file at `export`; returns once the export is mounted."""
    with open(export, 'xb'):
        pass  # a FUSE export mounts over an existing file
    pidfile = os.path.join(os.path.dirname(export), PIDFILE_NAME)
    file_node = 'driver=file,node-name=file,filename=%s' % _qemu_option(image_path)
    format_node = 'driver=qcow2,node-name=disk,file=file'
    if read_only:
        # force-share: a guest that runs on the image holds its lock; a look must not fail for that.
        file_node += ',read-only=on'
        format_node += ',read-only=on,force-share=on'
    else:
        format_node += ',discard=unmap'
    run_tool(['qemu-storage-daemon', '--blockdev', file_node, '--blockdev', format_node,
              '--export', 'type=fuse,id=export,node-name=disk,mountpoint=%s,writable=%s'
              % (_qemu_option(export), 'off' if read_only else 'on'),
              # --daemonize changes directory to /: every path above is absolute.
              '--pidfile', pidfile, '--daemonize'],
             'exporting %s' % os.path.basename(image_path))
    with open(pidfile, encoding='ascii') as stream:
        return int(stream.read().strip())


def _qemu_option(value: str) -> str:
    """A value inside a qemu option string, where a comma is written twice."""
    return value.replace(',', ',,')


def _unmount(point: str) -> None:
    run_tool(['umount', point], 'unmounting %s' % point)


def _detach_loop(device: str) -> None:
    run_tool(['losetup', '--detach', device], 'detaching %s' % device)


def _stop_daemon(pid: int, export: str) -> None:
    """SIGTERM the daemon and wait until it is gone; then nothing is mounted at `export`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, _DAEMON_STOP_TIMEOUT):
        raise ToolError('qemu-storage-daemon (pid %d) did not stop within %d s' % (pid, _DAEMON_STOP_TIMEOUT))
    if occupancy.is_mount_point(export):
        _unmount(export)  # a daemon that died without unmounting its FUSE export


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process `pid` is gone within `timeout` seconds.

    Not kill(pid, 0): where PID 1 reaps orphans late, a zombie answers it for a while.
    """
    deadline = time.monotonic() + timeout
    while occupancy.running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _remove_work_dir(work_dir: str) -> None:
    for name in (MOUNT_NAME, EXPORT_NAME, PIDFILE_NAME):
        path = os.path.join(work_dir, name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
    os.rmdir(work_dir)


class _TermGuard:
    """While an image is mounted, SIGTERM raises (Interrupted, or whatever a handler the caller set raises),
    so the mount is taken down on the way out.

    Once taking it down has begun (disarm), a SIGTERM waits until that is done and is raised then.
    Only one SIGTERM is ever raised.
    """

    def __init__(self) -> None:
        self._armed = True
        self._pending = False
        self._raised = False
        self._previous: t.Any = None
        self._installed = False

    def __enter__(self) -> '_TermGuard':
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
        if self._pending and exc_info[0] is None:
            self._raise()

    def disarm(self) -> None:
        self._armed = False

    @contextlib.contextmanager
    def deferred(self) -> t.Iterator[None]:
        """A SIGTERM that arrives inside waits until the block is done, and is raised then (if still armed)."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = armed and not self._raised
        if self._pending and self._armed:
            self._raise()

    def _handle(self, signum: int, frame: t.Any) -> None:
        if self._armed:
            self._raise()
        self._pending = not self._raised

    def _raise(self) -> None:
        if self._raised:
            return
        self._raised = True
        self._armed = False
        self._pending = False
        if callable(self._previous):
            # The caller's own way to stop (the CLI's), now that it cannot cut a cleanup short.
            self._previous(signal.SIGTERM, None)
            return
        raise Interrupted('stopped by SIGTERM; the image being written was unmounted first')


def release_debris(directory: str) -> t.List[str]:
    """Take down what killed runs left mounted below `directory`: mounts, loop devices, daemons.

    Returns what was released, for the record. Safe to call when nothing is there.
    """
    released: t.List[str] = []
    if not os.path.isdir(directory):
        return released
    prefix = os.path.realpath(directory).rstrip('/') + '/'
    exports = []
    for point in sorted(occupancy.mounts_below(directory), key=len, reverse=True):
        if os.path.basename(point) == EXPORT_NAME:
            exports.append(point)  # FUSE exports go once their loop devices and daemons are gone
            continue
        _release(released, 'unmounted %s' % point, lambda: _unmount(point))
    for device, backing in _loop_devices():
        if backing.startswith(prefix):
            _release(released, 'detached %s' % device, lambda: _detach_loop(device))
    for pidfile in _pidfiles_below(directory):
        pid = _daemon_of(pidfile)
        if pid is not None:
            export = os.path.join(os.path.dirname(pidfile), EXPORT_NAME)
            _release(released, 'stopped qemu-storage-daemon %d' % pid, lambda: _stop_daemon(pid, export))
    for point in exports:
        if occupancy.is_mount_point(point):
            _release(released, 'unmounted %s' % point, lambda: _unmount(point))
    return released


def _release(released: t.List[str], what: str, action: t.Callable[[], None]) -> None:
    try:
        action()
    except ToolError as exc:
        raise BootstrapError('cannot take down what a killed run left: %s' % exc)
    released.append(what)


def _loop_devices() -> t.List[t.Tuple[str, str]]:
    """(device, backing file) of every attached loop device."""
    found = []
    try:
        names = os.listdir(_LOOP_SYSFS)
    except OSError:
        return found
    for name in sorted(names):
        if not name.startswith('loop'):
            continue
        try:
            with open(os.path.join(_LOOP_SYSFS, name, 'loop', 'backing_file'), encoding='utf-8',
                      errors='surrogateescape') as stream:
                found.append(('/dev/' + name, stream.read().strip()))
        except OSError:
            continue  # not attached
    return found


def _pidfiles_below(directory: str) -> t.List[str]:
    # Work directories sit right inside a build directory: no walk into a (possibly huge) tree.
    return sorted(glob.glob(os.path.join(glob.escape(directory), '*', '*', PIDFILE_NAME)))


def _daemon_of(pidfile: str) -> t.Optional[int]:
    """The live qemu-storage-daemon that wrote `pidfile`, or None (gone, or the pid is someone else's now)."""
    try:
        with open(pidfile, encoding='ascii') as stream:
            pid = int(stream.read().strip())
        with open('/proc/%d/cmdline' % pid, 'rb') as stream:
            argv = stream.read().split(b'\0')
    except (OSError, ValueError):
        return None
    if os.fsencode(pidfile) not in argv or not occupancy.running(pid):
        return None
    return pid
