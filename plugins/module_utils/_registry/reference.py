# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Image references as docker and skopeo read them: [registry[:port]/]repository[:tag][@digest]."""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._image import is_digest

DEFAULT_REGISTRY = 'docker.io'
# Where docker.io's API really lives.
DOCKER_HUB_API_HOST = 'registry-1.docker.io'

_COMPONENT_RE = re.compile(r'^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$')
_TAG_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')
# What a digest someone got wrong looks like (algorithm:hex), as opposed to USER[:PASSWORD]@HOST.
_DIGEST_LIKE_RE = re.compile(r'^[A-Za-z0-9]+:[0-9A-Fa-f]+$')
_HOST_RE = re.compile(r'^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*'
                      r'|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$')


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str
    tag: t.Optional[str] = None
    digest: t.Optional[str] = None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def manifest_reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or 'latest'

    def __str__(self) -> str:
        text = '%s/%s' % (self.registry, self.repository)
        if self.tag:
            text += ':' + self.tag
        if self.digest:
            text += '@' + self.digest
        return text


def parse_reference(text: str) -> ImageReference:
    """Parse what follows docker:// (with or without the leading slashes)."""
    original = text
    text = text[2:] if text.startswith('//') else text
    if not text:
        raise SourceError('docker:// needs an image name, e.g. docker://debian:bookworm')
    digest = None
    if '@' in text:
        text, digest = text.split('@', 1)
        if not is_digest(digest):
            if not _DIGEST_LIKE_RE.match(digest):
                # Most likely USER[:PASSWORD]@REGISTRY, as in a URL: repeat none of it, it may hold a secret.
                raise SourceError("what follows '@' in a docker:// reference must be a digest (sha256:...); "
                                  'credentials (USER[:PASSWORD]@REGISTRY) cannot be part of it: give them with '
                                  'username and password, or in an auth file')
            raise SourceError('image reference has a malformed digest %r (sha256: and 64 lower-case hex digits, '
                              'or sha512: and 128)' % digest)
    tag = None
    slash = text.rfind('/')
    colon = text.rfind(':')
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.match(tag):
            raise SourceError('image reference %r has a malformed tag %r' % (original, tag))
    first, _sep, rest = text.partition('/')
    # The first component names a registry when it looks like a host: a dot, a port, or localhost.
    if rest and ('.' in first or ':' in first or first == 'localhost' or first.startswith('[')):
        if not _HOST_RE.match(first):
            raise SourceError('image reference %r has a malformed registry %r' % (original, first))
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, text
    if registry in ('index.docker.io', 'registry-1.docker.io'):
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and '/' not in repository:
        repository = 'library/' + repository
    if not repository or not all(_COMPONENT_RE.match(part) for part in repository.split('/')):
        raise SourceError('image reference %r has a malformed repository %r (lower case letters, digits and '
                          'separators only)' % (original, repository))
    if tag is None and digest is None:
        tag = 'latest'
    return ImageReference(registry, repository, tag, digest)
