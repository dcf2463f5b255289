# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files of an archive reached through links inside it: what `docker save` wrote before Docker 25."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import open_source, parse_source
from ansible_collections.virt.bootstrap.tests.registry.push import skopeo_copy
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    Hardlink,
    OciLayoutBuilder,
    Symlink,
    as_saved_before_docker_25,
    make_tar,
    sha256,
    snapshot_tree,
    write_file,
)

LAYER_A = make_tar({'etc': None, 'etc/release': b'A\n', 'etc/a': b'only in A\n'})
LAYER_B = make_tar({'etc': None, 'etc/release': b'B\n', 'etc/.wh.a': b''})
CONFIG = json.dumps({'architecture': 'amd64', 'os': 'linux',
                     'rootfs': {'type': 'layers', 'diff_ids': [sha256(LAYER_A), sha256(LAYER_B)]}}).encode()


def tree(root):
    """What a rootfs holds, without what differs between two builds of the same image (its root's inode and mtime)."""
    snapshot = snapshot_tree(root)
    del snapshot['.inode']
    snapshot['.'] = snapshot['.'][0]
    return snapshot


def test_a_docker_archive_saved_before_docker_25_gives_the_rootfs_of_the_original(tmp_path):
    if shutil.which('skopeo') is None:
        pytest.skip('needs skopeo')
    layout = OciLayoutBuilder(str(tmp_path / 'layout'))
    # A, B, then A again: B's whiteout removed etc/a, the repeated A puts it back.
    layout.write_index([(layout.image([LAYER_A, LAYER_B, LAYER_A]), 'latest')])
    original = str(tmp_path / 'skopeo.tar')
    skopeo_copy('oci:%s:latest' % layout.root, 'docker-archive:%s:app:1' % original)
    old = as_saved_before_docker_25(original, str(tmp_path / 'docker-24.tar'))
    with tarfile.open(old) as archive:
        layer_paths = json.load(archive.extractfile('manifest.json'))[0]['Layers']
        assert archive.getmember(layer_paths[2]).linkname == '../' + layer_paths[0]
    assert layer_paths[0] != layer_paths[2] and all(path.endswith('/layer.tar') for path in layer_paths)

    built = {}
    for name, archive in (('original', original), ('old', old)):
        dest = str(tmp_path / name / 'rootfs')
        result = run(Request(src='docker-archive:' + archive, dest=dest))
        assert result.changed and len(result.layers) == 3
        built[name] = tree(dest)
    assert built['old'] == built['original']
    with open(str(tmp_path / 'old' / 'rootfs' / 'etc' / 'a'), 'rb') as stream:
        assert stream.read() == b'only in A\n'


def docker_archive(tmp_path, links, layer_paths=('aaa/layer.tar', 'bbb/layer.tar')):
    """A docker-archive: layer A stored at aaa/layer.tar, layer B at store/b.tar, and `links` besides."""
    entries = {'aaa': None, 'aaa/layer.tar': LAYER_A, 'store': None, 'store/b.tar': LAYER_B, 'config.json': CONFIG}
    entries.update(links)
    entries['manifest.json'] = json.dumps([{'Config': 'config.json', 'RepoTags': ['app:1'],
                                            'Layers': list(layer_paths)}]).encode()
    return write_file(str(tmp_path / 'app.tar'), make_tar(entries))


def layer_blobs(archive):
    source = open_source(parse_source('docker-archive:' + archive))
    try:
        image = source.resolve(None)
    finally:
        source.close()
    found = []
    for layer in image.layers:
        with layer.open_blob() as stream:
            found.append((layer.size, stream.read()))
    return found


@pytest.mark.parametrize('links', [
    {'bbb': None, 'bbb/layer.tar': Symlink('../store/b.tar')},                  # relative, as Docker wrote it
    {'bbb': None, 'bbb/layer.tar': Symlink('/store/b.tar')},                    # absolute: from the archive's root
    {'bbb': None, 'bbb/layer.tar': Symlink('../store/./b.tar')},
    {'bbb': None, 'bbb/layer.tar': Symlink('next'), 'bbb/next': Symlink('../store/b.tar')},   # a chain
    {'bbb': Symlink('store'), 'store/layer.tar': Symlink('b.tar')},             # a linked directory on the way
    {'bbb': None, 'bbb/layer.tar': Hardlink('store/b.tar')},                    # a hard link: from the root
    {'bbb': None, 'bbb/layer.tar': Symlink('../aaa/../store/b.tar')},
])
def test_layers_reached_through_links_inside_the_archive_are_read(tmp_path, links):
    assert layer_blobs(docker_archive(tmp_path, links)) == [(len(LAYER_A), LAYER_A), (len(LAYER_B), LAYER_B)]


def test_a_link_to_a_link_to_an_earlier_layer_reads_that_layer(tmp_path):
    archive = docker_archive(tmp_path, {'ccc': None, 'ccc/layer.tar': Symlink('../aaa/layer.tar')},
                             layer_paths=('aaa/layer.tar', 'ccc/layer.tar'))
    assert [data for _size, data in layer_blobs(archive)] == [LAYER_A, LAYER_A]


@pytest.mark.parametrize('links, message', [
    ({'bbb': None, 'bbb/layer.tar': Symlink('../../store/b.tar')}, 'bbb/layer.tar leads outside the archive'),
    ({'bbb': Symlink('..'), 'store/layer.tar': None}, 'bbb/layer.tar leads outside the archive'),
    ({'bbb': None, 'bbb/layer.tar': Symlink('/etc/passwd')},
     'bbb/layer.tar is a link to etc/passwd, which is not a file in the archive'),
    ({'bbb': None, 'bbb/layer.tar': Symlink('../store')},
     'bbb/layer.tar is a link to store, which is not a file in the archive'),
    ({'bbb': None, 'bbb/layer.tar': Symlink('layer.tar')}, 'bbb/layer.tar leads through more than 40 links: a loop'),
    ({'bbb': None, 'bbb/layer.tar': Symlink('other'), 'bbb/other': Symlink('layer.tar')},
     'leads through more than 40 links: a loop'),
    ({'bbb': Symlink('bbb')}, 'leads through more than 40 links: a loop'),
])
def test_links_that_leave_the_archive_loop_or_lead_nowhere_are_refused(tmp_path, links, message):
    archive = docker_archive(tmp_path, links)
    with pytest.raises(SourceError, match=message) as caught:
        layer_blobs(archive)
    assert archive in str(caught.value)


def test_a_later_entry_of_the_same_name_replaces_a_link(tmp_path):
    # As on extraction: the regular file written last is what the name holds.
    archive = docker_archive(tmp_path, {'bbb': None, 'bbb/layer.tar': Symlink('../aaa/layer.tar')})
    with tarfile.open(archive, 'a') as appended:
        info = tarfile.TarInfo('bbb/layer.tar')
        info.size = len(LAYER_B)
        appended.addfile(info, io.BytesIO(LAYER_B))
    assert [blob for _size, blob in layer_blobs(archive)] == [LAYER_A, LAYER_B]
