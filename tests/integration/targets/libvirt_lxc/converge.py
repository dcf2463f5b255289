# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run ansible-playbook and judge it by its own recap, as a user reads it (test helper).

    python3 converge.py changed|unchanged [--secret TEXT] PLAYBOOK [ansible-playbook arguments]

Exits non-zero when the playbook fails, or when a host's recap does not say what was expected:
`changed` wants changed>0 on every host of the recap, `unchanged` changed=0 on every one; or when
the output shows TEXT (a secret the playbook is given in a file).
"""

from __future__ import annotations

import re
import subprocess
import sys

RECAP_LINE = re.compile(r'^(?P<host>\S+)\s*:\s*ok=\d+\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+'
                        r'failed=(?P<failed>\d+)')
EXPECTATIONS = ('changed', 'unchanged')


def main(argv: list) -> int:
    if len(argv) < 2 or argv[0] not in EXPECTATIONS:
        sys.stderr.write('usage: converge.py changed|unchanged PLAYBOOK [ARGS]\n')
        return 2
    expected, rest = argv[0], list(argv[1:])
    secret = None
    if rest[:1] == ['--secret'] and len(rest) >= 3:
        secret, rest = rest[1], rest[2:]
    command = ['ansible-playbook'] + rest
    print('converge.py: expecting %s from %s' % (expected, ' '.join(command)), flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    changed_by_host = {}
    secret_shown = False
    assert process.stdout is not None
    for line in process.stdout:
        if secret and secret in line:
            secret_shown = True
            line = line.replace(secret, '<SECRET>')
        sys.stdout.write(line)
        match = RECAP_LINE.match(line)
        if match:
            changed_by_host[match.group('host')] = int(match.group('changed'))
    status = process.wait()
    sys.stdout.flush()
    if secret_shown:
        sys.stderr.write('converge.py: the output shows the secret\n')
        return 1
    if status != 0:
        sys.stderr.write('converge.py: ansible-playbook failed (exit %d)\n' % status)
        return 1
    if not changed_by_host:
        sys.stderr.write('converge.py: no recap in the output\n')
        return 1
    wrong = sorted(host for host, changed in changed_by_host.items() if (changed > 0) != (expected == 'changed'))
    if wrong:
        sys.stderr.write('converge.py: expected %s, but %s\n' % (
            expected, ', '.join('%s changed=%d' % (host, changed_by_host[host]) for host in wrong)))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
