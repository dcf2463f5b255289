# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz the shadow editor: any /etc/shadow an image carries, read, edited, read back."""

from __future__ import annotations

import os
import tempfile

import atheris

from ansible_collections.virt.bootstrap.tests.fuzz._harness import fuzz, scratch_parent, typed_errors_only

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow

ROOT = tempfile.mkdtemp(prefix='fuzz-shadow-', dir=scratch_parent())
os.makedirs(os.path.join(ROOT, 'etc'), exist_ok=True)
SHADOW = os.path.join(ROOT, 'etc', 'shadow')
NEW_HASH = '$6$fuzzsalt$' + 'x' * 86


def edit(data: bytes) -> None:
    shadow.read_root_hash(ROOT)
    shadow.set_root_hash(ROOT, NEW_HASH)
    assert shadow.read_root_hash(ROOT) == NEW_HASH
    with open(SHADOW, 'rb') as stream:
        edited = stream.read()
    # Only root's line changes: every other line is kept byte for byte.
    kept = [line for line in data.split(b'\n') if not line.startswith(b'root:')]
    assert [line for line in edited.split(b'\n') if not line.startswith(b'root:')] == kept


def test_one_input(data: bytes) -> None:
    with open(SHADOW, 'wb') as stream:
        stream.write(data)
    typed_errors_only(edit, data)


if __name__ == '__main__':
    fuzz(test_one_input)
