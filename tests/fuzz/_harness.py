# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every fuzz harness shares: the project's modules instrumented, and the one rule of the game.

The rule: for any input, the code under test returns or raises one of the project's typed errors
(BootstrapError and its subclasses). Any other exception escapes test_one_input, and atheris reports
it as a crash with the input that caused it.
"""

from __future__ import annotations

import os
import sys
import typing as t

import atheris

with atheris.instrument_imports(include=['ansible_collections.virt.bootstrap']):
    from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError


def typed_errors_only(function: t.Callable[..., t.Any], *args: t.Any) -> None:
    """Call `function`; a BootstrapError is an answer, anything else propagates to atheris."""
    try:
        function(*args)
    except BootstrapError:
        pass


def scratch_parent() -> t.Optional[str]:
    """Where harnesses make their scratch trees: memory when the machine has it (fsync is free there)."""
    return '/dev/shm' if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK) else None


def fuzz(test_one_input: t.Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
