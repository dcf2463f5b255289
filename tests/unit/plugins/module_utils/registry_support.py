# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real registries for the registry unit tests, shared by every test of one pytest process.

ansible-test runs each unit test in a fork of its worker, so a session fixture would start a
registry per test and never stop it. Instead the first test that needs a registry starts it (in its
own session, outliving that fork) and describes it in a state directory the worker made before
forking; later tests reuse it; conftest.py stops everything when the worker ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import typing as t
import urllib.request
import uuid
from dataclasses import dataclass

from ansible_collections.virt.bootstrap.tests.registry import push as pusher
from ansible_collections.virt.bootstrap.tests.registry import registry as registries
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import (
    MEDIA_OCI_INDEX,
    REF_NAME,
    OciLayoutBuilder,
    make_tar,
)

# Only these are a reason to skip: CI installs them (and openssl and htpasswd come with the system).
REQUIRED = (registries.REGISTRY_BINARY, 'skopeo')

# Incompressible, big enough that a cut in its middle leaves a real remainder to resume.
BIG_FILE = random.Random(20240229).randbytes(1536 * 1024)
LAYER_BASE = make_tar({'etc': None, 'etc/os-release': b'ID=registry-test\n', 'etc/motd': b'from layer 1\n',
                       'opt': None, 'opt/old': None, 'opt/old/a': b'a\n', 'opt/old/b': b'b\n'})
LAYER_CHANGES = make_tar({'etc': None, 'etc/.wh.motd': b'', 'opt': None, 'opt/.wh.old': b'',
                          'srv': None, 'srv/new': b'added in layer 2\n'})
LAYER_BIG = make_tar({'var': None, 'var/big.bin': BIG_FILE})
LAYER_OTHER = make_tar({'etc': None, 'etc/os-release': b'ID=registry-test-moved\n'})
LAYER_ARCH = {arch: make_tar({'etc': None, 'etc/arch': arch.encode() + b'\n'}) for arch in ('amd64', 'arm64')}

# name:tag in every registry -> (layout tag, push mode)
PUSHED = {
    'app:base': ('base', ''),          # 3 gzip layers: whiteouts, then a big file
    'app:other': ('other', ''),        # another image, to move a tag to
    'app:zstd': ('zstd', 'zstd'),      # 2 zstd layers
    'app:v2s2': ('base', 'v2s2'),      # a Docker schema 2 manifest
    'app:multi': ('multi', 'all'),     # an index: linux/amd64 and linux/arm64/v8
    'app:shadow': ('base', ''),        # a tag that starts with "sha"
}
AUTH_PUSHED = ('app:base',)  # what the TLS and token registries get
# name:tag in the plain HTTP registry -> the pushed index it wraps in an index of its own (skopeo cannot push
# an index inside an index, so it is PUT as is).
NESTED = {'app:nested': 'app:multi'}


@dataclass
class Pushed:
    """A registry with the test images in it."""
    registry: registries.Registry
    digests: t.Dict[str, str]  # name:tag -> manifest (or index) digest
    layout: str  # the OCI layout the images came from (tags as in PUSHED)

    def ref(self, name: str) -> str:
        return self.registry.ref(name)


def missing() -> t.List[str]:
    return [tool for tool in REQUIRED if shutil.which(tool) is None]


def build_layout(directory: str) -> str:
    """One OCI layout holding every test image under its tag."""
    builder = OciLayoutBuilder(directory)
    base = builder.image([LAYER_BASE, LAYER_CHANGES, LAYER_BIG])
    other = builder.image([LAYER_BASE, LAYER_OTHER])
    zstd = builder.image([LAYER_BASE, LAYER_CHANGES], compression='zstd')
    amd64 = builder.image([LAYER_BASE, LAYER_ARCH['amd64']], platform='linux/amd64')
    arm64 = builder.image([LAYER_BASE, LAYER_ARCH['arm64']], platform='linux/arm64/v8')
    multi = builder.index([(amd64, 'linux/amd64'), (arm64, 'linux/arm64/v8')])
    builder.write_index([(base, 'base'), (other, 'other'), (zstd, 'zstd'), (multi, 'multi')])
    return directory


def push_images(registry: registries.Registry, layout: str, names: t.Iterable[str]) -> t.Dict[str, str]:
    digests = {}
    for name in names:
        tag, mode = PUSHED[name]
        digests[name] = pusher.push('oci:%s:%s' % (layout, tag), registry.host, name, registry.auth_file,
                                    mode)['digest']
    return digests


def put_wrapping_index(registry: registries.Registry, name: str, inner_digest: str) -> str:
    """PUT an index listing only the index `inner_digest` (in the same repository) as `name`; returns its digest."""
    repository, tag = name.split(':')
    manifests_url = '%s/v2/%s/manifests/' % (registry.url, repository)
    with urllib.request.urlopen(urllib.request.Request(manifests_url + inner_digest,
                                                       headers={'Accept': MEDIA_OCI_INDEX})) as response:
        inner_size = len(response.read())
    body = json.dumps({'schemaVersion': 2, 'mediaType': MEDIA_OCI_INDEX, 'manifests': [
        {'mediaType': MEDIA_OCI_INDEX, 'digest': inner_digest, 'size': inner_size}]}).encode('utf-8')
    request = urllib.request.Request(manifests_url + tag, data=body, method='PUT',
                                     headers={'Content-Type': MEDIA_OCI_INDEX})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201, response.status
    return 'sha256:' + hashlib.sha256(body).hexdigest()


def shared_registry(state_dir: str, kind: str) -> Pushed:
    """The registry of `kind` for this test process, started and filled on first use."""
    layout = os.path.join(state_dir, 'layout')
    if not os.path.exists(os.path.join(layout, 'index.json')):
        build_layout(layout + '.new')
        os.rename(layout + '.new', layout)
    workdir = os.path.join(state_dir, kind)
    described = os.path.join(workdir, 'pushed.json')
    if os.path.exists(described):
        with open(described, encoding='utf-8') as stream:
            return Pushed(registries.load(workdir), json.load(stream), layout)
    if os.path.exists(workdir):
        stop_registry(workdir)  # a start that failed half way
        shutil.rmtree(workdir)
    registry = registries.start(kind, workdir)
    digests = push_images(registry, layout, PUSHED if kind == 'http' else AUTH_PUSHED)
    if kind == 'http':
        for name, inner in NESTED.items():
            digests[name] = put_wrapping_index(registry, name, digests[inner])
    with open(described, 'w', encoding='utf-8') as stream:
        json.dump(digests, stream)
    return Pushed(registry, digests, layout)


def stop_registry(workdir: str) -> None:
    if os.path.exists(os.path.join(workdir, registries.DESCRIPTION)):
        registries.stop(registries.load(workdir))


def stop_all(state_dir: str) -> None:
    for kind in registries.KINDS:
        stop_registry(os.path.join(state_dir, kind))


def unique_name(prefix: str = 'repo') -> str:
    """A repository name no other test uses (tests that move tags need their own)."""
    return '%s-%s' % (prefix, uuid.uuid4().hex[:12])


def rootfs_tree(root: str) -> t.Dict[str, t.Any]:
    """Paths below `root` with their content (files), target (symlinks) or None (directories)."""
    found: t.Dict[str, t.Any] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            relative = os.path.relpath(path, root)
            if stat.S_ISREG(mode):
                with open(path, 'rb') as stream:
                    found[relative] = stream.read()
            elif stat.S_ISLNK(mode):
                found[relative] = os.readlink(path)
            else:
                found[relative] = None
    return found


BASE_TREE = {
    'etc': None, 'etc/os-release': b'ID=registry-test\n', 'opt': None, 'srv': None,
    'srv/new': b'added in layer 2\n', 'var': None, 'var/big.bin': BIG_FILE,
}


def files_below(root: str) -> t.List[str]:
    """Every file below `root` (empty when it does not exist)."""
    return sorted(os.path.join(directory, name) for directory, _dirs, names in os.walk(root) for name in names)


def layer_descriptors(layout: str, tag: str) -> t.List[t.Dict[str, t.Any]]:
    """The layer descriptors of the image tagged `tag` in `layout`, bottom first."""
    def blob(digest: str) -> t.Dict[str, t.Any]:
        with open(os.path.join(layout, 'blobs', *digest.split(':', 1)), encoding='utf-8') as stream:
            return t.cast(t.Dict[str, t.Any], json.load(stream))
    with open(os.path.join(layout, 'index.json'), encoding='utf-8') as stream:
        index = json.load(stream)
    entry = next(entry for entry in index['manifests'] if entry['annotations'][REF_NAME] == tag)
    return t.cast(t.List[t.Dict[str, t.Any]], blob(entry['digest'])['layers'])


def layer_digests(layout: str, tag: str) -> t.List[str]:
    """The layer digests of the image tagged `tag` in `layout`, bottom first."""
    return [layer['digest'] for layer in layer_descriptors(layout, tag)]


def unverified_cache_files(cache_dir: str) -> t.List[str]:
    """Cache files that are not a complete blob hashing to its name: partial files count too (the lock and
    the refs naming what each dest holds are not blobs)."""
    bad = []
    for path in files_below(cache_dir):
        if path == os.path.join(cache_dir, 'lock') or os.path.dirname(path) == os.path.join(cache_dir, 'refs'):
            continue
        algorithm, hexdigest = os.path.basename(os.path.dirname(path)), os.path.basename(path)
        with open(path, 'rb') as stream:
            if algorithm not in ('sha256', 'sha512') or hashlib.new(algorithm, stream.read()).hexdigest() != hexdigest:
                bad.append(os.path.relpath(path, cache_dir))
    return bad
