# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bench's large image, made by the bench from this machine's own files (issue 12).

    oci:bench/.cache/images/oci/large:large   3 gzip layers, >= 1 GB unpacked, >= 50,000 entries

- layer 1: /usr/share, /usr/lib/python3 and /usr/lib/python3.11 as they are on this host (GNU tar, pax,
  numeric owners, xattrs);
- layer 2: whiteouts of 200 entries of usr/share/doc, an opaque usr/share/locale holding one new file;
- layer 3: 2,000 new small files and 100 files of layer 1 replaced.

Made once (about two minutes on 2 cores) and reused; remove the directory to make it again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import typing as t

from common import IMAGES_DIR, BenchError

LARGE_LAYOUT_DIR = os.path.join(IMAGES_DIR, 'oci', 'large')
LARGE_TAG = 'large'
HOST_TREES = ('usr/share', 'usr/lib/python3', 'usr/lib/python3.11')
CHUNK = 1 << 20


def _blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, 'blobs', 'sha256', digest.split(':', 1)[1])


def _gzip_layer(layout: str, chunks: t.Iterable[bytes]) -> t.Dict[str, t.Any]:
    """Write an uncompressed tar stream as a gzip blob; its descriptor, with the diff_id."""
    temporary = os.path.join(layout, 'blobs', 'sha256', '.layer.tmp')
    diff = hashlib.sha256()
    with open(temporary, 'wb') as raw:
        with gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=6, mtime=0) as compressed:
            for chunk in chunks:
                diff.update(chunk)
                compressed.write(chunk)
    digest = _sha256_of(temporary)
    os.rename(temporary, _blob_path(layout, digest))
    return {'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'digest': digest,
            'size': os.path.getsize(_blob_path(layout, digest)), 'diff_id': 'sha256:' + diff.hexdigest()}


def _sha256_of(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b''):
            hasher.update(chunk)
    return 'sha256:' + hasher.hexdigest()


def _host_tar() -> t.Iterator[bytes]:
    argv = ['tar', '-C', '/', '--format=pax', '--numeric-owner', '--xattrs', "--xattrs-include=*", '-cf', '-']
    argv += [tree for tree in HOST_TREES if os.path.isdir('/' + tree)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    yield from iter(lambda: process.stdout.read(CHUNK), b'')  # type: ignore[union-attr]
    if process.wait() not in (0, 1):  # 1: a file changed while it was read
        raise BenchError('tar of the host trees failed (exit %d)' % process.returncode)


def _tar_of(entries: t.Sequence[t.Tuple[str, t.Optional[bytes]]]) -> t.Iterator[bytes]:
    """A small tar: (name, content) files, (name, None) directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as archive:
        for name, content in entries:
            member = tarfile.TarInfo(name)
            member.mtime = 1700000000
            if content is None:
                member.type, member.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(member)
            else:
                member.mode, member.size = 0o644, len(content)
                archive.addfile(member, io.BytesIO(content))
    yield buffer.getvalue()


def _changes() -> t.Tuple[t.List[t.Tuple[str, t.Optional[bytes]]], t.List[t.Tuple[str, t.Optional[bytes]]]]:
    docs = sorted(os.listdir('/usr/share/doc'))[:200]
    whiteouts = [('usr/share/doc/.wh.%s' % name, b'') for name in docs]
    opaque = [('usr/share/locale', None), ('usr/share/locale/.wh..wh..opq', b''),
              ('usr/share/locale/only-this', b'the opaque directory keeps this one\n')]
    licenses = sorted(os.listdir('/usr/share/common-licenses'))[:100] if os.path.isdir('/usr/share/common-licenses') \
        else []
    replaced = [('usr/share/common-licenses/%s' % name, b'replaced in layer 3\n') for name in licenses]
    added = [('srv/bench', None)] + [('srv/bench/file-%04d' % number, b'%d\n' % number) for number in range(2000)]
    return whiteouts + opaque, replaced + added


def build_large_image() -> str:
    """The layout directory; made if missing."""
    if os.path.exists(os.path.join(LARGE_LAYOUT_DIR, 'index.json')):
        return LARGE_LAYOUT_DIR
    work = LARGE_LAYOUT_DIR + '.new'
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, 'blobs', 'sha256'))
    second, third = _changes()
    layers = [_gzip_layer(work, _host_tar()), _gzip_layer(work, _tar_of(second)), _gzip_layer(work, _tar_of(third))]
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': [layer.pop('diff_id') for layer in layers]},
                         'config': {}}, sort_keys=True).encode()
    config_digest = 'sha256:' + hashlib.sha256(config).hexdigest()
    with open(_blob_path(work, config_digest), 'wb') as stream:
        stream.write(config)
    manifest = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                           'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                      'digest': config_digest, 'size': len(config)},
                           'layers': layers}, sort_keys=True).encode()
    manifest_digest = 'sha256:' + hashlib.sha256(manifest).hexdigest()
    with open(_blob_path(work, manifest_digest), 'wb') as stream:
        stream.write(manifest)
    with open(os.path.join(work, 'oci-layout'), 'w', encoding='utf-8') as stream:
        json.dump({'imageLayoutVersion': '1.0.0'}, stream)
    with open(os.path.join(work, 'index.json'), 'w', encoding='utf-8') as stream:
        json.dump({'schemaVersion': 2, 'manifests': [{
            'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': manifest_digest,
            'size': len(manifest), 'annotations': {'org.opencontainers.image.ref.name': LARGE_TAG}}]}, stream)
    os.rename(work, LARGE_LAYOUT_DIR)
    return LARGE_LAYOUT_DIR
