# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Layers planned on the host for a libguestfs appliance, which must never resolve a path itself.

GNU tar inside the appliance follows symlinked parents, and the image is hostile. So every layer is
first applied on the host by the dir writer's own applier into a skeleton tree (the files' data
without owners, modes or xattrs): every rule of the applier holds by construction (resolution
inside the root, whiteouts, opaque directories, same-layer entries kept, refusals, limits). What it
did becomes, per layer, a list of canonical paths to remove and a sanitised tar whose names are
canonical paths (every parent a real directory), with numeric owners only, the allowed xattrs and
the directories whose mtime the layer changed given theirs back at the end.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import LayerError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Layer
from ansible_collections.virt.bootstrap.plugins.module_utils import _tar
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import (
    DEFAULT_MAX_SIZE,
    RootfsBuilder,
    _LayerScope,
    split_entry_name,
    xattr_allowed,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._tar import TarEntry, TarReader
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import DIR_CACHE_LIMIT, Parts, display_path, lstat_at

_ACL_KINDS = {'system.posix_acl_access': 'access', 'system.posix_acl_default': 'default'}
# struct posix_acl_xattr_header (le32 version 2), then entries of le16 tag, le16 perm, le32 id.
_ACL_VERSION = 2
_ACL_TAGS = {0x01: 'user:', 0x02: 'user:%d', 0x04: 'group:', 0x08: 'group:%d', 0x10: 'mask:', 0x20: 'other:'}


class Acl(t.NamedTuple):
    path: Parts
    kind: str  # 'access' or 'default', as guestfish's acl-set-file names them
    text: str


@dataclass
class LayerPlan:
    # Canonical paths to remove (rm -rf) before the tar goes in, in order; none below another.
    removals: t.List[Parts]
    tar_path: str
    # The layer's directories, to go in first when one has an ACL, and the ACLs to set on them then: the applier
    # sets a directory's ACLs as it makes it (what it makes inside inherits them), and its mode at the end.
    directories_tar_path: t.Optional[str] = None
    directory_acls: t.List[Acl] = field(default_factory=list)
    # The ACLs of the layer's other entries, to set once the tar is in (the applier sets them after the mode).
    file_acls: t.List[Acl] = field(default_factory=list)
    # (directory, xattr) that a lower layer's entry gave a directory this layer declares again without it: the
    # applier clears them (the new entry's attributes replace the old), tar would keep them. Removed first.
    stale_xattrs: t.List[t.Tuple[Parts, str]] = field(default_factory=list)


@dataclass
class _Planned:
    member: TarEntry
    # A hard link's target, resolved.
    link_target: t.Optional[Parts] = None


@dataclass
class _LayerRecord:
    emitted: t.Dict[Parts, _Planned] = field(default_factory=dict)
    removals: t.List[Parts] = field(default_factory=list)
    touched_dirs: t.Set[Parts] = field(default_factory=set)
    # Hard-link targets of this layer's links, for refusing what the appliance could not write.
    link_targets: t.Dict[Parts, Parts] = field(default_factory=dict)
    stale_xattrs: t.List[t.Tuple[Parts, str]] = field(default_factory=list)


class _PlanningScope(_LayerScope):
    """The applier's record of what a layer wrote, also told to the planner."""

    def __init__(self, on_record: t.Callable[[Parts], None]) -> None:
        super().__init__()
        self._on_record = on_record

    def record(self, parts: Parts) -> None:
        super().record(parts)
        self._on_record(parts)


class LayerPlanner(RootfsBuilder):
    """Applies layers into `skeleton` (a private directory) and plans each for the appliance (plan())."""

    def __init__(self, skeleton: str, tar_dir: str, max_size: int = DEFAULT_MAX_SIZE,
                 device_nodes: bool = False) -> None:
        self._tar_dir = tar_dir
        self._skeleton = skeleton
        self._member: t.Optional[TarEntry] = None
        self._layer = _LayerRecord()
        self._replacing_with = ''
        # Every directory of the tree, with the entry that declared it (None: made on the way to an entry).
        self.dir_members: t.Dict[Parts, t.Optional[TarEntry]] = {(): None}
        # The entry each non-directory path was last written from (what an edit of the tree must keep).
        self.file_members: t.Dict[Parts, TarEntry] = {}
        super().__init__(skeleton, max_size=max_size, device_nodes=device_nodes)

    # The applier makes a fresh scope for each layer: a fresh record with it.
    @property  # type: ignore[override]
    def _scope(self) -> _LayerScope:
        return self._planning_scope

    @_scope.setter
    def _scope(self, _value: _LayerScope) -> None:
        self._planning_scope = _PlanningScope(self._recorded)
        self._layer = _LayerRecord()

    def plan(self, layer: Layer, label: str, index: int) -> LayerPlan:
        """Apply `layer` to the skeleton; its removals and the sanitised tar to put into the image."""
        self.apply_layer(layer, label=label)
        record = self._layer
        layer_plan = LayerPlan(_outermost(record.removals), os.path.join(self._tar_dir, 'layer-%d.tar' % index),
                               stale_xattrs=record.stale_xattrs)
        for parts, planned in record.emitted.items():
            acls = layer_plan.directory_acls if planned.member.type == _tar.DIRTYPE else layer_plan.file_acls
            acls.extend(_acls_of(parts, planned.member))
        if layer_plan.directory_acls:
            layer_plan.directories_tar_path = os.path.join(self._tar_dir, 'layer-%d-directories.tar' % index)
            with _sanitised_tar(layer_plan.directories_tar_path) as tar:
                for parts, planned in record.emitted.items():
                    if planned.member.type == _tar.DIRTYPE:
                        self._add(tar, parts, planned)
        with _sanitised_tar(layer_plan.tar_path) as tar:
            if index == 0 and () not in record.emitted:
                # mkfs made the root: give it what the dir writer gives a root no entry names.
                self._add(tar, (), _Planned(_made_dir_member()))
            for parts, planned in record.emitted.items():
                if len(self._dirs) >= DIR_CACHE_LIMIT:
                    self._dirs.release()
                self._add(tar, parts, planned)
            self._add_dirs(tar, record.touched_dirs)
        return layer_plan

    def plan_edits(self, edit: t.Callable[[str], None], paths: t.Sequence[Parts], tar_path: str) -> bool:
        """Run `edit` on the skeleton's root (a dir-writer edit such as the root password); write the files of
        `paths` it changed to `tar_path`, with the owner, mode and xattrs they had. Whether it changed any."""
        before = {path: self._content(path) for path in paths}
        edit(self._skeleton)
        self._dirs.release()  # the edit may have replaced what the cached fds point at
        changed = [path for path in paths if self._content(path) not in (None, before[path])]
        if not changed:
            return False
        with _sanitised_tar(tar_path) as tar:
            for path in changed:
                resolved = t.cast(Parts, self._resolved(path))
                info = t.cast(os.stat_result, lstat_at(self._dirs.real(resolved[:-1]), resolved[-1]))
                old = self.file_members.get(resolved)
                member = TarEntry()
                if old is not None and old.isreg():
                    member.uid, member.gid, member.xattrs = old.uid, old.gid, list(old.xattrs)
                    member.mode = old.mode
                else:
                    member.mode = stat.S_IMODE(info.st_mode)  # what the edit made (a link replaced by a file)
                member.mtime_ns = info.st_mtime_ns
                self._add(tar, resolved, _Planned(member))
            # Their directories keep their times, as in the dir writer's tree.
            self._add_dirs(tar, {t.cast(Parts, self._resolved(path))[:-1] for path in changed})
        return True

    def _add_dirs(self, tar: tarfile.TarFile, touched: t.Set[Parts]) -> None:
        """Directories whose contents changed, last: tar sets their times once nothing more changes inside.

        The root always: tar in the appliance changes its mtime even when no entry is in it.
        """
        for parts in sorted(touched | {()}):
            member = self.dir_members.get(parts)
            if member is not None:
                self._add(tar, parts, _Planned(member))

    def _resolved(self, path: Parts) -> t.Optional[Parts]:
        found = self._dirs.lookup(path[:-1])
        return found[0] + (path[-1],) if found is not None else None

    def _content(self, path: Parts) -> t.Optional[bytes]:
        """What the regular file at `path` (resolved inside the root, itself never followed) holds, or None."""
        resolved = self._resolved(path)
        if resolved is None:
            return None
        info = lstat_at(self._dirs.real(resolved[:-1]), resolved[-1])
        if info is None or not stat.S_ISREG(info.st_mode):
            return None
        with self._open_file(resolved) as stream:
            return stream.read()

    # -- what the applier does, heard ------------------------------------------------------------------

    def _apply_member(self, reader: TarReader, member: TarEntry) -> None:
        self._member = member
        super()._apply_member(reader, member)

    def _apply_root_entry(self, member: TarEntry) -> None:
        super()._apply_root_entry(member)
        self._declared_dir((), member)
        self._layer.emitted.pop((), None)
        self._layer.emitted[()] = _Planned(member)

    def _recorded(self, parts: Parts) -> None:
        member = t.cast(TarEntry, self._member)
        record = self._layer
        record.emitted.pop(parts, None)  # written again: only the last one counts, at its place
        planned = _Planned(member)
        if member.type == _tar.DIRTYPE:
            self._declared_dir(parts, member)
        else:
            self.file_members[parts] = member
            if member.type == _tar.LNKTYPE:
                target = split_entry_name(member.linkname)
                found = t.cast(t.Tuple[Parts, int], self._dirs.lookup(target[:-1]))
                planned.link_target = found[0] + (target[-1],)
                record.link_targets[planned.link_target] = parts
        record.emitted[parts] = planned
        record.touched_dirs.add(parts[:-1])

    def _declared_dir(self, parts: Parts, member: TarEntry) -> None:
        """Directory `parts` has entry `member` now; what an earlier entry gave it and this one lacks goes."""
        old = self.dir_members.get(parts)
        if old is not None:
            kept = {key for key, _value in member.xattrs}
            self._layer.stale_xattrs.extend((parts, key) for key, _value in old.xattrs
                                            if xattr_allowed(key) and key not in kept)
        self.dir_members[parts] = member

    def _made_parent_dir(self, parent_fd: int, name: str, path: Parts) -> None:
        super()._made_parent_dir(parent_fd, name, path)
        self.dir_members[path] = None
        self._layer.emitted[path] = _Planned(_made_dir_member())
        self._layer.touched_dirs.add(path[:-1])

    def _replace(self, parent_fd: int, path: Parts) -> None:
        self._replacing_with = 'non-directory'
        try:
            super()._replace(parent_fd, path)
        finally:
            self._replacing_with = ''

    def _remove_at(self, parent_fd: int, path: Parts, existing: os.stat_result) -> None:
        record = self._layer
        is_dir = stat.S_ISDIR(existing.st_mode)
        conflicts = _at_or_below(record.link_targets, path, is_dir)
        if conflicts:
            target, link = conflicts[0]
            raise LayerError('hard link %s: its target %s is then replaced or removed by the same layer, which '
                             'the appliance cannot write; use qcow2_method: host-mount'
                             % (display_path(link), display_path(target)))
        record.emitted.pop(path, None)
        self.file_members.pop(path, None)
        if record.stale_xattrs:
            # Removed with it: in the appliance, the removal goes first and takes them along.
            record.stale_xattrs = [(parts, name) for parts, name in record.stale_xattrs if parts[:len(path)] != path]
        if is_dir:
            self.dir_members.pop(path, None)
            for below in self._paths_below(path):
                record.emitted.pop(below, None)
                self.dir_members.pop(below, None)
                self.file_members.pop(below, None)
        # tar replaces a non-directory by another itself (unlinking it first); anything else is removed before.
        if is_dir or self._replacing_with != 'non-directory':
            record.removals.append(path)
        record.touched_dirs.add(path[:-1])
        super()._remove_at(parent_fd, path, existing)

    def _paths_below(self, path: Parts) -> t.List[Parts]:
        """Every path below directory `path`, from the skeleton itself: as many steps as there are, not the tree's."""
        found = []
        for relative, dirs, files, _fd in os.fwalk('.', dir_fd=self._dirs.real(path)):
            base = path + tuple(part for part in relative.split('/') if part not in ('', '.'))
            found.extend(base + (name,) for name in dirs + files)
        return found

    # -- what the skeleton does not keep: the tar carries it ------------------------------------------------

    def _chown(self, change: t.Callable[[], None], uid: int, gid: int, created: bool = False) -> None:
        pass

    def _clear_xattrs(self, fd: int) -> None:
        pass

    def _set_xattrs(self, fd: int, name: t.Optional[str], member: TarEntry) -> None:
        for key, _value in member.xattrs:
            if not xattr_allowed(key):
                self.stats.skip('xattr_not_allowed')

    # -- the sanitised tar ---------------------------------------------------------------------------------

    def _add(self, tar: tarfile.TarFile, parts: Parts, planned: _Planned) -> None:
        member = planned.member
        info = tarfile.TarInfo('/'.join(parts) if parts else '.')
        info.mode = member.mode
        info.uid, info.gid = member.uid, member.gid
        info.uname = info.gname = ''  # tar in the appliance would look names up in its own /etc/passwd
        mtime = member.mtime_ns
        info.mtime = mtime // 1_000_000_000
        info.pax_headers = {'mtime': _pax_time(mtime)}
        for key, value in member.xattrs:
            # ACLs are set apart (LayerPlan): tar --acls would strip those a file inherits from its directory.
            if key not in _ACL_KINDS and xattr_allowed(key):
                info.pax_headers['SCHILY.xattr.' + key] = value.decode('utf-8', 'surrogateescape')
        if member.type == _tar.DIRTYPE:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif member.type == _tar.LNKTYPE:
            info.type = tarfile.LNKTYPE
            info.linkname = '/'.join(t.cast(Parts, planned.link_target))
            tar.addfile(info)
        elif member.type in (_tar.SYMTYPE, _tar.FIFOTYPE, _tar.CHRTYPE, _tar.BLKTYPE):
            info.type = member.type
            info.linkname = member.linkname
            info.devmajor, info.devminor = member.devmajor, member.devminor
            tar.addfile(info)
        else:
            info.type = tarfile.REGTYPE
            with self._open_file(parts) as data:
                info.size = os.fstat(data.fileno()).st_size
                tar.addfile(info, data)

    def _open_file(self, parts: Parts) -> t.BinaryIO:
        parent_fd = self._dirs.real(parts[:-1])
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(parts[-1], flags, dir_fd=parent_fd)
        except PermissionError:
            # Unprivileged, the skeleton's file has the image's mode (0000 for /etc/shadow): it is ours to read.
            os.chmod(parts[-1], 0o600, dir_fd=parent_fd, follow_symlinks=False)
            fd = os.open(parts[-1], flags, dir_fd=parent_fd)
        return os.fdopen(fd, 'rb')


def _at_or_below(links: t.Mapping[Parts, Parts], path: Parts, is_dir: bool) -> t.List[t.Tuple[Parts, Parts]]:
    if path in links:
        return [(path, links[path])]
    return [(target, link) for target, link in links.items() if is_dir and target[:len(path)] == path]


def _sanitised_tar(path: str) -> tarfile.TarFile:
    return tarfile.open(path, 'w', format=tarfile.PAX_FORMAT, encoding='utf-8', errors='surrogateescape')


def _acls_of(parts: Parts, member: TarEntry) -> t.List[Acl]:
    """The ACLs the applier would set on `member`: none on a symlink (the kernel refuses them; acl-set-file would
    follow it) or a hard link (it sets no xattrs there), a default ACL on directories only."""
    if member.type in (_tar.SYMTYPE, _tar.LNKTYPE):
        return []
    acls = []
    for key, value in member.xattrs:
        if key in _ACL_KINDS and (member.type == _tar.DIRTYPE or _ACL_KINDS[key] == 'access'):
            text = acl_text(value)
            if text is None:
                raise LayerError('entry %s has a %s xattr that is no POSIX ACL' % (display_path(parts), key))
            acls.append(Acl(parts, _ACL_KINDS[key], text))
    return acls


def acl_text(value: bytes) -> t.Optional[str]:
    """The ACL in system.posix_acl_* xattr `value` as acl_from_text() reads it, numeric ids; None if it is no ACL."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from('<I', value)[0] != _ACL_VERSION:
        return None
    records = [struct.unpack_from('<HHI', value, offset) for offset in range(4, len(value), 8)]
    if any(tag not in _ACL_TAGS for tag, _perm, _owner in records):
        return None
    entries = []
    for tag, perm, owner in records:
        qualifier = _ACL_TAGS[tag] % owner if '%d' in _ACL_TAGS[tag] else _ACL_TAGS[tag]
        entries.append('%s:%s%s%s' % (qualifier, 'r' if perm & 4 else '-', 'w' if perm & 2 else '-',
                                      'x' if perm & 1 else '-'))
    return ','.join(entries)


def _made_dir_member() -> TarEntry:
    """A directory no entry names: root's, 0755 (as the applier makes it), made now (whole seconds)."""
    member = TarEntry()
    member.type = _tar.DIRTYPE
    member.mode = 0o755
    member.mtime_ns = int(time.time()) * 1_000_000_000
    return member


def _pax_time(ns: int) -> str:
    sign = '-' if ns < 0 else ''
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    return '%s%d.%09d' % (sign, seconds, fraction)


def _outermost(paths: t.Sequence[Parts]) -> t.List[Parts]:
    """`paths` in order, without those below one already removed (rm -rf took them with it)."""
    kept: t.List[Parts] = []
    removed: t.Set[Parts] = set()
    for path in paths:
        if any(path[:depth] in removed for depth in range(len(path) + 1)):
            continue
        removed.add(path)
        kept.append(path)
    return kept
