# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""A rootfs tarball on the managed host, in any compression we can detect."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils._compression import (
    LayerData,
    read_up_to,
)
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import LayerError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._tar import BLOCK, check_header
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Image, Layer, Platform, file_digest

_MEDIA_BY_COMPRESSION = {
    'none': 'application/x-tar',
    'gzip': 'application/x-tar+gzip',
    'xz': 'application/x-tar+xz',
    'bzip2': 'application/x-tar+bzip2',
    'zstd': 'application/x-tar+zstd',
}


class RootfsTarball:
    def __init__(self, path: str) -> None:
        self.path = path

    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        if not os.path.exists(self.path):
            raise SourceError('%s does not exist' % self.path)
        if not os.path.isfile(self.path):
            raise SourceError('%s is not a regular file' % self.path)
        compression = _check_is_tar(self.path)
        digest = file_digest(self.path)
        layer = Layer(open_blob=lambda: open(self.path, 'rb'), digest=digest, size=os.path.getsize(self.path),
                      media_type=_MEDIA_BY_COMPRESSION[compression])
        # A bare tarball says nothing of its platform; an explicit one is recorded as asked.
        return Image(digest=digest, layers=[layer], platform=wanted)

    def close(self) -> None:
        pass


def _check_is_tar(path: str) -> str:
    """Fail early, with a clear message, on anything that does not start like a tar archive."""
    try:
        with open(path, 'rb') as stream, LayerData(stream) as decompressed:
            compression = decompressed.compression
            header = read_up_to(decompressed, BLOCK)
    except LayerError as exc:
        raise SourceError('%s is not a readable archive: %s' % (path, exc))
    try:
        check_header(header)
    except LayerError:
        raise SourceError('%s is not a tar archive (compression: %s)' % (path, compression))
    return compression
