# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine: decide whether dest needs work, then do it. Used by the module and the CLI."""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils.destination import Destination
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import DestinationError
from ansible_collections.virt.bootstrap.plugins.module_utils.image import Image
from ansible_collections.virt.bootstrap.plugins.module_utils.layers import DEFAULT_MAX_SIZE, ApplyStats, remove_tree
from ansible_collections.virt.bootstrap.plugins.module_utils.platforms import parse_platform
from ansible_collections.virt.bootstrap.plugins.module_utils.sources import open_source, parse_source
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

    def shaping_options(self) -> t.Dict[str, t.Any]:
        """Options that change the rootfs written, beyond the image itself."""
        return {'format': self.format}


@dataclass
class Plan:
    action: str  # 'build', 'remove' or 'none'
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
    before: t.Optional[StateRecord] = None
    after: t.Optional[StateRecord] = None


def run(request: Request, check_mode: bool = False) -> Result:
    """Bring dest to the requested state; in check mode only decide."""
    if request.format not in FORMATS:
        raise DestinationError('format %r is not supported; choose one of: %s' % (request.format, ', '.join(FORMATS)))
    dest = Destination(request.dest)
    if check_mode:
        plan = decide(request, dest)
        return _result(request, plan, changed=plan.action != 'none', stats=None)
    with dest:
        plan = decide(request, dest)
        stats = carry_out(request, plan, dest)
    return _result(request, plan, changed=plan.action != 'none', stats=stats)


def decide(request: Request, dest: Destination) -> Plan:
    before = dest.load_record()
    if request.state == 'absent':
        if not dest.exists() and before is None:
            return Plan('none', '%s is absent' % dest.path, before)
        refusal = dest.refusal(before, request.force)
        if refusal:
            raise DestinationError(refusal.replace('replace', 'remove'))
        return Plan('remove', 'remove %s' % dest.path, before)

    if not request.src:
        raise DestinationError('src is required when state is present')
    wanted_platform = parse_platform(request.platform) if request.platform else None
    source = open_source(parse_source(request.src))
    try:
        image = source.resolve(wanted_platform)
    finally:
        source.close()
    after = StateRecord(
        source=request.src, digest=image.digest, format=request.format,
        options_hash=options_hash(request.shaping_options()),
        platform=str(image.platform) if image.platform else None, index_digest=image.index_digest,
        layers=[layer.describe() for layer in image.layers])
    intact = before is not None and before.dest_identity is not None and \
        before.dest_identity == path_identity(dest.path) and os.path.isdir(dest.path)
    if before is not None and intact and before.same_result(after):
        return Plan('none', '%s already holds %s' % (dest.path, image.digest), before, after, image)
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


def carry_out(request: Request, plan: Plan, dest: Destination) -> t.Optional[ApplyStats]:
    """Act on a plan. The lock is held; dest changes only in the final swap."""
    if plan.action == 'remove':
        dest.remove_all()
        return None
    if plan.action != 'build':
        return None
    assert plan.image is not None and plan.after is not None
    build_dir = dest.new_build_dir()
    try:
        new_root = os.path.join(build_dir, 'rootfs')
        stats = write_dir(plan.image, new_root, request.max_size)
        plan.after.dest_identity = path_identity(new_root)  # a rename keeps the inode
        dest.save_record(plan.after)
        dest.swap_in(new_root)
    except BaseException:
        remove_tree(build_dir)
        # The record must not claim a build that never reached dest.
        if plan.before is not None:
            dest.save_record(plan.before)
        elif os.path.exists(dest.record_path):
            os.unlink(dest.record_path)
        raise
    remove_tree(build_dir)
    return stats


def _result(request: Request, plan: Plan, changed: bool, stats: t.Optional[ApplyStats]) -> Result:
    record = plan.after if request.state == 'present' else plan.before
    result = Result(changed=changed, msg=plan.reason, dest=os.path.normpath(request.dest), format=request.format,
                    state=request.state, before=plan.before, after=plan.after if request.state == 'present' else None)
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
