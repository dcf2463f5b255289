# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: nothing to a running busybox LXC guest with the libvirt_lxc role, against doing it by hand.

Run as root from anywhere: `python3 bench/guest.py [--rounds N] [--json] [--collection DIR]`.
It starts its own libvirtd (tests/libvirt/libvirtd.sh: no other may run) and a local registry.
See bench/README.md for what is measured and how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import typing as t
from dataclasses import asdict, dataclass

from common import (CACHE_DIR, REPO_ROOT, BenchError, Command, link_collection, remove_tree, rotated, run_timed,
                    settle_removals)

RUNS_DIR = os.path.join(CACHE_DIR, 'guest-runs')
IMAGES_DIR = os.path.join(CACHE_DIR, 'images')
BUSYBOX_LAYOUT = os.path.join(IMAGES_DIR, 'oci', 'busybox')
BUILD_SCRIPT = os.path.join(REPO_ROOT, 'tests', 'images', 'build-images.sh')
GUEST_IMAGE_SCRIPT = os.path.join(REPO_ROOT, 'tests', 'integration', 'targets', 'libvirt_lxc', 'files',
                                  'make-images.sh')
LIBVIRTD = os.path.join(REPO_ROOT, 'tests', 'libvirt', 'libvirtd.sh')
REGISTRY_FIXTURES = os.path.join(REPO_ROOT, 'tests', 'registry')
COMMUNITY_LIBVIRT = os.path.join(REPO_ROOT, '.build', 'ansible_collections', 'community', 'libvirt')
COLLECTIONS_DIR = os.path.join(CACHE_DIR, 'collections')
URI = 'lxc:///system'
MANAGED_PYTHON = '/usr/bin/python3'  # has python3-libvirt and python3-lxml
GUEST_PREFIX = 'vbbench-'
LXC_RUN_DIR = '/run/libvirt/lxc'

TOOLS = ('role', 'by hand')
SCENARIOS = ('cold', 'rerun')

PLAYBOOK = """---
- name: A busybox guest
  hosts: localhost
  gather_facts: false
  roles:
    - role: virt.bootstrap.libvirt_lxc
      vars:
        libvirt_lxc_name: "{{ guest }}"
        libvirt_lxc_src: "{{ image_ref }}"
        libvirt_lxc_not_secure: true
        libvirt_lxc_rootfs_dir: "{{ round_dir }}/filesystems/{{ guest }}"
        libvirt_lxc_cache_dir: "{{ round_dir }}/cache"
"""

# What a user writes by hand for the same guest: the image's Cmd as init, the umoci bundle's rootfs.
DOMAIN_XML = """<domain type='lxc'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type>exe</type>
    <init>/bin/sh</init>
    <initarg>-c</initarg>
    <initarg>echo "$IMAGE_VAR" &gt; /run-started; while true; do sleep 1; done</initarg>
    <initenv name='IMAGE_VAR'>from-image</initenv>
    <initdir>/srv</initdir>
  </os>
  <features><privnet/></features>
  <devices>
    <filesystem type='mount'><source dir='{rootfs}'/><target dir='/'/></filesystem>
    <console type='pty'/>
  </devices>
</domain>
"""


@dataclass
class Measurement:
    tool: str
    scenario: str
    round: int
    wall_s: float
    user_s: float
    sys_s: float


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(['virsh', '-q', '-c', URI] + list(args), capture_output=True, text=True, check=check)


def guest_state(name: str) -> str:
    return virsh('domstate', name, check=False).stdout.strip()


def remove_guests() -> None:
    """Destroy and undefine every guest this benchmark made (by its name prefix)."""
    names = virsh('list', '--all', '--name').stdout.split()
    for name in names:
        if name.startswith(GUEST_PREFIX):
            virsh('destroy', name, check=False)
            virsh('undefine', name, check=False)


@contextlib.contextmanager
def running_libvirtd(workdir: str) -> t.Iterator[None]:
    subprocess.run(['bash', LIBVIRTD, 'start', workdir], check=True, stdout=sys.stderr)
    try:
        yield
    finally:
        remove_guests()
        subprocess.run(['bash', LIBVIRTD, 'stop', workdir], check=True, stdout=sys.stderr)
        # libvirt leaves each stopped guest's empty mount directories and its socket behind.
        for entry in os.listdir(LXC_RUN_DIR):
            path = os.path.join(LXC_RUN_DIR, entry)
            if entry.startswith(GUEST_PREFIX):
                with contextlib.suppress(OSError):
                    if os.path.isdir(path):
                        os.rmdir(path)
                    else:
                        os.unlink(path)


@contextlib.contextmanager
def local_registry(workdir: str, layout: str) -> t.Iterator[str]:
    """A plain HTTP registry holding the guest image as loop:latest; yields its docker:// reference."""
    sys.path.insert(0, REGISTRY_FIXTURES)
    # pylint: disable=import-outside-toplevel  # the test fixtures
    import push
    import registry
    with registry.running('http', workdir) as running:
        yield push.push('oci:%s:v1' % layout, running.host, 'loop:latest')['ref']


def make_images(layout: str) -> None:
    subprocess.run(['bash', BUILD_SCRIPT, IMAGES_DIR, 'busybox'], check=True, stdout=sys.stderr)
    subprocess.run(['bash', GUEST_IMAGE_SCRIPT, '%s:multi' % BUSYBOX_LAYOUT, layout], check=True, stdout=sys.stderr)


def link_community_libvirt(source: str) -> None:
    if not os.path.isfile(os.path.join(source, 'plugins', 'modules', 'virt.py')):
        raise BenchError('%s does not hold community.libvirt: run tests/run once (it lays it out there), '
                         'or give --community-libvirt' % source)
    link = os.path.join(COLLECTIONS_DIR, 'ansible_collections', 'community', 'libvirt')
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.abspath(source), link)


def role_commands(round_dir: str, guest: str, image_ref: str) -> t.List[Command]:
    playbook = os.path.join(round_dir, 'guest.yml')
    if not os.path.exists(playbook):
        with open(playbook, 'w', encoding='utf-8') as stream:
            stream.write(PLAYBOOK)
    return [Command(['ansible-playbook', '-i', 'localhost,', '-c', 'local', playbook,
                     '-e', 'ansible_python_interpreter=%s' % MANAGED_PYTHON,
                     '-e', json.dumps({'guest': guest, 'image_ref': image_ref, 'round_dir': round_dir})])]


def hand_commands(round_dir: str, guest: str, image_ref: str) -> t.List[Command]:
    """skopeo copy, umoci unpack, virsh define and start: what LXC's oci template and a user do."""
    layout, bundle = os.path.join(round_dir, 'layout'), os.path.join(round_dir, 'bundle')
    xml_path = os.path.join(round_dir, 'domain.xml')
    with open(xml_path, 'w', encoding='utf-8') as stream:
        stream.write(DOMAIN_XML.format(name=guest, rootfs=os.path.join(bundle, 'rootfs')))
    return [Command(['skopeo', 'copy', '-q', '--src-tls-verify=false', image_ref, 'oci:%s:latest' % layout]),
            Command(['umoci', 'unpack', '--image', '%s:latest' % layout, bundle]),
            Command(['virsh', '-q', '-c', URI, 'define', xml_path]),
            Command(['virsh', '-q', '-c', URI, 'start', guest])]


def measure(tool: str, scenario: str, number: int, image_ref: str) -> Measurement:
    slug = 'role' if tool == 'role' else 'hand'
    guest = '%s%s-%d' % (GUEST_PREFIX, slug, number)
    round_dir = os.path.join(RUNS_DIR, 'round-%d' % number, slug)
    if scenario == 'cold':
        os.makedirs(round_dir)
    elif tool == 'by hand':
        # By hand there is no rerun that knows it is done: the user checks and leaves it, or redoes it all.
        # Redoing it costs what cold did; checking costs one virsh call, which is what is timed here.
        return measure_commands(tool, scenario, number, [Command(['virsh', '-q', '-c', URI, 'domstate', guest])],
                                round_dir)
    if tool == 'role':
        commands = role_commands(round_dir, guest, image_ref)
    else:
        commands = hand_commands(round_dir, guest, image_ref)
    result = measure_commands(tool, scenario, number, commands, round_dir)
    if guest_state(guest) != 'running':
        raise BenchError('%s: guest %s is not running after the %s run' % (tool, guest, scenario))
    return result


def measure_commands(tool: str, scenario: str, number: int, commands: t.List[Command], round_dir: str) -> Measurement:
    usage = run_timed(commands, os.path.join(round_dir, 'stdout.log'), os.path.join(round_dir, 'stderr.log'))
    return Measurement(tool, scenario, number, usage.wall_s, usage.user_s, usage.sys_s)


def summarise(measurements: t.Sequence[Measurement]) -> t.Dict[str, t.Any]:
    summary: t.Dict[str, t.Any] = {}
    for scenario in SCENARIOS:
        by_tool = {tool: [item for item in measurements if item.tool == tool and item.scenario == scenario]
                   for tool in TOOLS}
        ratios = [ours.wall_s / theirs.wall_s for ours, theirs in zip(by_tool['role'], by_tool['by hand'])]
        summary[scenario] = {
            'median_wall_s': {tool: statistics.median(item.wall_s for item in items) for tool, items in by_tool.items()},
            'median_cpu_s': {tool: statistics.median(item.user_s + item.sys_s for item in items)
                             for tool, items in by_tool.items()},
            'median_ratio_role_to_hand': statistics.median(ratios),
        }
    return summary


def print_report(summary: t.Dict[str, t.Any], rounds: int) -> None:
    print('busybox guest, nothing -> running, %d rounds (median wall time, spawn to exit + sync)' % rounds)
    print('%-7s %12s %12s %12s %12s %10s' % ('', 'role wall', 'role cpu', 'hand wall', 'hand cpu', 'role/hand'))
    for scenario, figures in summary.items():
        # A rerun by hand is a look, not the same job: no ratio for it.
        ratio = '%9.1fx' % figures['median_ratio_role_to_hand'] if scenario == 'cold' else '%10s' % '-'
        print('%-7s %11.2fs %11.2fs %11.2fs %11.2fs %s' % (
            scenario, figures['median_wall_s']['role'], figures['median_cpu_s']['role'],
            figures['median_wall_s']['by hand'], figures['median_cpu_s']['by hand'], ratio))
    print('cold: the role with an empty cache; by hand: skopeo copy + umoci unpack + virsh define + start.')
    print('rerun: the role again (changed=0, nothing restarted); by hand: virsh domstate.')


def parse_args(argv: t.Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds (an untimed warm-up round comes first)')
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')
    parser.add_argument('--collection', default=REPO_ROOT, help='the checkout whose role and module to measure')
    parser.add_argument('--community-libvirt', default=COMMUNITY_LIBVIRT,
                        help='an installed community.libvirt (default: the one tests/run lays out)')
    return parser.parse_args(argv)


def _terminated(signum: int, _frame: t.Any) -> None:
    # Through SystemExit, so the guests, libvirtd and the registry are stopped on the way out.
    sys.exit(128 + signum)


def main(argv: t.Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise BenchError('run as root: libvirtd, LXC guests and the rootfs owners need it')
    for tool in ('skopeo', 'umoci', 'virsh', 'libvirtd', 'ansible-playbook', 'docker-registry'):
        if shutil.which(tool) is None:
            raise BenchError('%s is not installed' % tool)
    signal.signal(signal.SIGTERM, _terminated)
    link_collection(args.collection)
    link_community_libvirt(args.community_libvirt)
    os.environ['ANSIBLE_COLLECTIONS_PATH'] = COLLECTIONS_DIR
    os.environ['ANSIBLE_LOCALHOST_WARNING'] = 'false'
    if os.path.exists(RUNS_DIR):
        print('guest.py: removing %s, left by an earlier run' % RUNS_DIR, file=sys.stderr)
        remove_tree(RUNS_DIR, ignore_errors=False)
    os.makedirs(RUNS_DIR)
    layout = os.path.join(CACHE_DIR, 'guest-image')
    make_images(layout)
    measurements: t.List[Measurement] = []
    try:
        with running_libvirtd(os.path.join(RUNS_DIR, 'libvirtd')), \
                local_registry(os.path.join(RUNS_DIR, 'registry'), layout) as image_ref:
            settle_removals(RUNS_DIR, 'guest.py')
            # Round 0 warms the page cache and Python's bytecode cache; it is not reported.
            for number in range(args.rounds + 1):
                for scenario in SCENARIOS:
                    for tool in rotated(TOOLS, number):
                        item = measure(tool, scenario, number, image_ref)
                        print('guest.py: round %d %-5s %-8s %6.2f s' % (number, scenario, tool, item.wall_s),
                              file=sys.stderr)
                        if number:
                            measurements.append(item)
    finally:
        remove_tree(RUNS_DIR)
    summary = summarise(measurements)
    if args.json:
        json.dump({'summary': summary, 'runs': [asdict(item) for item in measurements]}, sys.stdout, indent=2)
        print()
    else:
        print_report(summary, args.rounds)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except (BenchError, subprocess.CalledProcessError, RuntimeError) as exc:
        print('guest.py: %s' % exc, file=sys.stderr)
        sys.exit(1)
