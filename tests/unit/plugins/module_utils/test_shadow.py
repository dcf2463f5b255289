# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The root password: editing exactly the root entry, safely, and through the engine idempotently."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import typing as t

import pytest
from passlib.hash import sha512_crypt

from ansible_collections.virt.bootstrap.plugins.module_utils import _shadow as shadow
from ansible_collections.virt.bootstrap.plugins.module_utils.bootstrap import Request, bootstrap, run
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError
from ansible_collections.virt.bootstrap.plugins.module_utils._shadow import ShadowError
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.image_builders import snapshot_tree
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import (
    NOBODY,
    RESOLUTIONS,
    TarBuilder,
    as_nobody,
    compress,
    use_resolution,
)

NEW = '$6$newsalt$NEWHASH'
# A real, cheap SHA-512 crypt hash of 'known' (5000 rounds, as glibc makes them).
KNOWN_HASH = sha512_crypt.using(rounds=5000, salt='knownsalt').hash('known')
SHADOW = (b'root:$6$old$OLDHASH:19000:0:99999:7:::\n'
          b'rootx:$6$other$KEEPME:19000:0:99999:7:::\n'
          b'daemon:*:19000:0:99999:7:::\n'
          b'user:!:19000:0:99999:7:::\n')


# -- pure functions --------------------------------------------------------------------------------


@pytest.mark.parametrize('before, after', [
    (SHADOW, SHADOW.replace(b'$6$old$OLDHASH', NEW.encode())),
    # A rootx: (or xroot:) entry first must not be mistaken for root.
    (b'rootx:OLD:1::\nxroot:OLD:1::\nroot:OLD:1::\n',
     b'rootx:OLD:1::\nxroot:OLD:1::\nroot:' + NEW.encode() + b':1::\n'),
    # No trailing newline: none is added.
    (b'daemon:*:1::\nroot:OLD:1:2:3:4:5:6:', b'daemon:*:1::\nroot:' + NEW.encode() + b':1:2:3:4:5:6:'),
    (b'root:OLD', b'root:' + NEW.encode()),
    (b'root::1::\n', b'root:' + NEW.encode() + b':1::\n'),
    (b'root:*:1::\n\n\n', b'root:' + NEW.encode() + b':1::\n\n\n'),
    # Blank lines, comments and other bytes stay exactly as they were.
    (b'\n# comment\nbin:\xff\xfe:1::\nroot:!locked:1::\n',
     b'\n# comment\nbin:\xff\xfe:1::\nroot:' + NEW.encode() + b':1::\n'),
])
def test_only_the_exact_root_entry_changes(before, after):
    assert shadow.with_root_hash(before, NEW) == after
    assert shadow.root_hash(after) == NEW


@pytest.mark.parametrize('content', [
    b'',
    b'\n',
    b'rootx:OLD:1::\n',
    b'daemon:*:1::\nRoot:OLD:1::\n',
    b' root:OLD:1::\n',
    b'root\n',
])
def test_no_root_entry_is_a_shadow_error(content):
    assert shadow.root_hash(content) is None
    with pytest.raises(ShadowError, match='no root entry'):
        shadow.with_root_hash(content, NEW)


def test_root_hash_reads_the_root_entry_only():
    assert shadow.root_hash(SHADOW) == '$6$old$OLDHASH'


def test_hash_password_is_sha512_crypt_that_verifies():
    hashed = shadow.hash_password('s3cret')
    assert hashed.startswith('$6$')
    assert sha512_crypt.verify('s3cret', hashed)
    assert shadow.hash_password('s3cret') != hashed  # salted


@pytest.mark.parametrize('password, crypt_hash, expected', [
    ('known', KNOWN_HASH, True),
    ('other', KNOWN_HASH, False),
    ('known', None, False),
    ('known', '', False),
    ('known', '*', False),
    ('known', '!' + KNOWN_HASH, False),
    ('known', '$6$broken', False),
])
def test_password_matches(password, crypt_hash, expected):
    assert shadow.password_matches(password, crypt_hash) is expected


@pytest.mark.parametrize('value', [
    KNOWN_HASH,
    '$6$rounds=10000$salt$' + 'a' * 86,
    '$5$salt$' + 'b' * 43,
    '$1$salt$' + 'c' * 22,
    '$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7',
    '$2b$12$' + 'd' * 53,
])
def test_crypt_hashes_are_accepted(value):
    assert shadow.validate_crypt_hash(value) == value


@pytest.mark.parametrize('value', [
    '',
    'secret',
    '*',
    '!',
    '$6$',
    '$6$salt$',
    '$6$salthash',
    '$9$salt$hash',
    'x$6$salt$hash',
    ' $6$salt$hash',
    '$6$salt$hash ',
    # Each of these would add fields or lines to /etc/shadow.
    '$6$salt$hash\n',
    '$6$salt$hash\nevil::0:0:::::',
    '$6$salt$ha:sh',
    '$6$salt$hash:0:0',
    '$6$sa\x00lt$hash',
])
def test_bad_crypt_hashes_are_refused(value):
    with pytest.raises(ShadowError, match='root_password_hash'):
        shadow.validate_crypt_hash(value)


# -- set_root_hash on a directory -----------------------------------------------------------------


def make_etc(root: str, content: bytes = SHADOW, mode: int = 0o640) -> str:
    os.makedirs(os.path.join(root, 'etc'))
    path = os.path.join(root, 'etc', 'shadow')
    with open(path, 'wb') as stream:
        stream.write(content)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize('content', [SHADOW, SHADOW.rstrip(b'\n')], ids=['trailing-newline', 'no-trailing-newline'])
def test_set_root_hash_keeps_mode_owner_other_lines_and_trailing_newline(tmp_path, content):
    root = str(tmp_path / 'rootfs')
    path = make_etc(root, content, mode=0o640)
    if os.geteuid() == 0:
        os.chown(path, 0, 42)
    before = os.lstat(path)
    new_hash = shadow.hash_password('s3cret')

    shadow.set_root_hash(root, new_hash)

    after = os.lstat(path)
    with open(path, 'rb') as stream:
        written = stream.read()
    assert written == content.replace(b'$6$old$OLDHASH', new_hash.encode())
    assert sha512_crypt.verify('s3cret', shadow.root_hash(written))
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert os.listdir(os.path.join(root, 'etc')) == ['shadow']


def test_set_root_hash_replaces_the_inode_so_other_hard_links_keep_the_old_content(tmp_path):
    root = str(tmp_path / 'rootfs')
    path = make_etc(root, mode=0o000)
    os.link(path, os.path.join(root, 'etc', 'shadow-'))
    shadow.set_root_hash(root, NEW)
    with open(os.path.join(root, 'etc', 'shadow-'), 'rb') as stream:
        assert stream.read() == SHADOW
    assert os.lstat(path).st_ino != os.lstat(os.path.join(root, 'etc', 'shadow-')).st_ino
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o000


class Host:
    """A sentinel on the host, outside the rootfs, that must never change."""

    def __init__(self, tmp_path) -> None:
        self.dir = str(tmp_path / 'host-etc')
        os.mkdir(self.dir)
        self.sentinel = os.path.join(self.dir, 'shadow')
        self.content = b'root:$6$host$HOSTHASH:19000:0:99999:7:::\nhostuser:x:1::\n'
        with open(self.sentinel, 'wb') as stream:
            stream.write(self.content)
        os.chmod(self.sentinel, 0o600)
        self.before = self.state()

    def state(self) -> t.Tuple[t.Any, ...]:
        info = os.lstat(self.sentinel)
        with open(self.sentinel, 'rb') as stream:
            content = stream.read()
        return content, info.st_ino, info.st_mode, info.st_mtime_ns, sorted(os.listdir(self.dir))

    def untouched(self) -> bool:
        return self.state() == self.before and self.before[0] == self.content


def hostile_root(tmp_path, host: Host, kind: str) -> str:
    root = str(tmp_path / 'rootfs')
    os.mkdir(root)
    etc = os.path.join(root, 'etc')
    if kind == 'etc-symlink':
        os.symlink(host.dir, etc)
    elif kind == 'etc-relative-symlink':
        os.symlink('../host-etc', etc)
    else:
        os.mkdir(etc)
        if kind == 'shadow-symlink':
            os.symlink(host.sentinel, os.path.join(etc, 'shadow'))
        elif kind == 'shadow-relative-symlink':
            os.symlink('../../host-etc/shadow', os.path.join(etc, 'shadow'))
        elif kind == 'shadow-fifo':
            os.mkfifo(os.path.join(etc, 'shadow'))
        elif kind == 'shadow-dir':
            os.mkdir(os.path.join(etc, 'shadow'))
        else:
            raise ValueError(kind)
    return root


HOSTILE = ['etc-symlink', 'etc-relative-symlink', 'shadow-symlink', 'shadow-relative-symlink', 'shadow-fifo',
           'shadow-dir']


@pytest.mark.parametrize('kind', HOSTILE)
def test_hostile_shadow_is_refused_and_the_host_is_untouched(tmp_path, kind):
    host = Host(tmp_path)
    root = hostile_root(tmp_path, host, kind)
    with pytest.raises(ShadowError):
        shadow.set_root_hash(root, NEW)
    assert host.untouched()
    assert shadow.read_root_hash(root) is None


def test_symlink_messages_say_what_was_refused(tmp_path):
    host = Host(tmp_path)
    with pytest.raises(ShadowError, match='symlink'):
        shadow.set_root_hash(hostile_root(tmp_path, host, 'shadow-symlink'), NEW)


@pytest.mark.parametrize('resolution', RESOLUTIONS)
@pytest.mark.parametrize('etc_link', ['private/etc', '/private/etc', '../../private/etc', 'host'],
                         ids=['relative', 'absolute', 'climbing', 'host-path'])
def test_etc_linked_elsewhere_in_the_rootfs_is_followed_inside_it(tmp_path, monkeypatch, resolution, etc_link):
    # Some images keep /etc elsewhere (/etc -> private/etc): the link resolves inside the rootfs, even
    # one that names the host's own directory.
    use_resolution(resolution, monkeypatch)
    host = Host(tmp_path)
    root = str(tmp_path / 'rootfs')
    real_etc = 'private/etc' if etc_link != 'host' else host.dir.lstrip('/')
    os.makedirs(os.path.join(root, real_etc))
    with open(os.path.join(root, real_etc, 'shadow'), 'wb') as stream:
        stream.write(SHADOW)
    os.symlink(host.dir if etc_link == 'host' else etc_link, os.path.join(root, 'etc'))
    shadow.set_root_hash(root, NEW)
    assert shadow.read_root_hash(root) == NEW
    with open(os.path.join(root, real_etc, 'shadow'), 'rb') as stream:
        assert stream.read() == SHADOW.replace(b'$6$old$OLDHASH', NEW.encode())
    assert host.untouched()


@pytest.mark.parametrize('resolution', RESOLUTIONS)
def test_a_symlinked_shadow_below_a_linked_etc_is_still_refused(tmp_path, monkeypatch, resolution):
    use_resolution(resolution, monkeypatch)
    host = Host(tmp_path)
    root = str(tmp_path / 'rootfs')
    make_etc(os.path.join(root, 'private'))
    os.unlink(os.path.join(root, 'private', 'etc', 'shadow'))
    os.symlink(host.sentinel, os.path.join(root, 'private', 'etc', 'shadow'))
    os.symlink('private/etc', os.path.join(root, 'etc'))
    with pytest.raises(ShadowError, match='/etc/shadow of the rootfs is a symlink'):
        shadow.set_root_hash(root, NEW)
    assert host.untouched()


def test_planted_temporary_name_pointing_at_the_host_is_not_followed(tmp_path):
    host = Host(tmp_path)
    root = str(tmp_path / 'rootfs')
    make_etc(root)
    os.symlink(host.sentinel, os.path.join(root, 'etc', '.shadow.virt-bootstrap'))
    shadow.set_root_hash(root, NEW)
    assert host.untouched()
    assert shadow.read_root_hash(root) == NEW
    assert os.listdir(os.path.join(root, 'etc')) == ['shadow']


@pytest.mark.parametrize('build, message', [
    (lambda root: None, 'no /etc'),
    (lambda root: os.mkdir(os.path.join(root, 'etc')), 'no /etc/shadow'),
    (lambda root: make_etc(root, b'daemon:*:1::\nrootx:*:1::\n'), 'no root entry'),
], ids=['no-etc', 'no-shadow', 'no-root-entry'])
def test_missing_shadow_or_root_entry_is_a_clear_error(tmp_path, build, message):
    root = str(tmp_path / 'rootfs')
    os.mkdir(root)
    build(root)
    with pytest.raises(ShadowError, match=message):
        shadow.set_root_hash(root, NEW)


# -- through the engine ----------------------------------------------------------------------------


def rootfs_tar(shadow_content: t.Optional[bytes] = SHADOW, etc_extra: t.Callable[[TarBuilder], t.Any] = None,
               marker: bytes = b'one') -> bytes:
    builder = TarBuilder().dir('etc').file('etc/os-release', marker).dir('bin').file('bin/sh', b'#!', mode=0o755)
    if shadow_content is not None:
        builder.file('etc/shadow', shadow_content, mode=0o640, gid=42)
    if etc_extra is not None:
        etc_extra(builder)
    return builder.tar()


class Site:
    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.dest = str(tmp_path / 'hosts' / 'guest')
        self.meta = str(tmp_path / 'hosts' / '.guest.virt-bootstrap')
        self.shadow = os.path.join(self.dest, 'etc', 'shadow')

    def tarball(self, data: bytes, name: str = 'rootfs.tar.gz') -> str:
        path = str(self.tmp / name)
        with open(path, 'wb') as stream:
            stream.write(compress(data, 'gzip'))
        return path

    def run(self, src: str, check_mode: bool = False, **options: t.Any):
        return run(Request(src=src, dest=self.dest, **options), check_mode=check_mode)

    def root_hash(self) -> t.Optional[str]:
        with open(self.shadow, 'rb') as stream:
            return shadow.root_hash(stream.read())

    def meta_bytes(self) -> bytes:
        found = b''
        for directory, _subdirs, filenames in os.walk(self.meta):
            for name in filenames:
                with open(os.path.join(directory, name), 'rb') as stream:
                    found += stream.read()
        return found


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


def test_password_set_through_bootstrap_verifies_and_keeps_the_rest(site):
    result = bootstrap(site.tarball(rootfs_tar()), site.dest, root_password='s3cret')
    assert result.changed
    assert sha512_crypt.verify('s3cret', site.root_hash())
    with open(site.shadow, 'rb') as stream:
        lines = stream.read().split(b'\n')
    assert lines[1:] == SHADOW.split(b'\n')[1:]
    info = os.lstat(site.shadow)
    assert stat.S_IMODE(info.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (0, 42)


def test_rerun_with_the_same_password_is_unchanged_and_nothing_stores_it(site):
    src = site.tarball(rootfs_tar())
    first = site.run(src, root_password='s3cret-Pa55')
    written_hash = site.root_hash()
    record_before = site.meta_bytes()
    again = site.run(src, root_password='s3cret-Pa55')
    assert first.changed and not again.changed
    assert site.root_hash() == written_hash
    assert site.meta_bytes() == record_before
    salt = written_hash.split('$')[-2]
    for secret in ('s3cret-Pa55', written_hash, salt):
        for result in (first, again):
            assert secret not in repr(dataclasses.asdict(result))
        assert secret.encode() not in site.meta_bytes()
        assert secret not in repr(Request(src=src, dest=site.dest, root_password='s3cret-Pa55'))
    assert sorted(os.listdir(site.meta)) == ['lock', 'state.json']


def test_a_different_password_changes_only_the_root_hash(site):
    src = site.tarball(rootfs_tar())
    site.run(src, root_password='first')
    tree = snapshot_tree(site.dest)
    record = site.meta_bytes()

    check = site.run(src, check_mode=True, root_password='second')
    assert check.changed
    assert sha512_crypt.verify('first', site.root_hash())

    changed = site.run(src, root_password='second')
    assert changed.changed
    assert sha512_crypt.verify('second', site.root_hash())
    assert not sha512_crypt.verify('first', site.root_hash())
    after = snapshot_tree(site.dest)
    assert {key for key in tree if tree[key] != after.get(key)} == {'etc/shadow'}
    assert site.meta_bytes() == record
    assert not site.run(src, root_password='second').changed


def test_password_added_to_an_existing_rootfs_changes_it(site):
    src = site.tarball(rootfs_tar())
    site.run(src)
    assert site.root_hash() == '$6$old$OLDHASH'
    assert site.run(src, root_password='added').changed
    assert sha512_crypt.verify('added', site.root_hash())
    # Dropping the option puts the image's own entry back.
    assert site.run(src).changed
    assert site.root_hash() == '$6$old$OLDHASH'


def test_a_shadow_edited_in_the_guest_is_corrected_on_rerun(site):
    src = site.tarball(rootfs_tar())
    site.run(src, root_password='s3cret')
    with open(site.shadow, 'rb') as stream:
        content = stream.read()
    with open(site.shadow, 'wb') as stream:
        stream.write(shadow.with_root_hash(content, '$6$guest$CHANGED'))
    assert site.run(src, root_password='s3cret').changed
    assert sha512_crypt.verify('s3cret', site.root_hash())


def test_root_password_hash_is_written_verbatim_and_rerun_is_unchanged(site):
    src = site.tarball(rootfs_tar())
    assert site.run(src, root_password_hash=KNOWN_HASH).changed
    assert site.root_hash() == KNOWN_HASH
    assert not site.run(src, root_password_hash=KNOWN_HASH).changed
    # The same password as plain text: already set.
    assert not site.run(src, root_password='known').changed
    assert site.root_hash() == KNOWN_HASH
    assert KNOWN_HASH.encode() not in site.meta_bytes()


@pytest.mark.parametrize('bad', ['secret', '$6$salt$hash\n', '$6$salt$hash\nevil::0:0:::::', '$6$salt$ha:sh', ''])
def test_bad_root_password_hash_is_refused_before_anything_is_written(site, bad):
    with pytest.raises(ShadowError, match='root_password_hash'):
        site.run(site.tarball(rootfs_tar()), root_password_hash=bad)
    assert not os.path.lexists(site.dest)


def test_root_password_and_root_password_hash_together_are_refused(site):
    with pytest.raises(BootstrapError, match='mutually exclusive'):
        site.run(site.tarball(rootfs_tar()), root_password='x', root_password_hash=KNOWN_HASH)
    assert not os.path.lexists(site.dest)


@pytest.mark.parametrize('broken_tar, message', [
    (rootfs_tar(shadow_content=None, marker=b'two'), 'no /etc/shadow'),
    (rootfs_tar(shadow_content=b'daemon:*:1::\nrootx:*:1::\n', marker=b'two'), 'no root entry'),
    (TarBuilder().dir('bin').file('bin/sh', b'two').tar(), 'no /etc'),
], ids=['no-shadow', 'no-root-entry', 'no-etc'])
def test_missing_shadow_fails_clearly_and_leaves_the_old_rootfs_untouched(site, broken_tar, message):
    good = site.tarball(rootfs_tar(), 'good.tar.gz')
    site.run(good, root_password='s3cret')
    tree = snapshot_tree(site.dest)
    record = site.meta_bytes()

    with pytest.raises(ShadowError, match=message):
        site.run(site.tarball(broken_tar, 'broken.tar.gz'), root_password='s3cret')

    assert snapshot_tree(site.dest) == tree
    assert site.meta_bytes() == record
    assert sorted(os.listdir(site.meta)) == ['lock', 'state.json']
    assert not site.run(good, root_password='s3cret').changed


@pytest.mark.parametrize('kind', ['shadow-symlink', 'etc-symlink'])
def test_hostile_image_with_a_symlinked_shadow_cannot_reach_the_host(site, kind):
    host = Host(site.tmp)
    if kind == 'shadow-symlink':
        tar = TarBuilder().dir('etc').symlink('etc/shadow', host.sentinel).tar()
    else:
        tar = TarBuilder().symlink('etc', host.dir).tar()
    with pytest.raises(ShadowError):
        site.run(site.tarball(tar), root_password='s3cret')
    assert host.untouched()
    assert not os.path.lexists(site.dest)


def test_guest_that_replaced_its_shadow_with_a_symlink_cannot_reach_the_host(site):
    # After the first build the guest owns the rootfs; a later password change must not follow its links.
    host = Host(site.tmp)
    src = site.tarball(rootfs_tar())
    site.run(src, root_password='first')
    os.unlink(site.shadow)
    os.symlink(host.sentinel, site.shadow)
    with pytest.raises(ShadowError):
        site.run(src, root_password='second')
    assert host.untouched()


# -- unprivileged callers --------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to become an unprivileged user')
def test_unprivileged_caller_sets_the_password_in_a_mode_0000_shadow():
    # Fedora, CentOS and RHEL images ship /etc/shadow as mode 0000; unprivileged, the file is ours.
    directory = tempfile.mkdtemp(prefix='virt-bootstrap-shadow-')
    try:
        os.chown(directory, NOBODY, NOBODY)
        src = os.path.join(directory, 'rootfs.tar')
        with open(src, 'wb') as stream:
            stream.write(TarBuilder().dir('etc').file('etc/shadow', SHADOW, mode=0o000).tar())
        dest = os.path.join(directory, 'guest')

        def build_twice() -> t.List[bool]:
            return [bootstrap(src, dest, root_password='s3cret').changed,
                    bootstrap(src, dest, root_password='s3cret').changed]

        assert as_nobody(build_twice) == {'value': [True, False]}
        path = os.path.join(dest, 'etc', 'shadow')
        info = os.lstat(path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o000, NOBODY)
        with open(path, 'rb') as stream:
            content = stream.read()
        assert sha512_crypt.verify('s3cret', shadow.root_hash(content))
        assert content.split(b'\n')[1:] == SHADOW.split(b'\n')[1:]
    finally:
        shutil.rmtree(directory)


def test_a_huge_shadow_file_is_refused_before_it_is_read(tmp_path):
    # A guest-controlled file: reading gigabytes of it into memory is no way to set a password.
    etc = tmp_path / 'rootfs' / 'etc'
    etc.mkdir(parents=True)
    with open(str(etc / 'shadow'), 'wb') as stream:
        stream.write(b'root:*:19000:0:99999:7:::\n')
        stream.truncate(shadow.MAX_SHADOW_SIZE + 1)
    with pytest.raises(ShadowError, match='more than any real one'):
        shadow.set_root_hash(str(tmp_path / 'rootfs'), sha512_crypt.hash('pw'))
