# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""virt-builder://TEMPLATE: index reading, platforms, the fstab edit, and real builds from a local repository.

A build costs two appliance launches (~15 s each under TCG): one build of the partitioned template is
shared by every test that looks at its result (made once per session, under a lock, for every worker).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import stat
import time
import typing as t

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.plugins.module_utils._image import Platform
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import parse_source
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import virt_builder
from ansible_collections.virt.bootstrap.plugins.module_utils._sources.virt_builder import (
    FSTAB_NOTE,
    VirtBuilderOptions,
    VirtBuilderSource,
)
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import bootstrap, build_request, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import PlatformError, SourceError
from ansible_collections.virt.bootstrap.tests.images import virt_builder_repo as repo

UID_MAP = [[0, 100000, 65536]]
SHIFT = 100000
PASSWORD = 'vb-secret-password'
# security.capability v2, cap_net_raw+ep (as setcap writes it).
CAPABILITY = bytes.fromhex('0100000200200000000000000000000000000000')
# The same for a guest whose root is uid SHIFT: v3, with that root id (as the applier writes it under a map).
CAPABILITY_SHIFTED = bytes.fromhex('0100000300200000000000000000000000000000') + SHIFT.to_bytes(4, 'little')
TOOLS = ('virt-builder', 'guestfish', 'mkfs.ext4', 'mkfs.vfat', 'mcopy', 'sfdisk', 'mkswap', 'xz', 'busybox')


# -- without an appliance ----------------------------------------------------------------------------


@pytest.mark.parametrize('uri, template', [
    ('virt-builder://debian-12', 'debian-12'),
    ('virt-builder://fedora-40', 'fedora-40'),
    ('virt-builder://opensuse-tumbleweed', 'opensuse-tumbleweed'),
])
def test_parse_source_names_the_template(uri: str, template: str) -> None:
    ref = parse_source(uri)
    assert (ref.kind, ref.reference, str(ref)) == ('virt-builder', template, uri)


@pytest.mark.parametrize('uri, complaint', [
    ('virt-builder://--source=http://x', 'not a template name'),
    ('virt-builder://-v', 'not a template name'),
    ('virt-builder://', 'not a template name'),
    ('virt-builder://a b', 'not a template name'),
    ('virt-builder:debian-12', 'virt-builder://TEMPLATE'),
])
def test_parse_source_refuses_what_is_not_a_template_name(uri: str, complaint: str) -> None:
    with pytest.raises(SourceError, match=complaint):
        parse_source(uri)


@pytest.mark.parametrize('platform, arch', [
    ('linux/amd64', 'x86_64'), ('x86_64', 'x86_64'), ('linux/arm64', 'aarch64'), ('linux/arm64/v8', 'aarch64'),
    ('linux/arm/v7', 'armv7l'), ('linux/386', 'i686'), ('linux/ppc64le', 'ppc64le'), ('linux/s390x', 's390x'),
])
def test_platform_maps_to_the_virt_builder_architecture(platform: str, arch: str) -> None:
    from ansible_collections.virt.bootstrap.plugins.module_utils._platforms import parse_platform
    assert virt_builder.builder_arch(parse_platform(platform)) == arch


@pytest.mark.parametrize('platform', [Platform('linux', 'mips64le'), Platform('linux', 'arm', 'v6'),
                                      Platform('windows', 'amd64')])
def test_platform_without_a_virt_builder_architecture_is_refused(platform: Platform) -> None:
    with pytest.raises(PlatformError, match=str(platform)):
        virt_builder.builder_arch(platform)


INDEX = """[debian-12]
name=Debian 12
arch=x86_64
file=debian-12.xz
checksum[sha512]=aaaa
revision=3
notes=Debian 12
 second line of the notes
 third line

[debian-12]
name=Debian 12 for arm
arch=aarch64
file=debian-12-aarch64.xz
checksum[sha512]=bbbb
revision=2

# a comment
[no-revision]
arch=x86_64
checksum=cccc
"""


def test_index_sections_are_read_per_architecture() -> None:
    sections = virt_builder.parse_index(INDEX, 'index')
    assert [name for name, _fields in sections] == ['debian-12', 'debian-12', 'no-revision']
    assert sections[0][1]['notes'] == 'Debian 12\nsecond line of the notes\nthird line'
    amd64 = virt_builder.find_template(sections, 'debian-12', 'x86_64')
    arm64 = virt_builder.find_template(sections, 'debian-12', 'aarch64')
    bare = virt_builder.find_template(sections, 'no-revision', 'x86_64')
    assert amd64 is not None and (amd64.revision, amd64.checksum) == ('3', 'aaaa')
    assert arm64 is not None and (arm64.revision, arm64.checksum) == ('2', 'bbbb')
    assert bare is not None and (bare.revision, bare.checksum) == ('1', 'cccc')
    assert virt_builder.find_template(sections, 'debian-12', 's390x') is None


def test_clear_signed_index_is_read_between_its_armour() -> None:
    signed = ('-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n' + INDEX
              + '-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEE\n-----END PGP SIGNATURE-----\n')
    sections = virt_builder.parse_index(signed, 'index.asc')
    assert [name for name, _fields in sections] == ['debian-12', 'debian-12', 'no-revision']


@pytest.mark.parametrize('broken, line', [('arch=x86_64\n', 1), ('[open\n', 1), ('[a]\nno equals sign\n', 2),
                                          (' continued\n', 1), ('[a]\n continued\n', 2)])
def test_malformed_index_is_a_source_error_naming_the_line(broken: str, line: int) -> None:
    with pytest.raises(SourceError, match='index line %d:' % line):
        virt_builder.parse_index(broken, 'index')


def test_digest_names_template_revision_checksum_and_arch() -> None:
    base = virt_builder.TemplateEntry('debian-12', 'x86_64', '3', 'aaaa', {})
    digests = {virt_builder.template_digest(entry) for entry in (
        base, base._replace(name='debian-11'), base._replace(revision='4'), base._replace(checksum='abab'),
        base._replace(arch='aarch64'))}
    assert len(digests) == 5
    assert virt_builder.template_digest(base._replace(fields={'notes': 'other'})) == virt_builder.template_digest(base)
    assert virt_builder.template_digest(base).startswith('sha256:')


def test_fstab_entries_are_commented_out_under_a_note() -> None:
    fstab = b'# <fs> <mp>\n/dev/sda2 / ext4 defaults 0 1\n\n  UUID=1234 /boot ext4 defaults 0 2\n/dev/sda3 none swap sw'
    assert virt_builder.commented_fstab(fstab) == FSTAB_NOTE + (
        b'# <fs> <mp>\n# /dev/sda2 / ext4 defaults 0 1\n\n#   UUID=1234 /boot ext4 defaults 0 2\n'
        b'# /dev/sda3 none swap sw\n')


def test_fstab_edit_keeps_owner_and_mode_and_never_follows_a_link(tmp_path: pathlib.Path) -> None:
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    fstab = root / 'etc' / 'fstab'
    fstab.write_bytes(b'/dev/sda / ext4 defaults 0 1\n')
    os.chown(fstab, 4242, 4343)
    os.chmod(fstab, 0o640)
    virt_builder.neutralise_fstab(str(root))
    info = fstab.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4343, 0o640)
    assert fstab.read_bytes() == FSTAB_NOTE + b'# /dev/sda / ext4 defaults 0 1\n'

    outside = tmp_path / 'outside'
    outside.write_bytes(b'/dev/sda / ext4 defaults 0 1\n')
    fstab.unlink()
    fstab.symlink_to(outside)
    virt_builder.neutralise_fstab(str(root))
    assert outside.read_bytes() == b'/dev/sda / ext4 defaults 0 1\n'
    assert not fstab.is_symlink() and fstab.read_bytes() == FSTAB_NOTE


def test_fstab_edit_resolves_etc_inside_the_root(tmp_path: pathlib.Path) -> None:
    outside = tmp_path / 'host-etc'
    outside.mkdir()
    (outside / 'fstab').write_bytes(b'/dev/host / ext4 defaults 0 1\n')
    root = tmp_path / 'root'
    (root / 'private' / 'etc').mkdir(parents=True)
    (root / 'private' / 'etc' / 'fstab').write_bytes(b'/dev/sda / ext4 defaults 0 1\n')
    (root / 'etc').symlink_to(str(outside))  # absolute: as if the rootfs were /, so it is missing inside
    virt_builder.neutralise_fstab(str(root))
    assert (outside / 'fstab').read_bytes() == b'/dev/host / ext4 defaults 0 1\n'
    (root / 'etc').unlink()
    (root / 'etc').symlink_to('/private/etc')
    virt_builder.neutralise_fstab(str(root))
    assert (root / 'private' / 'etc' / 'fstab').read_bytes() == FSTAB_NOTE + b'# /dev/sda / ext4 defaults 0 1\n'


@pytest.mark.parametrize('tool, package', [('virt-builder', 'guestfs-tools'), ('guestfish', 'libguestfs-tools')])
def test_missing_tool_names_its_debian_package(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                               tool: str, package: str) -> None:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for present in {'virt-builder', 'guestfish'} - {tool}:
        real = shutil.which(present)
        if real is None:
            pytest.skip('needs %s installed' % present)
        (bin_dir / present).symlink_to(real)
    monkeypatch.setenv('PATH', str(bin_dir))
    source = VirtBuilderSource('vb-flat', VirtBuilderOptions(source_url='file:///nonexistent/index'))
    try:
        with pytest.raises(SourceError, match=r'%s is not installed.*Debian package %s' % (tool, package)):
            source.resolve(None)
    finally:
        source.close()


# -- a local repository (no appliance needed to read it) -------------------------------------------


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str,
            make: t.Callable[[pathlib.Path], t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
    """What `make` made in a directory shared by every worker of this session, made once under a lock."""
    # Under xdist every worker has its own basetemp inside the session's; alone, the session's is ours.
    session_dir = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        session_dir = session_dir.parent
    base = session_dir / 'virt-builder-shared'
    base.mkdir(exist_ok=True)
    with open(base / (name + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = base / name / 'done.json'
        if done.exists():
            return json.loads(done.read_text())
        if (base / name).exists():
            shutil.rmtree(base / name)
        (base / name).mkdir()
        made = make(base / name)
        done.write_text(json.dumps(made))
        return made


def make_rootfs(root: pathlib.Path) -> None:
    """A small real guest: static busybox, what inspection needs (/etc/fstab), and every kind of entry."""
    for directory in ('bin', 'etc', 'dev', 'root', 'tmp', 'usr/local/bin', 'usr/local/share/sgid-dir'):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(t.cast(str, shutil.which('busybox')), root / 'bin' / 'busybox')
    (root / 'bin' / 'sh').symlink_to('busybox')
    (root / 'etc' / 'os-release').write_text('ID=vbtest\nNAME="virt.bootstrap test"\nVERSION_ID=1\n')
    (root / 'etc' / 'passwd').write_text('root:x:0:0:root:/root:/bin/sh\n')
    (root / 'etc' / 'group').write_text('root:x:0:\nshadow:x:42:\n')
    (root / 'etc' / 'shadow').write_text('root:*:19500:0:99999:7:::\nnobody:*:19500:0:99999:7:::\n')
    os.chown(root / 'etc' / 'shadow', 0, 42)
    os.chmod(root / 'etc' / 'shadow', 0o640)
    (root / 'etc' / 'fstab').write_text('/dev/sda / ext4 defaults 0 1\n')
    os.chmod(root / 'tmp', 0o1777)
    tool = root / 'usr' / 'local' / 'bin' / 'suid-tool'
    tool.write_text('#!/bin/sh\necho suid\n')
    os.chmod(tool, 0o4755)
    os.link(tool, root / 'usr' / 'local' / 'bin' / 'suid-tool-link')
    cap_tool = root / 'usr' / 'local' / 'bin' / 'cap-tool'
    cap_tool.write_text('#!/bin/sh\nexec ping "$@"\n')
    os.chmod(cap_tool, 0o755)
    os.setxattr(cap_tool, 'security.capability', CAPABILITY)
    owned = root / 'usr' / 'local' / 'share' / 'owned-numeric'
    owned.write_text('owned by ids nobody has\n')
    os.chown(owned, 12345, 54321)
    xattr_file = root / 'usr' / 'local' / 'share' / 'xattr-file'
    xattr_file.write_text('has a user xattr\n')
    os.setxattr(xattr_file, 'user.vb.test', b'hello')
    os.chown(root / 'usr' / 'local' / 'share' / 'sgid-dir', 0, 50)
    os.chmod(root / 'usr' / 'local' / 'share' / 'sgid-dir', 0o2775)
    os.mkfifo(root / 'usr' / 'local' / 'share' / 'fifo', 0o640)
    (root / 'usr' / 'local' / 'bin' / 'abs-link').symlink_to('/usr/local/bin/suid-tool')
    os.mknod(root / 'dev' / 'null', 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def _make_repository(where: pathlib.Path) -> t.Dict[str, t.Any]:
    rootfs = where / 'rootfs'
    make_rootfs(rootfs)
    out = where / 'repository'
    return {'rootfs': str(rootfs), 'out': str(out), 'index': repo.repository(str(out), str(rootfs), revision=1)}


@pytest.fixture
def local_repository(tmp_path_factory: pytest.TempPathFactory) -> t.Dict[str, t.Any]:
    lacking = [tool for tool in TOOLS if shutil.which(tool) is None]
    if lacking or os.geteuid() != 0:
        pytest.skip('virt-builder tests need root and %s; missing: %s' % (', '.join(TOOLS), ', '.join(lacking)))
    return _shared(tmp_path_factory, 'repository', _make_repository)


@pytest.fixture
def tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    # KVM does not work on the test machines; users' hosts are left to libguestfs's own choice.
    monkeypatch.setenv('LIBGUESTFS_BACKEND_SETTINGS', 'force_tcg')


def _options(local_repository: t.Dict[str, t.Any], **extra: t.Any) -> t.Dict[str, t.Any]:
    options = {'virt_builder_source': local_repository['index'],
               'cache_dir': os.path.join(local_repository['out'], 'cache')}
    options.update(extra)
    return options


def test_unknown_template_lists_the_templates_that_exist(local_repository: t.Dict[str, t.Any],
                                                         tmp_path: pathlib.Path) -> None:
    with pytest.raises(SourceError, match=r"template 'vb-missing' is not in file://.*it has: vb-flat, vb-parts"):
        bootstrap('virt-builder://vb-missing', str(tmp_path / 'dest'), **_options(local_repository))
    assert not (tmp_path / 'dest').exists()


def test_template_for_another_architecture_is_a_platform_error(local_repository: t.Dict[str, t.Any],
                                                               tmp_path: pathlib.Path) -> None:
    with pytest.raises(PlatformError, match="'vb-flat' is not built for aarch64 .*only for: x86_64"):
        bootstrap('virt-builder://vb-flat', str(tmp_path / 'dest'), platform='linux/arm64',
                  **_options(local_repository))


def test_unreadable_repository_says_so_with_virt_builders_message(tmp_path: pathlib.Path,
                                                                  local_repository: t.Dict[str, t.Any]) -> None:
    missing = 'file://%s/no-such-index' % tmp_path
    with pytest.raises(SourceError, match=r'cannot read the virt-builder repository %s: .*no-such-index' % missing):
        bootstrap('virt-builder://vb-flat', str(tmp_path / 'dest'), virt_builder_source=missing)


def test_probe_answers_from_the_index_without_a_launch(local_repository: t.Dict[str, t.Any]) -> None:
    first = VirtBuilderSource('vb-parts', VirtBuilderOptions(source_url=local_repository['index']))
    second_index = repo.repository(local_repository['out'], local_repository['rootfs'], revision=2)
    second = VirtBuilderSource('vb-parts', VirtBuilderOptions(source_url=second_index))
    try:
        assert first.probe(None) == (first.resolve(None).digest, None)
        assert first.probe(None) != second.probe(None)
        assert first.resolve(None).platform == Platform('linux', 'amd64')
        assert (first.appliance_launches, second.appliance_launches) == (0, 0)
    finally:
        first.close()
        second.close()


# -- a real build of the partitioned template, shared -------------------------------------------------


def _build_parts(where: pathlib.Path, local_repository: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    dest = where / 'dest'
    events: t.List[t.Dict[str, t.Any]] = []
    result = bootstrap('virt-builder://vb-parts', str(dest), root_password=PASSWORD, uid_map=UID_MAP,
                       gid_map=UID_MAP, progress_cb=events.append, **_options(local_repository))
    return {'dest': str(dest), 'changed': result.changed, 'launches': result.appliance_launches,
            'digest': result.digest, 'platform': result.platform, 'statuses': [event['status'] for event in events],
            'warnings': result.warnings}


@pytest.fixture
def parts_build(tmp_path_factory: pytest.TempPathFactory, local_repository: t.Dict[str, t.Any],
                tcg: None) -> t.Dict[str, t.Any]:
    return _shared(tmp_path_factory, 'parts-build', lambda where: _build_parts(where, local_repository))


def _entries(root: str) -> t.Dict[str, t.Tuple[t.Any, ...]]:
    """Every entry below `root`: type, mode, owner, size, link target, xattrs, and its hard-link group
    (the first path of its inode, by name: walk orders differ between filesystems)."""
    entries = {}
    paths_of_inode: t.Dict[int, t.List[str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            xattrs = tuple(sorted((key, os.getxattr(path, key, follow_symlinks=False))
                                  for key in os.listxattr(path, follow_symlinks=False)))
            regular = stat.S_ISREG(info.st_mode)
            if regular and info.st_nlink > 1:
                paths_of_inode.setdefault(info.st_ino, []).append(relative)
            entries[relative] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                                 info.st_size if regular else 0,
                                 os.readlink(path) if stat.S_ISLNK(info.st_mode) else None, xattrs, None)
    for paths in paths_of_inode.values():
        for path in paths:
            entries[path] = entries[path][:-1] + (min(paths),)
    return entries


def _shifted(entry: t.Tuple[t.Any, ...]) -> t.Tuple[t.Any, ...]:
    xattrs = tuple((key, CAPABILITY_SHIFTED if key == 'security.capability' else value) for key, value in entry[6])
    return entry[:2] + (entry[2] + SHIFT, entry[3] + SHIFT) + entry[4:6] + (xattrs,) + entry[7:]


def test_partitioned_template_tree_is_the_templates_tree(parts_build: t.Dict[str, t.Any],
                                                         local_repository: t.Dict[str, t.Any]) -> None:
    written = _entries(parts_build['dest'])
    template = _entries(local_repository['rootfs'])
    # What the template adds to the rootfs it was made from: its other filesystems, mkfs's lost+found,
    # the fixture's probes of /dev; and what we change: fstab and shadow (checked below), /dev emptied.
    edited = {'etc/fstab', 'etc/shadow'}
    added = {'boot', 'boot/lost+found', 'boot/efi', 'boot/efi/EFI', 'boot/efi/EFI/vb', 'boot/efi/' + repo.EFI_FILE,
             'boot/' + repo.BOOT_FILE, 'lost+found', 'usr/share', 'usr/share/dev', repo.NESTED_DEV_FILE}
    expected = {path: _shifted(entry) for path, entry in template.items()
                if path not in edited and not path.startswith('dev/')}
    assert {path: entry for path, entry in written.items() if path not in edited | added} == expected
    assert set(written) - set(expected) == edited | added
    assert os.getxattr(os.path.join(parts_build['dest'], 'usr/local/bin/cap-tool'), 'security.capability') == \
        CAPABILITY_SHIFTED
    boot_file = pathlib.Path(parts_build['dest'], 'boot', repo.BOOT_FILE)
    efi_file = pathlib.Path(parts_build['dest'], 'boot', 'efi', repo.EFI_FILE)
    assert boot_file.read_text() == 'on the /boot filesystem\n'
    assert efi_file.read_text() == 'on the /boot/efi filesystem\n'
    assert (boot_file.stat().st_uid, efi_file.stat().st_uid) == (SHIFT, SHIFT)
    assert os.listdir(os.path.join(parts_build['dest'], 'dev')) == []


def test_root_password_is_set_and_verifiable(parts_build: t.Dict[str, t.Any]) -> None:
    crypt_hash = shadow.read_root_hash(parts_build['dest'])
    assert crypt_hash is not None and crypt_hash.startswith('$6$')
    assert shadow.password_matches(PASSWORD, crypt_hash)
    assert not shadow.password_matches(PASSWORD + 'x', crypt_hash)
    shadow_file = pathlib.Path(parts_build['dest'], 'etc', 'shadow')
    assert shadow_file.read_text().splitlines()[1] == 'nobody:*:19500:0:99999:7:::'
    assert (shadow_file.stat().st_uid, shadow_file.stat().st_gid) == (SHIFT, SHIFT + 42)


def test_fstab_of_the_result_mounts_nothing(parts_build: t.Dict[str, t.Any]) -> None:
    fstab = pathlib.Path(parts_build['dest'], 'etc', 'fstab').read_bytes()
    assert fstab.startswith(FSTAB_NOTE)
    entries = [line for line in fstab.splitlines() if line.strip() and not line.startswith(b'#')]
    assert entries == []
    assert b'# /dev/sda2 /boot ext4 defaults 0 2\n' in fstab


def test_a_build_launches_two_appliances_and_reports_its_steps(parts_build: t.Dict[str, t.Any]) -> None:
    assert (parts_build['changed'], parts_build['launches'], parts_build['platform']) == (True, 2, 'linux/amd64')
    statuses = parts_build['statuses']
    assert 'Building image: Uncompressing' in statuses
    assert statuses.index('Building image: Uncompressing') < statuses.index('Extracting rootfs')
    assert statuses[-1] == 'Extraction completed successfully!'


def test_rerun_is_unchanged_without_a_build(parts_build: t.Dict[str, t.Any],
                                            local_repository: t.Dict[str, t.Any]) -> None:
    before = _entries(parts_build['dest'])
    result = bootstrap('virt-builder://vb-parts', parts_build['dest'], root_password=PASSWORD, uid_map=UID_MAP,
                       gid_map=UID_MAP, **_options(local_repository))
    assert (result.changed, result.appliance_launches, result.digest) == (False, 0, parts_build['digest'])
    assert _entries(parts_build['dest']) == before


def test_a_new_revision_means_a_rebuild(parts_build: t.Dict[str, t.Any], local_repository: t.Dict[str, t.Any]) -> None:
    """Decided from the new index alone (check mode: no build); the integration target rebuilds for real."""
    index = repo.repository(local_repository['out'], local_repository['rootfs'], revision=3)
    request = build_request('virt-builder://vb-parts', parts_build['dest'], root_password=PASSWORD, uid_map=UID_MAP,
                            gid_map=UID_MAP, **_options(local_repository, virt_builder_source=index))
    result = run(request, check_mode=True)
    assert result.changed and result.appliance_launches == 0
    assert result.msg.startswith('replace %s with ' % parts_build['digest'])


def test_unknown_template_leaves_the_rootfs_as_it_was(parts_build: t.Dict[str, t.Any],
                                                      local_repository: t.Dict[str, t.Any]) -> None:
    before = _entries(parts_build['dest'])
    with pytest.raises(SourceError, match="'vb-gone' is not in"):
        bootstrap('virt-builder://vb-gone', parts_build['dest'], **_options(local_repository))
    assert _entries(parts_build['dest']) == before


def test_build_failure_shows_virt_builders_own_error_and_keeps_the_rootfs(
        parts_build: t.Dict[str, t.Any], local_repository: t.Dict[str, t.Any], tmp_path: pathlib.Path) -> None:
    """A template whose checksum does not match fails in virt-builder before any launch."""
    good = pathlib.Path(local_repository['index'][len('file://'):])
    bad = good.parent / ('index-bad-%s' % tmp_path.name)
    text = good.read_text().replace('[vb-flat]', '[vb-other]').replace('revision=1', 'revision=99')
    bad.write_text(text.replace('checksum[sha512]=', 'checksum[sha512]=00', 1))
    before = _entries(parts_build['dest'])
    with pytest.raises(SourceError, match=r'virt-builder could not build vb-other: .*checksum'):
        bootstrap('virt-builder://vb-other', parts_build['dest'], root_password=PASSWORD, uid_map=UID_MAP,
                  gid_map=UID_MAP, force=True, no_cache=True, virt_builder_source='file://%s' % bad)
    assert _entries(parts_build['dest']) == before
    meta_dir = os.path.join(os.path.dirname(parts_build['dest']), '.dest.virt-bootstrap')
    assert sorted(name for name in os.listdir(meta_dir) if name.startswith('build-')) == []


def test_cli_takes_the_repository_option(local_repository: t.Dict[str, t.Any], tmp_path: pathlib.Path,
                                         capsys: pytest.CaptureFixture) -> None:
    from ansible_collections.virt.bootstrap.plugins.module_utils import _cli
    status = _cli.main(['virt-builder://vb-missing', str(tmp_path / 'dest'), '--virt-builder-source',
                        local_repository['index'], '--cache-dir', str(tmp_path / 'cache'), '-q'])
    assert status == 1
    assert "virt-builder template 'vb-missing' is not in %s; it has: vb-flat, vb-parts" % local_repository['index'] \
        in capsys.readouterr().err


def test_repository_credentials_stay_out_of_messages(local_repository: t.Dict[str, t.Any],
                                                     tmp_path: pathlib.Path) -> None:
    url = 'http://vb-user:vb-s3cret@127.0.0.1:1/index'  # nothing listens on port 1
    with pytest.raises(SourceError) as failure:
        bootstrap('virt-builder://vb-flat', str(tmp_path / 'dest'), virt_builder_source=url,
                  cache_dir=str(tmp_path / 'cache'))
    assert str(failure.value).startswith('virt_builder_source http://127.0.0.1:1/index must not hold credentials')
    assert 'vb-s3cret' not in str(failure.value)
    assert not os.path.exists(tmp_path / 'cache') and not os.path.exists(tmp_path / 'dest')


def _processes_below(directory: str) -> t.List[int]:
    """Processes whose command line names something in `directory` (virt-builder, its qemu)."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as stream:
                cmdline = stream.read()
        except OSError:
            continue
        if directory.encode() in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def _wait_for(condition: t.Callable[[], t.Any], seconds: float) -> t.Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def test_killed_run_ends_its_build_and_leaves_the_rootfs(parts_build: t.Dict[str, t.Any],
                                                         local_repository: t.Dict[str, t.Any]) -> None:
    dest = parts_build['dest']
    meta_dir = os.path.join(os.path.dirname(dest), '.dest.virt-bootstrap')
    before = _entries(dest)
    child = multiprocessing.get_context('fork').Process(target=bootstrap, args=('virt-builder://vb-flat', dest),
                                                        kwargs=_options(local_repository))
    child.start()
    try:
        building = _wait_for(lambda: _processes_below(os.path.join(meta_dir, 'build-virt-builder-')), 60)
        assert building, 'virt-builder never started'
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert _wait_for(lambda: not _processes_below(os.path.join(meta_dir, 'build-virt-builder-')), 60), \
        'the build went on after its run was killed'
    assert _entries(dest) == before
    result = bootstrap('virt-builder://vb-parts', dest, root_password=PASSWORD, uid_map=UID_MAP, gid_map=UID_MAP,
                       **_options(local_repository))
    assert (result.changed, result.appliance_launches) == (False, 0)
    assert [name for name in os.listdir(meta_dir) if name.startswith('build-')] == []
    assert os.listdir(os.path.join(local_repository['out'], 'cache', 'virt-builder-repositories'))


def test_guestfish_failure_shows_its_own_message_not_a_truncated_tar(tmp_path: pathlib.Path, tcg: None) -> None:
    if shutil.which('guestfish') is None:
        pytest.skip('needs guestfish')
    source = VirtBuilderSource('vb-flat', VirtBuilderOptions())
    try:
        stream = source._tar_out(str(tmp_path / 'no-such-disk.raw'), [])
        with pytest.raises(SourceError, match='guestfish could not copy the filesystems out of template vb-flat: '
                                              '.*no-such-disk.raw'):
            while stream.read(1 << 16):
                pass
    finally:
        source.close()


def test_repository_configuration_lives_in_the_cache_or_goes_with_the_run(
        local_repository: t.Dict[str, t.Any], tmp_path: pathlib.Path) -> None:
    """A killed run must not leave a configuration naming the repository in /tmp for every run."""
    cached = VirtBuilderSource('vb-flat', VirtBuilderOptions(source_url=local_repository['index'],
                                                             cache_dir=str(tmp_path / 'cache')))
    temporary = VirtBuilderSource('vb-flat', VirtBuilderOptions(source_url=local_repository['index'], no_cache=True))
    again = VirtBuilderSource('vb-flat', VirtBuilderOptions(source_url=local_repository['index'],
                                                            cache_dir=str(tmp_path / 'cache')))
    try:
        digests = {cached.probe(None), temporary.probe(None), again.probe(None)}
        cached_dir, temporary_dir, again_dir = cached._config_dir, temporary._config_dir, again._config_dir
    finally:
        for source in (cached, temporary, again):
            source.close()
    assert len(digests) == 1
    assert cached_dir == again_dir and cached_dir is not None and cached_dir.startswith(str(tmp_path / 'cache') + '/')
    conf = os.path.join(cached_dir, 'virt-builder', 'repos.d', 'virt-bootstrap.conf')
    assert pathlib.Path(conf).read_text() == '[virt-bootstrap]\nuri=%s\n' % local_repository['index']
    assert temporary_dir is not None and not os.path.exists(temporary_dir)
