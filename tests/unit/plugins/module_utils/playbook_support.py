# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running the real ansible-playbook from a unit test.

Under `ansible-test units` the `ansible-playbook` on PATH is ansible-test's shim, and the ansible package its
venv sees holds module_utils only. The controller's own interpreter (the one the venv was made from, or
python3 on PATH) with a clean environment runs the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing as t

# Set by ansible-test for its own tools; the real ansible-playbook must not see them.
_ANSIBLE_TEST_VARIABLES = ('PYTHONPATH', 'ANSIBLE_TEST_PYTHON_INTERPRETER', 'ANSIBLE_CONFIG')


def _can_run_playbooks(python: str, environment: t.Mapping[str, str]) -> bool:
    try:
        return subprocess.run([python, '-c', 'import ansible.cli.playbook'], env=dict(environment),
                              capture_output=True, check=False, timeout=60).returncode == 0
    except OSError:
        return False


def clean_environment(**extra: str) -> t.Dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in _ANSIBLE_TEST_VARIABLES}
    environment.update(extra)
    return environment


def ansible_playbook() -> t.Optional[t.List[str]]:
    """The command that runs the real ansible-playbook, or None when no interpreter here can."""
    candidates = [getattr(sys, '_base_executable', ''), sys.executable, shutil.which('python3') or '']
    environment = clean_environment()
    for python in candidates:
        if python and _can_run_playbooks(python, environment):
            return [python, '-m', 'ansible.cli.playbook']
    return None
