# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Source URIs: parse them, and open the source that turns one into an Image."""

from __future__ import annotations

import os
import re
import typing as t
import urllib.parse
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Image, Platform

LOCAL_ARCHIVE_SCHEMES = ('docker-archive', 'oci', 'oci-archive')
SUPPORTED_FORMS = '/abs/path/rootfs.tar[.gz|.xz|.bz2|.zst], file:///abs/path, ' + ', '.join(
    '%s:/path[:ref]' % scheme for scheme in LOCAL_ARCHIVE_SCHEMES) + ', docker://[registry[:port]/]image[:tag][@digest]' \
    ', virt-builder://TEMPLATE'
# USER[:PASSWORD]@ after scheme://, up to the last '@' (a password typed by hand may hold '/' or '@'
# unescaped); and after a bare scheme: (user:password@host/...), up to the last '@' before a '/'.
_URL_USERINFO_RE = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*://)(?!/).*@', re.DOTALL)
_BARE_USERINFO_RE = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*:)(?!//)[^/]*@')


@dataclass(frozen=True)
class SourceRef:
    """A parsed source URI: which kind of source, the local path, and an optional reference."""
    kind: str
    path: str
    reference: str = ''

    def __str__(self) -> str:
        if self.kind == 'file':
            return self.path
        if self.kind == 'docker':
            return 'docker://' + self.reference
        if self.kind == 'virt-builder':
            return 'virt-builder://' + self.reference
        return '%s:%s%s' % (self.kind, self.path, ':' + self.reference if self.reference else '')


class Source(t.Protocol):
    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        ...

    def close(self) -> None:
        ...


def without_userinfo(uri: str) -> str:
    """`uri` as it may be shown in a message: without any USER[:PASSWORD]@ in front of a host."""
    return _BARE_USERINFO_RE.sub(r'\1', _URL_USERINFO_RE.sub(r'\1', uri))


def parse_source(uri: str) -> SourceRef:
    """Parse a source URI without touching the filesystem."""
    if not uri:
        raise SourceError('the source is empty')
    if uri.startswith('/'):
        return SourceRef('file', os.path.normpath(uri))
    scheme, sep, rest = uri.partition(':')
    if not sep:
        raise SourceError('source %r is neither an absolute path nor a URI; supported: %s' % (uri, SUPPORTED_FORMS))
    shown = without_userinfo(uri)
    if scheme == 'file':
        try:
            parsed = urllib.parse.urlsplit(uri)
        except ValueError as exc:  # file://[ : "Invalid IPv6 URL"
            raise SourceError('file URI %r is malformed: %s' % (shown, exc))
        if parsed.netloc not in ('', 'localhost'):
            raise SourceError('file URI %r names host %r; only local files are supported'
                              % (shown, parsed.netloc.rpartition('@')[2]))
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith('/'):
            raise SourceError('file URI %r must hold an absolute path (file:///path)' % shown)
        return SourceRef('file', os.path.normpath(path))
    if scheme in LOCAL_ARCHIVE_SCHEMES:
        # As in skopeo: the path ends at the first ':'; what follows is the reference.
        path, _sep, reference = rest.partition(':')
        if not path.startswith('/'):
            raise SourceError('%s source %r needs an absolute path' % (scheme, shown))
        if path.startswith('//') and not path.startswith('///'):
            raise SourceError('%s source %r names a host; only local paths are supported (%s:/path)'
                              % (scheme, shown, scheme))
        return SourceRef(scheme, os.path.normpath(path), reference)
    if scheme == 'docker':
        from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference
        return SourceRef('docker', '', str(parse_reference(rest)))
    if scheme == 'virt-builder':
        from ansible_collections.virt.bootstrap.plugins.module_utils._sources.virt_builder import parse_template_name
        if not rest.startswith('//'):
            raise SourceError('virt-builder source %r must be written virt-builder://TEMPLATE' % shown)
        return SourceRef('virt-builder', '', parse_template_name(rest[2:], shown))
    raise SourceError('unsupported source %r (scheme %r); supported: %s' % (shown, scheme, SUPPORTED_FORMS))


def open_source(ref: SourceRef, registry_options: t.Any = None, virt_builder_options: t.Any = None) -> Source:
    """Open the source `ref` names; `registry_options` (RegistryOptions) only matter for docker://,
    `virt_builder_options` (VirtBuilderOptions) for virt-builder://."""
    # Imported here so a run only loads the code for the kind of source it uses.
    if ref.kind == 'virt-builder':
        from ansible_collections.virt.bootstrap.plugins.module_utils._sources.virt_builder import (
            VirtBuilderOptions,
            VirtBuilderSource,
        )
        return VirtBuilderSource(ref.reference, virt_builder_options or VirtBuilderOptions())
    if ref.kind == 'docker':
        from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference
        from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import (
            RegistryOptions,
            RegistrySource,
        )
        return RegistrySource(parse_reference(ref.reference), registry_options or RegistryOptions())
    if ref.kind == 'file':
        from ansible_collections.virt.bootstrap.plugins.module_utils._sources.file import RootfsTarball
        return RootfsTarball(ref.path)
    from ansible_collections.virt.bootstrap.plugins.module_utils._sources import archive
    if ref.kind == 'docker-archive':
        return archive.DockerArchive(ref.path, ref.reference)
    if ref.kind == 'oci':
        return archive.OciLayout(archive.DirectoryBlobs(ref.path), ref.path, ref.reference)
    return archive.OciLayout(archive.TarBlobs(ref.path), ref.path, ref.reference)
