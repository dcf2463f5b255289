# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: the Debian image as qcow2 (a chain written through host mounts, the same chain through one
libguestfs appliance, and flat) next to the dir format and to the old tool's way, one guestfish launch per layer.

Run as root from anywhere: `python3 bench/qcow2.py [--rounds N] [--appliance-rounds N] [--old-tool-rounds N]
[--json] [--collection DIR]`.
See bench/README.md for what is measured and how to read the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import typing as t
from dataclasses import asdict, dataclass

from common import (CACHE_DIR, LAYOUT_DIR, REPO_ROOT, TAG, BenchError, Command, LayerBlob, build_image, import_engine,
                    layer_blobs, link_collection, remove_tree, rotated, run_timed, settle_removals, tree_bytes)

RUNS_DIR = os.path.join(CACHE_DIR, 'qcow2-runs')
# store-second: the second guest of an image whose layers a first guest already put in a layer store.
WAYS = ('chain', 'flat', 'dir', 'store-second')
OLD_TOOL = 'guestfish-per-layer'
# The chain through one libguestfs appliance (qcow2_method: appliance), in --appliance-rounds rounds only.
APPLIANCE = 'chain-appliance'
# KVM does not work on these machines; every libguestfs appliance runs under TCG.
GUESTFS_ENV = {'LIBGUESTFS_BACKEND_SETTINGS': 'force_tcg', 'LIBGUESTFS_BACKEND': 'direct'}
OLD_TOOL_SIZE = '5G'  # the old tool's fixed size


@dataclass
class Measurement:
    way: str
    round: int
    wall_s: float
    user_s: float
    sys_s: float
    appliances: int
    disk_bytes: int  # what the images (or the tree) take on disk


def engine_child(way: str, dest: str) -> None:
    """One engine run into a new dest (run in a child process, so each way pays its own imports)."""
    bootstrap = import_engine()
    options: t.Dict[str, t.Any] = {'device_nodes': True}
    if way.startswith('store:'):
        options.update(format='qcow2', qcow2_layer_store=way[len('store:'):])
    elif way == APPLIANCE:
        options.update(format='qcow2', qcow2_method='appliance')
    elif way != 'dir':
        options.update(format='qcow2', qcow2_layers=way, qcow2_method='host-mount' if way == 'chain' else 'auto')
    result = bootstrap.run(bootstrap.build_request('oci:%s:%s' % (LAYOUT_DIR, TAG), dest, **options))
    # The host-mount and flat ways launch no appliance; the libguestfs fallback one.
    print(json.dumps({'appliances': getattr(result, 'appliance_launches', None) or 0}))


def old_tool_commands(dest: str, blobs: t.Sequence[LayerBlob]) -> t.List[Command]:
    """What virt-bootstrap 1.1 did: per layer an overlay and one guestfish launch that tar-ins the layer
    (no whiteouts; layer 0 gets a fixed-size ext3, here ext4 so the trees are comparable in size)."""
    os.mkdir(dest)
    commands = []
    for index, blob in enumerate(blobs):
        image = os.path.join(dest, 'layer-%d.qcow2' % index)
        if index == 0:
            commands.append(Command(['qemu-img', 'create', '-q', '-f', 'qcow2', image, OLD_TOOL_SIZE]))
            script = ['add', image, ':', 'run', ':', 'mkfs', 'ext4', '/dev/sda', ':', 'mount', '/dev/sda', '/']
        else:
            commands.append(Command(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'layer-%d.qcow2' % (index - 1),
                                     '-F', 'qcow2', image]))
            script = ['add', image, ':', 'run', ':', 'mount', '/dev/sda', '/']
        compress = ['compress:gzip'] if blob.media_type.endswith('+gzip') else []
        # Exit 1 tolerated: the appliance's tar cannot put a file where a lower layer left a directory (this
        # image has one); it says so and goes on with the rest of the layer, as the old tool's run would not.
        commands.append(Command(['guestfish', '--'] + script + [':', 'tar-in', blob.path, '/'] + compress, (0, 1)))
    return commands


def measure(way: str, round_number: int, blobs: t.Sequence[LayerBlob]) -> Measurement:
    out_dir = os.path.join(RUNS_DIR, 'round-%d-%s' % (round_number, way))
    os.makedirs(out_dir)
    dest = os.path.join(out_dir, 'dest')
    stdout_path, log_path = os.path.join(out_dir, 'stdout'), os.path.join(out_dir, 'log')
    if way == OLD_TOOL:
        commands = old_tool_commands(dest, blobs)
    elif way == 'store-second':
        store = os.path.join(out_dir, 'store')
        first = [Command([sys.executable, os.path.abspath(__file__), '--engine-child', 'store:' + store,
                          os.path.join(out_dir, 'first')])]
        run_timed(first, stdout_path, log_path)  # not timed: the first guest fills the store
        commands = [Command([sys.executable, os.path.abspath(__file__), '--engine-child', 'store:' + store, dest])]
    else:
        commands = [Command([sys.executable, os.path.abspath(__file__), '--engine-child', way, dest])]
    usage = run_timed(commands, stdout_path, log_path)
    if way == OLD_TOOL:
        appliances = len(blobs)
    else:
        with open(stdout_path, encoding='utf-8') as stream:
            appliances = json.loads(stream.read().strip().splitlines()[-1])['appliances']
    return Measurement(way, round_number, usage.wall_s, usage.user_s, usage.sys_s, appliances, tree_bytes(dest))


def run_rounds(rounds: int, appliance_rounds: int, old_tool_rounds: int,
               blobs: t.Sequence[LayerBlob]) -> t.List[Measurement]:
    measurements = []
    for round_number in range(rounds + 1):  # round 0 warms the caches and is not reported
        ways = rotated(WAYS, round_number)
        if 0 < round_number <= appliance_rounds:
            ways += (APPLIANCE,)
        if 0 < round_number <= old_tool_rounds:
            ways += (OLD_TOOL,)
        for way in ways:
            measurement = measure(way, round_number, blobs)
            if round_number:
                measurements.append(measurement)
            print('round %d %-20s %6.2f s' % (round_number, way, measurement.wall_s), file=sys.stderr)
    return measurements


def summary(measurements: t.Sequence[Measurement]) -> t.Dict[str, t.Any]:
    by_way: t.Dict[str, t.List[Measurement]] = {}
    for measurement in measurements:
        by_way.setdefault(measurement.way, []).append(measurement)
    table = {way: {'wall_s': statistics.median(m.wall_s for m in runs),
                   'cpu_s': statistics.median(m.user_s + m.sys_s for m in runs),
                   'appliances': runs[0].appliances,
                   'disk_mib': statistics.median(m.disk_bytes for m in runs) / (1 << 20),
                   'runs': len(runs)} for way, runs in by_way.items()}
    ratios = {}
    for base, other in (('chain', 'dir'), ('chain', 'flat'), ('chain', 'store-second'), ('chain', APPLIANCE),
                        ('chain', OLD_TOOL), (APPLIANCE, OLD_TOOL)):
        pairs = [(by_round[base], by_round[other]) for by_round in _by_round(measurements)
                 if base in by_round and other in by_round]
        if pairs:
            ratios['%s / %s' % (other, base)] = statistics.median(b.wall_s / a.wall_s for a, b in pairs)
    return {'ways': table, 'median_ratios_of_wall_time': ratios}


def _by_round(measurements: t.Sequence[Measurement]) -> t.List[t.Dict[str, Measurement]]:
    rounds: t.Dict[int, t.Dict[str, Measurement]] = {}
    for measurement in measurements:
        rounds.setdefault(measurement.round, {})[measurement.way] = measurement
    return [rounds[number] for number in sorted(rounds)]


def print_table(result: t.Dict[str, t.Any]) -> None:
    print('%-20s %9s %8s %11s %9s %5s' % ('way', 'wall (s)', 'cpu (s)', 'appliances', 'disk MiB', 'runs'))
    for way, row in result['ways'].items():
        values = (way, row['wall_s'], row['cpu_s'], row['appliances'], row['disk_mib'], row['runs'])
        print('%-20s %9.2f %8.2f %11d %9.1f %5d' % values)
    for name, ratio in result['median_ratios_of_wall_time'].items():
        print('%-42s %6.2f' % (name, ratio))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds of chain, flat and dir (default 5)')
    parser.add_argument('--appliance-rounds', type=int, default=1,
                        help='rounds that also write the chain through one libguestfs appliance (about 30 s each; '
                             'default 1, 0 for none)')
    parser.add_argument('--old-tool-rounds', type=int, default=1,
                        help="rounds that also run the old tool's way (about 40 s each; default 1, 0 for none)")
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    parser.add_argument('--keep', action='store_true', help='keep the images written (bench/.cache/qcow2-runs)')
    parser.add_argument('--collection', default=REPO_ROOT, help='the checkout whose engine is measured')
    parser.add_argument('--engine-child', nargs=2, metavar=('WAY', 'DEST'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child(*args.engine_child)
        return 0
    try:
        os.environ.update(GUESTFS_ENV)
        link_collection(args.collection)
        build_image()
        blobs = layer_blobs(LAYOUT_DIR, TAG)[1]
        # Old outputs go well before this run: the allocator is slow right after mass deletes (see README).
        remove_tree(RUNS_DIR)
        settle_removals(RUNS_DIR, 'qcow2.py')
        measurements = run_rounds(args.rounds, args.appliance_rounds, args.old_tool_rounds, blobs)
        result = summary(measurements)
        result['measurements'] = [asdict(m) for m in measurements]
    except BenchError as exc:
        print('bench/qcow2.py: %s' % exc, file=sys.stderr)
        return 1
    finally:
        if not args.keep and not args.engine_child:
            _remove_runs()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def _remove_runs() -> None:
    """The engine's dests hold a state record beside them; plain removal is enough for bench output."""
    remove_tree(RUNS_DIR)


if __name__ == '__main__':
    sys.exit(main())
