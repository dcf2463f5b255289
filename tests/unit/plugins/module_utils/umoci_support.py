# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Differential tests against umoci: layers made with GNU tar from staged trees, unpacked by umoci,
compared with the differential target's treecmp."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import typing as t

import pytest

from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import MTIME

TREECMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'integration', 'targets',
                       'container_rootfs_differential', 'files', 'treecmp.py')

needs_umoci = pytest.mark.skipif(shutil.which('umoci') is None or os.geteuid() != 0, reason='needs umoci, as root')


def stage(directory: pathlib.Path, files: t.Dict[str, t.Any], xattrs: t.Optional[t.Dict[str, t.Dict[str, bytes]]] = None
          ) -> None:
    """Files (bytes), directories (None) and symlinks (('link', target)) below `directory`, all dated MTIME,
    with the extended attributes of `xattrs` ({path: {name: value}})."""
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        else:
            path.write_bytes(content)
    for name, values in (xattrs or {}).items():
        for key, value in values.items():
            os.setxattr(str(directory / name), key, value)
    for below, dirs, files_here in os.walk(str(directory)):
        for name in dirs + files_here:
            os.utime(os.path.join(below, name), (MTIME, MTIME), follow_symlinks=False)


def gnu_tar(staged: pathlib.Path, names: t.List[str], output: pathlib.Path) -> bytes:
    """A layer as GNU tar writes it: PAX, numeric owners, extended attributes, exactly the entries named."""
    listed = output.with_suffix('.list')
    listed.write_text(''.join(name + '\n' for name in names))
    subprocess.run(['tar', '-C', str(staged), '--format=pax', '--numeric-owner', '--owner=0', '--group=0',
                    '--xattrs', '--xattrs-include=user.*', '--no-recursion', '-T', str(listed), '-cf', str(output)],
                   check=True)
    return output.read_bytes()


def umoci_unpack(work: pathlib.Path, layer_paths: t.Sequence[pathlib.Path]) -> str:
    """The rootfs umoci unpacks from an image of these layer tars, bottom first."""
    layout, bundle = work / 'umoci-layout', work / 'umoci-bundle'
    commands = [['init', '--layout', str(layout)], ['new', '--image', '%s:t' % layout]]
    commands += [['raw', 'add-layer', '--image', '%s:t' % layout, str(path)] for path in layer_paths]
    commands.append(['unpack', '--image', '%s:t' % layout, str(bundle)])
    for argv in commands:
        subprocess.run(['umoci'] + argv, check=True, capture_output=True)
    return str(bundle / 'rootfs')


def tree_differences(ours: str, umoci: str, no_mtime: t.Sequence[str] = ()) -> t.List[str]:
    """What differs between the two trees (as the differential target compares them; not the roots'
    mtimes, nor those of the paths in `no_mtime`)."""
    spec = importlib.util.spec_from_file_location('treecmp', TREECMP)
    treecmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(treecmp)
    trees = [treecmp.scan(tree, True, set(), False) for tree in (ours, umoci)]
    for tree in trees:
        for path in no_mtime:
            del tree[path]['mtime']
    return list(treecmp.compare(*trees))
