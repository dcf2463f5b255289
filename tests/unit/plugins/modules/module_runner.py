# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running container_rootfs.main() in a test, the way Ansible hands a module its arguments."""

from __future__ import annotations

import contextlib
import json
import typing as t
from unittest import mock

import pytest
from ansible.module_utils import basic

from ansible_collections.virt.bootstrap.plugins.modules import container_rootfs

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19: the classic way
    @contextlib.contextmanager  # type: ignore[no-redef]
    def patch_module_args(args: t.Optional[t.Dict[str, t.Any]] = None) -> t.Iterator[None]:
        serialized = json.dumps({'ANSIBLE_MODULE_ARGS': args or {}}).encode('utf-8')
        with mock.patch.object(basic, '_ANSIBLE_ARGS', serialized):
            yield


def run_main(capsys: pytest.CaptureFixture, args: t.Dict[str, t.Any], check_mode: bool = False,
             diff: bool = False) -> t.Tuple[int, str, t.Dict[str, t.Any]]:
    """Run main() once; returns (exit code, the JSON text it printed, the result)."""
    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)):
        with pytest.raises(SystemExit) as caught:
            container_rootfs.main()
    output = capsys.readouterr().out
    return t.cast(int, caught.value.code), output, json.loads(output)
