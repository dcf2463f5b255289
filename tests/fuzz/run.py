# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run every fuzz harness for a bounded time, each from its checked-in seed corpus.

    python3 tests/fuzz/run.py [--seconds N] [--artifacts DIR] [HARNESS ...]

The test command runs each for 15 s (FUZZ_SECONDS). A longer run, before a release or after a change to
the applier or a parser: `FUZZ_SECONDS=1800 tests/run fuzz` (half an hour each), or one harness with
`tests/run fuzz layers`.

The collection must be importable as ansible_collections.virt.bootstrap (tests/run sets PYTHONPATH).
New inputs the fuzzer finds go to a temporary corpus that is thrown away; a crash leaves its input in
the artifacts directory (crash-HASH), and the run fails naming it. Reproduce one with
`python3 tests/fuzz/fuzz_NAME.py ARTIFACT`.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESSES = ('layers', 'tar', 'metadata', 'references', 'auth', 'shadow')


def run_harness(name: str, seconds: int, artifacts: str) -> bool:
    corpus = os.path.join(HERE, 'corpus', name)
    with tempfile.TemporaryDirectory(prefix='fuzz-corpus-%s-' % name) as found:
        command = [sys.executable, os.path.join(HERE, 'fuzz_%s.py' % name), '-max_total_time=%d' % seconds,
                   '-timeout=30', '-rss_limit_mb=2048', '-print_final_stats=1',
                   '-artifact_prefix=%s%s' % (artifacts, os.sep), found, corpus]
        started = time.monotonic()
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        output = completed.stdout.decode('utf-8', 'replace')
    runs = [line.rpartition(':')[2].strip() for line in output.splitlines() if line.startswith('stat::number_of_executed_units')]
    print('fuzz %-10s %s after %.0f s, %s inputs' % (name, 'ok' if completed.returncode == 0 else 'FAILED',
                                                     time.monotonic() - started, runs[0] if runs else '?'))
    if completed.returncode != 0:
        print(output[-6000:])
        for crash in glob.glob(os.path.join(artifacts, '*')):
            print('  input kept: %s' % crash)
    return completed.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--seconds', type=int, default=10, help='fuzzing time per harness (default 10)')
    parser.add_argument('--artifacts', default=os.path.join(tempfile.gettempdir(), 'virt-bootstrap-fuzz'),
                        help='where crashing inputs are kept')
    parser.add_argument('harnesses', nargs='*', metavar='HARNESS', help='any of: %s (default: all)' % ', '.join(HARNESSES))
    args = parser.parse_args()
    unknown = sorted(set(args.harnesses) - set(HARNESSES))
    if unknown:
        parser.error('unknown harness %s; there are: %s' % (', '.join(unknown), ', '.join(HARNESSES)))
    os.makedirs(args.artifacts, exist_ok=True)
    results = [run_harness(name, args.seconds, os.path.abspath(args.artifacts)) for name in args.harnesses or HARNESSES]
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main())
