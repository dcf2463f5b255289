#!/usr/bin/env python
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare two directory trees as a rootfs: every path's type, mode, owners, size, content hash,
link target, device numbers, extended attributes and hard-link group (and, unless told not to,
mtime). Prints each difference and exits 1 if there is any, 0 if the trees are the same.

    treecmp.py [--no-mtime | --no-root-mtime] [--exclude REL]... TREE_A TREE_B

--no-root-mtime is for images whose layers carry no entry for the root directory: its mtime is then
whatever each unpacker chose.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys

KINDS = {
    stat.S_IFREG: 'file', stat.S_IFDIR: 'dir', stat.S_IFLNK: 'symlink', stat.S_IFIFO: 'fifo',
    stat.S_IFCHR: 'char', stat.S_IFBLK: 'block', stat.S_IFSOCK: 'socket',
}
MAX_REPORTED = 200
# The random mark virt.bootstrap keeps on the root of a rootfs it made, to know it again after a
# remount: bookkeeping of the module, not content of the image.
BOOKKEEPING_XATTRS = frozenset(('trusted.virt-bootstrap.id', 'user.virt-bootstrap.id'))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def xattrs_of(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values = {}
    for name in names:
        if name in BOOKKEEPING_XATTRS:
            continue
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False).hex()
        except OSError as exc:
            values[name] = 'unreadable: %s' % exc
    return values


def scan(root, compare_mtime, excluded, compare_root_mtime=True):
    """{relative path: {field: value}} for every entry below root, and root itself as '.'."""
    entries = {}
    inodes = {}
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        dirs[:] = sorted(d for d in dirs if os.path.normpath(os.path.join(rel_dir, d)) not in excluded)
        names = [''] if rel_dir == '.' else []
        names += sorted(dirs) + sorted(f for f in files if os.path.normpath(os.path.join(rel_dir, f)) not in excluded)
        for name in names:
            path = os.path.join(directory, name) if name else directory
            rel = os.path.normpath(os.path.join(rel_dir, name))
            info = os.lstat(path)
            kind = KINDS.get(stat.S_IFMT(info.st_mode), 'unknown')
            entry = {
                'type': kind,
                'mode': '%04o' % stat.S_IMODE(info.st_mode),
                'owner': '%d:%d' % (info.st_uid, info.st_gid),
                'xattrs': xattrs_of(path),
            }
            if kind == 'file':
                entry['size'] = info.st_size
                entry['sha256'] = sha256_of(path)
                inodes.setdefault((info.st_dev, info.st_ino), []).append(rel)
            elif kind == 'symlink':
                entry['target'] = os.readlink(path)
            elif kind in ('char', 'block'):
                entry['rdev'] = '%d,%d' % (os.major(info.st_rdev), os.minor(info.st_rdev))
            if compare_mtime and kind != 'symlink' and (rel != '.' or compare_root_mtime):
                entry['mtime'] = int(info.st_mtime)
            entries[rel] = entry
    for group in inodes.values():
        names = sorted(group)
        for rel in group:
            entries[rel]['hardlinks'] = names if len(names) > 1 else []
    return entries


def compare(tree_a, tree_b):
    differences = []
    for rel in sorted(set(tree_a) | set(tree_b)):
        if rel not in tree_b:
            differences.append('%s: only in A (%s)' % (rel, tree_a[rel]['type']))
            continue
        if rel not in tree_a:
            differences.append('%s: only in B (%s)' % (rel, tree_b[rel]['type']))
            continue
        a, b = tree_a[rel], tree_b[rel]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                differences.append('%s: %s differs: A=%r B=%r' % (rel, key, a.get(key), b.get(key)))
    return differences


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--no-mtime', action='store_true', help='do not compare modification times')
    parser.add_argument('--no-root-mtime', action='store_true', help='do not compare the mtime of the roots')
    parser.add_argument('--exclude', action='append', default=[], help='a relative path to leave out (with its subtree)')
    parser.add_argument('tree_a')
    parser.add_argument('tree_b')
    args = parser.parse_args()
    for tree in (args.tree_a, args.tree_b):
        if not os.path.isdir(tree):
            parser.error('%s is not a directory' % tree)
    excluded = set(os.path.normpath(path.strip('/')) for path in args.exclude)
    tree_a = scan(args.tree_a, not args.no_mtime, excluded, not args.no_root_mtime)
    tree_b = scan(args.tree_b, not args.no_mtime, excluded, not args.no_root_mtime)
    differences = compare(tree_a, tree_b)
    for line in differences[:MAX_REPORTED]:
        print(line)
    if len(differences) > MAX_REPORTED:
        print('... and %d more differences' % (len(differences) - MAX_REPORTED))
    print('compared %d entries in A (%s) with %d in B (%s): %d differences'
          % (len(tree_a), args.tree_a, len(tree_b), args.tree_b, len(differences)))
    return 1 if differences else 0


if __name__ == '__main__':
    sys.exit(main())
