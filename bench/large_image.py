# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bench's large image, made by the bench from this machine's own files (issue 12), and its variants.

    oci:bench/.cache/large-images/large:large   3 gzip layers, >= 1 GB unpacked, >= 50,000 entries

- layer 1: /usr/share, /usr/lib/python3 and /usr/lib/python3.11 as they are on this host (GNU tar, pax,
  numeric owners, xattrs);
- layer 2: whiteouts of 200 entries of usr/share/doc, an opaque usr/share/locale holding one new file;
- layer 3: 2,000 new small files and 100 files of layer 1 replaced.

Variants (each its own layout, tag `large`, made from the same tars):
- `large-zstd`: the same layers as zstd (level 3), for ours next to `tar -I zstd -xf`;
- `large-tar`: the same layers uncompressed, for ours next to `tar -xf`;
- `large-2x`: twice the size: layer 1 once more under `copy/` as a second layer (4 layers), to see
  whether memory stays flat as the image grows.

Made once (about two minutes on 2 cores, the variants a minute each) and reused; remove a directory
to make it again.
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

from common import CACHE_DIR, BenchError

LARGE_TAG = 'large'
HOST_TREES = ('usr/share', 'usr/lib/python3', 'usr/lib/python3.11')
CHUNK = 1 << 20


def _blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, 'blobs', 'sha256', digest.split(':', 1)[1])


VARIANTS = ('large', 'large-zstd', 'large-tar', 'large-2x')
_MEDIA_TYPES = {'gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
                'zstd': 'application/vnd.oci.image.layer.v1.tar+zstd',
                'none': 'application/vnd.oci.image.layer.v1.tar'}


def layout_dir(variant: str) -> str:
    # Not under common.IMAGES_DIR: tests/images/build-images.sh owns that and empties it when it changes.
    return os.path.join(CACHE_DIR, 'large-images', variant)


def _layer(layout: str, chunks: t.Iterable[bytes], compression: str = 'gzip') -> t.Dict[str, t.Any]:
    """Write an uncompressed tar stream as a blob (gzip level 6, zstd level 3 or none); its descriptor and diff_id."""
    temporary = os.path.join(layout, 'blobs', 'sha256', '.layer.tmp')
    diff = hashlib.sha256()
    with open(temporary, 'wb') as raw:
        if compression == 'gzip':
            with gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=6, mtime=0) as compressed:
                for chunk in chunks:
                    diff.update(chunk)
                    compressed.write(chunk)
        elif compression == 'zstd':
            process = subprocess.Popen(['zstd', '-3', '-q', '-c'], stdin=subprocess.PIPE, stdout=raw)
            assert process.stdin is not None
            for chunk in chunks:
                diff.update(chunk)
                process.stdin.write(chunk)
            process.stdin.close()
            if process.wait() != 0:
                raise BenchError('zstd failed (exit %d); is the zstd package installed?' % process.returncode)
        else:
            for chunk in chunks:
                diff.update(chunk)
                raw.write(chunk)
    digest = _sha256_of(temporary)
    os.rename(temporary, _blob_path(layout, digest))
    return {'mediaType': _MEDIA_TYPES[compression], 'digest': digest,
            'size': os.path.getsize(_blob_path(layout, digest)), 'diff_id': 'sha256:' + diff.hexdigest()}


def _decompressed(path: str) -> t.Iterator[bytes]:
    with gzip.open(path, 'rb') as stream:
        yield from iter(lambda: stream.read(CHUNK), b'')


def _sha256_of(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b''):
            hasher.update(chunk)
    return 'sha256:' + hasher.hexdigest()


def _host_tar(prefix: str = '') -> t.Iterator[bytes]:
    argv = ['tar', '-C', '/', '--format=pax', '--numeric-owner', '--xattrs', "--xattrs-include=*", '-cf', '-']
    if prefix:
        argv.append('--transform=s,^,%s,' % prefix)  # names and hard-link targets; symlink targets stay
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


def build_large_image(variant: str = 'large') -> str:
    """The layout directory of `variant` (one of VARIANTS); made if missing (the variants from `large`)."""
    layout = layout_dir(variant)
    if os.path.exists(os.path.join(layout, 'index.json')):
        return layout
    work = layout + '.new'
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, 'blobs', 'sha256'))
    if variant == 'large':
        second, third = _changes()
        layers = [_layer(work, _host_tar()), _layer(work, _tar_of(second)), _layer(work, _tar_of(third))]
    else:
        base = build_large_image('large')
        blobs = [_blob_path(base, descriptor['digest']) for descriptor in _manifest(base)['layers']]
        if variant == 'large-2x':
            layers = [_layer(work, _decompressed(blobs[0])), _layer(work, _host_tar(prefix='copy/'))] + \
                [_layer(work, _decompressed(blob)) for blob in blobs[1:]]
        else:
            compression = 'zstd' if variant == 'large-zstd' else 'none'
            layers = [_layer(work, _decompressed(blob), compression) for blob in blobs]
    _write_layout(work, layers)
    os.rename(work, layout)
    return layout


def _manifest(layout: str) -> t.Dict[str, t.Any]:
    with open(os.path.join(layout, 'index.json'), 'rb') as stream:
        digest = json.load(stream)['manifests'][0]['digest']
    with open(_blob_path(layout, digest), 'rb') as stream:
        return t.cast(t.Dict[str, t.Any], json.load(stream))


def _write_layout(work: str, layers: t.List[t.Dict[str, t.Any]]) -> None:
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
