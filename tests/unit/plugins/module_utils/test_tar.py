# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Our tar reader: real archives from GNU tar, bsdtar, tarfile and umoci read as tarfile reads them,
damaged and contradictory ones refused, data handed out from large reads without copies."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import typing as t
import urllib.parse

import pytest

from ansible_collections.virt.bootstrap.plugins.module_utils._tar import READ_SIZE, TarEntry, TarReader
from ansible_collections.virt.bootstrap.plugins.module_utils.errors import HostileLayer, LayerError
from ansible_collections.virt.bootstrap.tests.unit.plugins.module_utils.tarbuilder import MTIME, TarBuilder

needs_bsdtar = pytest.mark.skipif(shutil.which('bsdtar') is None, reason='needs bsdtar (libarchive-tools)')
needs_umoci = pytest.mark.skipif(shutil.which('umoci') is None or os.geteuid() != 0, reason='needs umoci, as root')
SPARSE_SIZE = 3 << 20


def ours(archive: bytes) -> t.List[t.Tuple[t.Any, ...]]:
    reader = TarReader(io.BytesIO(archive))
    return [_seen(entry, b''.join(reader.data(entry)) if entry.isreg() else None) for entry in reader]


def _seen(entry: TarEntry, data: t.Optional[bytes]) -> t.Tuple[t.Any, ...]:
    return (entry.name, entry.type, entry.mode, entry.uid, entry.gid, entry.size if entry.isreg() else None,
            entry.mtime_ns, entry.linkname, entry.devmajor, entry.devminor, sorted(entry.xattrs), data)


def tarfiles(archive: bytes) -> t.List[t.Tuple[t.Any, ...]]:
    """What tarfile reads, in the form the applier used: PAX mtimes to the ns, xattrs of both forms decoded."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode='r:', encoding='utf-8', errors='surrogateescape') as tar:
        for member in tar:
            text = member.pax_headers.get('mtime')
            if text is None:
                mtime_ns = member.mtime * 10**9
            else:
                seconds, _dot, fraction = text.partition('.')
                mtime_ns = int(seconds) * 10**9 + int(fraction[:9].ljust(9, '0'))
            xattrs = []
            for key, value in member.pax_headers.items():
                if key.startswith('SCHILY.xattr.'):
                    xattrs.append((key[13:], value.encode('utf-8', 'surrogateescape')))
                elif key.startswith('LIBARCHIVE.xattr.'):
                    xattrs.append((urllib.parse.unquote(key[17:]), base64.b64decode(value + '=' * (-len(value) % 4))))
            source = tar.extractfile(member) if member.isreg() else None
            found.append((member.name, member.type, member.mode, member.uid, member.gid,
                          member.size if member.isreg() else None, mtime_ns, member.linkname, member.devmajor,
                          member.devminor, sorted(xattrs), source.read() if source is not None else None))
    return found


@pytest.fixture(name='tree')
def fixture_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """A small tree with what layers hold: deep long names, links, a fifo, xattrs, a sparse file."""
    tree = tmp_path / 'tree'
    deep = tree / ('d' * 60) / ('e' * 70)
    deep.mkdir(parents=True)
    (deep / ('f' * 90)).write_bytes(b'deep\n')
    (tree / 'plain').write_bytes(b'x' * 5000)
    os.setxattr(tree / 'plain', 'user.note', b'a=b\x00\xff')
    os.symlink('plain', tree / 'link')
    os.symlink('t' * 150, tree / 'long-link')
    os.link(tree / 'plain', tree / 'hard')
    os.mkfifo(tree / 'fifo')
    with open(tree / 'sparse', 'wb') as stream:
        stream.write(b'head')
        stream.seek(1 << 20)
        stream.write(b'middle')
        stream.seek(SPARSE_SIZE - 3)
        stream.write(b'end')
    return tree


def _gnu_tar(tree: pathlib.Path, output: pathlib.Path, *options: str) -> bytes:
    subprocess.run(['tar', '--numeric-owner', '--owner=1234', '--group=5678', '--sort=name', '-C', str(tree),
                    '-cf', str(output)] + list(options) + ['.'], check=True)
    return output.read_bytes()


@pytest.mark.parametrize('options', [
    ['--format=gnu'], ['--format=oldgnu'], ['--format=pax'], ['--format=pax', '--xattrs', '--xattrs-include=*'],
    ['--format=ustar', '--exclude=./' + 'd' * 60, '--exclude=./long-link'],
    ['--format=v7', '--exclude=./' + 'd' * 60, '--exclude=./long-link', '--exclude=./fifo'],  # no fifos in v7
], ids=['gnu', 'oldgnu', 'pax', 'pax-xattrs', 'ustar', 'v7'])
def test_gnu_tar_archives_read_as_tarfile_reads_them(tree: pathlib.Path, tmp_path: pathlib.Path,
                                                     options: t.List[str]) -> None:
    archive = _gnu_tar(tree, tmp_path / 'out.tar', *options)
    entries = ours(archive)
    assert entries == tarfiles(archive)
    by_name = {entry[0]: entry for entry in entries}
    assert by_name['./sparse'][-1] == (tree / 'sparse').read_bytes()
    if '--xattrs' in options:
        # 'hard' comes first: it holds the data and the xattrs, 'plain' is the hard link to it.
        assert by_name['./hard'][10] == [('user.note', b'a=b\x00\xff')]


@pytest.mark.parametrize('options', [
    ['--format=gnu'], ['--format=pax', '--sparse-version=0.0'], ['--format=pax', '--sparse-version=0.1'],
    ['--format=pax', '--sparse-version=1.0'],
], ids=['old-gnu-S', 'pax-0.0', 'pax-0.1', 'pax-1.0'])
def test_gnu_sparse_files_of_every_version_come_out_with_their_holes_as_zeros(
        tree: pathlib.Path, tmp_path: pathlib.Path, options: t.List[str]) -> None:
    archive = _gnu_tar(tree, tmp_path / 'out.tar', '--sparse', *options)
    reader = TarReader(io.BytesIO(archive))
    sparse = [entry for entry in reader if entry.name == './sparse']
    assert len(archive) < SPARSE_SIZE  # the holes are not in the archive
    assert ours(archive) == tarfiles(archive)
    assert sparse[0].size == SPARSE_SIZE
    assert sparse[0].sparse is not None and sparse[0].sparse[0] == (0, 4096)


def test_many_sparse_segments_fill_old_gnu_extension_blocks(tmp_path: pathlib.Path) -> None:
    tree = tmp_path / 'tree'
    tree.mkdir()
    with open(tree / 'holes', 'wb') as stream:
        for index in range(60):  # more than the 4 pairs of the header and the 21 of an extension block
            stream.seek(index * 65536)
            stream.write(b'%d' % index)
    archive = _gnu_tar(tree, tmp_path / 'out.tar', '--sparse', '--format=gnu')
    entries = ours(archive)
    assert entries == tarfiles(archive)
    assert entries[1][-1] == (tree / 'holes').read_bytes()


@needs_bsdtar
@pytest.mark.parametrize('fmt', ['pax', 'ustar', 'gnutar', 'v7'])
def test_bsdtar_archives_read_as_tarfile_reads_them(tree: pathlib.Path, tmp_path: pathlib.Path, fmt: str) -> None:
    for name in ('d' * 60, 'long-link') if fmt in ('ustar', 'v7') else ():
        path = tree / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    archive = tmp_path / 'out.tar'
    subprocess.run(['bsdtar', '--format=' + fmt, '--xattrs', '-cf', str(archive), '-C', str(tree), '.'], check=True)
    entries = ours(archive.read_bytes())
    assert entries == tarfiles(archive.read_bytes())
    if fmt == 'pax':
        # Both forms: SCHILY.xattr (raw) and LIBARCHIVE.xattr (base64), as tarfile gave them to the applier.
        assert {entry[0]: entry[10] for entry in entries if entry[10]} == \
            {'./plain': [('user.note', b'a=b\x00\xff')] * 2, './hard': [('user.note', b'a=b\x00\xff')] * 2}


def test_tarfile_archives_of_each_format_read_the_same(tmp_path: pathlib.Path) -> None:
    for number in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode='w', format=number) as archive:
            for name, kind, size in (('dir', tarfile.DIRTYPE, 0), ('dir/' + 'n' * 40 + '/f', tarfile.REGTYPE, 700),
                                     ('dev', tarfile.CHRTYPE, 0)):
                info = tarfile.TarInfo(name)
                info.type, info.size, info.mtime, info.uid, info.devmajor, info.devminor = kind, size, MTIME, 7, 1, 3
                archive.addfile(info, io.BytesIO(b'z' * size) if size else None)
        assert ours(buffer.getvalue()) == tarfiles(buffer.getvalue())


def test_pax_records_give_names_owners_nanoseconds_and_both_xattr_forms() -> None:
    pax = {'path': 'etc/renamed//', 'uid': '100000', 'gid': '200000', 'mtime': '1700000000.123456789',
           'SCHILY.xattr.user.raw': 'r\u00e9', 'LIBARCHIVE.xattr.user.with%3Dequals': 'AAEC/w', 'atime': '5'}
    archive = TarBuilder().file('ignored', b'data', pax=pax).tar()
    reader = TarReader(io.BytesIO(archive))
    entry = next(reader)
    assert (entry.name, entry.uid, entry.gid, entry.mtime_ns) == ('etc/renamed', 100000, 200000, 1700000000123456789)
    assert entry.xattrs == [('user.raw', 'r\u00e9'.encode()), ('user.with=equals', b'\x00\x01\x02\xff')]
    assert ours(archive) == tarfiles(archive)


def test_global_pax_records_apply_to_every_later_entry() -> None:
    archive = tarfile.TarInfo.create_pax_global_header({'mtime': '1600000000.5', 'comment': 'git'}) + \
        TarBuilder().file('a', b'a').file('b', b'b', pax={'mtime': '12'}).tar()
    assert [entry.mtime_ns for entry in TarReader(io.BytesIO(archive))] == [1600000000_500000000, 12_000000000]
    assert ours(archive) == tarfiles(archive)


def _with_checksum(header: bytearray, signed: bool = False) -> bytes:
    header[148:156] = b' ' * 8
    total = sum(byte - 256 if signed and byte >= 128 else byte for byte in header)
    header[148:156] = b'%06o\0 ' % total
    return bytes(header)


def test_base_256_numbers_and_signed_checksums_are_read() -> None:
    header = bytearray(TarBuilder().file('owner', b'').tar()[:512])
    header[108:116] = b'\x80' + (1 << 40).to_bytes(7, 'big')  # GNU base-256 uid
    header[265:270] = b'\xe9l\xe9a'  # a Latin-1 user name: the signed and unsigned sums differ
    for signed in (False, True):
        archive = _with_checksum(header, signed) + bytes(1024)
        entry = next(TarReader(io.BytesIO(archive)))
        assert (entry.name, entry.uid, entry.mode) == ('owner', 1 << 40, 0o644)
        assert ours(archive) == tarfiles(archive)
    header[100:108] = b'\xb0' + b'00644\0 '  # not a number: tarfile calls it an invalid header too
    with pytest.raises(LayerError, match=r'^corrupt or truncated data \(tar\): invalid header$'):
        list(TarReader(io.BytesIO(_with_checksum(header) + bytes(1024))))


@pytest.mark.parametrize('name, prefix, kind, expected', [
    (b'', b'pre', b'5', 'pre'), (b'dir//', b'pre/', b'5', 'pre//dir'), (b'', b'pre', b'0', 'pre/'),
    (b'old/', b'', b'\0', 'old'),
], ids=['dir-all-in-prefix', 'dir-slashes', 'file-all-in-prefix', 'v7-dir'])
def test_ustar_names_join_their_prefix_as_tarfile_joins_them(name: bytes, prefix: bytes, kind: bytes,
                                                             expected: str) -> None:
    header = bytearray(_ustar_file()[:512])
    header[0:100] = name.ljust(100, b'\0')
    header[156:157] = kind
    header[345:500] = prefix.ljust(155, b'\0')
    archive = _with_checksum(header) + bytes(1024)
    assert next(TarReader(io.BytesIO(archive))).name == expected
    assert ours(archive) == tarfiles(archive)


def test_pax_hdrcharset_binary_names_keep_their_bytes() -> None:
    archive = TarBuilder().file('x', b'x', pax={'hdrcharset': 'BINARY', 'path': 'caf\udce9'}).tar()
    assert next(TarReader(io.BytesIO(archive))).name.encode('utf-8', 'surrogateescape') == b'caf\xe9'
    assert ours(archive) == tarfiles(archive)


@needs_umoci
def test_umoci_layers_read_as_tarfile_reads_them(tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    layout, bundle = tmp_path / 'layout', tmp_path / 'bundle'
    for argv in (['init', '--layout', str(layout)], ['new', '--image', '%s:t' % layout],
                 ['unpack', '--image', '%s:t' % layout, str(bundle)]):
        subprocess.run(['umoci'] + argv, check=True, capture_output=True)
    for name in ('plain', 'link', 'long-link', 'hard', 'sparse', 'd' * 60):
        os.rename(tree / name, bundle / 'rootfs' / name)
    subprocess.run(['umoci', 'repack', '--image', '%s:t' % layout, str(bundle)], check=True, capture_output=True)
    index = json.loads((layout / 'index.json').read_text())
    manifest = json.loads((layout / 'blobs' / 'sha256' / index['manifests'][0]['digest'][7:]).read_text())
    layer = gzip.decompress((layout / 'blobs' / 'sha256' / manifest['layers'][-1]['digest'][7:]).read_bytes())
    entries = ours(layer)
    assert entries == tarfiles(layer)
    assert {entry[0] for entry in entries} >= {'plain', 'link', 'long-link', 'hard', 'sparse'}


class _Reads(io.BytesIO):
    """Records the size of every read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: t.List[int] = []

    def read(self, size: t.Optional[int] = -1) -> bytes:
        self.asked.append(t.cast(int, size))
        return super().read(size)


# -- damaged and contradictory archives ------------------------------------------------------------------


def _read_all(archive: t.Union[bytes, io.BytesIO]) -> None:
    reader = TarReader(io.BytesIO(archive) if isinstance(archive, bytes) else archive)
    for entry in reader:
        for _piece in reader.data(entry):
            pass


def _record(key: bytes, value: bytes) -> bytes:
    """A PAX record, its length counting its own digits."""
    body = b' %s=%s\n' % (key, value)
    length = len(body) + len(str(len(body)))
    return b'%d%s' % (length + len(str(length)) - len(str(len(body))), body)


def _pax_header(records: bytes, kind: bytes = b'x', padding: bytes = b'') -> bytes:
    info = tarfile.TarInfo('././@PaxHeader')
    info.type, info.size = kind, len(records)
    body = records + padding
    return info.tobuf(tarfile.USTAR_FORMAT) + body + bytes(-len(body) % 512)


_FILE = TarBuilder().file('f', b'x' * 1000).tar()[:1536]  # one entry, no end blocks


def _ustar_file(size: int = 0) -> bytes:
    info = tarfile.TarInfo('plain')
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT) + bytes(-(-size // 512) * 512)


_USTAR_FILE = _ustar_file()


@pytest.mark.parametrize('archive, error, message', [
    (b'', LayerError, r'^corrupt or truncated data \(tar\): empty file$'),
    (b'x' * 100, LayerError, r'^corrupt or truncated data \(tar\): truncated header$'),
    (b'not a tar' * 100, LayerError, r'^corrupt or truncated data \(tar\): invalid header$'),
    (b'0' * 1024, LayerError, r'^corrupt or truncated data \(tar\): bad checksum$'),
    (_FILE[:1500], LayerError, r'^corrupt or truncated data \(tar\): unexpected end of data$'),
    (_FILE + b'garbage!' * 64, LayerError, '^damaged tar header at byte 1536 of the uncompressed layer$'),
    (_FILE + bytes(1024) + b'trailing', LayerError, '^damaged tar header at byte 1536 of the uncompressed layer$'),
    (_FILE + bytes(100) + b'x', LayerError, '^damaged tar header at byte 1536 of the uncompressed layer$'),
    (_pax_header(_record(b'a', b'b')) + _pax_header(_record(b'c', b'd')) + _USTAR_FILE, HostileLayer,
     'two PAX headers'),
    (_pax_header(_record(b'path', b'a/b'), kind=b'g') + _USTAR_FILE, HostileLayer, "sets 'path' for every entry"),
    (_pax_header(b'7 a=b\n') + _USTAR_FILE, LayerError, 'damaged PAX header at byte 0'),
    (_pax_header(_record(b'a', b'b'), padding=_record(b'c', b'd')) + _USTAR_FILE, HostileLayer,
     'has data past its size'),
    (_pax_header(_record(b'a', b'b')), LayerError, 'unexpected end of data'),
    (_pax_header(_record(b'a', b'b')) + bytes(1024), LayerError, 'damaged tar header at byte 1024'),
    (_pax_header(_record(b'mtime', b'1e3')) + _USTAR_FILE, LayerError, "entry 'plain' cannot be written: PAX mtime"),
    (_pax_header(_record(b'uid', b'twelve')) + _USTAR_FILE, LayerError, "entry 'plain' cannot be written: PAX uid"),
    (_pax_header(_record(b'size', b'-100')) + _USTAR_FILE, HostileLayer, 'negative PAX size'),
    (_pax_header(_record(b'LIBARCHIVE.xattr.user.a', b'AAAAA')) + _USTAR_FILE, LayerError,
     'cannot be written: extended attribute'),
    (_pax_header(_record(b'GNU.sparse.size', b'100') + _record(b'GNU.sparse.map', b'50,10,40,10')) +
     _ustar_file(20), HostileLayer, 'out of order or overlapping'),
    # Python's int() refuses more than 4,300 digits with a bare ValueError (found in review).
    (_pax_header(_record(b'mtime', b'1' * 5000)) + _USTAR_FILE, LayerError, "entry 'plain' cannot be written: PAX mtime"),
    (_pax_header(_record(b'uid', b'1' * 5000)) + _USTAR_FILE, LayerError, "entry 'plain' cannot be written: PAX uid"),
    (_pax_header(_record(b'GNU.sparse.size', b'10') + _record(b'GNU.sparse.map', b'0,' + b'1' * 5000)) +
     _ustar_file(20), HostileLayer, 'which is no size'),
    (_pax_header(b''.join(_record(b'SCHILY.xattr.user.k%d' % number, b'v') for number in range(65)), kind=b'g') +
     _USTAR_FILE, HostileLayer, 'set 65 records for every entry after them'),
    # tarfile before 3.12 finds a 0.0 map with a regex over the raw header, '.' matching any character (fuzz_tar).
    (_pax_header(_record(b'GNU.sparse.size', b'20') + _record(b'GNU.sparse.offset', b'0') +
                 _record(b'GNU.sparse>offset', b'10') + _record(b'GNU.sparse.numbytes', b'5')) + _ustar_file(5),
     HostileLayer, "sparse records of entry 'plain' read differently when looked for in the raw header"),
    (_pax_header(_record(b'GNU.sparse.size', b'20') + _record(b'comment', b'x 9 GNU.sparse.offset=7') +
                 _record(b'GNU.sparse.offset', b'0') + _record(b'GNU.sparse.numbytes', b'5')) + _ustar_file(5),
     HostileLayer, 'read differently when looked for in the raw header'),
], ids=['empty', 'short', 'not-a-tar', 'bad-checksum', 'truncated-data', 'garbage-after-entries', 'garbage-after-end',
        'garbage-in-end-padding', 'two-pax-headers', 'global-path', 'pax-record-length-wrong',
        'pax-record-in-padding', 'pax-header-at-end', 'pax-header-before-end', 'mtime-not-a-time', 'uid-not-a-number', 'negative-size',
        'xattr-not-base64', 'sparse-map-overlapping', 'mtime-of-5000-digits', 'uid-of-5000-digits',
        'sparse-number-of-5000-digits', 'global-records-without-end', 'sparse-0.0-loose-key',
        'sparse-0.0-record-inside-a-value'])
def test_damaged_or_contradictory_archives_are_refused(archive: bytes, error: t.Type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _read_all(archive)


def test_a_huge_extended_header_is_refused_before_it_is_read() -> None:
    info = tarfile.TarInfo('././@LongLink')
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 20 << 20
    stream = _Reads(info.tobuf(tarfile.GNU_FORMAT) + b'a' * (20 << 20))
    with pytest.raises(HostileLayer, match=r'asks for 20971520 bytes at once'):
        _read_all(stream)
    assert stream.tell() <= READ_SIZE


def test_two_long_names_for_one_entry_are_refused() -> None:
    info = tarfile.TarInfo('././@LongLink')
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 2
    long_name = info.tobuf(tarfile.GNU_FORMAT) + b'a\0' + bytes(510)
    with pytest.raises(HostileLayer, match='two GNU long name headers'):
        _read_all(long_name + long_name + _ustar_file())


def test_an_archive_may_end_without_its_end_blocks_or_with_zeros_only() -> None:
    assert [entry[0] for entry in ours(_FILE)] == ['f']
    assert [entry[0] for entry in ours(_FILE + bytes(5000))] == ['f']
    assert ours(bytes(1024)) == []


# -- reading ---------------------------------------------------------------------------------------------


def test_data_comes_as_views_of_large_reads_and_unread_data_is_skipped() -> None:
    big = bytes(range(256)) * (3 * READ_SIZE // 256 + 7)
    stream = _Reads(TarBuilder().file('big', big).file('skipped', b's' * 5000).file('last', b'l').tar())
    reader = TarReader(stream)
    entry = next(reader)
    pieces = list(reader.data(entry))
    assert all(isinstance(piece, memoryview) for piece in pieces)
    assert b''.join(pieces) == big
    assert len(pieces) <= len(big) // READ_SIZE + 2
    assert [entry.name for entry in reader] == ['skipped', 'last']
    assert set(stream.asked) == {READ_SIZE}


def test_data_of_an_entry_cannot_be_read_after_the_next_one() -> None:
    reader = TarReader(io.BytesIO(TarBuilder().file('a', b'a').file('b', b'b').tar()))
    first = next(reader)
    next(reader)
    with pytest.raises(ValueError):
        list(reader.data(first))


def test_global_records_that_change_nothing_in_the_tree_are_not_kept() -> None:
    # A comment (git archive writes one) or an atime applies to nothing the applier writes: many of them are
    # dropped, not copied into every later entry.
    records = b''.join(_record(b'comment%d' % number, b'x' * 100) for number in range(1000))
    archive = _pax_header(records + _record(b'uid', b'7'), kind=b'g') + _USTAR_FILE + bytes(1024)
    reader = TarReader(io.BytesIO(archive))
    entries = list(reader)
    assert [(entry.name, entry.uid) for entry in entries] == [('plain', 7)]
    assert list(reader._globals) == ['uid']  # pylint: disable=protected-access


def _old_gnu_sparse(extension_pairs: t.Sequence[t.Tuple[int, int]], data: bytes, real_size: int) -> bytes:
    """An old GNU 'S' entry with its 4 header slots empty and one extension block holding `extension_pairs`."""
    def octal(number: int, width: int) -> bytes:
        return b'%0*o\0' % (width - 1, number)
    header = bytearray(512)
    header[0:2] = b'sp'
    header[100:108], header[108:116], header[116:124] = octal(0o644, 8), octal(0, 8), octal(0, 8)
    header[124:136], header[136:148] = octal(len(data), 12), octal(0, 12)
    header[156:157], header[257:265] = b'S', b'ustar  \0'
    header[482:483], header[483:495] = b'\x01', octal(real_size, 12)
    header[148:156] = b' ' * 8
    header[148:156] = b'%06o\0 ' % sum(header)
    extension = bytearray(512)
    for index, (offset, length) in enumerate(extension_pairs):
        extension[24 * index:24 * index + 24] = octal(offset, 12) + octal(length, 12)
    return bytes(header) + bytes(extension) + data + bytes(-len(data) % 512) + bytes(1024)


def test_old_gnu_extension_pairs_with_a_zero_count_as_tarfile_counts_them() -> None:
    # tarfile leaves out an extension block's pair when either number is zero; (0, 5) is such a pair.
    archive = _old_gnu_sparse([(0, 5), (10, 5)], b'HELLOworld', 20)
    assert ours(archive) == tarfiles(archive)
