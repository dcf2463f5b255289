# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: what one Ansible task costs on an unchanged rootfs, and where the time goes (issue 12).

Run as root from anywhere: `python3 bench/module_overhead.py [--rounds N] [--json] [--collection DIR]`.

Five things are timed, alternated round by round, each as a whole process (spawn to exit):

- `empty play`: ansible-playbook with a play of no tasks (the controller's start and the play itself);
- `one task`: the same play with one container_rootfs task on an unchanged rootfs (oci: layout of the
  Debian image); the task's cost is the difference;
- `module process`: the AnsiballZ payload that task runs on the host (kept with ANSIBLE_KEEP_REMOTE_FILES),
  run by itself: the interpreter, unpacking, imports, the engine, the JSON answer;
- `module import`: an interpreter that imports the module's code and exits;
- `engine`: bootstrap.run on the unchanged rootfs, timed inside a process (no start-up).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

from common import (CACHE_DIR, COLLECTIONS_DIR, LAYOUT_DIR, REPO_ROOT, TAG, BenchError, Command, build_image,
                    link_collection, remove_tree, rotated, run_child)

RUNS_DIR = os.path.join(CACHE_DIR, 'overhead-runs')
STEPS = ('empty play', 'one task', 'module process', 'module import', 'engine')
PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:%s
"""
TASK = """
    - virt.bootstrap.container_rootfs:
        src: oci:%s:%s
        dest: %s
        device_nodes: true
"""
ENGINE_CHILD = """
import json, sys, time
sys.path.insert(0, %r)
from ansible_collections.virt.bootstrap.plugins.module_utils import bootstrap
request = bootstrap.Request(src=%r, dest=%r, device_nodes=True)
started = time.perf_counter()
result = bootstrap.run(request)
assert not result.changed
print(json.dumps({'engine_s': time.perf_counter() - started}))
"""


def environment(keep_remote_files: bool = False) -> t.Dict[str, str]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_DIR, ANSIBLE_LOCALHOST_WARNING='false',
               ANSIBLE_INVENTORY_UNPARSED_WARNING='false', ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_NOCOLOR='1', ANSIBLE_RETRY_FILES_ENABLED='false')
    if keep_remote_files:
        env.update(ANSIBLE_KEEP_REMOTE_FILES='1', ANSIBLE_REMOTE_TMP=os.path.join(RUNS_DIR, 'remote-tmp'))
    return env


def playbook_command() -> t.List[str]:
    # The one beside this interpreter: a version manager's shim on PATH would add its own start-up.
    beside = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
    ansible_playbook = beside if os.access(beside, os.X_OK) else shutil.which('ansible-playbook')
    if ansible_playbook is None:
        raise BenchError('ansible-playbook is not installed (pip install ansible-core)')
    return [ansible_playbook]


def write_playbooks(dest: str) -> t.Tuple[str, str]:
    empty = os.path.join(RUNS_DIR, 'empty.yml')
    one = os.path.join(RUNS_DIR, 'one-task.yml')
    with open(empty, 'w', encoding='utf-8') as stream:
        stream.write(PLAYBOOK % ' []')
    with open(one, 'w', encoding='utf-8') as stream:
        stream.write(PLAYBOOK % (TASK % (LAYOUT_DIR, TAG, dest)))
    return empty, one


def kept_module_payload(one_task: str) -> str:
    """Run the task once with the remote files kept; the AnsiballZ payload it ran."""
    completed = subprocess.run(playbook_command() + [one_task], env=environment(keep_remote_files=True), check=False,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if completed.returncode != 0:
        raise BenchError('the first run of the task failed:\n%s' % completed.stdout[-3000:])
    payloads = glob.glob(os.path.join(RUNS_DIR, 'remote-tmp', '*', 'AnsiballZ_container_rootfs.py'))
    if len(payloads) != 1:
        raise BenchError('expected one kept AnsiballZ_container_rootfs.py, found %d' % len(payloads))
    return payloads[0]


def timed(command: t.List[str], env: t.Dict[str, str], log_dir: str) -> t.Tuple[float, str]:
    """Wall seconds of `command` as a whole process, and what it printed."""
    stdout_path = os.path.join(log_dir, 'stdout')
    if os.path.exists(stdout_path):
        os.unlink(stdout_path)
    started = time.perf_counter()
    run_child(Command(command), stdout_path, os.path.join(log_dir, 'log'), env)
    wall = time.perf_counter() - started
    with open(stdout_path, 'r', encoding='utf-8', errors='replace') as stream:
        return wall, stream.read()


def main(argv: t.Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds (default 5)')
    parser.add_argument('--json', action='store_true', help='print the results as JSON instead of a table')
    parser.add_argument('--collection', default=REPO_ROOT, metavar='DIR',
                        help='the checkout of the collection measured (default: %(default)s)')
    args = parser.parse_args(argv)
    build_image()
    link_collection(args.collection)
    remove_tree(RUNS_DIR)
    os.makedirs(RUNS_DIR)
    try:
        dest = os.path.join(tempfile.mkdtemp(dir=RUNS_DIR), 'rootfs')
        empty, one = write_playbooks(dest)
        payload = kept_module_payload(one)  # also builds the rootfs: every timed run finds it unchanged
        commands = {
            'empty play': (playbook_command() + [empty], environment()),
            'one task': (playbook_command() + [one], environment()),
            'module process': ([sys.executable, payload], environment()),
            'module import': ([sys.executable, '-c', 'import sys; sys.path.insert(0, %r); import ansible_collections.'
                               'virt.bootstrap.plugins.modules.container_rootfs' % COLLECTIONS_DIR], environment()),
            'engine': ([sys.executable, '-c', ENGINE_CHILD % (COLLECTIONS_DIR, 'oci:%s:%s' % (LAYOUT_DIR, TAG), dest)],
                       environment()),
        }
        walls: t.Dict[str, t.List[float]] = {step: [] for step in STEPS}
        engine_s: t.List[float] = []
        for number in range(args.rounds + 1):  # round 0 warms the caches and is not reported
            for step in rotated(STEPS, number):
                command, env = commands[step]
                wall, output = timed(command, env, RUNS_DIR)
                if (step == 'module process' and '"changed": false' not in output) or \
                        (step == 'one task' and 'changed=0' not in output):
                    raise BenchError('%s: the rootfs was not found unchanged: %s' % (step, output[-500:]))
                if number:
                    walls[step].append(wall)
                    if step == 'engine':
                        engine_s.append(json.loads(output.strip().splitlines()[-1])['engine_s'])
    finally:
        remove_tree(RUNS_DIR)
    medians = {step: statistics.median(values) for step, values in walls.items()}
    medians['engine (in process)'] = statistics.median(engine_s)
    task = medians['one task'] - medians['empty play']
    breakdown = {
        'task (one task - empty play)': task,
        'controller and connection (task - module process)': task - medians['module process'],
        'module start-up and imports (module import)': medians['module import'],
        'AnsiballZ and the module around the engine (module process - module import - engine)':
            medians['module process'] - medians['module import'] - medians['engine (in process)'],
        'engine (bootstrap.run, unchanged)': medians['engine (in process)'],
    }
    if args.json:
        json.dump({'rounds': args.rounds, 'medians_s': medians, 'breakdown_s': breakdown}, sys.stdout, indent=2)
        print()
        return 0
    print('one container_rootfs task on an unchanged rootfs (oci:%s:%s), %d rounds, medians'
          % (LAYOUT_DIR, TAG, args.rounds))
    for step in STEPS:
        print('  %-16s %6.3f s' % (step, medians[step]))
    print('  %-16s %6.3f s   (bootstrap.run, timed inside its process)' % ('engine', medians['engine (in process)']))
    print('where the task goes:')
    for name, seconds in breakdown.items():
        print('  %6.3f s  %5.1f %%  %s' % (seconds, 100 * seconds / task, name))
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except (BenchError, subprocess.CalledProcessError) as exc:
        print('module_overhead.py: %s' % exc, file=sys.stderr)
        sys.exit(1)
