# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""The virt-bootstrap command line, on top of bootstrap()."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import traceback
import typing as t

from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import bootstrap
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._idmap import IdMapError, parse_id_map

PROG = 'virt-bootstrap'
VERSION = '0.1.0'


def _id_range(text: str) -> t.List[int]:
    """One START:TARGET:COUNT, checked as the engine checks maps (overlaps are checked there)."""
    if text.count(':') != 2:
        raise argparse.ArgumentTypeError('%r is not START:TARGET:COUNT' % text)
    try:
        return parse_id_map([text], 'range').as_lists()[0]
    except IdMapError as exc:
        raise argparse.ArgumentTypeError('%r: %s' % (text, str(exc).replace('range entry 1: ', '', 1)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description='Write the root filesystem of a container image into DEST for a libvirt LXC guest.')
    parser.add_argument('uri', metavar='URI', help='the source: /path/rootfs.tar[.xz], file:///path, '
                        'docker-archive:/path.tar, oci:/layout[:tag], oci-archive:/path.tar[:tag], '
                        'docker://[registry/]image[:tag][@digest], virt-builder://TEMPLATE')
    parser.add_argument('dest', metavar='DEST', help='the directory to write the rootfs into')
    parser.add_argument('-f', '--format', default='dir', choices=['dir', 'qcow2'],
                        help='output format (default: dir); qcow2: DEST holds layer-0.qcow2 ... layer-N.qcow2')
    parser.add_argument('--qcow2-size', metavar='SIZE', help='qcow2 disk size, e.g. 4G (default: from the image)')
    parser.add_argument('--qcow2-layers', choices=['chain', 'flat'], default='chain',
                        help='qcow2: one image per layer (chain, default) or one rootfs.qcow2 (flat)')
    parser.add_argument('--qcow2-layer-store', metavar='DIR',
                        help='qcow2: keep the layer images in DIR, shared by every guest made with it')
    parser.add_argument('--qcow2-method', choices=['auto', 'host-mount', 'appliance'], default='auto',
                        help='qcow2 chain: mount each image on the host (host-mount: root, loop devices), or one '
                             'libguestfs appliance for all (appliance); auto: host-mount where it works')
    parser.add_argument('--qcow2-filesystem', choices=['ext4', 'xfs'], default='ext4',
                        help='filesystem of the qcow2 images (default: ext4)')
    parser.add_argument('--root-password', metavar='PASSWORD',
                        help='set the root password; file:PATH reads it from the first line of PATH')
    parser.add_argument('--root-password-hash', metavar='HASH',
                        help='set this crypt(5) hash as the root password; file:PATH reads it from PATH')
    parser.add_argument('--max-size', default='64G', metavar='SIZE',
                        help='the most the layers may expand to, e.g. 500M or 20G (default: 64G)')
    parser.add_argument('--update', choices=['always', 'never'], default='always',
                        help='always: rebuild DEST when the image or an option changed (default); '
                        'never: keep the rootfs DEST holds')
    parser.add_argument('-u', '--username', help='registry user name (prompts for the password if -p is not given)')
    parser.add_argument('-p', '--password', help='registry password (visible in ps: prefer the prompt)')
    parser.add_argument('--not-secure', action='store_true', help='do not verify TLS certificates of registries')
    parser.add_argument('--no-cache', action='store_true', help='do not keep downloaded layers or templates')
    parser.add_argument('--auth-file', help='registry auth file (auth.json / docker config.json) to read')
    parser.add_argument('--ca-path', help='CA certificates (PEM) to verify the registry with')
    parser.add_argument('--cache-dir', help='where downloaded layers (and virt-builder templates) are kept')
    parser.add_argument('--virt-builder-source', metavar='URL',
                        help='virt-builder:// only: the repository index to use instead of the configured ones, '
                        'e.g. file:///srv/index')
    parser.add_argument('--virt-builder-no-check-signature', action='store_true',
                        help='virt-builder:// only: do not check the signatures of templates')
    parser.add_argument('--timeout', type=float, default=60.0, metavar='SECONDS',
                        help='how long a registry may stall (default: 60)')
    parser.add_argument('--uidmap', type=_id_range, action='append', default=[], metavar='START:TARGET:COUNT',
                        help='map file owner ids (repeatable)')
    parser.add_argument('--gidmap', type=_id_range, action='append', default=[], metavar='START:TARGET:COUNT',
                        help='map file group ids (repeatable)')
    parser.add_argument('--idmap', type=_id_range, action='append', default=[], metavar='START:TARGET:COUNT',
                        help='map both owner and group ids (repeatable)')
    parser.add_argument('--platform', help='platform to pick from a multi-platform image, e.g. linux/arm64')
    parser.add_argument('--force', action='store_true', help='replace a non-empty DEST not made by virt-bootstrap')
    parser.add_argument('--device-nodes', action='store_true', help='create the device nodes the image carries')
    parser.add_argument('--status-only', action='store_true', help='print status lines only, no progress bar')
    parser.add_argument('-d', '--debug', action='store_true', help='show debugging output and tracebacks')
    parser.add_argument('-q', '--quiet', action='store_true', help='only print errors')
    parser.add_argument('--version', action='version', version='%(prog)s ' + VERSION)
    return parser


def read_root_password(value: t.Optional[str]) -> t.Optional[str]:
    if value is None or not value.startswith('file:'):
        return value
    path = value[len('file:'):]
    try:
        with open(path, encoding='utf-8') as stream:
            return stream.readline().rstrip('\r\n')
    except OSError as exc:
        raise BootstrapError('cannot read the root password from %s: %s' % (path, exc.strerror))


class ProgressPrinter:
    """A bar on a terminal; one line per status change otherwise (or with --status-only)."""

    def __init__(self, stream: t.TextIO, show_bar: bool) -> None:
        self._stream = stream
        self._show_bar = show_bar
        self._last_status = ''

    def __call__(self, event: t.Dict[str, t.Any]) -> None:
        status, value = event['status'], float(event['value'])
        if self._show_bar:
            filled = int(value / 100 * 30)
            self._stream.write('\r[%-30s] %5.1f%% %s\x1b[K' % ('#' * filled, value, status))
            if value >= 100:
                self._stream.write('\n')
        elif status != self._last_status:
            self._stream.write('%s (%.0f%%)\n' % (status, value))
        self._last_status = status
        self._stream.flush()


class Terminated(BaseException):
    """SIGTERM arrived: unwound like Ctrl-C, so the engine cleans up what it started."""


def _terminate(_signal_number: int, _frame: t.Any) -> None:
    raise Terminated()


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _run(args: argparse.Namespace) -> int:
    try:
        password = args.password
        if args.username and password is None:
            password = getpass.getpass('Enter password for %s: ' % args.username)
        uid_map = args.uidmap + args.idmap or None
        gid_map = args.gidmap + args.idmap or None
        progress = None
        if not args.quiet:
            progress = ProgressPrinter(sys.stdout, show_bar=sys.stdout.isatty() and not args.status_only)
        # Relative paths are the caller's, as with the original tool; the engine wants absolute ones.
        uri = os.path.abspath(args.uri) if '://' not in args.uri and ':' not in args.uri.split('/')[0] else args.uri
        result = bootstrap(uri, os.path.abspath(args.dest), fmt=args.format, username=args.username, password=password,
                           root_password=read_root_password(args.root_password), uid_map=uid_map, gid_map=gid_map,
                           not_secure=args.not_secure, no_cache=args.no_cache, progress_cb=progress,
                           platform=args.platform, force=args.force, auth_file=args.auth_file,
                           ca_path=args.ca_path, cache_dir=args.cache_dir, device_nodes=args.device_nodes,
                           root_password_hash=read_root_password(args.root_password_hash), max_size=args.max_size,
                           update=args.update, timeout=args.timeout, virt_builder_source=args.virt_builder_source,
                           virt_builder_no_check_signature=args.virt_builder_no_check_signature,
                           qcow2_size=args.qcow2_size, qcow2_layers=args.qcow2_layers,
                           qcow2_filesystem=args.qcow2_filesystem, qcow2_method=args.qcow2_method,
                           qcow2_layer_store=args.qcow2_layer_store and os.path.abspath(args.qcow2_layer_store))
    except KeyboardInterrupt:
        sys.stderr.write('\n%s: interrupted\n' % PROG)
        return 130
    except Terminated:
        sys.stderr.write('\n%s: terminated\n' % PROG)
        return 128 + signal.SIGTERM
    except (BootstrapError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write('%s: %s\n' % (PROG, exc))
        return 1
    except Exception as exc:  # a bug, or a library failing in a way we did not foresee
        if args.debug:
            traceback.print_exc()
        sys.stderr.write('%s: unexpected error: %s: %s%s\n' % (
            PROG, type(exc).__name__, exc, '' if args.debug else ' (run with --debug for details)'))
        return 1
    if not args.quiet:
        for warning in result.warnings:
            sys.stderr.write('%s: warning: %s\n' % (PROG, warning))
        sys.stdout.write('%s: %s\n' % (PROG, result.msg))
        if result.appliance_launches:
            sys.stdout.write('%s: %d libguestfs appliance launches\n' % (PROG, result.appliance_launches))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
