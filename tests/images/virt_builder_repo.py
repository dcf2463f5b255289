# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A local virt-builder repository for the tests, made from a test rootfs (busybox, debootstrap) without an appliance.

    python3 virt_builder_repo.py OUTDIR ROOTFS [REVISION]     prints the index URL

Two templates: vb-flat (one unpartitioned ext4 filesystem, expand=/dev/sda) and vb-parts (a
partitioned disk: /boot/efi vfat, /boot ext4, a swap partition and / ext4, each made in place with
mkfs at an offset, no loop device). The disks are cached in OUTDIR/templates-KEY (KEY hashes this
script and the rootfs listing), so reruns cost nothing; the index (OUTDIR/index-rREVISION) is
cheap and written for each revision asked for.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t

MIB = 1 << 20
SECTOR = 512
# (fstab mount point, filesystem, size in MiB); the order is the partition order. '/' is sized from the rootfs.
SMALL_PARTITIONS = (('/boot/efi', 'vfat', 16), ('/boot', 'ext4', 16), ('none', 'swap', 8))
MIN_ROOT_MIB = 64
BOOT_FILE = 'vb-boot-file'
EFI_FILE = 'EFI/vb/vb-efi-file'
DEV_FILE = 'vb-template-dev-file'
NESTED_DEV_FILE = 'usr/share/dev/vb-keep'
TEMPLATES = ('vb-flat', 'vb-parts')


def _run(*argv: str, **kwargs: t.Any) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kwargs)


def _cache_key(rootfs: str) -> str:
    hasher = hashlib.sha256()
    with open(os.path.abspath(__file__), 'rb') as script:
        hasher.update(script.read())
    for directory, dirs, files in os.walk(rootfs):
        dirs.sort()
        for name in sorted(files + dirs):
            info = os.lstat(os.path.join(directory, name))
            hasher.update(('%s/%s %o %d %d %d\n' % (directory, name, info.st_mode, info.st_uid, info.st_size,
                                                    info.st_mtime)).encode('utf-8', 'surrogateescape'))
    return hasher.hexdigest()[:16]


def root_size_mib(rootfs: str) -> int:
    """Room for the rootfs in ext4 made by mke2fs -d: its blocks, inodes and a margin (at least 64 MiB)."""
    blocks = entries = 0
    for directory, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            entries += 1
            blocks += -(-os.lstat(os.path.join(directory, name)).st_size // 4096)
    return max(MIN_ROOT_MIB, int((blocks * 4096 * 1.25 + entries * 512) / MIB) + 32)


def partitions(rootfs: str) -> t.Tuple[t.Tuple[str, str, int], ...]:
    return SMALL_PARTITIONS + (('/', 'ext4', root_size_mib(rootfs)),)


def _staged_root(rootfs: str, work: str, partitions: t.Sequence[t.Tuple[str, str, int]]) -> str:
    """A copy of the rootfs (owners, xattrs, capabilities kept) with an fstab for `partitions`."""
    root = os.path.join(work, 'root')
    _run('cp', '-a', rootfs, root)
    os.makedirs(os.path.join(root, 'boot'), exist_ok=True)
    # What the template's /dev holds is never written; a directory named dev deeper down is.
    os.makedirs(os.path.join(root, 'dev'), exist_ok=True)
    with open(os.path.join(root, 'dev', DEV_FILE), 'w', encoding='utf-8') as dev_file:
        dev_file.write('in the template\'s /dev\n')
    os.makedirs(os.path.join(root, 'usr', 'share', 'dev'), exist_ok=True)
    with open(os.path.join(root, NESTED_DEV_FILE), 'w', encoding='utf-8') as nested:
        nested.write('in a directory named dev, not /dev\n')
    lines = ['# <fs> <mountpoint> <type> <opts> <dump> <pass>']
    for number, (mount_point, fs_type, _size) in enumerate(partitions, 1):
        options = 'sw' if fs_type == 'swap' else 'defaults'
        device = '/dev/sda' if len(partitions) == 1 else '/dev/sda%d' % number  # one filesystem: the whole disk
        lines.append('%s %s %s %s 0 %d' % (device, mount_point, fs_type, options, 1 if mount_point == '/' else 2))
    with open(os.path.join(root, 'etc', 'fstab'), 'w', encoding='utf-8') as fstab:
        fstab.write('\n'.join(lines) + '\n')
    return root


def make_flat(rootfs: str, disk: str, work: str) -> None:
    size = root_size_mib(rootfs)
    root = _staged_root(rootfs, work, (('/', 'ext4', size),))
    with open(disk, 'wb') as image:
        image.truncate(size * MIB)
    _run('mkfs.ext4', '-q', '-F', '-d', root, disk)
    shutil.rmtree(root)


def make_partitioned(rootfs: str, disk: str, work: str) -> None:
    layout = partitions(rootfs)
    root = _staged_root(rootfs, work, layout)
    boot = os.path.join(work, 'boot')
    os.makedirs(os.path.join(boot, 'efi'))  # the mount point of /boot/efi lives on the /boot filesystem
    with open(os.path.join(boot, BOOT_FILE), 'w', encoding='utf-8') as boot_file:
        boot_file.write('on the /boot filesystem\n')
    efi = os.path.join(work, 'efi')
    os.makedirs(os.path.join(efi, os.path.dirname(EFI_FILE)))
    with open(os.path.join(efi, EFI_FILE), 'w', encoding='utf-8') as efi_file:
        efi_file.write('on the /boot/efi filesystem\n')
    starts = []
    start = 1
    for _mount_point, _fs_type, size in layout:
        starts.append(start)
        start += size
    with open(disk, 'wb') as image:
        image.truncate((start + 1) * MIB)
    types = {'vfat': 'U', 'ext4': 'L', 'swap': 'S'}
    table = 'label: gpt\n' + ''.join('start=%dMiB, size=%dMiB, type=%s\n' % (first, size, types[fs_type])
                                     for first, (_mp, fs_type, size) in zip(starts, layout))
    _run('sfdisk', '-q', disk, input=table.encode())
    content = {'/': root, '/boot': boot}
    for first, (mount_point, fs_type, size) in zip(starts, layout):
        offset = first * MIB
        if fs_type == 'ext4':
            _run('mkfs.ext4', '-q', '-F', '-E', 'offset=%d' % offset, '-d', content[mount_point], disk,
                 '%dk' % (size * 1024))
        elif fs_type == 'vfat':
            # Quiet: it warns that the image holds more than this filesystem, as it should.
            _run('mkfs.vfat', '--offset=%d' % (offset // SECTOR), disk, str(size * 1024), stderr=subprocess.DEVNULL)
            _run('mcopy', '-s', '-i', '%s@@%d' % (disk, offset), os.path.join(efi, 'EFI'), '::')
        else:
            swap = os.path.join(work, 'swap')
            with open(swap, 'wb') as swap_file:
                swap_file.truncate(size * MIB)
            _run('mkswap', '-q', swap)
            _run('dd', 'if=' + swap, 'of=' + disk, 'bs=1M', 'seek=%d' % first, 'conv=notrunc,sparse', 'status=none')


def _templates(out_dir: str, rootfs: str) -> str:
    """The directory of compressed template disks, made once per script version and rootfs."""
    templates = os.path.join(out_dir, 'templates-' + _cache_key(rootfs))
    if os.path.isdir(templates):
        return templates
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(dir=out_dir, prefix='.work-')
    try:
        built = os.path.join(work, 'templates')
        os.mkdir(built)
        make_flat(rootfs, os.path.join(built, 'vb-flat.raw'), work)
        make_partitioned(rootfs, os.path.join(built, 'vb-parts.raw'), work)
        for name in TEMPLATES:
            _run('xz', '-0', '-T0', os.path.join(built, name + '.raw'))
        os.rename(built, templates)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in os.listdir(out_dir):  # made from an older script or rootfs
        if name.startswith('templates-') and name != os.path.basename(templates):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    return templates


def _sha512(path: str) -> str:
    hasher = hashlib.sha512()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(MIB), b''):
            hasher.update(chunk)
    return hasher.hexdigest()


def _virtual_size(compressed: str) -> int:
    listing = subprocess.run(['xz', '--robot', '--list', compressed], check=True, stdout=subprocess.PIPE,
                             text=True).stdout
    return int(next(line for line in listing.splitlines() if line.startswith('file\t')).split('\t')[4])


def write_index(out_dir: str, templates: str, revision: int) -> str:
    """An index for both templates at `revision` (no blank line inside a section: virt-builder's parser)."""
    sections = []
    for name, expand in (('vb-flat', '/dev/sda'), ('vb-parts', '/dev/sda%d' % (len(SMALL_PARTITIONS) + 1))):
        compressed = os.path.join(templates, name + '.raw.xz')
        sections.append('\n'.join((
            '[%s]' % name,
            'name=virt.bootstrap test template %s' % name,
            'osinfo=linux',
            'arch=x86_64',
            'file=%s' % os.path.relpath(compressed, out_dir),
            'checksum[sha512]=%s' % _sha512(compressed),
            'format=raw',
            'size=%d' % _virtual_size(compressed),
            'compressed_size=%d' % os.path.getsize(compressed),
            'expand=%s' % expand,
            'revision=%d' % revision,
            'notes=made by tests/images/virt_builder_repo.py',
        )))
    index = os.path.join(out_dir, 'index-r%d' % revision)
    temporary = index + '.tmp'
    with open(temporary, 'w', encoding='utf-8') as stream:
        stream.write('\n\n'.join(sections) + '\n')
    os.replace(temporary, index)
    return index


def repository(out_dir: str, rootfs: str, revision: int = 1) -> str:
    """The file:// URL of a repository index holding both templates at `revision`."""
    return 'file://' + write_index(out_dir, _templates(out_dir, rootfs), revision)


def main(argv: t.List[str]) -> int:
    if len(argv) not in (3, 4):
        sys.stderr.write(__doc__.split('\n\n')[1] + '\n')
        return 2
    print(repository(os.path.abspath(argv[1]), argv[2], int(argv[3]) if len(argv) == 4 else 1))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
