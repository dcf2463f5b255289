# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load through Ansible itself: one play, 20 forks, 20 inventory hosts that are all this machine, each with its
own dest and one shared blob cache, pulling one image from the local registry through the fault proxy.

Every dest gets the right tree, and each blob is downloaded once however many hosts want it at the same
time; then again with every blob download cut once (resumed, still one download begun per blob). The wall
time and the peak memory of the largest process are written to tests/output/bench/load.json (kept by
tests/run under .build) for the bench notes; tests check behaviour, never those figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.virt.bootstrap.tests.registry.fault_proxy import FaultProxy
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.playbook_support import (
    ansible_playbook,
    clean_environment,
)
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.registry_support import (
    BASE_TREE,
    layer_digests,
    rootfs_tree,
)

HOSTS = 20
COLLECTIONS_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *(['..'] * 7)))


@pytest.fixture
def playbook_command():
    command = ansible_playbook()
    if command is None:
        pytest.fail('no interpreter here can run ansible-playbook (tests/run installs ansible-core)')
    return command


def play(playbook_command, tmp_path, source: str, cache: str) -> dict:
    """Run the play against HOSTS local hosts; the wall time, peak RSS and recap line."""
    inventory = {'all': {'hosts': {'guest%02d' % number: {'dest': str(tmp_path / 'guests' / ('guest%02d' % number))}
                                   for number in range(HOSTS)},
                         'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}}
    (tmp_path / 'inventory.json').write_text(json.dumps(inventory))
    (tmp_path / 'play.yml').write_text(json.dumps([{
        'hosts': 'all', 'gather_facts': False,
        'tasks': [{'name': 'pull', 'virt.bootstrap.container_rootfs': {
            'src': source, 'dest': '{{ dest }}', 'not_secure': True, 'cache_dir': cache}}]}]))
    environment = clean_environment(ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT, ANSIBLE_FORKS=str(HOSTS),
                                    ANSIBLE_NOCOLOR='1', ANSIBLE_HOST_KEY_CHECKING='False')
    started = time.monotonic()
    with open(tmp_path / 'play.log', 'w+b') as log:
        command = playbook_command + ['-i', str(tmp_path / 'inventory.json'), str(tmp_path / 'play.yml')]
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        # wait4: the peak RSS of the largest process of this play alone (ansible-playbook and what it waited for).
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        log.seek(0)
        output = log.read().decode()
    assert process.returncode == 0, output[-4000:]
    return {'wall_seconds': round(wall, 1), 'largest_process_peak_rss_mib': round(usage.ru_maxrss / 1024, 1),
            'recap': [line.split(':', 1)[1].split() for line in output.splitlines() if line.startswith('guest')]}


def report(name: str, figures: dict) -> None:
    results = os.path.join(COLLECTIONS_ROOT, 'ansible_collections', 'virt', 'bootstrap', 'tests', 'output', 'bench')
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, 'load.json')
    known = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as stream:
            known = json.load(stream)
    known[name] = {'hosts': HOSTS, 'wall_seconds': figures['wall_seconds'],
                   'largest_process_peak_rss_mib': figures['largest_process_peak_rss_mib']}
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump(known, stream, indent=2, sort_keys=True)


@pytest.mark.parametrize('cut', [False, True], ids=['clean', 'every-blob-cut-once'])
def test_twenty_hosts_at_once_through_one_cache_download_each_blob_once(playbook_command, tmp_path, http_registry, cut):
    digests = layer_digests(http_registry.layout, 'base')
    with FaultProxy('http://' + http_registry.registry.host) as proxy:
        if cut:
            for digest in digests:
                proxy.cut(digest, after=100, times=1)
        figures = play(playbook_command, tmp_path, 'docker://%s/app:base' % proxy.host, str(tmp_path / 'cache'))
        assert [fields[:2] for fields in figures['recap']] == [['ok=1', 'changed=1']] * HOSTS
        for number in range(HOSTS):
            assert rootfs_tree(str(tmp_path / 'guests' / ('guest%02d' % number))) == BASE_TREE
        for digest in digests:
            begun = [seen for seen in proxy.seen('GET', digest) if not seen.range]
            assert len(begun) == 1, (digest, len(begun))
            assert len(proxy.seen('GET', digest)) == (2 if cut else 1)
        # One manifest answer per host: the tag is resolved once by each, then everything goes by digest.
        assert proxy.count('GET', '/manifests/') + proxy.count('HEAD', '/manifests/') <= 2 * HOSTS
    report('cut' if cut else 'clean', figures)
