# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real pull from the local registry over an existing rootfs, SIGKILLed at each of its steps.

After each kill, dest is exactly the old tree or exactly the new one; the next run succeeds and leaves no
debris, and the cache holds only verified blobs (a killed download's partial file included).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.plugins.module_utils import _state as state
from ansible_collections.virt.bootstrap.plugins.module_utils._destination import Destination
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import RootfsBuilder
from ansible_collections.virt.bootstrap.plugins.module_utils._registry.client import RegistryClient
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, Result, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.tests.registry import push as pusher
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    OciLayoutBuilder,
    make_tar,
    snapshot_tree,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    unique_name,
    unverified_cache_files,
)

SHADOW = b'root:*:19000:0:99999:7:::\nbin:*:19000::::::\n'
OLD = [{'etc': None, 'etc/shadow': SHADOW, 'etc/os-release': b'ID=old\n'}]
NEW = [{'etc': None, 'etc/shadow': SHADOW, 'etc/os-release': b'ID=new\n'},
       {'usr': None, 'usr/lib': None, 'usr/lib/big.bin': os.urandom(3 << 20)},
       {'srv': None, **{'srv/file-%03d' % number: b'%d\n' % number for number in range(200)}}]
PASSWORD = 'killed-pull-root-password'


_PUSHED: t.Dict[str, t.Dict[str, str]] = {}


@pytest.fixture
def images(tmp_path_factory, http_registry):
    """NAME:old and NAME:new in the shared plain-HTTP registry (pushed once); their refs."""
    registry = http_registry.registry
    if registry.host in _PUSHED:
        return _PUSHED[registry.host]
    layout = str(tmp_path_factory.mktemp('killed-layout'))
    builder = OciLayoutBuilder(layout)
    builder.write_index([(builder.image([make_tar(layer) for layer in OLD]), 'old'),
                         (builder.image([make_tar(layer) for layer in NEW]), 'new')])
    name = unique_name('killed')
    refs = {}
    for tag in ('old', 'new'):
        pusher.push('oci:%s:%s' % (layout, tag), registry.host, '%s:%s' % (name, tag), registry.auth_file)
        refs[tag] = registry.ref('%s:%s' % (name, tag))
    _PUSHED[registry.host] = refs
    return refs


class Site:
    def __init__(self, top: str, images: t.Dict[str, str]) -> None:
        self.images = images
        self.dest = os.path.join(top, 'hosts', 'rootfs')
        self.meta = os.path.join(top, 'hosts', '.rootfs.virt-bootstrap')
        self.cache = os.path.join(top, 'cache')
        os.makedirs(os.path.dirname(self.dest))

    def request(self, tag: str) -> Request:
        return Request(src=self.images[tag], dest=self.dest, root_password=PASSWORD,
                       registry=RegistryOptions(not_secure=True, cache_dir=self.cache))

    def pull(self, tag: str) -> Result:
        return run(self.request(tag))

    def os_release(self) -> bytes:
        with open(os.path.join(self.dest, 'etc', 'os-release'), 'rb') as stream:
            return stream.read()


@pytest.fixture
def site(tmp_path, images) -> Site:
    return Site(str(tmp_path), images)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _downloading(patch: pytest.MonkeyPatch) -> None:
    """Killed with the big layer part-way into its partial file."""
    real_download = RegistryClient.download_blob

    def download(client, digest, write, offset=0, cancelled=lambda: False):
        written = [0]

        def write_then_die(chunk: bytes) -> None:
            write(chunk)
            written[0] += len(chunk)
            if written[0] > 1 << 20:
                _kill_self()
        return real_download(client, digest, write_then_die, offset, cancelled)
    patch.setattr(RegistryClient, 'download_blob', download)


def _applying(patch: pytest.MonkeyPatch) -> None:
    """Killed in the middle of the last layer's entries."""
    real_apply = RootfsBuilder._apply_member
    applied = [0]

    def apply_member(builder, tar, member):
        applied[0] += 1
        if applied[0] == 100:
            _kill_self()
        return real_apply(builder, tar, member)
    patch.setattr(RootfsBuilder, '_apply_member', apply_member)


def _renaming(patch: pytest.MonkeyPatch, target: str) -> None:
    """Killed with a file written beside `target` and not yet renamed over it."""
    real_rename, real_replace = os.rename, os.replace

    def rename_or_die(function):
        def rename(source, destination, *args, **kwargs):
            if os.path.basename(os.fspath(destination)) == target:
                _kill_self()
            return function(source, destination, *args, **kwargs)
        return rename
    patch.setattr(os, 'rename', rename_or_die(real_rename))
    patch.setattr(os, 'replace', rename_or_die(real_replace))


def _after_swap(patch: pytest.MonkeyPatch) -> None:
    real_swap = Destination.swap_in

    def swap_then_die(destination, new_root):
        real_swap(destination, new_root)
        _kill_self()
    patch.setattr(Destination, 'swap_in', swap_then_die)


KILL_POINTS: t.Dict[str, t.Callable[[pytest.MonkeyPatch], None]] = {
    'downloading a layer': _downloading,
    'applying entries': _applying,
    'editing the root password': lambda patch: _renaming(patch, 'shadow'),
    'writing the pending record': lambda patch: _renaming(patch, 'pending.json'),
    'swapping the new tree in': _after_swap,
    'promoting the record': lambda patch: _renaming(patch, 'state.json'),
}


def _killed_pull(site: Site, point: str) -> t.Optional[int]:
    def child() -> None:
        with pytest.MonkeyPatch.context() as patch:
            KILL_POINTS[point](patch)
            run(site.request('new'))
        os._exit(0)  # reached only when the kill point was never passed

    process = multiprocessing.get_context('fork').Process(target=child)
    process.start()
    process.join(120)
    return process.exitcode


@pytest.mark.parametrize('point', list(KILL_POINTS))
def test_a_pull_killed_at_any_step_leaves_the_old_tree_or_the_new_one(site: Site, point: str) -> None:
    site.pull('old')
    old_tree = snapshot_tree(site.dest)
    assert _killed_pull(site, point) == -signal.SIGKILL
    assert site.os_release() in (b'ID=old\n', b'ID=new\n')
    holds_new = site.os_release() == b'ID=new\n'
    if not holds_new:
        assert snapshot_tree(site.dest) == old_tree
    assert holds_new is (point in ('swapping the new tree in', 'promoting the record'))
    again = site.pull('new')
    assert again.changed is not holds_new
    assert site.os_release() == b'ID=new\n'
    assert shadow.password_matches(PASSWORD, shadow.read_root_hash(site.dest))
    assert sorted(os.listdir(site.meta)) == ['lock', 'state.json']
    assert unverified_cache_files(site.cache) == []
    assert state.load_record(os.path.join(site.meta, 'state.json')).digest == again.digest
    assert not site.pull('new').changed


# -- a full disk ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    """A 6 MiB tmpfs: room for the old rootfs and the new image's blobs, not for its tree as well."""
    mount_point = tmp_path / 'small'
    mount_point.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=6m,mode=0755', 'tmpfs', str(mount_point)], check=True)
    try:
        yield str(mount_point)
    finally:
        subprocess.run(['umount', '-l', str(mount_point)], check=True)


def _files_below(root: str) -> t.List[str]:
    return sorted(os.path.relpath(os.path.join(directory, name), root)
                  for directory, _dirnames, filenames in os.walk(root) for name in filenames)


@pytest.mark.skipif(os.geteuid() != 0, reason='mounting a tmpfs needs root')
def test_a_full_disk_is_a_clear_error_that_keeps_the_old_rootfs_and_frees_what_it_used(small_filesystem, images):
    site = Site(small_filesystem, images)
    site.pull('old')
    old_tree = snapshot_tree(site.dest)
    free_before = os.statvfs(small_filesystem).f_bfree
    with pytest.raises(BootstrapError) as caught:
        site.pull('new')
    assert str(caught.value) == (
        'No space left on device while building the new rootfs beside %s (in %s): %s is kept as it was and the '
        'partial build was removed; free space there, or give a dest on another filesystem'
        % (site.dest, site.meta, site.dest))
    assert snapshot_tree(site.dest) == old_tree
    assert sorted(os.listdir(site.meta)) == ['lock', 'state.json']
    assert unverified_cache_files(site.cache) == []
    # What stays is complete, verified blobs a later run can use; the half-built tree is gone.
    kept = sum(os.path.getsize(os.path.join(site.cache, path)) for path in _files_below(site.cache)
               if path.startswith('blobs' + os.sep))
    block_size = os.statvfs(small_filesystem).f_bsize
    assert (free_before - os.statvfs(small_filesystem).f_bfree) * block_size <= kept + 64 * block_size
