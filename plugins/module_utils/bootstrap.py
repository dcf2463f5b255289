# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine: decide whether dest needs work, then do it. Used by the module and the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils import shadow
from ansible_collections.virt.bootstrap.plugins.module_utils.destination import Destination
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils.idmap import IdMap, parse_id_map
from ansible_collections.virt.bootstrap.plugins.module_utils.image import Image
from ansible_collections.virt.bootstrap.plugins.module_utils.layers import DEFAULT_MAX_SIZE, ApplyStats
from ansible_collections.virt.bootstrap.plugins.module_utils.platforms import matches, parse_platform
from ansible_collections.virt.bootstrap.plugins.module_utils.progress import Progress, ProgressCallback
from ansible_collections.virt.bootstrap.plugins.module_utils.rootpath import remove_tree
from ansible_collections.virt.bootstrap.plugins.module_utils.sources import Source, open_source, parse_source
from ansible_collections.virt.bootstrap.plugins.module_utils.sources.registry import RegistryOptions
from ansible_collections.virt.bootstrap.plugins.module_utils.state import StateRecord, options_hash, path_identity
from ansible_collections.virt.bootstrap.plugins.module_utils.writers.dir import write_dir

FORMATS = ('dir',)


@dataclass
class Request:
    src: t.Optional[str]
    dest: str
    format: str = 'dir'
    state: str = 'present'
    platform: t.Optional[str] = None
    force: bool = False
    max_size: int = DEFAULT_MAX_SIZE
    root_password: t.Optional[str] = field(default=None, repr=False)
    root_password_hash: t.Optional[str] = field(default=None, repr=False)
    uid_map: IdMap = field(default_factory=IdMap)
    gid_map: IdMap = field(default_factory=IdMap)
    progress_cb: t.Optional[ProgressCallback] = field(default=None, repr=False)
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    device_nodes: bool = False

    def shaping_options(self) -> t.Dict[str, t.Any]:
        """Options that change the rootfs written, beyond the image itself.

        Only whether a root password is set counts here: neither it nor its hash is ever stored.
        """
        return {
            'format': self.format,
            'uid_map': self.uid_map.as_lists(),
            'gid_map': self.gid_map.as_lists(),
            'root_password': self.root_password is not None or self.root_password_hash is not None,
            'device_nodes': self.device_nodes,
        }

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise BootstrapError('format %r is not supported; choose one of: %s' % (self.format, ', '.join(FORMATS)))
        if self.root_password is not None and self.root_password_hash is not None:
            raise BootstrapError('root_password and root_password_hash are mutually exclusive')
        if self.root_password_hash is not None:
            shadow.validate_crypt_hash(self.root_password_hash)
        if (self.uid_map or self.gid_map) and os.geteuid() != 0 and self.state == 'present':
            raise BootstrapError('uid_map/gid_map need root for the dir format: files owned by other users '
                                 'cannot be created by uid %d' % os.geteuid())

    def password_is_set_in(self, root: str) -> bool:
        """Whether the rootfs at `root` already has the requested root password."""
        current = shadow.read_root_hash(root)
        if self.root_password_hash is not None:
            return current == self.root_password_hash
        return self.root_password is not None and shadow.password_matches(self.root_password, current)


PlanAction = t.Literal['build', 'password', 'remove', 'none']


@dataclass
class Plan:
    action: PlanAction
    reason: str
    before: t.Optional[StateRecord]
    after: t.Optional[StateRecord] = None
    image: t.Optional[Image] = None


@dataclass
class Result:
    changed: bool
    msg: str
    dest: str
    format: str
    state: str
    digest: t.Optional[str] = None
    index_digest: t.Optional[str] = None
    platform: t.Optional[str] = None
    layers: t.List[t.Dict[str, t.Any]] = field(default_factory=list)
    entries_written: int = 0
    entries_skipped: int = 0
    skipped: t.Dict[str, int] = field(default_factory=dict)
    warnings: t.List[str] = field(default_factory=list)
    # Where registry credentials came from (an auth file path or the options); never the secret.
    credentials_from: t.Optional[str] = None
    before: t.Optional[StateRecord] = None
    after: t.Optional[StateRecord] = None


def run(request: Request, check_mode: bool = False) -> Result:
    """Bring dest to the requested state; in check mode only decide."""
    request.validate()
    dest = Destination(request.dest)
    source = None
    if request.state == 'present':
        if not request.src:
            raise BootstrapError('src is required when state is present')
        registry = request.registry
        if registry.max_download_size is None:
            # Compressed layers bigger than max_size cannot expand to less: refuse before downloading.
            registry = dataclasses.replace(registry, max_download_size=request.max_size)
        if registry.no_cache and registry.scratch_dir is None:
            # Blobs are only fetched while the lock is held, when the bookkeeping directory exists.
            registry = dataclasses.replace(registry, scratch_dir=dest.meta_dir)
        source = open_source(parse_source(request.src), registry)
    try:
        if not check_mode and dest.has_debris():
            with dest:
                pass  # taking the lock clears what a killed run left (and puts back a parked rootfs)
        # Decide before locking: a run with nothing to do (or refused) leaves no bookkeeping behind.
        plan = decide(request, dest, source)
        if check_mode or plan.action == 'none':
            if not check_mode:
                Progress(request.progress_cb).done('Nothing to do')
            return _result(request, plan, source, stats=None)
        with dest:
            if dest.load_record() != plan.before:
                plan = decide(request, dest, source)  # another run changed dest while we waited for the lock
            stats = carry_out(request, plan, dest)
        return _result(request, plan, source, stats=stats)
    finally:
        if source is not None:
            source.close()


def decide(request: Request, dest: Destination, source: t.Optional[Source]) -> Plan:
    before = dest.load_record()
    if request.state == 'absent' or source is None:
        if not dest.exists() and before is None:
            return Plan('none', '%s is absent' % dest.path, before)
        refusal = dest.refusal(before, request.force)
        if refusal:
            raise DestinationError(refusal.replace('replace', 'remove'))
        return Plan('remove', 'remove %s' % dest.path, before)

    wanted_platform = parse_platform(request.platform) if request.platform else None
    wanted_options = options_hash(request.shaping_options())
    intact = before is not None and before.dest_identity is not None and \
        before.dest_identity == path_identity(dest.path) and os.path.isdir(dest.path)
    probe = getattr(source, 'probe', None)
    same_platform = wanted_platform is None or (
        before is not None and before.platform is not None and matches(parse_platform(before.platform), wanted_platform))
    if before is not None and intact and before.options_hash == wanted_options and same_platform and probe is not None:
        # A registry says with one manifest request whether the tag still names what we applied.
        if probe(wanted_platform) == (before.digest, before.index_digest):
            return _unchanged(request, dest, before)
    image = source.resolve(wanted_platform)
    after = StateRecord(
        source=request.src or '', digest=image.digest, format=request.format, options_hash=wanted_options,
        platform=str(image.platform) if image.platform else None, index_digest=image.index_digest,
        layers=[layer.describe() for layer in image.layers], options=request.shaping_options())
    if before is not None and intact and before.same_result(after):
        return _unchanged(request, dest, before, image)
    refusal = dest.refusal(before, request.force)
    if refusal:
        raise DestinationError(refusal)
    if before is None:
        reason = 'build %s into %s' % (image.digest, dest.path)
    elif not intact:
        reason = 'rebuild %s: it was changed or removed outside this module' % dest.path
    elif before.digest != after.digest:
        reason = 'replace %s with %s in %s' % (before.digest, after.digest, dest.path)
    else:
        reason = 'rebuild %s: options changed' % dest.path
    return Plan('build', reason, before, after, image)


def _unchanged(request: Request, dest: Destination, before: StateRecord, image: t.Optional[Image] = None) -> Plan:
    if _wants_password(request) and not request.password_is_set_in(dest.path):
        return Plan('password', 'set the root password in %s' % dest.path, before, before, image)
    return Plan('none', '%s already holds %s' % (dest.path, before.digest), before, before, image)


def carry_out(request: Request, plan: Plan, dest: Destination) -> t.Optional[ApplyStats]:
    """Act on a plan. The lock is held; dest changes only in the final swap."""
    if plan.action == 'remove':
        dest.remove_all()
        return None
    progress = Progress(request.progress_cb)
    if plan.action == 'password':
        progress.status('Setting the root password', 0.0)
        _set_password(request, dest.path)
        progress.done('Root password set')
        return None
    if plan.action != 'build':
        return None
    if plan.image is None or plan.after is None:
        raise BootstrapError('internal error: a build plan without an image')
    build_dir = dest.new_build_dir()
    try:
        new_root = os.path.join(build_dir, 'rootfs')
        stats = write_dir(plan.image, new_root, request.max_size, _id_mapper(request), progress,
                          device_nodes=request.device_nodes)
        if _wants_password(request):
            progress.status('Setting the root password')
            _set_password(request, new_root)
        plan.after.dest_identity = path_identity(new_root)  # a rename keeps the inode
        dest.save_record(plan.after)
        dest.swap_in(new_root)
    except BaseException:
        # Cleaning up must not hide why the build failed: a failing cleanup leaves debris for the next run.
        with contextlib.suppress(OSError):
            remove_tree(build_dir)
        # The record must not claim a build that never reached dest.
        with contextlib.suppress(OSError):
            if plan.before is not None:
                dest.save_record(plan.before)
            elif os.path.exists(dest.record_path):
                os.unlink(dest.record_path)
        raise
    remove_tree(build_dir)
    progress.done('Extraction completed successfully!')
    return stats


def _wants_password(request: Request) -> bool:
    return request.root_password is not None or request.root_password_hash is not None


def _set_password(request: Request, root: str) -> None:
    new_hash = request.root_password_hash or shadow.hash_password(t.cast(str, request.root_password))
    shadow.set_root_hash(root, new_hash)


def _id_mapper(request: Request) -> t.Optional[t.Callable[[int, int], t.Tuple[int, int]]]:
    if not request.uid_map and not request.gid_map:
        return None
    uid_map, gid_map = request.uid_map, request.gid_map
    return lambda uid, gid: (uid_map(uid), gid_map(gid))


def bootstrap(uri: str, dest: str, fmt: str = 'dir', username: t.Optional[str] = None,
              password: t.Optional[str] = None, root_password: t.Optional[str] = None,
              uid_map: t.Optional[t.Sequence[t.Sequence[int]]] = None,
              gid_map: t.Optional[t.Sequence[t.Sequence[int]]] = None, not_secure: bool = False,
              no_cache: bool = False, progress_cb: t.Optional[ProgressCallback] = None,
              platform: t.Optional[str] = None, force: bool = False, auth_file: t.Optional[str] = None,
              ca_path: t.Optional[str] = None, cache_dir: t.Optional[str] = None, device_nodes: bool = False) -> Result:
    """The virt-bootstrap API: write the rootfs of `uri` into `dest`. Raises BootstrapError subclasses.

    The positional order is the original virt-bootstrap's; the options after progress_cb are ours.
    """
    request = Request(src=uri, dest=dest, format=fmt, platform=platform, force=force, root_password=root_password,
                      uid_map=parse_id_map(uid_map, 'uid_map'), gid_map=parse_id_map(gid_map, 'gid_map'),
                      progress_cb=progress_cb, device_nodes=device_nodes,
                      registry=RegistryOptions(username=username, password=password, auth_file=auth_file,
                                               not_secure=not_secure, ca_path=ca_path, cache_dir=cache_dir,
                                               no_cache=no_cache))
    return run(request)


def _result(request: Request, plan: Plan, source: t.Optional[Source], stats: t.Optional[ApplyStats]) -> Result:
    record = plan.after if request.state == 'present' else plan.before
    result = Result(changed=plan.action != 'none', msg=plan.reason, dest=os.path.normpath(request.dest),
                    format=request.format, state=request.state, before=plan.before,
                    after=plan.after if request.state == 'present' else None,
                    credentials_from=getattr(source, 'credentials_origin', None))
    if record is not None and request.state == 'present':
        result.digest = record.digest
        result.index_digest = record.index_digest
        result.platform = record.platform
        result.layers = record.layers
    if stats is not None:
        result.entries_written = stats.written
        result.entries_skipped = stats.skipped_total
        result.skipped = dict(stats.skipped)
        if stats.owners_not_kept:
            result.warnings.append(
                '%d entries could not be given their owners from the image (running as uid %d); they are owned '
                'by the caller' % (stats.owners_not_kept, os.geteuid()))
        if stats.skipped.get('xattr'):
            result.warnings.append('%d extended attributes (such as file capabilities) could not be set'
                                   % stats.skipped['xattr'])
        if stats.skipped.get('device_node'):
            result.warnings.append('%d device nodes were skipped: creating them is not permitted here'
                                   % stats.skipped['device_node'])
    return result
