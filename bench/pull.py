# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: our pull of an image from a local registry against `skopeo copy` + `umoci unpack`.

Run as root from anywhere: `python3 bench/pull.py [--image debian|large] [--rounds N] [--json] [--keep]
[--collection DIR]`.
See bench/README.md for what is measured and how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import typing as t
from dataclasses import asdict, dataclass, field

from common import (CACHE_DIR, LAYOUT_DIR, MIB, REPO_ROOT, ROOTFS_DIR, TAG, BenchError, Command, build_image,
                    check_space, count_entries, import_engine, layer_blobs, link_collection, remove_tree, rotated,
                    run_timed, settle_removals, time_write_dir, tree_bytes)
from large_image import LARGE_TAG, build_large_image

RUNS_DIR = os.path.join(CACHE_DIR, 'pull-runs')
REGISTRY_FIXTURES = os.path.join(REPO_ROOT, 'tests', 'registry')


@dataclass(frozen=True)
class PulledImage:
    layout: str  # the OCI layout pushed to the registry
    tag: str  # its tag there, and in the peer's layout
    name: str  # repository:tag in the local registry


# The image measured (--image): the Debian one by default, or the large one (bench/large_image.py).
IMAGE = PulledImage(LAYOUT_DIR, TAG, 'debian:multi')

PEER = 'skopeo+umoci'
TOOLS = ('ours', PEER)
SCENARIOS = ('cold', 'warm', 'rerun')
SCENARIO_MEANING = {
    'cold': ('empty cache dir, fresh dest', 'fresh layout, fresh bundle'),
    'warm': ('cache holds the blobs, fresh dest', 'layout holds the blobs, fresh bundle'),
    'rerun': ('same dest again: changed=False', 'both commands again, fresh bundle'),
}
# How each tool names itself to the registry (ours: registry/client.py USER_AGENT), to tell their requests apart.
USER_AGENT_PREFIXES = {'ours': 'virt.bootstrap', PEER: 'skopeo/'}
# One line of the registry's access log (Apache combined format, the size being the bytes of the body sent).
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\d+|-) '
                         r'"[^"]*" "(?P<agent>[^"]*)"\s*$')


@dataclass
class Traffic:
    """What one run asked of the registry."""
    requests: int = 0
    layer_requests: int = 0  # GETs of layer blobs (not the config)
    bytes_served: int = 0


@dataclass
class Measurement:
    """One run of one tool in one scenario: spawn to exit, then sync, writing into a directory never used before."""
    tool: str
    scenario: str
    round: int
    wall_s: float
    sync_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    output: str
    traffic: Traffic = field(default_factory=Traffic)
    # ours: the phases the engine child timed itself; skopeo+umoci: spawn to exit of each of its two commands.
    steps: t.Dict[str, float] = field(default_factory=dict)
    # ours only: what the engine reported.
    changed: t.Optional[bool] = None
    digest: t.Optional[str] = None

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


@dataclass(frozen=True)
class LocalRegistry:
    """The running registry holding the pushed image."""
    image_ref: str  # docker://127.0.0.1:PORT/debian:multi
    digest: str
    log_path: str


class AccessLog:
    """Reads the registry's access log as it grows: what a tool asked for since the last read."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._offset = os.path.getsize(path)  # what is logged already (the push) is nobody's run

    def since_last(self, tool: str, layer_digests: t.AbstractSet[str]) -> Traffic:
        """The requests `tool` made since the last call; those of the other tool are not counted for anyone."""
        with open(self._path, 'rb') as stream:
            stream.seek(self._offset)
            data = stream.read()
        # A line still being written stays for the next read.
        complete = data[:data.rfind(b'\n') + 1]
        self._offset += len(complete)
        traffic = Traffic()
        for line in complete.decode('utf-8', 'replace').splitlines():
            match = ACCESS_LINE.search(line)
            if not match or not match.group('agent').startswith(USER_AGENT_PREFIXES[tool]):
                continue
            traffic.requests += 1
            size = match.group('size')
            traffic.bytes_served += int(size) if size.isdigit() else 0
            if match.group('method') == 'GET' and match.group('path').rsplit('/', 1)[-1] in layer_digests:
                traffic.layer_requests += 1
        return traffic


# -- the registry ------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_registry(workdir: str) -> t.Iterator[LocalRegistry]:
    """Debian's docker-registry on 127.0.0.1 (plain HTTP) holding the Debian image; stopped on the way out."""
    sys.path.insert(0, REGISTRY_FIXTURES)
    # pylint: disable=import-outside-toplevel  # the test fixtures: only this parent needs them, not the engine children
    import push
    import registry
    with registry.running('http', workdir) as running:
        pushed = push.push('oci:%s:%s' % (IMAGE.layout, IMAGE.tag), running.host, IMAGE.name)
        yield LocalRegistry(pushed['ref'], pushed['digest'], os.path.join(running.workdir, 'registry.log'))


# -- the commands ------------------------------------------------------------------------------------


def commands_for(tool: str, scenario: str, round_dir: str, image_ref: str) -> t.Tuple[str, t.List[Command]]:
    """Where the run writes the rootfs, and the commands that write it (run one after the other).

    A round's warm run reuses the cache (or layout) its cold run filled; its rerun reuses the warm run's dest.
    """
    if tool == 'ours':
        cache_dir = os.path.join(round_dir, 'ours-cache')
        if scenario == 'cold':
            os.mkdir(cache_dir)
        dest = os.path.join(round_dir, 'ours-%s' % ('warm' if scenario == 'rerun' else scenario), 'rootfs')
        return dest, [Command([sys.executable, os.path.abspath(__file__), '--engine-child', image_ref, dest, cache_dir,
                               'unchanged' if scenario == 'rerun' else 'changed'])]
    if tool == PEER:
        layout = os.path.join(round_dir, 'peer-layout')
        bundle = os.path.join(round_dir, 'peer-%s' % scenario, 'bundle')
        return os.path.join(bundle, 'rootfs'), [
            Command(['skopeo', 'copy', '--src-tls-verify=false', image_ref, 'oci:%s:%s' % (layout, IMAGE.tag)]),
            Command(['umoci', 'unpack', '--image', '%s:%s' % (layout, IMAGE.tag), bundle]),
        ]
    raise BenchError('unknown tool %r' % tool)


def measure(tool: str, scenario: str, round_number: int, image_ref: str) -> Measurement:
    round_dir = os.path.join(RUNS_DIR, 'r%d' % round_number)
    out_dir = os.path.join(round_dir, '%s-%s' % ('ours' if tool == 'ours' else 'peer', scenario))
    os.makedirs(out_dir)
    output, commands = commands_for(tool, scenario, round_dir, image_ref)
    stdout_path = os.path.join(out_dir, 'stdout')
    usage = run_timed(commands, stdout_path, os.path.join(out_dir, 'log'))
    item = Measurement(tool, scenario, round_number, usage.wall_s, usage.sync_s, usage.user_s, usage.sys_s,
                       usage.max_rss_kib, output)
    if tool == 'ours':
        with open(stdout_path, 'rb') as stream:
            report = json.load(stream)
        item.changed, item.digest = report.pop('changed'), report.pop('digest')
        item.steps = report
    else:
        item.steps = {'skopeo_copy_s': usage.step_wall_s[0], 'umoci_unpack_s': usage.step_wall_s[1]}
    return item


# -- the engine child --------------------------------------------------------------------------------


def engine_child(src: str, dest: str, cache_dir: str, expected: str) -> None:
    """Pull `src` into `dest` as the module would, with `cache_dir` as the blob cache, and time the phases."""
    started = time.perf_counter()
    bootstrap = import_engine()
    # pylint: disable=import-outside-toplevel  # importable once import_engine() has set sys.path
    from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions
    imported = time.perf_counter()
    write_dir_s = time_write_dir(bootstrap)
    # device_nodes: umoci creates them too, so both tools write the same tree.
    result = bootstrap.run(bootstrap.Request(src=src, dest=dest, device_nodes=True,
                                             registry=RegistryOptions(not_secure=True, cache_dir=cache_dir)))
    finished = time.perf_counter()
    if result.changed != (expected == 'changed'):
        raise BenchError('the engine reported changed=%s for %s, expected %s: %s'
                         % (result.changed, dest, expected, result.msg))
    json.dump({'changed': result.changed, 'digest': result.digest, 'import_s': imported - started,
               'run_s': finished - imported, 'write_dir_s': sum(write_dir_s),
               'entries_written': result.entries_written}, sys.stdout)


# -- checks and summaries ----------------------------------------------------------------------------


def summarise(measurements: t.Sequence[Measurement]) -> t.Dict[str, t.Any]:
    runs: t.Dict[t.Tuple[str, str], t.List[Measurement]] = {}
    for item in measurements:
        runs.setdefault((item.scenario, item.tool), []).append(item)
    medians: t.Dict[str, t.Dict[str, t.Any]] = {}
    for scenario in SCENARIOS:
        for tool in TOOLS:
            items = runs[(scenario, tool)]
            medians['%s %s' % (scenario, tool)] = {
                'scenario': scenario, 'tool': tool,
                'wall_s': statistics.median(item.wall_s for item in items),
                'sync_s': statistics.median(item.sync_s for item in items),
                'cpu_s': statistics.median(item.cpu_s for item in items),
                'user_s': statistics.median(item.user_s for item in items),
                'sys_s': statistics.median(item.sys_s for item in items),
                'max_rss_mib': statistics.median(item.max_rss_kib for item in items) / 1024,
                'requests': statistics.median(item.traffic.requests for item in items),
                'served_mib': statistics.median(item.traffic.bytes_served for item in items) / MIB,
                'steps': {key: statistics.median(item.steps[key] for item in items)
                          for key in items[0].steps if key != 'entries_written'},
            }
    per_run = {(item.round, item.scenario, item.tool): item for item in measurements}
    rounds = sorted({item.round for item in measurements})
    ratios = {scenario: {metric: statistics.median(
        getattr(per_run[(number, scenario, 'ours')], metric) / getattr(per_run[(number, scenario, PEER)], metric)
        for number in rounds) for metric in ('wall_s', 'cpu_s', 'user_s', 'max_rss_kib')} for scenario in SCENARIOS}
    return {'medians': medians, 'ratios_ours_to_peer': ratios}


def run_checks(measurements: t.Sequence[Measurement], digest: str) -> t.Dict[str, t.Any]:
    """What must hold for the figures to mean anything; each entry says whether it does."""
    first_round = min(item.round for item in measurements)
    # Our rerun leaves the warm run's tree as it was: nothing more to count.
    counted = sorted((item for item in measurements if item.round == first_round
                      and not (item.tool == 'ours' and item.scenario == 'rerun')),
                     key=lambda item: (TOOLS.index(item.tool), SCENARIOS.index(item.scenario)))
    entries = {'%s %s' % (item.tool, item.scenario): count_entries(item.output) for item in counted}
    reused = [item for item in measurements if item.scenario != 'cold']
    ours_reruns = [item for item in measurements if item.tool == 'ours' and item.scenario == 'rerun']
    return {
        'entries': {'counts': entries, 'ok': len(set(entries.values())) == 1},
        'digests': {'ok': all(item.digest == digest for item in measurements if item.tool == 'ours')},
        'no_layer_fetched_when_cached': {
            'layer_requests': {tool: sum(item.traffic.layer_requests for item in reused if item.tool == tool)
                               for tool in TOOLS},
            'ok': not any(item.traffic.layer_requests for item in reused)},
        'ours_rerun': {'requests': sorted({item.traffic.requests for item in ours_reruns}),
                       'ok': all(item.changed is False and item.traffic.requests == 1 for item in ours_reruns)},
    }


def print_report(image: t.Dict[str, t.Any], summary: t.Dict[str, t.Any], measurements: t.Sequence[Measurement],
                 checks: t.Dict[str, t.Any]) -> None:
    layers = image['layers']
    print('image     %s  %s' % (image['ref'], image['digest']))
    print('          pushed with skopeo from oci:%s:%s: %d layers, %.1f MiB compressed (%s)' % (
        IMAGE.layout, IMAGE.tag, len(layers), sum(layer['size'] for layer in layers) / MIB,
        ' + '.join('%.2f' % (layer['size'] / MIB) for layer in layers)))
    print('registry  Debian\'s docker-registry, plain HTTP on 127.0.0.1 (loopback: client cost, not network speed)')
    print('method    %d round(s) after an untimed one, the tool going first alternated each round, a fresh directory'
          ' per run,' % image['rounds'])
    print('          outputs deleted at the end; wall = spawn to exit + sync; CPU and peak RSS from wait4 (children'
          ' included)')
    print('          ours: bootstrap.run(Request(docker://..., device_nodes=True, registry=RegistryOptions(not_secure=True, '
          'cache_dir=...)))'
          ' in a child')
    print('          %s: skopeo copy --src-tls-verify=false docker://... oci:LAYOUT:%s; umoci unpack --image'
          ' LAYOUT:%s BUNDLE' % (PEER, IMAGE.tag, IMAGE.tag))
    for scenario in SCENARIOS:
        print('  %-6s  ours: %-36s %s: %s' % (scenario, SCENARIO_MEANING[scenario][0], PEER,
                                              SCENARIO_MEANING[scenario][1]))
    print()
    print('%-8s %-13s %7s %7s %11s %7s %7s %13s %9s %11s' % ('scenario', 'tool', 'wall s', 'sync s', 'user+sys s',
                                                             'user s', 'sys s', 'peak RSS MiB', 'requests',
                                                             'MiB served'))
    for row in summary['medians'].values():
        print('%-8s %-13s %7.2f %7.2f %11.2f %7.2f %7.2f %13.1f %9g %11.2f'
              % (row['scenario'], row['tool'], row['wall_s'], row['sync_s'], row['cpu_s'], row['user_s'], row['sys_s'],
                 row['max_rss_mib'], row['requests'], row['served_mib']))
    print('(medians; requests and bytes from the registry\'s access log)')
    for scenario in SCENARIOS:
        ours = summary['medians']['%s ours' % scenario]['steps']
        peer = summary['medians']['%s %s' % (scenario, PEER)]['steps']
        print('  %-6s ours: import %.2f s, bootstrap.run %.2f s (write_dir %.2f s); skopeo copy %.2f s, umoci unpack'
              ' %.2f s' % (scenario, ours['import_s'], ours['run_s'], ours['write_dir_s'], peer['skopeo_copy_s'],
                           peer['umoci_unpack_s']))
    print()
    print('%-26s %6s %10s %6s %10s   (median of per-round ratios)'
          % ('ratio ours/%s' % PEER, 'wall', 'user+sys', 'user', 'peak RSS'))
    for scenario, values in summary['ratios_ours_to_peer'].items():
        print('%-26s %6.2f %10.2f %6.2f %10.2f'
              % (scenario, values['wall_s'], values['cpu_s'], values['user_s'], values['max_rss_kib']))
    print()
    print('wall s per round (ours, %s):' % PEER)
    per_run = {(item.round, item.scenario, item.tool): item for item in measurements}
    for number in sorted({item.round for item in measurements}):
        print('  round %d (first: %-12s) %s' % (number, rotated(TOOLS, number)[0], '   '.join(
            '%s %5.2f %5.2f' % (scenario, per_run[(number, scenario, 'ours')].wall_s,
                                per_run[(number, scenario, PEER)].wall_s) for scenario in SCENARIOS)))
    print()
    entries = checks['entries']
    print('check     entries: %s: %s' % (', '.join('%s %d' % item for item in entries['counts'].items()),
                                         'equal' if entries['ok'] else 'DIFFERENT'))
    print('          digest our engine recorded is the pushed one: %s' % ('yes' if checks['digests']['ok'] else 'NO'))
    cached = checks['no_layer_fetched_when_cached']
    print('          layer blobs fetched by warm and rerun runs: %s: %s' % (
        ', '.join('%s %d' % item for item in cached['layer_requests'].items()), 'none' if cached['ok'] else 'SOME'))
    rerun = checks['ours_rerun']
    print('          ours rerun: changed=False, registry requests per run %s: %s' % (
        '/'.join(str(count) for count in rerun['requests']), 'one manifest HEAD' if rerun['ok'] else 'NOT ONE'))
    print('note      umoci has no idempotent mode: the "rerun" of %s is skopeo copy onto the layout it already'
          ' filled' % PEER)
    print('          (manifest and config fetched again, layers skipped) and a full umoci unpack into a fresh bundle')


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: t.Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--image', choices=('debian', 'large'), default='debian',
                        help='the Debian image (default) or the large one made from this host (bench/large_image.py)')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds of every scenario and tool (default 5)')
    parser.add_argument('--json', action='store_true', help='print the results as JSON instead of a table')
    parser.add_argument('--keep', action='store_true', help='keep the trees, caches and registry storage in %s'
                        % RUNS_DIR)
    parser.add_argument('--collection', default=REPO_ROOT, metavar='DIR',
                        help='the checkout of the collection whose engine is measured (default: %(default)s)')
    parser.add_argument('--engine-child', nargs=4, metavar=('SRC', 'DEST', 'CACHE_DIR', 'EXPECTED'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error('--rounds must be at least 1')
    return args


def _terminated(signum: int, _frame: t.Any) -> None:
    # Through SystemExit, so the registry is stopped and the runs removed on the way out.
    sys.exit(128 + signum)


def main(argv: t.Sequence[str]) -> int:
    args = parse_args(argv)
    if args.engine_child:
        engine_child(*args.engine_child)
        return 0
    for tool in ('skopeo', 'umoci', 'docker-registry', 'bash'):
        if shutil.which(tool) is None:
            raise BenchError('%s is not installed (apt-get install skopeo umoci docker-registry)' % tool)
    signal.signal(signal.SIGTERM, _terminated)
    global IMAGE  # pylint: disable=global-statement
    if args.image == 'large':
        IMAGE = PulledImage(build_large_image(), LARGE_TAG, 'large:large')
    else:
        build_image()
    link_collection(args.collection)
    _manifest_digest, blobs = layer_blobs(IMAGE.layout, IMAGE.tag)
    if os.path.exists(RUNS_DIR):
        print('pull.py: removing %s, left by an earlier run' % RUNS_DIR, file=sys.stderr)
        remove_tree(RUNS_DIR, ignore_errors=False)
    rounds = args.rounds + 1
    # Nothing is deleted until the end: per round 5 trees (2 ours, 3 umoci bundles), our cache and a layout.
    compressed = sum(blob.size for blob in blobs)
    unpacked = tree_bytes(ROOTFS_DIR) if args.image == 'debian' else 3 * compressed
    check_space(RUNS_DIR, (int(unpacked * 1.5) * 5 + 2 * compressed) * rounds + 2 * compressed, rounds)
    measurements: t.List[Measurement] = []
    try:
        with local_registry(os.path.join(RUNS_DIR, 'registry')) as running:
            access_log = AccessLog(running.log_path)
            layer_digests = frozenset(blob.digest for blob in blobs)
            settle_removals(RUNS_DIR, 'pull.py')
            # Round 0 warms the page cache and Python's bytecode cache; it is not reported.
            for number in range(rounds):
                for scenario in SCENARIOS:
                    for tool in rotated(TOOLS, number):
                        item = measure(tool, scenario, number, running.image_ref)
                        item.traffic = access_log.since_last(tool, layer_digests)
                        print('pull.py: round %d %-5s %-12s %6.2f s' % (number, scenario, tool, item.wall_s),
                              file=sys.stderr)
                        if number:
                            measurements.append(item)
        checks = run_checks(measurements, running.digest)
    finally:
        if not args.keep:
            remove_tree(RUNS_DIR)
    image = {'ref': running.image_ref, 'digest': running.digest, 'rounds': args.rounds,
             'layers': [{'digest': blob.digest, 'media_type': blob.media_type, 'size': blob.size} for blob in blobs]}
    summary = summarise(measurements)
    if args.json:
        json.dump({'image': image, 'summary': summary, 'checks': checks,
                   'runs': [dict(asdict(item), cpu_s=item.cpu_s) for item in measurements]}, sys.stdout, indent=2)
        print()
    else:
        print_report(image, summary, measurements, checks)
    return 0 if all(check['ok'] for check in checks.values()) else 1


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except (BenchError, subprocess.CalledProcessError, RuntimeError) as exc:
        print('pull.py: %s' % exc, file=sys.stderr)
        sys.exit(1)
