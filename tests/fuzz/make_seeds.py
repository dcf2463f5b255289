# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the checked-in seed corpus (tests/fuzz/corpus/HARNESS/NAME). Run it again after changing it.

Seeds are the inputs a fuzzer starts from and mutates: the shapes real images and hostile ones take.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
DIGEST = 'sha256:' + 'a' * 64


def tar(entries: t.Sequence[t.Tuple[str, bytes, t.Dict[str, t.Any]]], format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=format) as archive:
        for name, kind, fields in entries:
            member = tarfile.TarInfo(name)
            member.type = kind
            content = fields.pop('content', b'') if kind == tarfile.REGTYPE else b''
            for key, value in fields.items():
                setattr(member, key, value)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content) if content else None)
    return buffer.getvalue()


def file(name: str, content: bytes = b'x\n', **fields: t.Any) -> t.Tuple[str, bytes, t.Dict[str, t.Any]]:
    return name, tarfile.REGTYPE, dict(fields, content=content, mode=fields.get('mode', 0o644))


def directory(name: str, **fields: t.Any) -> t.Tuple[str, bytes, t.Dict[str, t.Any]]:
    return name, tarfile.DIRTYPE, dict(fields, mode=fields.get('mode', 0o755))


def symlink(name: str, target: str) -> t.Tuple[str, bytes, t.Dict[str, t.Any]]:
    return name, tarfile.SYMTYPE, {'linkname': target}


def hardlink(name: str, target: str) -> t.Tuple[str, bytes, t.Dict[str, t.Any]]:
    return name, tarfile.LNKTYPE, {'linkname': target}


LAYERS = {
    'plain': tar([directory('bin'), file('bin/sh', b'#!/bin/sh\n', mode=0o4755, uid=0, gid=0),
                  file('etc/os-release', b'ID=seed\n'), symlink('bin/bash', 'sh')]),
    'gzip': gzip.compress(tar([directory('usr'), file('usr/x', b'gz\n')]), mtime=0),
    'traversal': tar([file('../outside/escaped'), file('/outside/absolute'), file('a/../../outside/b')]),
    'through-links': tar([file('up/escaped'), file('upup/escaped'), file('absolute/escaped'),
                          file('chain/escaped'), file('lib/libc.so', b'\x7fELF'), file('host-etc/passwd')]),
    'replace-links': tar([directory('up'), file('up/now-inside'), symlink('etc', '../outside'),
                          file('etc/after')]),
    'hardlinks': tar([hardlink('stolen', '../outside/sentinel'), hardlink('stolen2', 'up/sentinel'),
                      hardlink('kept', 'etc/passwd'), hardlink('self', 'self')]),
    'whiteouts': tar([file('etc/.wh.passwd', b''), file('srv/.wh..wh..opq', b''), file('.wh.lib', b''),
                      file('up/.wh.sentinel', b''), file('.wh.up', b''), file('.wh..', b'')]),
    'devices': tar([('dev/null', tarfile.CHRTYPE, {'devmajor': 1, 'devminor': 3, 'mode': 0o666}),
                    ('dev/sda', tarfile.BLKTYPE, {'devmajor': 8, 'devminor': 0}),
                    ('run/fifo', tarfile.FIFOTYPE, {})]),
    'xattrs': tar([file('bin/ping', b'ping', pax_headers={
        'SCHILY.xattr.security.capability': '\x01\x00\x00\x02\x00\x20\x00\x00' + '\x00' * 12,
        'SCHILY.xattr.trusted.evil': 'x',
        'SCHILY.xattr.user.ok': 'y'})]),
    'long-names': tar([file('d/' * 120 + 'f'), symlink('l' * 300, 't' * 300)], format=tarfile.GNU_FORMAT),
    'modes': tar([directory('locked', mode=0o000), file('locked/inside'), directory('.', mode=0o700)]),
    'sparse-size': tar([file('big', b'', size=1 << 40)]),
}


def gnu_tar(*options: str) -> bytes:
    """A small tree with a sparse file, as GNU tar writes it with `options` (fixed owners and times)."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = os.path.join(scratch, 'tree')
        os.makedirs(os.path.join(tree, 'd' * 30, 'e' * 80))
        with open(os.path.join(tree, 'sparse'), 'wb') as stream:
            stream.write(b'head')
            stream.seek(20000)
            stream.write(b'middle')
            stream.seek(50000)
            stream.write(b'end')
        with open(os.path.join(tree, 'd' * 30, 'e' * 80, 'f' * 40), 'wb') as stream:
            stream.write(b'deep\n')
        os.symlink('sparse', os.path.join(tree, 'link'))
        os.link(os.path.join(tree, 'sparse'), os.path.join(tree, 'hard'))
        archive = os.path.join(scratch, 'out.tar')
        # PAX headers named without the process id and without access and change times: the same seeds each run.
        pax = ['--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'] if '--format=pax' in options else []
        subprocess.run(['tar', '--numeric-owner', '--owner=0', '--group=0', '--mtime=@1500000000',
                        '--sort=name', '-C', tree, '-cf', archive] + list(options) + pax + ['.'], check=True)
        with open(archive, 'rb') as stream:
            return _trimmed(_without_process_id(stream.read()))


def _without_process_id(archive: bytes) -> bytes:
    """GNU tar names sparse files ./GNUSparseFile.PID/NAME in their headers: the same digits every run."""
    data = bytearray(archive)
    for match in re.finditer(rb'GNUSparseFile\.([0-9]+)', archive):
        data[match.start(1):match.end(1)] = b'1' * len(match.group(1))
        block = match.start() // 512 * 512
        if match.start() - block >= 100:
            continue  # not in a header's name field (a PAX record keeps its length)
        data[block + 148:block + 156] = b' ' * 8
        data[block + 148:block + 156] = b'%06o\0 ' % sum(data[block:block + 512])
    return bytes(data)


def _trimmed(archive: bytes) -> bytes:
    """Without the zeros GNU tar pads its last record with, past the two end-of-archive blocks."""
    data = archive.rstrip(b'\0')
    return data + bytes(-len(data) % 512 + 1024)


def _number_in_base_256(archive: bytes) -> bytes:
    """The first header with its uid written in GNU's base-256 form, checksum fixed."""
    header = bytearray(archive[:512])
    header[108:116] = b'\x80' + (1234).to_bytes(7, 'big')
    header[148:156] = b' ' * 8
    header[148:156] = b'%06o\0 ' % sum(header)
    return bytes(header) + archive[512:]


def tar_seeds() -> t.Dict[str, bytes]:
    plain = [directory('etc'), file('etc/os-release', b'ID=seed\n', mtime=1500000000), symlink('lib', 'usr/lib'),
             hardlink('etc/hard', 'etc/os-release'), ('dev/null', tarfile.CHRTYPE, {'devmajor': 1, 'devminor': 3}),
             file('d/' * 60 + 'long', b'long\n')]
    seeds = {'tarfile-' + name: tar(plain, format=number)
             for name, number in (('pax', tarfile.PAX_FORMAT), ('gnu', tarfile.GNU_FORMAT),
                                  ('ustar', tarfile.USTAR_FORMAT))}
    seeds['pax-records'] = tar([file('bin/ping', b'p', pax_headers={
        'mtime': '1700000000.123456789', 'SCHILY.xattr.security.capability': '\x01\x00\x00\x02' + '\x00' * 16,
        'LIBARCHIVE.xattr.user.with%3Dequals': 'AAEC/w', 'uid': '4321', 'path': 'bin/ping2'})])
    seeds['global'] = tarfile.TarInfo.create_pax_global_header({'mtime': '1600000000.5', 'comment': 'seed'}) + \
        tar([file('after', b'a')])
    seeds['base-256'] = _number_in_base_256(tar([file('owner', b'o')], format=tarfile.GNU_FORMAT))
    for name, options in (('gnu-tar-gnu', ['--format=gnu', '--sparse']),
                          ('gnu-tar-oldgnu', ['--format=oldgnu', '--sparse']),
                          ('gnu-tar-v7', ['--format=v7', '--exclude=./' + 'd' * 30]), ('gnu-tar-ustar', ['--format=ustar']),
                          ('gnu-tar-pax-0.0', ['--format=pax', '--sparse', '--sparse-version=0.0']),
                          ('gnu-tar-pax-0.1', ['--format=pax', '--sparse', '--sparse-version=0.1']),
                          ('gnu-tar-pax-1.0', ['--format=pax', '--sparse', '--sparse-version=1.0'])):
        seeds[name] = gnu_tar(*options)
    return {name: _trimmed(data) for name, data in seeds.items()}


METADATA = {
    'manifest': {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                 'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': DIGEST, 'size': 2},
                 'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'digest': DIGEST,
                             'size': 10}]},
    'index': {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
              'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': DIGEST, 'size': 3,
                             'platform': {'os': 'linux', 'architecture': 'arm64', 'variant': 'v8'}},
                            {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': DIGEST, 'size': 3,
                             'annotations': {'vnd.docker.reference.type': 'attestation-manifest'}}]},
    'config': {'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': [DIGEST]},
               'config': {'Entrypoint': ['/bin/sh'], 'Cmd': ['-c', 'true'], 'Env': ['A=b=c', 'NOEQ'],
                          'WorkingDir': '/srv', 'User': '1:1', 'Labels': {'k': 'v'}}},
    'docker-manifest': {'schemaVersion': 2, 'mediaType': 'application/vnd.docker.distribution.manifest.v2+json',
                        'config': {'mediaType': 'application/vnd.docker.container.image.v1+json', 'digest': DIGEST,
                                   'size': 2}, 'layers': []},
}

REFERENCES = [
    'docker://debian:bookworm', 'docker://registry.example.com:5000/team/app:1.2@' + DIGEST,
    'docker://[::1]:5000/app', 'docker://user:secret@host/app', 'oci:/srv/layout:tag', 'oci-archive:/x.tar',
    'docker-archive:/x.tar:name:tag', 'docker-archive:/x.tar:@1', 'file:///srv/rootfs.tar.gz', '/srv/rootfs.tar',
    'linux/arm64/v8', 'x86_64', 'armhf',
]

AUTH_FILES = {
    'auths': {'auths': {'docker.io': {'auth': base64.b64encode(b'user:pass').decode()},
                        'https://registry.example.com:5000/v1/': {'identitytoken': 'tok'},
                        '127.0.0.1:5000/team': {'auth': base64.b64encode(b'u:p:with:colons').decode()}}},
    'helpers': {'credHelpers': {'docker.io': 'desktop', 'registry.example.com:5000': '../../bin/sh'},
                'credsStore': 'pass'},
}
CHALLENGES = [
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"',
    'Basic realm="registry"', 'Bearer realm="x\\"y",error="insufficient_scope"',
]

SHADOW = [
    b'root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n',
    b'root:$6$salt$hash:19000::::::\nroot:second:::\n',
    b'nobody:x:1::\n', b'root\nroot:\n',
]


def write(harness: str, name: str, data: bytes) -> None:
    directory = os.path.join(HERE, 'corpus', harness)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), 'wb') as stream:
        stream.write(data)


def main() -> None:
    for name, data in LAYERS.items():
        write('layers', name, data)
    for name, data in tar_seeds().items():
        write('tar', name, data)
    for name, document in METADATA.items():
        write('metadata', name, json.dumps(document, sort_keys=True).encode())
    for number, text in enumerate(REFERENCES):
        write('references', 'reference-%02d' % number, text.encode())
    for name, document in AUTH_FILES.items():
        write('auth', name, json.dumps(document, sort_keys=True).encode())
    for number, text in enumerate(CHALLENGES):
        write('auth', 'challenge-%02d' % number, text.encode())
    for number, content in enumerate(SHADOW):
        write('shadow', 'shadow-%02d' % number, content)


if __name__ == '__main__':
    main()
