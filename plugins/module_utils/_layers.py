# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The safe layer applier: streams image layers into a root directory, bottom layer first.

Every path resolves inside the root (rootpath.InRootDirs), as openat2(RESOLVE_IN_ROOT) does: a
symlink on the way is followed as if the root were `/`, so `lib -> usr/lib` then `lib/x` writes
`usr/lib/x`, as umoci and containerd do, and nothing can reach outside the root. The entry itself
(the last component) is never followed: it is replaced. Hard-link targets resolve the same way.
What the applier remembers by path (this layer's entries, directory metadata fixed at the end) is
keyed by the resolved path.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils import _tar
from ansible_collections.virt.bootstrap.plugins.module_utils._compression import (
    LayerData,
    LimitedReader,
    SizeBudget,
)
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import (
    BootstrapError,
    HostileLayer,
    LayerError,
    SizeLimitExceeded,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Layer, new_hasher, verify_digest
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import (
    DIR_CACHE_LIMIT,
    DIR_FLAGS,
    DISPLAY_LIMIT,
    MAX_DEPTH,
    InRootDirs,
    Parts,
    display_path,
    lstat_at,
    remove_tree_at,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._tar import MAX_HEADER_READ, TarEntry, TarReader

CAPABILITY_XATTR = 'security.capability'
_ALLOWED_XATTR_PREFIXES = ('user.',)
_ALLOWED_XATTRS = frozenset((CAPABILITY_XATTR, 'system.posix_acl_access', 'system.posix_acl_default'))
# struct vfs_ns_cap_data: le32 magic_etc (revision in the top byte), 2 x (permitted, inheritable), le32 rootid.
_CAP_REVISION_2 = 0x02
_CAP_REVISION_3 = 0x03
_CAP_V2_SIZE = 20
_CAP_V3_SIZE = 24
WHITEOUT_PREFIX = '.wh.'
OPAQUE_MARKER = '.wh..wh..opq'
AUFS_META_PREFIX = '.wh..wh.'
DEFAULT_MAX_SIZE = 64 << 30
# The tar entry types a rootfs is made of (regular files are '0', NUL in old tars, '7' contiguous and GNU
# sparse 'S'); the reader itself consumes the PAX and GNU long-name headers. tarfile would write any other
# type as a regular file: refused instead.
ENTRY_TYPES = _tar.REGULAR_TYPES | frozenset((_tar.LNKTYPE, _tar.SYMTYPE, _tar.CHRTYPE, _tar.BLKTYPE, _tar.DIRTYPE,
                                              _tar.FIFOTYPE))
# Each entry costs an inode and some memory for whiteout bookkeeping; real images hold thousands.
MAX_ENTRIES = 5_000_000
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DEFAULT_ACL = 'system.posix_acl_default'
_T = t.TypeVar('_T')
IdMapper = t.Callable[[int, int], t.Tuple[int, int]]


def split_entry_name(name: str) -> Parts:
    """Split a tar name into components, refusing any that could climb out of the root."""
    if name.startswith('/'):
        raise HostileLayer('absolute path %s in layer' % _shown(name))
    parts = tuple(part for part in name.split('/') if part not in ('', '.'))
    if '..' in parts:
        raise HostileLayer('path %s climbs out with ".."' % _shown(name))
    if len(parts) > MAX_DEPTH:
        raise HostileLayer('path %s is more than %d directories deep' % (_shown(name), MAX_DEPTH))
    return parts


def _shown(name: str) -> str:
    """A tar name for a message, quoted, and cut when a hostile one is huge."""
    return repr(name if len(name) <= DISPLAY_LIMIT else name[:DISPLAY_LIMIT] + '...')


@dataclass
class ApplyStats:
    written: int = 0
    whiteouts: int = 0
    skipped: t.Dict[str, int] = field(default_factory=dict)
    owners_not_kept: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class _DirMeta:
    mode: int
    mtime_ns: t.Optional[int]


class _DirMetas:
    """The final mode and mtime of each directory, by resolved path; a removed directory's subtree goes at once.

    An index of the names below each path (every ancestor of a path with metadata is in it) finds a
    subtree without looking at the rest of the tree.
    """

    def __init__(self, items: t.Iterable[t.Tuple[Parts, _DirMeta]] = ()) -> None:
        self._meta: t.Dict[Parts, _DirMeta] = {}
        self._names_below: t.Dict[Parts, t.Set[str]] = {}
        for parts, meta in items:
            self[parts] = meta

    def __setitem__(self, parts: Parts, meta: _DirMeta) -> None:
        if parts not in self._meta:
            for depth in range(len(parts) - 1, -1, -1):
                names = self._names_below.setdefault(parts[:depth], set())
                if parts[depth] in names:
                    break  # and so are the ones above
                names.add(parts[depth])
        self._meta[parts] = meta

    def __getitem__(self, parts: Parts) -> _DirMeta:
        return self._meta[parts]

    def __iter__(self) -> t.Iterator[Parts]:
        return iter(self._meta)

    def setdefault(self, parts: Parts, meta: _DirMeta) -> None:
        if parts not in self._meta:
            self[parts] = meta

    def items(self) -> t.ItemsView[Parts, _DirMeta]:
        return self._meta.items()

    def clear(self) -> None:
        self._meta.clear()
        self._names_below.clear()

    def remove_tree(self, path: Parts) -> None:
        """Forget `path` and every directory below it."""
        pending = [path]
        while pending:
            parts = pending.pop()
            self._meta.pop(parts, None)
            pending.extend(parts + (name,) for name in self._names_below.pop(parts, ()))
        if path:
            self._names_below.get(path[:-1], set()).discard(path[-1])


class _LayerScope:
    """What the current layer has written (by resolved path), so its own whiteouts never hide it."""

    def __init__(self) -> None:
        self.written: t.Set[Parts] = set()
        self.ancestors: t.Set[Parts] = set()
        # Where this layer replaced a lower directory by something else: whiteouts below it hide nothing.
        self.replaced_dirs: t.Set[Parts] = set()

    def record(self, parts: Parts) -> None:
        self.written.add(parts)
        for depth in range(len(parts)):
            self.ancestors.add(parts[:depth])

    def keeps(self, parts: Parts) -> bool:
        return parts in self.written or parts in self.ancestors


class RootfsBuilder:
    """Applies layers into `root` (a directory that must exist and be private to us)."""

    def __init__(self, root: str, max_size: int = DEFAULT_MAX_SIZE, id_mapper: t.Optional[IdMapper] = None,
                 progress: t.Optional[t.Callable[[int], None]] = None, device_nodes: bool = False,
                 directories: t.Optional[t.Sequence[t.Sequence[t.Any]]] = None) -> None:
        """`directories`: what directories() said after the layers already in `root`, to go on from there."""
        self._root_fd = os.open(root, DIR_FLAGS)
        # Off by default: a device node with the image's mode (say a 0666 disk) is reachable by every
        # host user who can reach the rootfs, and libvirt gives LXC guests a /dev of their own.
        self._device_nodes = device_nodes
        self._dirs = InRootDirs(self._root_fd, on_create=self._made_parent_dir)
        # The root gets 0755 unless a layer has an entry for it.
        self._dir_meta = _DirMetas([((), _DirMeta(0o755, None))])
        self._budget = SizeBudget(max_size)
        self._map_ids = id_mapper or (lambda uid, gid: (uid, gid))
        self._keep_owners = os.geteuid() == 0
        self._creator = (os.geteuid(), os.getegid())
        self._umask = _process_umask()
        # While every directory of the tree is one this builder made in this run (0700 until finish(), no
        # default ACL), a new inode gets exactly the creating process's owner and the mode it was made with
        # less the umask: chown and chmod can be left out when they would change nothing.
        self._fresh_tree = directories is None and _plain_directory(self._root_fd)
        # Under the grpid (bsdgroups) mount option a new inode takes its directory's group, whatever the creator's.
        self._creator_group_given = self._fresh_tree and self._keep_owners and _creator_group_given(self._root_fd)
        self.progress = progress
        self._scope = _LayerScope()
        self._directory_names: t.Dict[str, str] = {}
        self._entries = 0
        self.stats = ApplyStats()
        if directories is not None:
            self._dir_meta = _DirMetas((tuple(parts), _DirMeta(mode, mtime_ns)) for parts, mode, mtime_ns in directories)
            return  # the root already has what the layers below gave it
        # Like a directory no entry names, the root belongs to the (mapped) root user unless an entry says otherwise.
        root_uid, root_gid = self._map_ids(0, 0)
        self._chown(lambda: os.chown(self._root_fd, root_uid, root_gid), root_uid, root_gid)

    def directories(self) -> t.List[t.List[t.Any]]:
        """What the builder knows of the directories written so far ([parts, mode, mtime_ns or None]), as
        plain data: a later builder given it goes on where this one stopped (finish(final=False) first)."""
        return [[list(parts), meta.mode, meta.mtime_ns] for parts, meta in sorted(self._dir_meta.items())]

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self._dirs.release()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> 'RootfsBuilder':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    def apply_layer(self, layer: Layer, label: str = 'layer') -> None:
        """Read the layer blob once: verify, decompress by magic and apply entries as they come."""
        what = '%s %s' % (label, layer.digest or layer.diff_id or '')
        self._scope = _LayerScope()
        with layer.open_blob() as blob:
            try:
                with LayerData(blob, new_hasher(layer.digest) if layer.digest and not layer.reader_checks_digest else None,
                               new_hasher(layer.diff_id) if layer.diff_id else None, threaded=True) as data:
                    self._apply_tar(LimitedReader(data, self._budget), data)
                    data.drain()
            except BootstrapError as exc:
                raise type(exc)('%s: %s' % (what.strip(), exc)) from exc
        if data.blob_hasher is not None and layer.digest:
            verify_digest(data.blob_hasher, layer.digest, what.strip())
        if data.data_hasher is not None and layer.diff_id:
            verify_digest(data.data_hasher, layer.diff_id, '%s (uncompressed)' % what.strip())

    def apply_tar_stream(self, stream: t.BinaryIO) -> None:
        """Apply an already opened tar stream (any compression) as one more layer."""
        self.apply_layer(Layer(open_blob=lambda: _Unclosable(stream), digest=None, size=None, media_type='tar'))

    def finish(self, final: bool = True) -> None:
        """Give directories their final modes and mtimes, deepest first, once nothing else changes.

        Not `final` (a qcow2 chain, where each layer's image must be complete): what the directories
        should be is kept for the layers to come, and directories that already are right are not
        touched, so an upper layer's image does not copy them.
        """
        self._fresh_tree = False  # directories get their modes (setgid ones too) from here on
        for parts in sorted(self._dir_meta, key=len, reverse=True):
            meta = self._dir_meta[parts]
            if len(self._dirs) >= DIR_CACHE_LIMIT:
                self._dirs.release()
            try:
                fd = self._dirs.real(parts)
            except (OSError, LayerError):
                continue
            if not final and _dir_is(os.fstat(fd), meta):
                continue
            os.chmod(fd, meta.mode)
            if meta.mtime_ns is not None:
                os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
        if final:
            self._dir_meta.clear()
        self._dirs.release()

    def move_root(self, root: str) -> None:
        """Go on in `root`, which holds the tree written so far (the next image of a qcow2 chain).

        What was learnt of the tree (directory metadata, sizes and entries counted) carries over.
        """
        self.close()
        self._fresh_tree = False
        self._root_fd = os.open(root, DIR_FLAGS)
        self._dirs = InRootDirs(self._root_fd, on_create=self._made_parent_dir)

    # -- tar walking -----------------------------------------------------------------------------

    def _apply_tar(self, tar_stream: t.Any, raw: LayerData) -> None:
        reader = TarReader(tar_stream, max_header_read=MAX_HEADER_READ)
        for member in reader:
            try:
                self._apply_member(reader, member)
            except (ValueError, OverflowError) as exc:
                # Header values no system call takes: a NUL in a name, an owner or time out of range.
                raise LayerError('entry %s cannot be written: %s' % (_shown(member.name), exc)) from exc
            except OSError as exc:
                if exc.filename is None:
                    raise  # not about a path: the source or the disk failed, not this entry
                # The system's message would repeat the name, which a hostile layer can make huge.
                raise LayerError('entry %s cannot be written: %s' % (_shown(member.name), exc.strerror)) from exc
            if self.progress is not None:
                self.progress(raw.bytes_read)

    def _apply_member(self, reader: TarReader, member: TarEntry) -> None:
        self._entries += 1
        if self._entries > MAX_ENTRIES:
            raise SizeLimitExceeded('the layers hold more than %d entries; no real rootfs has that many' % MAX_ENTRIES)
        # Fds handed out while one entry is applied stay open until the next entry.
        if len(self._dirs) >= DIR_CACHE_LIMIT:
            self._dirs.release()
        parts = self._shared_directory_names(split_entry_name(member.name))
        if any(part.startswith(AUFS_META_PREFIX) for part in parts[:-1]):
            return  # inside aufs metadata (.wh..wh.plnk/...): never part of the rootfs
        if parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(parts)
            return
        if member.type not in ENTRY_TYPES:
            raise LayerError('entry %s has tar type %r (0x%02x), which is no kind of file a rootfs holds'
                             % (_shown(member.name), member.type.decode('latin-1'), member.type[0]))
        if not parts:
            self._apply_root_entry(member)
            return
        kind = member.type
        if kind == _tar.DIRTYPE:
            self._make_dir(parts, member)
            return
        if kind == _tar.LNKTYPE:
            self._make_hardlink(parts, member)
            return
        parent, parent_fd = self._dirs.resolve(parts[:-1], create=True)
        name = parts[-1]
        path = parent + (name,)
        mode = self._mode_at_creation(member.mode)
        if kind == _tar.SYMTYPE:
            self._create(parent_fd, path, lambda: os.symlink(member.linkname, name, dir_fd=parent_fd))
        elif kind == _tar.FIFOTYPE:
            self._create(parent_fd, path, lambda: os.mkfifo(name, 0o600 if mode is None else mode, dir_fd=parent_fd))
        elif kind in (_tar.CHRTYPE, _tar.BLKTYPE):
            if not self._device_nodes:
                self.stats.skip('device_node')
                return
            node = (0o600 if mode is None else mode) | (stat.S_IFCHR if kind == _tar.CHRTYPE else stat.S_IFBLK)
            device = os.makedev(member.devmajor, member.devminor)
            try:
                self._create(parent_fd, path, lambda: os.mknod(name, node, device, dir_fd=parent_fd))
            except PermissionError:
                self.stats.skip('device_node_not_permitted')
                return
        else:
            self._write_file(reader, member, parent_fd, path, mode)
            return
        self._set_metadata_at(parent_fd, name, member, set_mode=mode is None and kind != _tar.SYMTYPE)
        self._scope.record(path)
        self.stats.written += 1

    def _shared_directory_names(self, parts: Parts) -> Parts:
        """`parts` with its directory names shared with earlier entries': the paths the layer's scope keeps hold
        them, and one string per name instead of one per entry took a quarter of the peak memory."""
        names = self._directory_names
        return tuple([names.setdefault(part, part) for part in parts[:-1]]) + parts[-1:]

    def _apply_root_entry(self, member: TarEntry) -> None:
        if member.type != _tar.DIRTYPE:
            raise HostileLayer('the entry for the root itself (%s) is not a directory' % _shown(member.name))
        self._set_owner(self._root_fd, None, member)
        self._clear_xattrs(self._root_fd)
        self._set_xattrs(self._root_fd, None, member)
        self._dir_meta[()] = _DirMeta(member.mode, member.mtime_ns)

    # -- entry kinds -----------------------------------------------------------------------------

    def _make_dir(self, parts: Parts, member: TarEntry) -> None:
        parent, parent_fd = self._dirs.resolve(parts[:-1], create=True)
        name = parts[-1]
        path = parent + (name,)
        existing = None
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            existing = lstat_at(parent_fd, name)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                self._remove_at(parent_fd, path, existing)
                existing = None
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = self._dirs.real(path)
        self._set_owner(fd, None, member, created=existing is None)
        if existing is not None:
            # Re-declared: the entry's attributes replace the lower layer's, as in umoci.
            self._clear_xattrs(fd)
        self._set_xattrs(fd, None, member)
        self._dir_meta[path] = _DirMeta(member.mode, member.mtime_ns)
        self._scope.record(path)
        self.stats.written += 1

    def _write_file(self, reader: TarReader, member: TarEntry, parent_fd: int, path: Parts,
                    mode: t.Optional[int]) -> None:
        """A new regular file; `mode`: what to create it with when that is its final mode already."""
        name = path[-1]
        fd = self._create(parent_fd, path, lambda: os.open(name, _FILE_FLAGS, 0o600 if mode is None else mode,
                                                           dir_fd=parent_fd))
        try:
            if member.sparse is not None:
                # The holes are written out as zeros, which the stream budget never sees.
                self._budget.spend(member.size)
            for piece in reader.data(member):
                while piece:
                    piece = piece[os.write(fd, piece):]
            self._set_owner(fd, None, member, created=True)
            if mode is None:
                os.chmod(fd, member.mode)  # after chown, which clears setuid and setgid
            self._set_xattrs(fd, None, member)
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
        finally:
            os.close(fd)
        self._scope.record(path)
        self.stats.written += 1

    def _make_hardlink(self, parts: Parts, member: TarEntry) -> None:
        target = split_entry_name(member.linkname)
        if not target:
            raise HostileLayer('hard link %s points at the root' % display_path(parts))
        found = self._dirs.lookup(target[:-1])
        target_stat = lstat_at(found[1], target[-1]) if found is not None else None
        if found is None or target_stat is None:
            raise LayerError('hard link %s: target %s does not exist' % (display_path(parts), display_path(target)))
        target_path, target_fd = found[0] + (target[-1],), found[1]
        if stat.S_ISDIR(target_stat.st_mode):
            raise HostileLayer('hard link %s points at directory %s' % (display_path(parts), display_path(target)))
        parent, parent_fd = self._dirs.resolve(parts[:-1], create=True)
        path = parent + (parts[-1],)
        if target_path == path:
            return
        if target_path[:len(path)] == path:
            # Replacing `path` would remove the target (and the directory fd we hold for it) first.
            raise LayerError('hard link %s would replace the directory holding its target %s'
                             % (display_path(parts), display_path(target)))
        self._create(parent_fd, path, lambda: os.link(target[-1], parts[-1], src_dir_fd=target_fd,
                                                      dst_dir_fd=parent_fd, follow_symlinks=False))
        self._scope.record(path)
        self.stats.written += 1

    # -- whiteouts -------------------------------------------------------------------------------

    def _apply_whiteout(self, parts: Parts) -> None:
        marker = parts[-1]
        parent = parts[:-1]
        if marker != OPAQUE_MARKER and marker.startswith(AUFS_META_PREFIX):
            return  # other aufs metadata (.wh..wh.plnk, ...): never part of the rootfs
        if marker != OPAQUE_MARKER and marker[len(WHITEOUT_PREFIX):] in ('', '.', '..'):
            # '.wh...' would hide the parent directory, and at the top that is outside the root.
            raise HostileLayer('whiteout %s does not name an entry it could hide' % display_path(parts))
        found = self._whiteout_parent(parent)
        if found is None:
            return  # nothing below to hide
        resolved, parent_fd = found
        self.stats.whiteouts += 1
        if marker == OPAQUE_MARKER:
            self._prune_children(resolved)
        else:
            self._prune(parent_fd, resolved + (marker[len(WHITEOUT_PREFIX):],))

    def _whiteout_parent(self, parent: Parts) -> t.Optional[t.Tuple[Parts, int]]:
        """Where the whiteouts of directory `parent` apply, or None when there is nothing to hide.

        Missing paths and paths below files hide nothing. umoci writes a directory replaced by a
        symlink as the link, then whiteouts for the old children: those hide nothing either, rather
        than what the new link points at.
        """
        if self._scope.replaced_dirs:
            for depth in range(len(parent)):
                above = self._dirs.lookup(parent[:depth])
                if above is None or above[0] + (parent[depth],) in self._scope.replaced_dirs:
                    return None
        return self._dirs.lookup(parent)

    def _prune(self, parent_fd: int, path: Parts) -> None:
        """Remove what lower layers put at resolved `path`, keeping everything this layer wrote there."""
        existing = lstat_at(parent_fd, path[-1])
        if existing is None:
            return
        if not self._scope.keeps(path):
            self._remove_at(parent_fd, path, existing)
        elif stat.S_ISDIR(existing.st_mode):
            self._prune_children(path)

    def _prune_children(self, path: Parts) -> None:
        """Remove what lower layers put below directory `path`, walking down only what this layer keeps."""
        kept_dirs = [path]
        while kept_dirs:
            directory = kept_dirs.pop()
            dir_fd = self._dirs.real(directory)
            for name in sorted(os.listdir(dir_fd)):
                child = directory + (name,)
                existing = lstat_at(dir_fd, name)
                if existing is None:
                    continue
                if not self._scope.keeps(child):
                    self._remove_at(dir_fd, child, existing)
                elif stat.S_ISDIR(existing.st_mode):
                    kept_dirs.append(child)
            if len(self._dirs) >= DIR_CACHE_LIMIT:
                self._dirs.release()  # nothing opened before is used again: keep the fd cache small

    # -- replacing -------------------------------------------------------------------------------

    def _made_parent_dir(self, parent_fd: int, name: str, path: Parts) -> None:
        """A directory no entry named, made on the way to an entry: root's, 0755 unless an entry says otherwise."""
        self._set_owner_at(parent_fd, name, 0, 0, created=True)
        self._dir_meta.setdefault(path, _DirMeta(0o755, None))

    def _create(self, parent_fd: int, path: Parts, make: t.Callable[[], _T]) -> _T:
        """Make a new inode at resolved `path`; when something is there, replace it (never reuse it) and retry once.

        Nearly every entry is new: trying first saves an lstat that would only say so.
        """
        try:
            return make()
        except FileExistsError:
            self._replace(parent_fd, path)
            return make()

    def _mode_at_creation(self, mode: int) -> t.Optional[int]:
        """`mode` when an inode made with it gets exactly it (no special bits, nothing the umask takes), or None."""
        if self._fresh_tree and self._umask is not None and 0 <= mode <= 0o777 and not mode & self._umask:
            return mode
        return None

    def _replace(self, parent_fd: int, path: Parts) -> None:
        """Clear the way for a new inode at resolved `path` (never modify the old one in place)."""
        existing = lstat_at(parent_fd, path[-1])
        if existing is not None:
            self._remove_at(parent_fd, path, existing)
            if stat.S_ISDIR(existing.st_mode):
                self._scope.replaced_dirs.add(path)

    def _remove_at(self, parent_fd: int, path: Parts, existing: os.stat_result) -> None:
        name = path[-1]
        if stat.S_ISDIR(existing.st_mode):
            self._dirs.forget(path)
            remove_tree_at(parent_fd, name)
            self._dir_meta.remove_tree(path)
        else:
            if stat.S_ISLNK(existing.st_mode):
                self._dirs.forget(path)  # paths that went through the link resolve elsewhere now
            os.unlink(name, dir_fd=parent_fd)

    # -- metadata --------------------------------------------------------------------------------

    def _set_metadata_at(self, parent_fd: int, name: str, member: TarEntry, set_mode: bool) -> None:
        """Owner, mode (unless it was made with it or is a symlink), xattrs and mtime of a new non-file inode."""
        uid, gid = self._map_ids(member.uid, member.gid)
        self._set_owner_at(parent_fd, name, uid, gid, mapped=True, created=True)
        if set_mode:
            os.chmod(name, member.mode, dir_fd=parent_fd)
        self._set_xattrs(parent_fd, name, member)
        os.utime(name, ns=(member.mtime_ns, member.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def _set_owner(self, fd: int, name: t.Optional[str], member: TarEntry, created: bool = False) -> None:
        uid, gid = self._map_ids(member.uid, member.gid)
        if name is None:
            self._chown(lambda: os.chown(fd, uid, gid), uid, gid, created)
        else:
            self._set_owner_at(fd, name, uid, gid, mapped=True, created=created)

    def _set_owner_at(self, parent_fd: int, name: str, uid: int, gid: int, mapped: bool = False,
                      created: bool = False) -> None:
        if not mapped:
            uid, gid = self._map_ids(uid, gid)
        self._chown(lambda: os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False), uid, gid, created)

    def _chown(self, change: t.Callable[[], None], uid: int, gid: int, created: bool = False) -> None:
        """Give an inode its owner; `created`: this builder just made it, so it has the creator's unless
        a setgid directory gave it another group."""
        if not self._keep_owners:
            if (uid, gid) != self._creator:
                self.stats.owners_not_kept += 1
            return
        if created and self._fresh_tree and self._creator_group_given and (uid, gid) == self._creator:
            return
        try:
            change()
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EINVAL):
                raise
            self.stats.owners_not_kept += 1

    def _clear_xattrs(self, fd: int) -> None:
        """Remove from directory `fd` every extended attribute an image may set, and nothing else."""
        try:
            names = os.listxattr(fd)
        except OSError as exc:
            if exc.errno != errno.ENOTSUP:
                raise
            return
        for key in names:
            if not xattr_allowed(key):
                continue
            try:
                os.removexattr(fd, key)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self.stats.skip('xattr')

    def _set_xattrs(self, fd: int, name: t.Optional[str], member: TarEntry) -> None:
        for key, value in member.xattrs:
            if not xattr_allowed(key):
                self.stats.skip('xattr_not_allowed')
                continue
            if key == _DEFAULT_ACL:
                self._fresh_tree = False  # what is made below that directory gets its modes from the ACL
            if key == CAPABILITY_XATTR:
                value = shift_capability_root(value, lambda uid: self._map_ids(uid, 0)[0])
            try:
                if name is None:
                    os.setxattr(fd, key, value)
                else:
                    # No *xattrat() in Python: go through our own fd for the parent, never the name's target.
                    os.setxattr('/proc/self/fd/%d/%s' % (fd, name), key, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self.stats.skip('xattr')


class _Unclosable:
    def __init__(self, stream: t.BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def __enter__(self) -> '_Unclosable':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        pass


def shift_capability_root(value: bytes, map_uid: t.Callable[[int], int]) -> bytes:
    """File capabilities for the guest's user namespace: v3 names the uid that is root there.

    A v2 capability only counts for the host's root, so when the map moves root elsewhere it
    becomes v3 naming the mapped root; a v3 one has its root uid mapped like any owner.
    """
    if len(value) == _CAP_V2_SIZE and value[3] == _CAP_REVISION_2:
        root_uid = map_uid(0)
        if root_uid == 0:
            return value
        magic = struct.unpack_from('<I', value)[0]
        return struct.pack('<I', (magic & 0x00FFFFFF) | (_CAP_REVISION_3 << 24)) + value[4:] + \
            struct.pack('<I', root_uid)
    if len(value) == _CAP_V3_SIZE and value[3] == _CAP_REVISION_3:
        root_uid = struct.unpack_from('<I', value, _CAP_V2_SIZE)[0]
        return value[:_CAP_V2_SIZE] + struct.pack('<I', map_uid(root_uid))
    return value


def xattr_allowed(name: str) -> bool:
    """Extended attributes an image may carry into the rootfs.

    Others (trusted.*, security.selinux, security.ima, ...) would let an image label or sign files
    for the host's security modules, or for an overlay filesystem that later reads this tree.
    """
    return name.startswith(_ALLOWED_XATTR_PREFIXES) or name in _ALLOWED_XATTRS


def _process_umask() -> t.Optional[int]:
    """The umask, read without setting it (os.umask can only swap it, and the engine is a library too)."""
    try:
        with open('/proc/self/status', 'rb') as status:
            for line in status:
                if line.startswith(b'Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _creator_group_given(root_fd: int) -> bool:
    """Whether a new inode gets the creating process's group in a directory of another group, as it does unless
    the filesystem is mounted with grpid or bsdgroups (also set as a default in an ext4 superblock, where
    /proc/self/mountinfo does not show it): found by trying, in a directory made and removed for it."""
    probe = '.virt-bootstrap-group-probe-%d' % os.getpid()
    creator_gid = os.getegid()
    try:
        os.mkdir(probe, 0o700, dir_fd=root_fd)
    except OSError:
        return False
    try:
        os.chown(probe, -1, creator_gid + 1 if creator_gid < 65534 else 1, dir_fd=root_fd, follow_symlinks=False)
        probe_fd = os.open(probe, DIR_FLAGS, dir_fd=root_fd)
        try:
            os.mkdir('made', 0o700, dir_fd=probe_fd)
            made_gid = os.stat('made', dir_fd=probe_fd, follow_symlinks=False).st_gid
        finally:
            os.close(probe_fd)
    except OSError:
        return False  # no other group to try (a user namespace): give every inode its group
    finally:
        remove_tree_at(root_fd, probe)
    return made_gid == creator_gid


def _plain_directory(fd: int) -> bool:
    """Whether what is made in directory `fd` gets the creator's group and the umask's modes (no setgid, no
    default ACL)."""
    if os.fstat(fd).st_mode & stat.S_ISGID:
        return False
    try:
        os.getxattr(fd, _DEFAULT_ACL)
    except OSError as exc:
        return exc.errno in (errno.ENODATA, errno.ENOTSUP)
    return False


def _dir_is(info: os.stat_result, meta: _DirMeta) -> bool:
    return stat.S_IMODE(info.st_mode) == stat.S_IMODE(meta.mode) and \
        (meta.mtime_ns is None or info.st_mtime_ns == meta.mtime_ns)
