# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine: decide whether dest needs work, then do it. Used by the module and the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import tempfile
import typing as t
from dataclasses import dataclass, field

from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.plugins.module_utils._destination import Destination, flush_filesystem, mark_rootfs
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils._idmap import IdMap, parse_id_map
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Image, Platform, runtime_config
from ansible_collections.virt.bootstrap.plugins.module_utils._layers import DEFAULT_MAX_SIZE, ApplyStats
from ansible_collections.virt.bootstrap.plugins.module_utils._platforms import host_platform, matches, parse_platform
from ansible_collections.virt.bootstrap.plugins.module_utils._progress import Progress, ProgressCallback
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import remove_tree
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import Source, open_source, parse_source
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.registry import RegistryOptions, RegistrySource
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.virt_builder import VirtBuilderOptions
from ansible_collections.virt.bootstrap.plugins.module_utils._state import StateRecord, options_hash
from ansible_collections.virt.bootstrap.plugins.module_utils._writers.dir import write_dir
from ansible_collections.virt.bootstrap.plugins.module_utils._writers import qcow2

FORMATS = ('dir', 'qcow2')
# always: rebuild when the image or an option changes; never: keep the rootfs dest holds.
UPDATE_POLICIES = ('always', 'never')


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
    virt_builder: VirtBuilderOptions = field(default_factory=VirtBuilderOptions)
    device_nodes: bool = False
    update: str = 'always'
    qcow2_size: t.Optional[int] = None
    qcow2_layers: str = qcow2.CHAIN
    qcow2_filesystem: str = 'ext4'
    qcow2_layer_store: t.Optional[str] = None
    # How a chain is written; not a shaping option: either way writes the same tree.
    qcow2_method: str = qcow2.AUTO

    def qcow2_settings(self) -> qcow2.Qcow2Settings:
        return qcow2.Qcow2Settings(size=self.qcow2_size, layers=self.qcow2_layers, filesystem=self.qcow2_filesystem,
                                   layer_store=self.qcow2_layer_store, method=self.qcow2_method)

    def shaping_options(self, with_password: bool = True) -> t.Dict[str, t.Any]:
        """Options that change the rootfs written, beyond the image itself.

        Only whether a root password is set counts here: neither it nor its hash is ever stored. It is
        an edit of the tree, not a reason to rebuild it, so the options hash leaves it out.
        """
        options = {
            'format': self.format,
            'uid_map': self.uid_map.as_lists(),
            'gid_map': self.gid_map.as_lists(),
            'device_nodes': self.device_nodes,
        }
        if self.format == 'qcow2':
            # Only for qcow2: the records of dir dests keep their hash.
            options.update(qcow2_size=self.qcow2_size, qcow2_layers=self.qcow2_layers,
                           qcow2_filesystem=self.qcow2_filesystem)
            if self.qcow2_layer_store is not None:
                options['qcow2_layer_store'] = os.path.normpath(self.qcow2_layer_store)
        if with_password:
            options['root_password'] = _wants_password(self)
        return options

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise BootstrapError('format %r is not supported; choose one of: %s' % (self.format, ', '.join(FORMATS)))
        if self.format == 'qcow2':
            self.qcow2_settings().validate()
        if self.root_password is not None and self.root_password_hash is not None:
            raise BootstrapError('root_password and root_password_hash are mutually exclusive')
        if self.root_password_hash is not None:
            shadow.validate_crypt_hash(self.root_password_hash)
        if self.update not in UPDATE_POLICIES:
            raise BootstrapError('update %r is not one of: %s' % (self.update, ', '.join(UPDATE_POLICIES)))
        if (self.uid_map or self.gid_map) and os.geteuid() != 0 and self.state == 'present':
            raise BootstrapError('uid_map/gid_map need root for the dir format: files owned by other users '
                                 'cannot be created by uid %d' % os.geteuid())

    def password_is_set_in(self, root: str) -> bool:
        """Whether the rootfs at `root` already has the requested root password."""
        return self.password_is(shadow.read_root_hash(root))

    def password_is(self, current: t.Optional[str]) -> bool:
        """Whether `current`, a root entry's hash, is the requested root password."""
        if self.root_password_hash is not None:
            return current == self.root_password_hash
        return self.root_password is not None and shadow.password_matches(self.root_password, current)


# record: the content is what dest holds; only the record learns something (another source or index digest).
PlanAction = t.Literal['build', 'password', 'remove', 'record', 'none']


@dataclass
class Plan:
    action: PlanAction
    reason: str
    before: t.Optional[StateRecord]
    after: t.Optional[StateRecord] = None
    image: t.Optional[Image] = None
    # Appliances launched while deciding (a look into a qcow2 guest overlay written without host mounts).
    appliance_launches: int = 0


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
    # Not 'skipped': Ansible reads that key as "the task was skipped".
    entries_skipped_by_reason: t.Dict[str, int] = field(default_factory=dict)
    warnings: t.List[str] = field(default_factory=list)
    # Where registry credentials came from (an auth file path or the options); never the secret.
    credentials_from: t.Optional[str] = None
    # What pruning the blob cache did (cache_max_age), for registry sources.
    cache_pruned: t.Optional[t.Dict[str, t.Any]] = None
    # What the image says its container runs (see _image.runtime_config), for the guest's init.
    image_config: t.Optional[t.Dict[str, t.Any]] = None
    # How many times a libguestfs appliance was launched (virt-builder sources; each costs seconds).
    appliance_launches: t.Optional[int] = None
    # qcow2: the images dest holds (bottom first), the one to give the guest, and how they were written.
    qcow2_images: t.List[str] = field(default_factory=list)
    qcow2_top: t.Optional[str] = None
    qcow2_method: t.Optional[str] = None
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
        # A virt-builder disk is kept on dest's filesystem while it is copied out, and reports its build steps.
        virt_builder = dataclasses.replace(request.virt_builder, scratch_dir=dest.meta_dir,
                                           progress_cb=request.progress_cb)
        source = open_source(parse_source(request.src), registry, virt_builder)
    try:
        if not check_mode and dest.needs_recovery():
            with dest:
                pass  # taking the lock settles what a killed run left (see Destination._recover)
        # Decide before locking: a run with nothing to do (or refused) leaves no bookkeeping behind.
        plan: t.Optional[Plan]
        try:
            plan = decide(request, dest, source, check_mode=check_mode)
        except DestinationError:
            # Without the lock, another run's swap can be caught half-way (its tree in, its record not
            # yet): with bookkeeping beside dest, only a decision under the lock counts.
            if check_mode or not os.path.isdir(dest.meta_dir):
                raise
            plan = None
        if plan is not None and check_mode:
            return _result(request, plan, source, dest, stats=None)
        stats = None
        if plan is None or plan.action != 'none':
            with dest:
                if plan is None or dest.load_record() != plan.before:
                    plan = decide(request, dest, source)  # another run changed dest while we waited for the lock
                stats = carry_out(request, plan, dest)
        if plan.action in ('none', 'record'):
            Progress(request.progress_cb).done('Nothing to do')
        result = _result(request, plan, source, dest, stats=stats, carried_out=True)
        _tidy_cache(result, source, dest, plan)
        return result
    finally:
        if source is not None:
            source.close()


def decide(request: Request, dest: Destination, source: t.Optional[Source], check_mode: bool = False) -> Plan:
    """What to do. In check mode a process using dest is a warning, not a refusal: the caller can
    stop it before the real run (the libvirt_lxc role stops the guest), which still refuses."""
    before = dest.load_record()
    if request.state == 'absent' or source is None:
        if not dest.exists() and before is None:
            return Plan('none', '%s is absent' % dest.path, before)
        refusal = dest.refusal(before, request.force, action='remove')
        if refusal:
            raise DestinationError(refusal)
        dest.check_replaceable('remove', in_use_warns=check_mode)
        return Plan('remove', 'remove %s' % dest.path, before)

    intact = dest.holds(before) and os.path.isdir(dest.tree_path()) and _holds_images(dest, before)
    if before is not None and intact and request.update == 'never':
        return _unchanged(request, dest, before, reason='%s already holds %s (update: never)'
                          % (dest.path, before.digest))
    wanted_platform = parse_platform(request.platform) if request.platform else None
    wanted_options = options_hash(request.shaping_options(with_password=False))
    probe = getattr(source, 'probe', None)
    if before is not None and intact and before.options_hash == wanted_options and probe is not None and \
            before.image_config is not None and _platform_still_fits(before, wanted_platform):
        # A registry says with one HEAD (nothing, for a pinned digest dest holds) whether src still names it.
        # A record from before image_config was kept takes one full resolve, which completes it.
        recorded = (before.digest, before.index_digest)
        if probe(wanted_platform, recorded) == recorded:
            return _unchanged(request, dest, before)
    image = source.resolve(wanted_platform)
    after = StateRecord(
        source=request.src or '', digest=image.digest, format=request.format, options_hash=wanted_options,
        platform=str(image.platform) if image.platform else None, index_digest=image.index_digest,
        layers=[layer.describe() for layer in image.layers], options=request.shaping_options(),
        root_password=_wants_password(request),
        image_config=runtime_config(image.config, 'image %s' % image.digest))
    if before is not None and intact and before.same_result(after):
        return _unchanged(request, dest, before, image=image, resolved=after)
    refusal = dest.refusal(before, request.force)
    if refusal:
        raise DestinationError(refusal)
    dest.check_replaceable('replace', in_use_warns=check_mode)
    if before is None:
        reason = 'build %s into %s' % (image.digest, dest.path)
    elif not intact:
        reason = 'rebuild %s: it was changed or removed outside this module' % dest.path
    elif before.digest != after.digest:
        reason = 'replace %s with %s in %s' % (before.digest, after.digest, dest.path)
    else:
        reason = 'rebuild %s: options changed' % dest.path
    return Plan('build', reason, before, after, image)


def _platform_still_fits(before: StateRecord, wanted: t.Optional[Platform]) -> bool:
    """Whether the platform dest holds is the one this run would pick, so a probe of the digests can judge."""
    if before.platform is None:
        return wanted is None
    recorded = parse_platform(before.platform)
    if wanted is not None:
        return matches(recorded, wanted)
    # No platform asked for: an index gives the host's, whatever an earlier run asked for.
    return before.index_digest is None or matches(recorded, host_platform())


def _unchanged(request: Request, dest: Destination, before: StateRecord, image: t.Optional[Image] = None,
               reason: t.Optional[str] = None, resolved: t.Optional[StateRecord] = None) -> Plan:
    """dest holds the image: at most the root password entry needs an edit, or the record news.

    `resolved` is what the source says now; the same content may come from another source or index
    (a tag moved to an index whose other platforms changed): the record learns it, so the next
    probe answers without a GET.
    """
    wants_password = _wants_password(request)
    current = before
    if resolved is not None:
        kept = {key: before.options[key] for key in (qcow2.WRITTEN_BY,) if key in before.options}
        current = dataclasses.replace(resolved, dest_identity=before.dest_identity, root_password=before.root_password,
                                      image_root_field=before.image_root_field,
                                      options=dict(resolved.options, root_password=before.root_password, **kept))
    after = dataclasses.replace(current, root_password=wants_password,
                                options=dict(current.options, root_password=wants_password))
    looks: t.List[str] = []
    if wants_password and (not before.root_password or not _password_is_set(request, dest, before, looks)):
        return Plan('password', 'set the root password in %s' % dest.path, before, after, image,
                    appliance_launches=looks.count(qcow2.APPLIANCE))
    if not wants_password and before.root_password:
        return Plan('password', "put back the image's own root password entry in %s" % dest.path, before, after,
                    image)
    reason = reason or '%s already holds %s' % (dest.path, before.digest)
    if current != before:
        return Plan('record', reason, before, current, image, appliance_launches=looks.count(qcow2.APPLIANCE))
    return Plan('none', reason, before, before, image, appliance_launches=looks.count(qcow2.APPLIANCE))


def carry_out(request: Request, plan: Plan, dest: Destination) -> t.Optional[ApplyStats]:
    """Act on a plan. The lock is held; dest changes only in the final swap."""
    if plan.action == 'remove':
        dest.remove_all()
        return None
    progress = Progress(request.progress_cb)
    if plan.action == 'password':
        if plan.after is None:
            raise BootstrapError('internal error: a password plan without a record')
        progress.status('Setting the root password', 0.0)
        if request.format == 'qcow2':
            # Never edited in place: a new guest overlay over the same layers is swapped in, with its record.
            dest.check_replaceable('replace')
            _build_and_swap(request, None, plan.after, dest, progress)
        else:
            if plan.after.root_password:
                _set_password(request, dest.path)
            elif plan.after.image_root_field is not None:
                shadow.set_root_hash(dest.path, plan.after.image_root_field)
            dest.save_record(plan.after)
        progress.done('Root password set' if plan.after.root_password else 'Root password entry put back')
        return None
    if plan.action == 'record':
        if plan.after is not None:
            dest.save_record(plan.after)
        return None
    if plan.action != 'build':
        return None
    if plan.image is None or plan.after is None:
        raise BootstrapError('internal error: a build plan without an image')
    stats = _build_and_swap(request, plan.image, plan.after, dest, progress)
    try:
        progress.done('Extraction completed successfully!')
    except Exception as exc:  # a progress log or callback that fails must not undo a finished swap
        dest.warnings.append('progress could not be reported: %s' % exc)
    return stats


def _build_and_swap(request: Request, image: t.Optional[Image], after: StateRecord, dest: Destination,
                    progress: Progress) -> t.Optional[ApplyStats]:
    """Build beside dest, then record and swap as one recoverable step (see Destination).

    Without an image (qcow2 only): the images dest holds, with a new guest overlay for the password.
    """
    build_dir = dest.new_build_dir()
    swapped = False
    try:
        new_root = os.path.join(build_dir, 'rootfs')
        if request.format == 'qcow2':
            stats = _write_qcow2(request, image, after, dest, new_root, progress)
        else:
            stats = write_dir(t.cast(Image, image), new_root, request.max_size, _id_mapper(request), progress,
                              device_nodes=request.device_nodes)
            if image.finish_tree is not None:
                image.finish_tree(new_root)
            after.image_root_field = shadow.read_root_hash(new_root)
            if _wants_password(request):
                progress.status('Setting the root password')
                _set_password(request, new_root)
        after.dest_identity = mark_rootfs(new_root)
        flush_filesystem(new_root)
        # Checked again with the lock held and the tree ready: a guest may have started meanwhile.
        dest.check_replaceable('replace')
        dest.save_pending(after)
        dest.swap_in(new_root)
        swapped = True
    except BaseException as exc:
        removed = swapped
        if not swapped:
            # Cleaning up must not hide why the build failed: what it cannot remove, the next run will.
            with contextlib.suppress(OSError):
                dest.drop_pending()
            with contextlib.suppress(OSError, BootstrapError):
                remove_tree(build_dir)
                removed = True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and not swapped:
            raise DestinationError('%s while building the new rootfs beside %s (in %s): %s is kept as it was and '
                                   'the partial build %s; free space there, or give a dest on another filesystem'
                                   % (exc.strerror, dest.path, dest.meta_dir, dest.path,
                                      'was removed' if removed else 'is left for the next run to remove')) from exc
        raise
    # The new rootfs is in place: whatever fails from here on is a warning, and the next run settles the record.
    try:
        dest.flush_parent()
        dest.promote_pending()
    except OSError as exc:
        dest.warnings.append('the state record could not be updated (%s); the next run completes it' % exc.strerror)
    dest.discard(build_dir)  # the old rootfs, swapped out
    return stats


def _write_qcow2(request: Request, image: t.Optional[Image], after: StateRecord, dest: Destination, new_root: str,
                 progress: Progress) -> t.Optional[ApplyStats]:
    settings = request.qcow2_settings()
    if image is None:
        root_hash = _new_root_hash(request) if after.root_password else after.image_root_field
        method = qcow2.choose_method(settings, os.path.dirname(new_root))
        qcow2.edit_guest_overlay(dest.tree_path(), new_root, _image_names(after), settings.filesystem, root_hash,
                                 method=method)
        after.options[qcow2.WRITTEN_BY] = method  # the guest's overlay is this way's now
        return None
    written = qcow2.write_qcow2(image, new_root, settings, request.max_size, _id_mapper(request), progress,
                                device_nodes=request.device_nodes,
                                root_hash=_new_root_hash(request) if _wants_password(request) else None)
    after.image_root_field = written.image_root_field
    # How, not what: outside the options hash, for the result and for the next run's edits.
    after.options[qcow2.WRITTEN_BY] = written.method
    return written.stats


def _image_names(record: StateRecord) -> t.List[str]:
    """The images in dest (a layer store holds the others: _store_images)."""
    return qcow2.image_names(len(record.layers), record.options.get('qcow2_layers', qcow2.CHAIN),
                             shared=record.options.get('qcow2_layer_store') is not None)


def _store_images(record: StateRecord) -> t.List[str]:
    settings = qcow2.Qcow2Settings(size=record.options.get('qcow2_size'),
                                   filesystem=record.options.get('qcow2_filesystem', 'ext4'),
                                   layer_store=record.options.get('qcow2_layer_store'))
    return qcow2.store_images([layer['digest'] for layer in record.layers], settings,
                              bool(record.options.get('device_nodes')))


def _holds_images(dest: Destination, record: t.Optional[StateRecord]) -> bool:
    """For qcow2: whether every image the record names is still there, in dest and in the layer store."""
    if record is None or record.format != 'qcow2':
        return True
    paths = [os.path.join(dest.tree_path(), name) for name in _image_names(record)] + _store_images(record)
    return all(os.path.isfile(path) for path in paths)


def _password_is_set(request: Request, dest: Destination, record: StateRecord, looks: t.List[str]) -> bool:
    """Whether dest has the requested password; `looks` learns how each look into a qcow2 image was made."""
    if request.format != 'qcow2':
        return request.password_is_set_in(dest.path)
    # A read-only look into the guest overlay, below our bookkeeping: what a killed look leaves, the next lock
    # removes; while the look lasts, no run that holds the lock can take it for a killed run's.
    with dest.looking():
        scratch = tempfile.mkdtemp(prefix='build-look-', dir=dest.meta_dir)
        try:
            method = qcow2.choose_method(request.qcow2_settings(), scratch)
            looks.append(method)
            current = qcow2.read_root_hash(dest.tree_path(), _image_names(record)[-1],
                                           record.options.get('qcow2_filesystem', 'ext4'),
                                           os.path.join(scratch, qcow2.WORK_NAME), method=method)
        finally:
            os.rmdir(scratch)
    return request.password_is(current)


def _tidy_cache(result: Result, source: t.Optional[Source], dest: Destination, plan: Plan) -> None:
    """After a present run: the blob cache learns which blobs dest holds, and is pruned with cache_max_age."""
    if not isinstance(source, RegistrySource) or plan.after is None:
        return
    result.cache_pruned = source.tidy_cache(dest.path, dest.record_path,
                                            [layer['digest'] for layer in plan.after.layers])
    if result.cache_pruned and result.cache_pruned.get('error'):
        result.warnings.append(result.cache_pruned['error'])


def _wants_password(request: Request) -> bool:
    return request.root_password is not None or request.root_password_hash is not None


def _set_password(request: Request, root: str) -> None:
    shadow.set_root_hash(root, _new_root_hash(request))


def _new_root_hash(request: Request) -> str:
    return request.root_password_hash or shadow.hash_password(t.cast(str, request.root_password))


def _id_mapper(request: Request) -> t.Optional[t.Callable[[int, int], t.Tuple[int, int]]]:
    if not request.uid_map and not request.gid_map:
        return None
    uid_map, gid_map = request.uid_map, request.gid_map
    return lambda uid, gid: (uid_map(uid), gid_map(gid))


def build_request(src: t.Optional[str], dest: str, format: str = 'dir', state: str = 'present',
                  platform: t.Optional[str] = None, force: bool = False,
                  max_size: t.Union[int, str] = DEFAULT_MAX_SIZE, root_password: t.Optional[str] = None,
                  root_password_hash: t.Optional[str] = None, uid_map: t.Any = None, gid_map: t.Any = None,
                  device_nodes: bool = False, update: str = 'always',
                  progress_cb: t.Optional[ProgressCallback] = None, username: t.Optional[str] = None,
                  password: t.Optional[str] = None, auth_file: t.Optional[str] = None, not_secure: bool = False,
                  ca_path: t.Optional[str] = None, cache_dir: t.Optional[str] = None,
                  no_cache: bool = False, cache_max_age: t.Optional[str] = None, timeout: float = 60.0,
                  virt_builder_source: t.Optional[str] = None, virt_builder_no_check_signature: bool = False,
                  qcow2_size: t.Optional[t.Union[int, str]] = None, qcow2_layers: str = qcow2.CHAIN,
                  qcow2_filesystem: str = 'ext4', qcow2_layer_store: t.Optional[str] = None,
                  qcow2_method: str = qcow2.AUTO) -> Request:
    """The one place a Request is made from plain options: the module, bootstrap() and the CLI use it."""
    return Request(src=src, dest=dest, format=format, state=state, platform=platform, force=force,
                   max_size=parse_size(max_size, 'max_size'), root_password=root_password,
                   root_password_hash=root_password_hash, uid_map=parse_id_map(uid_map, 'uid_map'),
                   gid_map=parse_id_map(gid_map, 'gid_map'), progress_cb=progress_cb, device_nodes=device_nodes,
                   update=update, qcow2_size=None if qcow2_size is None else parse_size(qcow2_size, 'qcow2_size'),
                   qcow2_layers=qcow2_layers, qcow2_filesystem=qcow2_filesystem, qcow2_layer_store=qcow2_layer_store,
                   qcow2_method=qcow2_method,
                   registry=RegistryOptions(username=username, password=password, auth_file=auth_file,
                                            not_secure=not_secure, ca_path=ca_path, cache_dir=cache_dir,
                                            no_cache=no_cache, cache_max_age=cache_max_age, timeout=timeout),
                   virt_builder=VirtBuilderOptions(source_url=virt_builder_source,
                                                   no_check_signature=virt_builder_no_check_signature,
                                                   cache_dir=cache_dir, no_cache=no_cache))


def parse_size(value: t.Union[int, str], name: str) -> int:
    """A byte count given as a number or as text such as '500M' or '20G'."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        try:
            size = human_to_bytes(str(value))
        except ValueError as exc:
            raise BootstrapError('%s: %s' % (name, exc))
    if size <= 0:
        raise BootstrapError('%s must be more than 0 bytes' % name)
    return size


def bootstrap(uri: str, dest: str, fmt: str = 'dir', username: t.Optional[str] = None,
              password: t.Optional[str] = None, root_password: t.Optional[str] = None,
              uid_map: t.Optional[t.Sequence[t.Sequence[int]]] = None,
              gid_map: t.Optional[t.Sequence[t.Sequence[int]]] = None, not_secure: bool = False,
              no_cache: bool = False, progress_cb: t.Optional[ProgressCallback] = None,
              **options: t.Any) -> Result:
    """The virt-bootstrap API: write the rootfs of `uri` into `dest`. Raises BootstrapError subclasses.

    The positional order is the original virt-bootstrap's. Every other option of build_request
    (platform, force, max_size, root_password_hash, device_nodes, update, auth_file, ca_path,
    cache_dir, cache_max_age, timeout, state, virt_builder_source, virt_builder_no_check_signature,
    qcow2_size, qcow2_layers, qcow2_filesystem, qcow2_layer_store, qcow2_method) can be given by name.
    """
    return run(build_request(uri, dest, format=fmt, username=username, password=password,
                             root_password=root_password, uid_map=uid_map, gid_map=gid_map, not_secure=not_secure,
                             no_cache=no_cache, progress_cb=progress_cb, **options))


def _describe_images(result: Result, request: Request, record: StateRecord, wrote: bool, looked: int) -> None:
    result.qcow2_images = _store_images(record) + [os.path.join(result.dest, name) for name in _image_names(record)]
    result.qcow2_top = result.qcow2_images[-1]
    if record.options.get('qcow2_layers') == qcow2.FLAT:
        result.qcow2_method = qcow2.FLAT
    elif qcow2.WRITTEN_BY in record.options:
        result.qcow2_method = record.options[qcow2.WRITTEN_BY]
    else:  # check mode, before anything is written: the way a run would take (auto: no loop device tried)
        result.qcow2_method = qcow2.predicted_method(request.qcow2_settings())
    # The appliance way launches one for a build or an edit of the guest overlay, and one for each look.
    launches = looked + int(wrote and result.qcow2_method == qcow2.APPLIANCE)
    if launches or result.qcow2_method == qcow2.APPLIANCE:
        result.appliance_launches = (result.appliance_launches or 0) + launches


def _result(request: Request, plan: Plan, source: t.Optional[Source], dest: Destination,
            stats: t.Optional[ApplyStats], carried_out: bool = False) -> Result:
    record = plan.after if request.state == 'present' else plan.before
    result = Result(changed=plan.action not in ('none', 'record'), msg=plan.reason, dest=os.path.normpath(request.dest),
                    format=request.format, state=request.state, before=plan.before,
                    after=plan.after if request.state == 'present' else None,
                    credentials_from=getattr(source, 'credentials_origin', None),
                    appliance_launches=getattr(source, 'appliance_launches', None))
    if record is not None and request.state == 'present':
        result.digest = record.digest
        result.index_digest = record.index_digest
        result.platform = record.platform
        result.layers = record.layers
        result.image_config = record.image_config
        if record.format == 'qcow2':
            _describe_images(result, request, record, wrote=carried_out and plan.action in ('build', 'password'),
                             looked=plan.appliance_launches)
    if plan.image is not None:
        result.warnings.extend(plan.image.warnings)
    if stats is not None:
        result.entries_written = stats.written
        result.entries_skipped = stats.skipped_total
        result.entries_skipped_by_reason = dict(stats.skipped)
        if stats.owners_not_kept:
            result.warnings.append(
                '%d entries could not be given their owners from the image (running as uid %d); they are owned '
                'by the caller' % (stats.owners_not_kept, os.geteuid()))
        if stats.skipped.get('xattr'):
            result.warnings.append('%d extended attributes (such as file capabilities) could not be set'
                                   % stats.skipped['xattr'])
        if stats.skipped.get('device_node_not_permitted'):
            result.warnings.append('%d device nodes were skipped: creating them is not permitted here'
                                   % stats.skipped['device_node_not_permitted'])
    if request.state == 'present' and bool(request.uid_map) != bool(request.gid_map):
        result.warnings.append('only %s is given: libvirt\'s <idmap> maps users and groups together, so a guest '
                               'with a user namespace needs both uid_map and gid_map'
                               % ('uid_map' if request.uid_map else 'gid_map'))
    result.warnings.extend(dest.warnings)
    return result
