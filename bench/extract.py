# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: our extraction of a multi-layer OCI layout against `umoci unpack` and plain `tar -xzf`.

Run as root from anywhere:
`python3 bench/extract.py [--image debian|large] [--rounds N] [--json] [--profile] [--keep] [--collection DIR]`.
See bench/README.md for what is measured and how to read the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import typing as t
from dataclasses import asdict, dataclass, field

from common import (CACHE_DIR, LAYOUT_DIR, MIB, REPO_ROOT, ROOTFS_DIR, TAG, BenchError, Command, LayerBlob, build_image,
                    check_space, count_entries, import_engine, layer_blobs, link_collection, remove_tree, rotated,
                    run_timed, settle_removals, time_write_dir, tree_bytes)
from large_image import LARGE_TAG, VARIANTS, build_large_image

RUNS_DIR = os.path.join(CACHE_DIR, 'runs')
PROFILE_PATH = os.path.join(CACHE_DIR, 'ours.pstats')

# The tools measured (main() drops umoci for zstd layers, which umoci 0.4.7 rejects).
TOOLS: t.Tuple[str, ...] = ('ours', 'umoci', 'tar')


@dataclass
class BenchImage:
    layout: str
    tag: str

    @property
    def ref(self) -> str:
        return '%s:%s' % (self.layout, self.tag)


# The image measured (--image): the Debian one by default, or the large one (bench/large_image.py).
IMAGE = BenchImage(LAYOUT_DIR, TAG)


@dataclass
class Measurement:
    """One run of one tool: spawn to exit, then sync, into a directory nothing was ever deleted from."""
    tool: str
    round: int
    wall_s: float
    sync_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    output: str
    # Lines the tool printed about entries it could not write, and went on (tar only).
    tolerated_errors: t.List[str] = field(default_factory=list)
    # Phases the engine child timed itself (tool 'ours' only).
    engine: t.Dict[str, float] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


# -- the commands ------------------------------------------------------------------------------------


def commands_for(tool: str, out_dir: str, blobs: t.Sequence[LayerBlob]) -> t.Tuple[str, t.List[Command]]:
    """Where `tool` writes the rootfs, and the commands that write it (run one after the other)."""
    if tool == 'ours':
        dest = os.path.join(out_dir, 'rootfs')
        return dest, [Command([sys.executable, os.path.abspath(__file__), '--engine-child', 'oci:' + IMAGE.ref, dest])]
    if tool == 'umoci':
        bundle = os.path.join(out_dir, 'bundle')
        return os.path.join(bundle, 'rootfs'), [Command(['umoci', 'unpack', '--image', IMAGE.ref, bundle])]
    if tool == 'tar':
        root = os.path.join(out_dir, 'rootfs')
        os.mkdir(root)
        # The floor: every layer unpacked in order with no whiteout handling at all. Plain tar cannot put a
        # file where a lower layer left a non-empty directory; it says so, skips that entry and exits 2.
        return root, [Command(['tar', '--numeric-owner', '-C', root] + _tar_flags(blob.media_type) + [blob.path],
                              (0, 2)) for blob in blobs]
    raise BenchError('unknown tool %r' % tool)


def _tar_flags(media_type: str) -> t.List[str]:
    if media_type.endswith('+gzip'):
        return ['-xzf']
    if media_type.endswith('+zstd'):
        return ['-I', 'zstd', '-xf']
    return ['-xf']


def measure(tool: str, round_number: int, blobs: t.Sequence[LayerBlob]) -> Measurement:
    out_dir = os.path.join(RUNS_DIR, 'r%d-%s' % (round_number, tool))
    os.makedirs(out_dir)
    output, commands = commands_for(tool, out_dir, blobs)
    log_path = os.path.join(out_dir, 'log')
    stdout_path = os.path.join(out_dir, 'stdout')
    usage = run_timed(commands, stdout_path, log_path)
    item = Measurement(tool, round_number, usage.wall_s, usage.sync_s, usage.user_s, usage.sys_s, usage.max_rss_kib,
                       output)
    if tool == 'ours':
        with open(stdout_path, 'rb') as stream:
            item.engine = json.load(stream)
    elif tool == 'tar':
        with open(log_path, 'r', encoding='utf-8', errors='replace') as stream:
            item.tolerated_errors = [line.rstrip('\n') for line in stream if 'Exiting with failure status' not in line]
    return item


# -- the engine child --------------------------------------------------------------------------------


def engine_child(src: str, dest: str, profile_path: t.Optional[str]) -> None:
    """Run our engine as the module would (fresh dest: build beside it, record, swap) and time its phases."""
    started = time.perf_counter()
    bootstrap = import_engine()
    imported = time.perf_counter()
    write_dir_s = time_write_dir(bootstrap)
    request = bootstrap.Request(src=src, dest=dest, device_nodes=True)  # umoci creates them too
    if profile_path:
        import cProfile  # pylint: disable=import-outside-toplevel
        profiler = cProfile.Profile()
        result = profiler.runcall(bootstrap.run, request)
        profiler.dump_stats(profile_path)
    else:
        result = bootstrap.run(request)
    finished = time.perf_counter()
    if not result.changed:
        raise BenchError('the engine reported no change for a fresh dest %s' % dest)
    json.dump({'import_s': imported - started, 'run_s': finished - imported, 'write_dir_s': sum(write_dir_s),
               'entries_written': result.entries_written}, sys.stdout)


# -- checks and summaries ----------------------------------------------------------------------------


def summarise(measurements: t.Sequence[Measurement]) -> t.Dict[str, t.Any]:
    by_tool: t.Dict[str, t.List[Measurement]] = {tool: [] for tool in TOOLS}
    for item in measurements:
        by_tool[item.tool].append(item)
    tools = {tool: {
        'wall_s': statistics.median(item.wall_s for item in items),
        'sync_s': statistics.median(item.sync_s for item in items),
        'cpu_s': statistics.median(item.cpu_s for item in items),
        'user_s': statistics.median(item.user_s for item in items),
        'sys_s': statistics.median(item.sys_s for item in items),
        'max_rss_mib': statistics.median(item.max_rss_kib for item in items) / 1024,
    } for tool, items in by_tool.items()}
    engine = {key: statistics.median(item.engine[key] for item in by_tool['ours'])
              for key in ('import_s', 'run_s', 'write_dir_s')}
    rounds = sorted({item.round for item in measurements})
    per_round = {(item.round, item.tool): item for item in measurements}
    ratios: t.Dict[str, t.Dict[str, float]] = {}
    for other in TOOLS[1:]:
        ratios['ours/%s' % other] = {metric: statistics.median(
            getattr(per_round[(number, 'ours')], metric) / getattr(per_round[(number, other)], metric)
            for number in rounds) for metric in ('wall_s', 'cpu_s', 'user_s', 'max_rss_kib')}
    return {'tools': tools, 'engine': engine, 'ratios': ratios}


def print_report(image: t.Dict[str, t.Any], summary: t.Dict[str, t.Any], measurements: t.Sequence[Measurement],
                 check: t.Dict[str, int]) -> None:
    print('image     oci:%s  %s' % (IMAGE.ref, image['manifest_digest']))
    print('          %d layers, %.1f MiB compressed (%s)' % (
        len(image['layers']), sum(layer['size'] for layer in image['layers']) / MIB,
        ' + '.join('%.2f' % (layer['size'] / MIB) for layer in image['layers'])))
    print('method    %d round(s), tool order rotated each round, a fresh directory per run, outputs deleted at the'
          ' end;' % image['rounds'])
    print('          wall = spawn to exit + sync; CPU and peak RSS from wait4 (children included)')
    print()
    print('%-8s %10s %8s %12s %8s %8s %14s' % ('tool', 'wall s', 'sync s', 'user+sys s', 'user s', 'sys s',
                                               'peak RSS MiB'))
    for tool in TOOLS:
        row = summary['tools'][tool]
        print('%-8s %10.2f %8.2f %12.2f %8.2f %8.2f %14.1f'
              % (tool, row['wall_s'], row['sync_s'], row['cpu_s'], row['user_s'], row['sys_s'], row['max_rss_mib']))
    engine = summary['engine']
    print('(medians; ours: import %.2f s, bootstrap.run %.2f s of which write_dir %.2f s)'
          % (engine['import_s'], engine['run_s'], engine['write_dir_s']))
    print()
    print('%-14s %8s %10s %8s %10s   (median of per-round ratios)' % ('ratio', 'wall', 'user+sys', 'user', 'peak RSS'))
    for name, values in summary['ratios'].items():
        print('%-14s %8.2f %10.2f %8.2f %10.2f'
              % (name, values['wall_s'], values['cpu_s'], values['user_s'], values['max_rss_kib']))
    print()
    print('wall s per round (%s):' % ', '.join(TOOLS))
    per_round = {(item.round, item.tool): item for item in measurements}
    for number in sorted({item.round for item in measurements}):
        print('  round %d (first: %-5s) %s' % (number, rotated(TOOLS, number)[0], '  '.join(
            '%6.2f' % per_round[(number, tool)].wall_s for tool in TOOLS)))
    print()
    verdict = 'equal' if check['ours'] == check['umoci'] else 'DIFFERENT'
    print('check     entries: ours %d, umoci %d%s: %s (tar, which keeps whiteouts and deleted files: %d)'
          % (check['ours'], check['umoci'], '' if 'umoci' in TOOLS else ' (of the gzip twin, untimed)', verdict,
             check['tar']))
    tar_errors = sorted({line for item in measurements for line in item.tolerated_errors})
    if tar_errors:
        print('          tar went on past: %s' % '; '.join(tar_errors))


# -- main --------------------------------------------------------------------------------------------


def umoci_entries_of_twin() -> int:
    """The entries of umoci's tree of the gzip twin (the same tars) of an image umoci cannot read."""
    bundle = os.path.join(RUNS_DIR, 'umoci-twin')
    subprocess.run(['umoci', 'unpack', '--image', '%s:%s' % (build_large_image('large'), LARGE_TAG), bundle],
                   check=True, stdout=subprocess.DEVNULL)
    return count_entries(os.path.join(bundle, 'rootfs'))


def run_profile() -> str:
    """Profile one more (untimed) run of ours; the 25 functions with the most own time, as text."""
    dest = os.path.join(RUNS_DIR, 'profile', 'rootfs')
    os.makedirs(os.path.dirname(dest))
    subprocess.run([sys.executable, os.path.abspath(__file__), '--engine-child', 'oci:' + IMAGE.ref,
                    dest, '--profile-out', PROFILE_PATH], check=True, stdout=subprocess.DEVNULL)
    # pylint: disable=import-outside-toplevel  # only --profile needs them
    import io
    import pstats
    text = io.StringIO()
    text.write('profile of one more (untimed) run of ours, saved to %s:\n' % os.path.relpath(PROFILE_PATH, os.getcwd()))
    pstats.Stats(PROFILE_PATH, stream=text).strip_dirs().sort_stats('tottime').print_stats(25)
    return text.getvalue()


def parse_args(argv: t.Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--image', choices=('debian',) + VARIANTS, default='debian',
                        help='the Debian image (default), or the large one made from this host or one of its variants '
                             '(bench/large_image.py)')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds of all three tools (default 5)')
    parser.add_argument('--json', action='store_true', help='print the results as JSON instead of a table')
    parser.add_argument('--profile', action='store_true',
                        help='after the timed rounds, profile one more run of ours with cProfile')
    parser.add_argument('--keep', action='store_true', help='keep the extracted trees in %s' % RUNS_DIR)
    parser.add_argument('--collection', default=REPO_ROOT, metavar='DIR',
                        help='the checkout of the collection whose engine is measured (default: %(default)s)')
    parser.add_argument('--engine-child', nargs=2, metavar=('SRC', 'DEST'), help=argparse.SUPPRESS)
    parser.add_argument('--profile-out', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error('--rounds must be at least 1')
    return args


def main(argv: t.Sequence[str]) -> int:
    args = parse_args(argv)
    if args.engine_child:
        engine_child(args.engine_child[0], args.engine_child[1], args.profile_out)
        return 0
    for tool in ('umoci', 'tar', 'bash'):
        if shutil.which(tool) is None:
            raise BenchError('%s is not installed (apt-get install umoci tar)' % tool)
    global IMAGE, TOOLS  # pylint: disable=global-statement
    if args.image != 'debian':
        IMAGE = BenchImage(build_large_image(args.image), LARGE_TAG)
        if args.image == 'large-zstd':
            TOOLS = ('ours', 'tar')
    else:
        build_image()
    link_collection(args.collection)
    manifest_digest, blobs = layer_blobs(IMAGE.layout, IMAGE.tag)
    if os.path.exists(RUNS_DIR):
        print('extract.py: removing %s, left by an earlier run' % RUNS_DIR, file=sys.stderr)
        remove_tree(RUNS_DIR, ignore_errors=False)
    # Every run keeps its tree until the end (deleting between runs would slow the next ones down).
    unpacked = tree_bytes(ROOTFS_DIR) if args.image == 'debian' else \
        sum(blob.size * (1 if blob.media_type.endswith('.tar') else 3) for blob in blobs)
    check_space(RUNS_DIR, int(unpacked * 1.5) * len(TOOLS) * (args.rounds + 1), args.rounds + 1)
    measurements: t.List[Measurement] = []
    settle_removals(RUNS_DIR, 'extract.py')
    try:
        # Round 0 warms the page cache and Python's bytecode cache; it is not reported.
        for number in range(args.rounds + 1):
            for tool in rotated(TOOLS, number):
                item = measure(tool, number, blobs)
                print('extract.py: round %d %-5s %6.2f s' % (number, tool, item.wall_s), file=sys.stderr)
                if number:
                    measurements.append(item)
        first = {item.tool: item.output for item in measurements if item.round == 1}
        check = {tool: count_entries(path) for tool, path in first.items()}
        if 'umoci' not in check:
            check['umoci'] = umoci_entries_of_twin()
        profile = run_profile() if args.profile else ''
    finally:
        if not args.keep:
            remove_tree(RUNS_DIR)
    image = {'manifest_digest': manifest_digest, 'rounds': args.rounds,
             'layers': [{'digest': blob.digest, 'media_type': blob.media_type, 'size': blob.size} for blob in blobs]}
    summary = summarise(measurements)
    if args.json:
        json.dump({'image': image, 'summary': summary, 'check_entries': check,
                   'runs': [dict(asdict(item), cpu_s=item.cpu_s) for item in measurements]}, sys.stdout, indent=2)
        print()
    else:
        print_report(image, summary, measurements, check)
    if profile:
        print('\n' + profile, file=sys.stderr if args.json else sys.stdout)
    return 0 if check['ours'] == check['umoci'] else 1


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except (BenchError, subprocess.CalledProcessError) as exc:
        print('extract.py: %s' % exc, file=sys.stderr)
        sys.exit(1)
