# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz the source URI and image reference parsers with any text."""

from __future__ import annotations

import atheris

from ansible_collections.virt.bootstrap.tests.fuzz._harness import fuzz, typed_errors_only

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils._platforms import parse_platform
    from ansible_collections.virt.bootstrap.plugins.module_utils._registry.reference import parse_reference
    from ansible_collections.virt.bootstrap.plugins.module_utils._sources import parse_source


def parse_reference_and_back(text: str) -> None:
    reference = parse_reference(text)
    # What a parsed reference prints must parse to the same reference.
    assert parse_reference(str(reference)) == reference, (text, str(reference))


def test_one_input(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    typed_errors_only(parse_source, text)
    typed_errors_only(parse_reference_and_back, text)
    typed_errors_only(parse_platform, text)


if __name__ == '__main__':
    fuzz(test_one_input)
