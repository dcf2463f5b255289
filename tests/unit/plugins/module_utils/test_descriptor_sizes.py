# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Descriptor sizes are binding: a blob holding more or fewer bytes than its descriptor says is refused."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DigestMismatch, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import SizedReader
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    MEDIA_OCI_INDEX,
    MTIME,
    OciLayoutBuilder,
    make_tar,
    platform_fields,
    sha256,
    snapshot_tree,
    source_uri,
    write_file,
)

GOOD = make_tar({'etc': None, 'etc/release': b'good\n'})
LAYER = make_tar({'etc': None, 'etc/release': b'lying\n', 'big': b'x' * 5000})
# Descriptors that say one byte fewer, and one byte more, than their blob holds.
LIES = {'smaller': -1, 'larger': +1}
MESSAGES = {'smaller': 'holds more than the %d bytes its descriptor says',
            'larger': r'ends after \d+ bytes, but its descriptor says %d'}


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize('pieces', [[-1], [3, 3, 3, 3], [100], [10, 1], [0, 10, 0]])
def test_a_sized_reader_gives_a_blob_of_exactly_its_size_however_it_is_read(pieces):
    reader = SizedReader(CountingStream(b'0123456789'), 10, 'blob')
    assert b''.join(reader.read(amount) for amount in pieces + [-1]) == b'0123456789'
    assert reader.read(5) == b''


def test_a_sized_reader_never_reads_more_than_one_byte_past_the_size():
    stream = CountingStream(b'0123456789' + b'x' * 1000)
    reader = SizedReader(stream, 10, 'blob sha256:1')
    with pytest.raises(DigestMismatch, match='^blob sha256:1 holds more than the 10 bytes its descriptor says$'):
        reader.read(1 << 20)
    assert stream.bytes_read == 11


def test_a_sized_reader_refuses_a_blob_that_ends_early():
    reader = SizedReader(io.BytesIO(b'01234'), 10, 'blob sha256:1')
    assert reader.read(5) == b'01234'
    with pytest.raises(DigestMismatch, match='^blob sha256:1 ends after 5 bytes, but its descriptor says 10$'):
        reader.read(5)


def test_a_sized_reader_of_an_empty_blob_still_checks_its_end():
    with pytest.raises(DigestMismatch, match='holds more than the 0 bytes'):
        SizedReader(io.BytesIO(b'x'), 0, 'blob').read()
    assert SizedReader(io.BytesIO(b''), 0, 'blob').read() == b''


# -- every local source, through the engine: the error, and dest as it was -------------------------------------------

class Built:
    """A dest holding a good rootfs; `attempt` runs a source on it and says what dest holds after."""

    def __init__(self, tmp_path) -> None:
        self.dest = str(tmp_path / 'hosts' / 'rootfs')
        os.makedirs(os.path.dirname(self.dest))
        good = write_file(str(tmp_path / 'good.tar'), GOOD)
        run(Request(src=good, dest=self.dest))
        self.before = snapshot_tree(self.dest)

    def refuses(self, src: str, error: type, message: str) -> None:
        with pytest.raises(error, match=message):
            run(Request(src=src, dest=self.dest))
        assert snapshot_tree(self.dest) == self.before


@pytest.fixture
def built(tmp_path):
    return Built(tmp_path)


@pytest.fixture(params=['oci', 'oci-archive'])
def kind(request):
    return request.param


@pytest.fixture
def layout(tmp_path):
    return OciLayoutBuilder(str(tmp_path / 'layout'))


def entry(descriptor, size_change=0, platform=None):
    listed = {key: descriptor[key] for key in ('mediaType', 'digest', 'size')}
    listed['size'] += size_change
    if platform:
        listed['platform'] = platform_fields(platform)
    return listed


def write_index(layout, entries):
    layout.write_index([])
    write_file(os.path.join(layout.root, 'index.json'),
               json.dumps({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': entries}).encode())


@pytest.mark.parametrize('lie', sorted(LIES))
@pytest.mark.parametrize('compression', ['none', 'gzip'])
def test_oci_layer_whose_descriptor_lies_about_its_size_is_refused(built, layout, kind, lie, compression):
    def edit(manifest):
        manifest['layers'][0]['size'] += LIES[lie]
    manifest = layout.image([LAYER], compression=compression, edit_manifest=edit)
    layout.write_index([(manifest, 'latest')])
    listed = manifest['layers'][0]
    built.refuses(source_uri(kind, layout.root), DigestMismatch,
                  r'^layer 1/1 %s: .*blob %s %s$' % (listed['digest'], listed['digest'], MESSAGES[lie] % listed['size']))


@pytest.mark.parametrize('lie', sorted(LIES))
@pytest.mark.parametrize('part', ['manifest', 'config', 'nested index'])
def test_oci_metadata_whose_descriptor_lies_about_its_size_is_refused(built, layout, kind, lie, part):
    change = LIES[lie]

    def edit(manifest):
        if part == 'config':
            manifest['config']['size'] += change
    manifest = layout.image([LAYER], edit_manifest=edit)
    if part == 'nested index':
        nested = layout.json_blob({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX,
                                   'manifests': [entry(manifest, platform='linux/amd64')]}, MEDIA_OCI_INDEX)
        write_index(layout, [entry(nested, change)])
        lying, said = nested, nested['size'] + change
    elif part == 'manifest':
        write_index(layout, [entry(manifest, change)])
        lying, said = manifest, manifest['size'] + change
    else:
        write_index(layout, [entry(manifest)])
        lying, said = manifest['config'], manifest['config']['size']  # edit() changed it already
    built.refuses(source_uri(kind, layout.root), DigestMismatch,
                  r'blob %s %s$' % (lying['digest'], MESSAGES[lie] % said))


def test_oci_metadata_descriptor_bigger_than_any_metadata_is_refused_unread(built, layout, kind):
    manifest = layout.image([LAYER])
    write_index(layout, [dict(entry(manifest), size=5 << 20)])
    built.refuses(source_uri(kind, layout.root), SourceError, 'is 5242880 bytes by its descriptor, more than the '
                                                              '4194304 of any image metadata')


def docker_archive_with_layer_header(path, header_size):
    """A docker-archive whose one layer's tar header gives `header_size` bytes for the LAYER that follows."""
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': [sha256(LAYER)]}}).encode()
    members = [('config.json', config, len(config)),
               ('manifest.json', json.dumps([{'Config': 'config.json', 'RepoTags': ['app:1'],
                                              'Layers': ['abc/layer.tar']}]).encode(), None),
               ('abc/layer.tar', LAYER, header_size)]
    data = b''
    for name, content, size in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(content) if size is None else size, MTIME
        data += info.tobuf(tarfile.PAX_FORMAT) + content + b'\0' * (-len(content) % tarfile.BLOCKSIZE)
    return write_file(path, data + b'\0' * 2 * tarfile.BLOCKSIZE)


def test_docker_archive_layer_is_what_its_tar_header_says_and_the_diff_id_refuses_less(built, tmp_path):
    # The header is the archive's only word on a layer's size: the rest is not part of the layer.
    path = docker_archive_with_layer_header(str(tmp_path / 'app.tar'), len(LAYER) - 1024)
    built.refuses('docker-archive:' + path, DigestMismatch, r'layer 1/1 %s \(uncompressed\): content hashes to'
                  % sha256(LAYER))


def test_docker_archive_layer_header_promising_more_than_the_archive_holds_is_refused(built, tmp_path):
    path = docker_archive_with_layer_header(str(tmp_path / 'app.tar'), len(LAYER) + 4096)
    built.refuses('docker-archive:' + path, SourceError, 'is not a readable tar archive')
