# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The qcow2 chain written through one libguestfs appliance, for hosts without root or loop devices.

The layers are planned on the host first (qcow2_plan: canonical removals and a sanitised tar per
layer) while the appliance boots. Then one working raw disk, made by mkfs on the host, takes the
layers one by one (rm -rf, tar-in); after each, the appliance unmounts and syncs, and the host turns
the disk into that layer's image: layer 0 a copy, each later one an overlay holding only the
clusters that differ from the image below (qemu-img rebase of an overlay of the disk).
"""

from __future__ import annotations

import contextlib
import os
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils import _qemu as qemu
from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._guestfish import ApplianceError, Session
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Image
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import ApplyStats
from ansible_collections.virt.bootstrap.plugins.module_utils._progress import Progress
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import Parts, remove_tree
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.qcow2_plan import Acl, LayerPlan, LayerPlanner

DEVICE = '/dev/sda'
# No acls:true: tar would strip the ACLs files inherit from their directory; ACLs are set with acl-set-file.
TAR_IN_OPTIONS = ('xattrs:true',)
# How the appliance's tools say the disk is full (GNU tar's short write only says how short).
_FULL_SIGNS = ('No space left on device', 'Wrote only')
# The files an edit of the finished tree may change (the root password, virt-builder's fstab).
EDITED_FILES: t.Tuple[Parts, ...] = (('etc', 'shadow'), ('etc', 'fstab'))


class Planned(t.NamedTuple):
    layers: t.List[LayerPlan]
    # The sanitised tar of the guest overlay's edits, or None when they change nothing.
    edits: t.Optional[str]
    stats: ApplyStats
    image_root_field: t.Optional[str]


def write_chain(image: Image, images_dir: str, names: t.Sequence[str], work_dir: str, size: int, filesystem: str,
                max_size: int, progress: Progress, device_nodes: bool, root_hash: t.Optional[str],
                size_given: bool = False) -> t.Tuple[ApplyStats, t.Optional[str]]:
    """Write `names` (one image per layer, then the guest's overlay) into `images_dir` with one appliance launch.

    `work_dir` must not exist (its parent is private); it holds the skeleton, the tars and the working
    disk, and is removed afterwards. Returns the applier's stats and the image's own root entry.
    """
    program = qemu.tool('guestfish')
    qemu.tool('qemu-img')
    qemu.tool('mkfs.' + filesystem)
    os.mkdir(work_dir, 0o700)
    try:
        disk = os.path.join(work_dir, 'disk.raw')
        _make_working_disk(disk, size, filesystem)
        with Session(program, work_dir) as fish:
            fish.send('add', disk, options=['format:raw'])
            fish.send('run')
            planned = _plan(image, work_dir, max_size, progress, device_nodes, root_hash)  # while it boots
            progress.status('Waiting for the libguestfs appliance')
            fish.wait('launching the libguestfs appliance')
            with _full_is_clear(size, filesystem, size_given):
                _write_images(fish, planned, disk, images_dir, names, size, progress)
    finally:
        remove_tree(work_dir)
    return planned.stats, planned.image_root_field


def _write_images(fish: Session, planned: Planned, disk: str, images_dir: str, names: t.Sequence[str], size: int,
                  progress: Progress) -> None:
    """Every layer into the working disk in turn, each then made into its image; the guest overlay last."""
    count = len(planned.layers)
    for index, plan in enumerate(planned.layers):
        progress.status('Writing layer %d/%d in the appliance' % (index + 1, count))
        fish.send('mount', DEVICE, '/')
        for path in plan.removals:
            fish.send('rm-rf', '/' + '/'.join(path))
        for path, name in plan.stale_xattrs:
            fish.send('lremovexattr', name, '/' + '/'.join(path))
        if plan.directories_tar_path is not None:
            fish.send('tar-in', plan.directories_tar_path, '/', options=TAR_IN_OPTIONS)
        _set_acls(fish, plan.directory_acls)
        fish.send('tar-in', plan.tar_path, '/', options=TAR_IN_OPTIONS)
        _set_acls(fish, plan.file_acls)
        _snapshot(fish, disk, images_dir, names, index, size, 'layer %d/%d' % (index + 1, count))
        os.unlink(plan.tar_path)
    if planned.edits is not None:
        progress.status('Writing the guest overlay in the appliance')
        fish.send('mount', DEVICE, '/')
        fish.send('tar-in', planned.edits, '/', options=TAR_IN_OPTIONS)
        _snapshot(fish, disk, images_dir, names, count, size, 'the guest overlay')
    else:
        qemu.create_image(os.path.join(images_dir, names[-1]), backing=names[-2])


@contextlib.contextmanager
def _full_is_clear(size: int, filesystem: str, size_given: bool) -> t.Iterator[None]:
    """A filesystem that fills up in the appliance says which size was too small."""
    try:
        yield
    except ApplianceError as exc:  # not the host's own tools: a full host disk is the engine's to report
        if not any(sign in str(exc) for sign in _FULL_SIGNS):
            raise
        raise BootstrapError('the %s filesystem (%d MiB, %s) is full; give a larger qcow2_size'
                             % (filesystem, size >> 20, 'qcow2_size' if size_given else 'sized from the image')) \
            from exc


def _plan(image: Image, work_dir: str, max_size: int, progress: Progress, device_nodes: bool,
          root_hash: t.Optional[str]) -> Planned:
    """Every layer planned on the host, and the guest overlay's edits; the skeleton is gone afterwards."""
    skeleton = os.path.join(work_dir, 'tree')
    os.mkdir(skeleton, 0o700)
    count = len(image.layers)
    progress.start_layers([layer.size for layer in image.layers])
    planner = LayerPlanner(skeleton, work_dir, max_size=max_size, device_nodes=device_nodes)
    try:
        layers = []
        for index, layer in enumerate(image.layers):
            planner.progress = progress.layer(index, count, layer.size)
            layers.append(planner.plan(layer, 'layer %d/%d' % (index + 1, count), index))
        image_root_field = shadow.read_root_hash(skeleton)
        edits: t.Optional[str] = os.path.join(work_dir, 'guest.tar')

        def edit(root: str) -> None:
            if image.finish_tree is not None:  # the source's own edits (virt-builder: fstab), never in a layer
                image.finish_tree(root)
            if root_hash is not None:
                shadow.set_root_hash(root, root_hash)

        if not planner.plan_edits(edit, EDITED_FILES, t.cast(str, edits)):
            edits = None
        return Planned(layers, edits, planner.stats, image_root_field)
    finally:
        planner.close()
        remove_tree(skeleton)


def _set_acls(fish: Session, acls: t.Sequence[Acl]) -> None:
    for acl in acls:
        fish.send('acl-set-file', '/' + '/'.join(acl.path), acl.kind, acl.text)


def _make_working_disk(disk: str, size: int, filesystem: str) -> None:
    """A sparse raw disk with the filesystem on all of it, made on the host (no appliance, no root)."""
    with open(disk, 'xb') as stream:
        stream.truncate(size)
    if filesystem == 'ext4':
        # Inode tables and journal zeroed now: lazy init would write them later, into an upper layer's image.
        # The root directory is root's, whoever runs mkfs.
        argv = ['mkfs.ext4', '-q', '-F', '-T', 'default', '-E', 'lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0',
                disk]
    else:
        argv = ['mkfs.xfs', '-q', '-f', disk]
    qemu.run_tool(argv, 'making the %s filesystem' % filesystem)


def _snapshot(fish: Session, disk: str, images_dir: str, names: t.Sequence[str], index: int, size: int,
              what: str) -> None:
    """Image `index` from the working disk as it is now; the disk is left unmounted in the appliance."""
    fish.send('umount', '/')
    fish.send('sync')
    fish.wait('writing %s' % what)
    path = os.path.join(images_dir, names[index])
    if index == 0:
        # -U: the appliance holds the disk's lock, and has flushed all of it.
        qemu.run_tool(['qemu-img', 'convert', '-q', '-U', '-f', 'raw', '-O', 'qcow2', disk, path],
                      'writing %s' % os.path.basename(path))
        return
    part = os.path.join(images_dir, '.%s.part' % names[index])
    try:
        # An overlay of the disk, then moved onto the image below: only the clusters that differ are copied in.
        qemu.run_tool(['qemu-img', 'create', '-q', '-u', '-f', 'qcow2', '-b', os.path.abspath(disk), '-F', 'raw',
                       part, str(size)], 'writing %s' % os.path.basename(path))
        qemu.run_tool(['qemu-img', 'rebase', '-q', '-U', '-f', 'qcow2', '-b', names[index - 1], '-F', 'qcow2', part],
                      'writing %s' % os.path.basename(path))
        os.rename(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


# -- the root entry of a guest overlay already written -------------------------------------------------------------


def read_root_hash(image_path: str, work_dir: str) -> t.Optional[str]:
    """The root hash in /etc/shadow of qcow2 `image_path` (and its chain), read through a read-only appliance;
    None when it cannot be read safely. `work_dir` must not exist (its parent is private)."""
    with _appliance(image_path, work_dir, read_only=True) as fish:
        try:
            content, _info = _shadow_of(fish, work_dir)
        except shadow.ShadowError:
            return None
    return shadow.root_hash(content)


def set_root_hash(image_path: str, work_dir: str, new_hash: str) -> None:
    """Give root `new_hash` in /etc/shadow of qcow2 `image_path`, as shadow.set_root_hash does in a tree: a new
    file with the old one's owner, mode and times, and /etc's times kept. Never through a symlink."""
    with _appliance(image_path, work_dir, read_only=False) as fish:
        content, info = _shadow_of(fish, work_dir)
        etc_info = _lstat(fish, '/etc')
        new_path = os.path.join(work_dir, 'shadow.new')
        with open(new_path, 'wb') as stream:
            stream.write(shadow.with_root_hash(content, new_hash))
        temporary = '/etc/.virt-bootstrap-shadow'
        fish.send('rm-rf', temporary)  # never written through a link the image put there
        fish.send('upload', new_path, temporary)
        fish.send('lchown', str(info['st_uid']), str(info['st_gid']), temporary)
        fish.send('chmod', '0%o' % (info['st_mode'] & 0o7777), temporary)
        fish.send('utimens', temporary, *[str(info[key]) for key in _TIMES])
        fish.send('mv', temporary, '/etc/shadow')
        fish.send('utimens', '/etc', *[str(etc_info[key]) for key in _TIMES])
        fish.send('umount-all')
        fish.wait('setting the root password in %s' % os.path.basename(image_path))


_TIMES = ('st_atime_sec', 'st_atime_nsec', 'st_mtime_sec', 'st_mtime_nsec')


@contextlib.contextmanager
def _appliance(image_path: str, work_dir: str, read_only: bool) -> t.Iterator[Session]:
    """One appliance with the filesystem of `image_path` mounted at /."""
    program = qemu.tool('guestfish')
    os.mkdir(work_dir, 0o700)
    try:
        with Session(program, work_dir) as fish:
            fish.send('add', image_path, options=['format:qcow2'] + (['readonly:true'] if read_only else []))
            fish.send('run')
            fish.send('mount-ro' if read_only else 'mount', DEVICE, '/')
            fish.wait('launching the libguestfs appliance for %s' % os.path.basename(image_path))
            yield fish
    finally:
        remove_tree(work_dir)


def _shadow_of(fish: Session, work_dir: str) -> t.Tuple[bytes, t.Dict[str, int]]:
    """(content, lstat) of /etc/shadow, which must be a regular file in a real /etc (the appliance would
    follow a link in its own root, not the image's)."""
    fish.send('is-symlink', '/etc')
    fish.send('is-dir', '/etc')
    fish.send('is-file', '/etc/shadow')
    etc_is_link, etc_is_dir, is_file = fish.wait('looking at /etc/shadow')
    if etc_is_link == 'true':
        raise shadow.ShadowError('/etc of the image is a symlink, which the libguestfs appliance cannot follow inside '
                                 'the image; use qcow2_method: host-mount')
    if etc_is_dir != 'true' or is_file != 'true':
        raise shadow.ShadowError('the rootfs has no /etc/shadow (a regular file) to set the root password in')
    info = _lstat(fish, '/etc/shadow')
    if info['st_size'] > shadow.MAX_SHADOW_SIZE:
        raise shadow.ShadowError('/etc/shadow of the rootfs is %d bytes, more than any real one' % info['st_size'])
    copy = os.path.join(work_dir, 'shadow')
    fish.send('download', '/etc/shadow', copy)
    fish.wait('reading /etc/shadow')
    with open(copy, 'rb') as stream:
        content = stream.read()
    if shadow.root_hash(content) is None:
        raise shadow.ShadowError('/etc/shadow of the rootfs has no root entry')
    return content, info


def _lstat(fish: Session, path: str) -> t.Dict[str, int]:
    fish.send('lstatns', path)
    info = {}
    for line in fish.wait('looking at %s' % path):
        key, _sep, value = line.partition(':')
        info[key.strip()] = int(value)
    return info
