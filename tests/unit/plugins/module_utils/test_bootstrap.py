# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine: decide, build beside dest, swap in; idempotency, safety of dest, locking."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from dataclasses import asdict

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, run
from ansible_collections.virt.bootstrap.plugins.module_utils._destination import Destination, identity_of
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import (
    BootstrapError,
    DestinationError,
    DigestMismatch,
    HostileLayer,
    LayerError,
    PlatformError,
    SizeLimitExceeded,
    SourceError,
)
from ansible_collections.virt.bootstrap.plugins.module_utils._state import load_record
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    DockerImage,
    Hardlink,
    OciLayoutBuilder,
    Symlink,
    compress,
    make_docker_archive,
    make_tar,
    sha256,
    snapshot_tree,
    source_uri,
    write_file,
)

V1 = {'etc': None, 'etc/os-release': b'ID=one\n', 'bin': None, 'bin/sh': b'#!one\n', 'bin/bash': Symlink('sh')}
V2 = {'etc': None, 'etc/os-release': b'ID=two\n', 'usr': None, 'usr/lib': None, 'usr/lib/libc.so': b'\x7fELF'}


def rootfs_content(root):
    """What a built rootfs holds: bytes for files, ('->', target) for symlinks, None for directories."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[relative] = Symlink(os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[relative] = None
            else:
                with open(path, 'rb') as stream:
                    found[relative] = stream.read()
    return found


class Site:
    """A dest below its own parent directory, and a separate directory for sources."""

    def __init__(self, tmp_path):
        self.sources = tmp_path / 'sources'
        self.parent = tmp_path / 'hosts'
        self.sources.mkdir()
        self.parent.mkdir()
        self.dest = str(self.parent / 'rootfs')
        self.meta = str(self.parent / '.rootfs.virt-bootstrap')
        self.outside = tmp_path / 'outside'
        self.outside.mkdir()

    def tarball(self, entries, name='rootfs.tar.gz', compression='gzip'):
        return write_file(str(self.sources / name), compress(make_tar(entries), compression))

    def run(self, src=None, check_mode=False, **options):
        return run(Request(src=src, dest=self.dest, **options), check_mode=check_mode)

    def record(self):
        return load_record(os.path.join(self.meta, 'state.json'))

    def parent_listing(self):
        return sorted(os.listdir(str(self.parent)))

    def meta_listing(self):
        return sorted(os.listdir(self.meta))

    def assert_no_debris(self):
        assert [name for name in os.listdir(self.meta) if name not in ('lock', 'state.json')] == []


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


# -- building and idempotency ------------------------------------------------------------------------------------


def test_check_mode_on_fresh_dest_reports_change_and_writes_nothing(site):
    src = site.tarball(V1)
    result = run(Request(src=src, dest=str(site.parent / 'new' / 'rootfs')), check_mode=True)
    assert result.changed
    assert result.digest == sha256(open(src, 'rb').read())
    assert result.before is None and result.after.digest == result.digest
    assert result.entries_written == 0
    assert site.parent_listing() == []  # not even the missing parent, nor the .NAME.virt-bootstrap sibling


def test_first_run_builds_the_rootfs_and_its_record_beside_it(site):
    src = site.tarball(V1)
    result = site.run(src)
    assert result.changed
    assert result.msg.startswith('build sha256:')
    assert rootfs_content(site.dest) == V1
    assert result.entries_written > 0
    assert result.entries_skipped == 0 and result.entries_skipped_by_reason == {}
    assert result.digest == sha256(open(src, 'rb').read())
    assert result.layers == [{'digest': result.digest, 'size': os.path.getsize(src),
                              'media_type': 'application/x-tar+gzip'}]
    assert site.parent_listing() == ['.rootfs.virt-bootstrap', 'rootfs']
    assert site.meta_listing() == ['lock', 'state.json']
    record = site.record()
    assert (record.source, record.digest, record.format) == (src, result.digest, 'dir')
    assert record.dest_identity == identity_of(site.dest)
    assert record.dest_identity['inode'] == os.lstat(site.dest).st_ino and len(record.dest_identity['mark']) == 32
    assert stat.S_IMODE(os.stat(site.meta).st_mode) == 0o700


def test_entries_written_counts_each_entry_once(site):
    entries = dict(V1, **{'bin/sh2': Hardlink('bin/sh')})
    result = site.run(site.tarball(entries))
    assert os.stat(os.path.join(site.dest, 'bin/sh2')).st_ino == os.stat(os.path.join(site.dest, 'bin/sh')).st_ino
    assert result.entries_written == len(entries)


@pytest.mark.parametrize('compression', ['none', 'gzip', 'xz', 'bzip2', 'zstd'])
def test_rootfs_tarball_in_any_compression_builds(site, compression):
    if compression == 'zstd':
        pytest.importorskip('zstandard')
    result = site.run(site.tarball(V1, name='rootfs', compression=compression))
    assert result.changed
    assert rootfs_content(site.dest) == V1


def test_rerun_is_unchanged_and_writes_nothing(site):
    src = site.tarball(V1)
    first = site.run(src)
    before = snapshot_tree(site.dest)
    check = site.run(src, check_mode=True)
    again = site.run(src)
    assert not check.changed and not again.changed
    assert again.entries_written == 0
    assert again.digest == first.digest
    assert again.msg == '%s already holds %s' % (site.dest, first.digest)
    assert snapshot_tree(site.dest) == before


def test_same_content_through_another_uri_is_unchanged(site):
    src = site.tarball(V1)
    site.run(src)
    assert not site.run('file://' + src).changed


def test_new_source_content_rebuilds_and_reports_both_records(site):
    src = site.tarball(V1)
    first = site.run(src)
    site.tarball(V2)  # same path, new content
    check = site.run(src, check_mode=True)
    assert check.changed
    assert rootfs_content(site.dest) == V1
    second = site.run(src)
    assert second.changed
    assert second.digest != first.digest
    assert second.before.digest == first.digest and second.after.digest == second.digest
    assert asdict(second.before) != asdict(second.after)
    assert second.msg == 'replace %s with %s in %s' % (first.digest, second.digest, site.dest)
    assert rootfs_content(site.dest) == V2
    assert site.record().digest == second.digest
    site.assert_no_debris()


def test_dest_deleted_behind_our_back_is_rebuilt(site):
    src = site.tarball(V1)
    site.run(src)
    os.rename(site.dest, str(site.outside / 'moved'))  # the record stays, only dest goes
    assert site.run(src, check_mode=True).changed
    result = site.run(src)
    assert result.changed and 'changed or removed outside this module' in result.msg
    assert rootfs_content(site.dest) == V1
    assert not site.run(src).changed


def test_dest_replaced_behind_our_back_is_rebuilt(site):
    src = site.tarball(V1)
    site.run(src)
    os.rename(site.dest, str(site.outside / 'moved'))  # kept, so its inode cannot be reused
    os.mkdir(site.dest)
    result = site.run(src)
    assert result.changed and 'outside this module' in result.msg
    assert rootfs_content(site.dest) == V1


def test_dest_replaced_behind_our_back_with_content_is_not_ours_any_more(site):
    # The record names the directory we made; one made again by someone else holds their data.
    src = site.tarball(V1)
    site.run(src)
    os.rename(site.dest, str(site.outside / 'moved'))
    os.mkdir(site.dest)
    write_file(os.path.join(site.dest, 'precious'), b'keep me')
    with pytest.raises(DestinationError, match='not empty and was not made by this module; set force: true'):
        site.run(src)
    assert rootfs_content(site.dest) == {'precious': b'keep me'}
    assert site.run(src, force=True).changed
    assert rootfs_content(site.dest) == V1


def test_foreign_non_empty_dest_is_refused_without_force(site):
    src = site.tarball(V1)
    os.mkdir(site.dest)
    write_file(os.path.join(site.dest, 'precious'), b'keep me')
    for check_mode in (True, False):
        with pytest.raises(DestinationError, match='not empty and was not made by this module; set force: true'):
            site.run(src, check_mode=check_mode)
    assert rootfs_content(site.dest) == {'precious': b'keep me'}


def test_force_replaces_a_foreign_dest(site):
    src = site.tarball(V1)
    os.mkdir(site.dest)
    write_file(os.path.join(site.dest, 'precious'), b'replace me')
    result = site.run(src, force=True)
    assert result.changed
    assert rootfs_content(site.dest) == V1
    site.assert_no_debris()
    assert not site.run(src).changed  # ours from now on


def test_foreign_file_at_dest_is_refused_without_force(site):
    src = site.tarball(V1)
    write_file(site.dest, b'a file')
    with pytest.raises(DestinationError, match='exists and is not a directory'):
        site.run(src)
    assert open(site.dest, 'rb').read() == b'a file'
    site.run(src, force=True)
    assert rootfs_content(site.dest) == V1


def test_empty_pre_existing_dest_is_accepted(site):
    src = site.tarball(V1)
    os.mkdir(site.dest)
    result = site.run(src)
    assert result.changed
    assert rootfs_content(site.dest) == V1


BAD_REQUESTS = [
    ({'format': 'vmdk'}, BootstrapError, "format 'vmdk' is not supported"),
    ({'format': 'qcow2', 'qcow2_layers': 'stacked'}, BootstrapError, "qcow2_layers 'stacked' is not one of"),
    ({'format': 'qcow2', 'qcow2_filesystem': 'btrfs'}, BootstrapError, "qcow2_filesystem 'btrfs' is not one of"),
    ({'dest': 'relative/rootfs'}, DestinationError, 'must be an absolute path'),
    ({'dest': '/'}, DestinationError, 'cannot be used'),
    ({'src': None}, BootstrapError, 'src is required'),
    ({'src': 'ftp://example.com/alpine'}, SourceError, 'unsupported source'),
    ({'platform': 'linux//'}, PlatformError, 'not of the form'),
]


@pytest.mark.parametrize('check_mode', [True, False])
@pytest.mark.parametrize('request_options, error, message', BAD_REQUESTS)
def test_bad_requests_fail_without_creating_dest(site, request_options, error, message, check_mode):
    options = dict(src=site.tarball(V1), dest=site.dest)
    options.update(request_options)
    with pytest.raises(error, match=message):
        run(Request(**options), check_mode=check_mode)
    assert not os.path.lexists(site.dest)
    if check_mode:
        assert site.parent_listing() == []


def test_nothing_is_written_outside_dest_and_its_sibling(site, tmp_path):
    src = site.tarball(V1)
    sources_before = snapshot_tree(str(site.sources))
    site.run(src)
    site.tarball(V2, name='other.tar.gz')
    site.run(str(site.sources / 'other.tar.gz'))
    site.run(src, state='absent')
    assert site.parent_listing() == []
    assert sorted(os.listdir(str(tmp_path))) == ['hosts', 'outside', 'sources']
    assert os.listdir(str(site.outside)) == []
    sources_after = snapshot_tree(str(site.sources))
    del sources_after['other.tar.gz'], sources_after['.'], sources_before['.']
    assert sources_after == sources_before


# -- image sources through the engine ----------------------------------------------------------------------------

LAYER_1 = make_tar({'etc': None, 'etc/os-release': b'ID=base\n', 'etc/motd': b'hello\n'})
LAYER_2 = make_tar({'etc': None, 'etc/.wh.motd': b'', 'etc/hostname': b'box\n'})
LAYERED = {'etc': None, 'etc/os-release': b'ID=base\n', 'etc/hostname': b'box\n'}


@pytest.mark.parametrize('kind', ['oci', 'oci-archive'])
def test_oci_image_builds_its_layers_in_order(site, kind):
    layout = OciLayoutBuilder(str(site.sources / 'layout'))
    manifest = layout.image([LAYER_1, LAYER_2])
    layout.write_index([(manifest, 'latest')])
    uri = source_uri(kind, layout.root, 'latest')
    result = site.run(uri)
    assert result.changed and result.digest == manifest['digest']
    assert rootfs_content(site.dest) == LAYERED
    assert [layer['digest'] for layer in result.layers] == [layer['digest'] for layer in manifest['layers']]
    assert result.platform == 'linux/amd64'
    assert not site.run(uri).changed


def test_an_image_for_another_platform_is_used_with_a_warning(site):
    layout = OciLayoutBuilder(str(site.sources / 'layout'))
    s390x = layout.image([LAYER_1], platform='linux/s390x')
    layout.write_index([(s390x, 'latest')])
    result = site.run(source_uri('oci', layout.root))
    assert result.changed and result.platform == 'linux/s390x'
    assert [warning for warning in result.warnings if 'not this host' in warning and 'platform: linux/s390x'
            in warning], result.warnings


@pytest.mark.parametrize('kind', ['oci', 'oci-archive'])
def test_multi_platform_image_records_platform_and_index_digest(site, kind):
    layout = OciLayoutBuilder(str(site.sources / 'layout'))
    amd64 = layout.image([LAYER_1], platform='linux/amd64')
    arm64 = layout.image([LAYER_2], platform='linux/arm64/v8')
    index = layout.index([(amd64, 'linux/amd64'), (arm64, 'linux/arm64/v8')])
    layout.write_index([(index, 'latest')])
    uri = source_uri(kind, layout.root)
    result = site.run(uri, platform='linux/arm64')
    assert (result.digest, result.index_digest, result.platform) == (arm64['digest'], index['digest'],
                                                                     'linux/arm64/v8')
    assert rootfs_content(site.dest) == {'etc': None, 'etc/hostname': b'box\n'}
    record = site.record()
    assert (record.index_digest, record.platform) == (index['digest'], 'linux/arm64/v8')
    other = site.run(uri, platform='linux/amd64')
    assert other.changed and other.digest == amd64['digest']


def test_docker_archive_builds_and_checks_diff_ids(site):
    path = make_docker_archive(str(site.sources / 'app.tar'), [DockerImage(['app:1'], [LAYER_1, LAYER_2])])
    result = site.run('docker-archive:%s:app:1' % path)
    assert result.changed
    assert rootfs_content(site.dest) == LAYERED
    assert [layer['digest'] for layer in result.layers] == [sha256(LAYER_1), sha256(LAYER_2)]


# -- failed builds leave the previous rootfs exactly as it was ---------------------------------------------------

def _bad_oci(site, second_layer, tamper=None, compression='gzip'):
    layout = OciLayoutBuilder(str(site.sources / 'bad-layout'))
    manifest = layout.image([LAYER_1, second_layer], compression=compression)
    if tamper is not None:
        layout.tamper(manifest['layers'][1], tamper(compress(second_layer, compression)))
    layout.write_index([(manifest, 'latest')])
    return 'oci:' + layout.root


def _truncated_second_layer(site):
    layout = OciLayoutBuilder(str(site.sources / 'bad-layout'))
    layers = [layout.blob(compress(LAYER_1, 'gzip'), 'application/vnd.oci.image.layer.v1.tar+gzip'),
              layout.blob(compress(make_tar(V2), 'gzip')[:-40], 'application/vnd.oci.image.layer.v1.tar+gzip')]
    config = layout.json_blob({'architecture': 'amd64', 'os': 'linux'}, 'application/vnd.oci.image.config.v1+json')
    manifest = layout.json_blob({'schemaVersion': 2, 'config': config, 'layers': layers},
                                'application/vnd.oci.image.manifest.v1+json')
    layout.write_index([(manifest, None)])
    return 'oci:' + layout.root, {}


FAILURES = {
    'truncated second layer': (_truncated_second_layer, LayerError, 'corrupt or truncated'),
    'second layer not matching its digest': (
        lambda site: (_bad_oci(site, make_tar(V2), compression='none',
                               tamper=lambda data: data.replace(b'ID=two', b'ID=bad')), {}),
        DigestMismatch, 'layer 2/2'),
    'entry climbing out with ..': (
        lambda site: (_bad_oci(site, make_tar({'../escape': b'x'})), {}), HostileLayer, 'climbs out'),
    'entry written through a symlink loop': (
        lambda site: (_bad_oci(site, make_tar({'etc': None, 'etc/evil': Symlink('evil'),
                                               'etc/evil/planted': b'x'})), {}),
        LayerError, 'symlink loop'),
    'size limit': (
        lambda site: (_bad_oci(site, make_tar({'big': b'\x00' * 300000})), {'max_size': 200000}),
        SizeLimitExceeded, 'max_size'),
    'docker-archive diff_id mismatch': (
        lambda site: ('docker-archive:' + make_docker_archive(
            str(site.sources / 'bad.tar'),
            [DockerImage(['bad:1'], [LAYER_1, make_tar(V2)], diff_ids=[sha256(LAYER_1), sha256(b'other')])]), {}),
        DigestMismatch, 'uncompressed'),
}


@pytest.mark.parametrize('failure', sorted(FAILURES))
def test_failed_build_leaves_previous_rootfs_and_record_untouched(site, failure):
    make_source, error, message = FAILURES[failure]
    good = site.tarball(V1)
    site.run(good)
    tree = snapshot_tree(site.dest)
    record = site.record()
    parent = site.parent_listing()
    bad, options = make_source(site)
    with pytest.raises(error, match=message):
        site.run(bad, **options)
    assert snapshot_tree(site.dest) == tree
    assert site.record() == record
    assert site.parent_listing() == parent
    site.assert_no_debris()
    assert os.listdir(str(site.outside)) == []
    assert not site.run(good).changed


def test_failed_first_build_leaves_no_rootfs_and_no_record(site):
    bad, _options = _truncated_second_layer(site)
    with pytest.raises(LayerError):
        site.run(bad)
    assert not os.path.lexists(site.dest)
    assert site.record() is None
    site.assert_no_debris()


def test_debris_of_a_killed_run_is_cleared_by_the_next_run(site):
    src = site.tarball(V1)
    site.run(src)
    os.makedirs(os.path.join(site.meta, 'build-killed', 'rootfs', 'etc'))
    os.mkdir(os.path.join(site.meta, 'old-killed'))
    assert not site.run(src).changed
    site.assert_no_debris()


def test_a_rootfs_parked_by_a_run_killed_mid_swap_is_put_back(site):
    # Without RENAME_EXCHANGE the swap is two renames; a kill between them leaves dest missing and
    # the old rootfs parked in old-*: the next run must restore it, never delete it as debris.
    src = site.tarball(V1)
    site.run(src)
    os.mkdir(os.path.join(site.meta, 'old-killed'))
    os.rename(site.dest, os.path.join(site.meta, 'old-killed', 'old'))
    result = site.run(src)
    assert not result.changed
    assert rootfs_content(site.dest) == V1
    site.assert_no_debris()


def test_a_planted_bookkeeping_directory_is_refused(site):
    src = site.tarball(V1)
    os.symlink(str(site.outside), site.meta)
    with pytest.raises(DestinationError, match='is not a private directory'):
        site.run(src)
    assert os.listdir(str(site.outside)) == []


# -- state: absent -----------------------------------------------------------------------------------------------


def test_absent_removes_dest_and_its_bookkeeping(site):
    site.run(site.tarball(V1))
    check = site.run(state='absent', check_mode=True)
    assert check.changed and os.path.isdir(site.dest)
    result = site.run(state='absent')
    assert result.changed
    assert result.msg == 'remove %s' % site.dest
    assert result.digest is None and result.after is None
    assert site.parent_listing() == []


def test_absent_when_already_absent_is_unchanged(site):
    for check_mode in (True, False):
        result = site.run(state='absent', check_mode=check_mode)
        assert not result.changed
        assert result.msg == '%s is absent' % site.dest


def test_absent_when_already_absent_leaves_nothing_behind(site):
    missing_parent = site.parent / 'missing'
    run(Request(src=None, dest=str(missing_parent / 'rootfs'), state='absent'))
    site.run(state='absent')
    assert site.parent_listing() == []


def test_absent_refuses_a_foreign_non_empty_dest_without_force(site):
    os.mkdir(site.dest)
    write_file(os.path.join(site.dest, 'precious'), b'keep me')
    with pytest.raises(DestinationError, match='set force: true to remove'):
        site.run(state='absent')
    assert rootfs_content(site.dest) == {'precious': b'keep me'}
    assert site.run(state='absent', force=True).changed
    assert site.parent_listing() == []


@pytest.mark.parametrize('request_options', [{'src': None}, {'src': 'ftp://example.com/alpine'}, {'state': 'absent'},
                                             {'src': 'foreign dest'}])
def test_refused_run_leaves_no_bookkeeping_behind(site, request_options):
    os.mkdir(site.dest)
    write_file(os.path.join(site.dest, 'precious'), b'keep me')
    options = dict(src=site.tarball(V1), dest=site.dest)
    options.update(request_options)
    if options['src'] == 'foreign dest':
        options['src'] = site.tarball(V1)
    with pytest.raises(BootstrapError):
        run(Request(**options))
    assert site.parent_listing() == ['rootfs']


def test_absent_removes_an_empty_foreign_dest(site):
    os.mkdir(site.dest)
    assert site.run(state='absent').changed
    assert site.parent_listing() == []


# -- concurrency -------------------------------------------------------------------------------------------------


def _hold_lock(dest, locked, release):
    with Destination(dest):
        locked.set()
        release.wait(30)


def _run_and_report(request, queue, barrier=None):
    try:
        if barrier is not None:
            barrier.wait(30)
        result = run(request)
        queue.put(('ok', result.changed, result.digest))
    except BaseException as exc:  # report everything: the parent asserts on it
        queue.put(('error', repr(exc), None))


def test_a_run_waits_while_another_holds_the_lock(site):
    context = multiprocessing.get_context('fork')
    locked, release, queue = context.Event(), context.Event(), context.Queue()
    # The lock holder is a process of its own: a forked runner must not inherit the lock's fd.
    holder = context.Process(target=_hold_lock, args=(site.dest, locked, release))
    holder.start()
    try:
        assert locked.wait(10)
        runner = context.Process(target=_run_and_report,
                                 args=(Request(src=site.tarball(V1), dest=site.dest), queue))
        runner.start()
        time.sleep(0.5)
        assert runner.is_alive()
        assert not os.path.lexists(site.dest)
    finally:
        release.set()
        holder.join(10)
    runner.join(30)
    assert queue.get(timeout=5)[:2] == ('ok', True)
    assert rootfs_content(site.dest) == V1


@pytest.mark.parametrize('same_source', [True, False])
def test_concurrent_runs_on_one_dest_are_serialised(site, same_source):
    sources = [site.tarball(V1, name='one.tar.gz'),
               site.tarball(V1 if same_source else V2, name='two.tar.gz')]
    context = multiprocessing.get_context('fork')
    queue, barrier = context.Queue(), context.Barrier(2)
    runners = [context.Process(target=_run_and_report, args=(Request(src=src, dest=site.dest), queue, barrier))
               for src in sources]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(60)
    reports = [queue.get(timeout=5) for _runner in runners]
    assert [report[0] for report in reports] == ['ok', 'ok'], reports
    if same_source:
        assert sorted(report[1] for report in reports) == [False, True]  # the second saw the first's build
    else:
        assert [report[1] for report in reports] == [True, True]
    # Whichever ran last, dest and its record agree.
    record = site.record()
    assert record.digest == sha256(open(record.source, 'rb').read())
    assert rootfs_content(site.dest) == (V1 if record.source == sources[0] or same_source else V2)
    assert record.dest_identity == identity_of(site.dest)
    site.assert_no_debris()
    assert site.parent_listing() == ['.rootfs.virt-bootstrap', 'rootfs']
