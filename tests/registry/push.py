# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Push OCI layouts to a test registry with skopeo (test fixture).

Credentials go to skopeo as an auth file (--dest-authfile), never on its command line. TLS is not
verified (--dest-tls-verify=false): the registries are the self-signed ones of registry.py.

    python3 push.py copy REGISTRY_WORKDIR oci:LAYOUT:TAG NAME:TAG [v2s2|zstd|all]
        one image; prints {"ref": "docker://HOST/NAME:TAG", "digest": "sha256:..."}
    python3 push.py images REGISTRY_WORKDIR IMAGES_DIR
        the standard set from tests/images/build-images.sh's output (see STANDARD_IMAGES); prints
        {NAME: {"ref": ..., "digest": ...}}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import typing as t

# name in the registry -> (layout below IMAGES_DIR/oci, its tag, how to push)
STANDARD_IMAGES = {
    'busybox:multi': ('busybox', 'multi', ''),           # 3 layers: whiteouts, dir <-> file, hard links
    'busybox:zstd': ('busybox-zstd', 'multi', 'zstd'),   # the same with zstd layers
    'busybox:v2s2': ('busybox', 'multi', 'v2s2'),        # a Docker schema 2 manifest
    'busybox:opaque': ('busybox-opaque', 'opaque', ''),  # + a layer with opaque whiteouts
    'busybox:multiarch': ('busybox-multiarch', 'multiarch', 'all'),  # an index: linux/amd64 + linux/arm64
}
MODES = ('', 'v2s2', 'zstd', 'all')


def _registry(workdir: str) -> t.Dict[str, t.Any]:
    with open(os.path.join(workdir, 'registry.json'), encoding='utf-8') as stream:
        return t.cast(t.Dict[str, t.Any], json.load(stream))


def skopeo_copy(source: str, dest: str, auth_file: t.Optional[str] = None, extra: t.Sequence[str] = ()) -> str:
    """`skopeo copy SOURCE DEST`; returns the digest of the manifest (or index) written."""
    with tempfile.TemporaryDirectory(prefix='vb-push-') as scratch:
        digest_file = os.path.join(scratch, 'digest')
        argv = ['skopeo', 'copy', '-q', '--digestfile', digest_file]
        if dest.startswith('docker://'):
            argv.append('--dest-tls-verify=false')
            if auth_file:
                argv += ['--dest-authfile', auth_file]
        argv += list(extra) + [source, dest]
        completed = subprocess.run(argv, capture_output=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError('skopeo copy %s %s failed: %s' % (source, dest,
                                                                 completed.stderr.decode('utf-8', 'replace').strip()))
        if not os.path.exists(digest_file):
            return ''
        with open(digest_file, encoding='ascii') as stream:
            return stream.read().strip()


def push(source: str, host: str, name: str, auth_file: t.Optional[str] = None, mode: str = '') -> t.Dict[str, str]:
    """Push `source` (oci:LAYOUT:TAG, ...) to docker://HOST/NAME.

    mode: '' as it is; 'v2s2' as a Docker schema 2 manifest; 'all' every platform of an index;
    'zstd' recompressed to zstd first, into a fresh layout (skopeo would otherwise reuse the gzip
    blobs the registry already has and silently push gzip).
    """
    if mode not in MODES:
        raise ValueError('mode must be one of %s' % ', '.join(repr(mode) for mode in MODES))
    dest = 'docker://%s/%s' % (host, name)
    if mode == 'zstd':
        with tempfile.TemporaryDirectory(prefix='vb-zstd-') as scratch:
            layout = 'oci:%s:image' % os.path.join(scratch, 'layout')
            skopeo_copy(source, layout, extra=['--dest-compress-format', 'zstd'])
            digest = skopeo_copy(layout, dest, auth_file, extra=['--preserve-digests'])
    else:
        extra = {'': [], 'v2s2': ['--format', 'v2s2'], 'all': ['--all']}[mode]
        digest = skopeo_copy(source, dest, auth_file, extra=extra)
    return {'ref': dest, 'digest': digest}


def push_standard_images(registry_workdir: str, images_dir: str) -> t.Dict[str, t.Dict[str, str]]:
    registry = _registry(registry_workdir)
    pushed = {}
    for name, (layout, tag, mode) in STANDARD_IMAGES.items():
        source = 'oci:%s:%s' % (os.path.join(images_dir, 'oci', layout), tag)
        pushed[name] = push(source, registry['host'], name, registry.get('auth_file'), mode)
    return pushed


def main(argv: t.Sequence[str]) -> int:
    try:
        if len(argv) in (4, 5) and argv[0] == 'copy' and (argv[4:] or [''])[0] in MODES:
            registry = _registry(argv[1])
            result: t.Any = push(argv[2], registry['host'], argv[3], registry.get('auth_file'),
                                 (argv[4:] or [''])[0])
        elif len(argv) == 3 and argv[0] == 'images':
            result = push_standard_images(argv[1], argv[2])
        else:
            sys.stderr.write('usage:\n' + __doc__.split('\n\n', 2)[2])
            return 2
    except RuntimeError as exc:
        sys.stderr.write('push.py: %s\n' % exc)
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
