# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz the readers of manifests, indexes and configs: bytes a registry or an archive sends, read as each."""

from __future__ import annotations

import atheris

from ansible_collections.virt.bootstrap.tests.fuzz._harness import fuzz, typed_errors_only

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils import _image as image
    from ansible_collections.virt.bootstrap.plugins.module_utils import _index as index


def read_as_every_kind(data: bytes) -> None:
    document = image.parse_json_object(data, 'document')
    for reader in (read_manifest, read_index, read_config):
        typed_errors_only(reader, document)


def read_manifest(document: dict) -> None:
    manifest = image.image_manifest(document, 'manifest')
    for layer in manifest.layers:
        assert image.is_digest(layer.digest) and isinstance(layer.size, int) and layer.size >= 0


def read_index(document: dict) -> None:
    for entry in index.listed_descriptors(document, 'index'):
        assert image.is_digest(entry.digest)
        index.is_attestation(entry, entry.platform)


def read_config(document: dict) -> None:
    image.platform_from_json(document, 'config')
    runtime = image.runtime_config(document, 'config')
    assert all(isinstance(value, str) for value in runtime['env'].values())


def test_one_input(data: bytes) -> None:
    typed_errors_only(read_as_every_kind, data)


if __name__ == '__main__':
    fuzz(test_one_input)
