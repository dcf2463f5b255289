# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""virt-builder://TEMPLATE: a template built by virt-builder, its filesystems streamed out as one tar layer.

Two appliance launches per build: virt-builder's own, and one guestfish that inspects the disk, mounts
every filesystem where the guest's fstab puts it (swap and foreign partitions are not mounted) and
writes the whole tree to a pipe, which the layer applier reads like any other layer. Which template
a run would write comes from the repository index alone (no build): its name, revision and checksum.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import typing as t
import urllib.parse
from dataclasses import dataclass, field

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import BootstrapError, PlatformError, SourceError
from ansible_collections.virt.bootstrap.plugins.module_utils._guestfish import die_with_parent, stderr_text
from ansible_collections.virt.bootstrap.plugins.module_utils._image import MEDIA_TAR, Image, Layer, Platform, sha256_digest
from ansible_collections.virt.bootstrap.plugins.module_utils._platforms import host_platform, normalize
from ansible_collections.virt.bootstrap.plugins.module_utils._progress import Progress, ProgressCallback
from ansible_collections.virt.bootstrap.plugins.module_utils._sources import without_userinfo
from ansible_collections.virt.bootstrap.plugins.module_utils._rootpath import (
    lstat_at,
    open_dir_in_root,
    remove_tree,
    replace_file_at,
)

SCHEME = 'virt-builder://'
TEMPLATE_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')
# Which Debian package brings each tool.
TOOL_PACKAGES = {'virt-builder': 'guestfs-tools', 'guestfish': 'libguestfs-tools'}
# Our image platform's architecture -> virt-builder's (uname -m) name.
_ARCHITECTURES = {
    ('amd64', ''): 'x86_64', ('arm64', ''): 'aarch64', ('386', ''): 'i686', ('arm', 'v7'): 'armv7l',
    ('ppc64le', ''): 'ppc64le', ('ppc64', ''): 'ppc64', ('s390x', ''): 's390x', ('riscv64', ''): 'riscv64',
}
# How we build, beyond the template: part of the digest, so a change here rebuilds. The root account is
# left locked (its password is set afterwards, never on a command line); no network inside the guest.
BUILD_OPTIONS = ('--no-network', '--root-password', 'disabled', '--format', 'raw', '--no-logfile', '--no-sync')
# The template's /dev is never written (a container gets its own); a directory named dev deeper down is.
# guestfish runs tar in the guest's root, where every name starts with './'.
TAR_OUT_OPTIONS = ('numericowner:true', 'xattrs:true', 'excludes:./dev/*')
# How the finished tree is edited (finish_tree); part of the digest too.
TREE_EDITS = ('fstab-commented-out',)
MAX_INDEX_SIZE = 64 << 20
MAX_FSTAB_SIZE = 1 << 20
MAX_SHOWN_TEMPLATES = 12
FSTAB_NOTE = (b'# virt-bootstrap: the entries below mount the disks of the virt-builder template this rootfs was\n'
              b'# made from; a container has none of those disks, so they are commented out.\n')


# virt-builder --list reads every index (over the network for the default repositories).
LIST_TIMEOUT = 300


@dataclass
class VirtBuilderOptions:
    # A repository index URL used instead of the configured repositories (file:///srv/index, https://...).
    source_url: t.Optional[str] = None
    no_check_signature: bool = False
    # Templates are cached in CACHE_DIR/virt-builder; no_cache downloads them for this run only.
    cache_dir: t.Optional[str] = None
    no_cache: bool = False
    # Where the built disk is kept while it is copied out (the engine: dest's bookkeeping directory).
    scratch_dir: t.Optional[str] = None
    progress_cb: t.Optional[ProgressCallback] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.source_url and '@' in urllib.parse.urlsplit(self.source_url).netloc:
            # virt-builder would hand them to curl on its command line and keep them in its repository file.
            raise SourceError('virt_builder_source %s must not hold credentials (user:password@); serve the index '
                              'from a place that needs none, or copy it to a file:// path'
                              % without_userinfo(self.source_url))


class TemplateEntry(t.NamedTuple):
    """What an index says of one template for one architecture."""
    name: str
    arch: str
    revision: str
    checksum: str
    fields: t.Mapping[str, str]


def parse_template_name(rest: str, uri: str) -> str:
    """The template of virt-builder://TEMPLATE; it goes on virt-builder's command line, so never an option."""
    if not TEMPLATE_NAME_RE.match(rest):
        raise SourceError('virt-builder source %r: %r is not a template name (letters, digits and ._+-, as in '
                          'virt-builder://debian-12)' % (uri, rest))
    return rest


def builder_arch(wanted: t.Optional[Platform]) -> str:
    """virt-builder's name for the architecture of `wanted` (the host's when not given)."""
    platform = normalize(wanted) if wanted is not None else host_platform()
    if platform.os != 'linux':
        raise PlatformError('virt-builder templates are Linux guests; platform %s is not' % platform)
    arch = _ARCHITECTURES.get((platform.architecture, platform.variant))
    if arch is None:
        raise PlatformError('virt-builder has no architecture for platform %s; known: %s' % (
            platform, ', '.join('linux/%s%s' % (name, '/' + variant if variant else '')
                                for name, variant in _ARCHITECTURES)))
    return arch


def image_platform(arch: str) -> Platform:
    return normalize(Platform('linux', arch))


def parse_index(text: str, where: str) -> t.List[t.Tuple[str, t.Dict[str, str]]]:
    """The sections of a virt-builder index, in order: (section name, {field: value}).

    A name may appear once per architecture. Values may go on over lines that start with a space
    (notes); 'key[subkey]=value' keeps its brackets in the field name. A clear-signed index (index.asc)
    is read between its armour lines; virt-builder itself checks the signature when it builds.
    """
    lines = _unarmoured(text).splitlines()
    sections: t.List[t.Tuple[str, t.Dict[str, str]]] = []
    current: t.Optional[t.Dict[str, str]] = None
    last_key = ''
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith('#'):
            continue
        if line.startswith('['):
            if not line.rstrip().endswith(']'):
                raise SourceError('%s line %d: %r is not a [section] header' % (where, number, line[:80]))
            current = {}
            sections.append((line.strip()[1:-1].strip(), current))
            last_key = ''
        elif line[0] in ' \t':
            if current is None or not last_key:
                raise SourceError('%s line %d: a continuation line outside any field' % (where, number))
            current[last_key] += '\n' + line.strip()
        else:
            key, sep, value = line.partition('=')
            if current is None or not sep:
                raise SourceError('%s line %d: %r is not key=value inside a [section]' % (where, number, line[:80]))
            last_key = key.strip()
            current[last_key] = value.strip()
    return sections


def _unarmoured(text: str) -> str:
    if not text.startswith('-----BEGIN PGP SIGNED MESSAGE-----'):
        return text
    body = text.split('\n\n', 1)[1] if '\n\n' in text else ''
    return body.split('\n-----BEGIN PGP SIGNATURE-----', 1)[0]


def find_template(sections: t.Sequence[t.Tuple[str, t.Dict[str, str]]], name: str,
                  arch: str) -> t.Optional[TemplateEntry]:
    for section, fields in sections:
        if section == name and fields.get('arch', 'x86_64') == arch:
            checksum = fields.get('checksum[sha512]') or fields.get('checksum') or ''
            return TemplateEntry(name, arch, fields.get('revision', '1'), checksum, fields)
    return None


def template_digest(entry: TemplateEntry) -> str:
    """A stable sha256 naming exactly what a build writes: the template, its revision and checksum, the arch,
    and how we build and edit it."""
    identity = {'template': entry.name, 'revision': entry.revision, 'checksum': entry.checksum, 'arch': entry.arch,
                'build_options': list(BUILD_OPTIONS), 'tar_out_options': list(TAR_OUT_OPTIONS),
                'tree_edits': list(TREE_EDITS)}
    return sha256_digest(json.dumps(identity, sort_keys=True, separators=(',', ':')).encode('utf-8'))


def neutralise_fstab(root: str) -> None:
    """Comment out every entry of the rootfs's /etc/fstab, saying why: the template's disks are not the
    container's. /etc resolves inside the root; /etc/fstab itself is never followed (a link is replaced
    by a file holding only the note)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            etc_fd = open_dir_in_root(root_fd, ('etc',))
        except (FileNotFoundError, NotADirectoryError):
            return
    finally:
        os.close(root_fd)
    try:
        info = lstat_at(etc_fd, 'fstab')
        if info is None:
            return
        if stat.S_ISREG(info.st_mode):
            content = _read_small_file(etc_fd, 'fstab', MAX_FSTAB_SIZE)
            replace_file_at(etc_fd, 'fstab', commented_fstab(content), info)
        else:
            replace_file_at(etc_fd, 'fstab', FSTAB_NOTE, info, mode=0o644)
    finally:
        os.close(etc_fd)


def commented_fstab(content: bytes) -> bytes:
    """`content` with each entry commented out under a note; comments and blank lines stay as they are."""
    lines = content.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b'\n'):
        lines[-1] += b'\n'
    return FSTAB_NOTE + b''.join(line if not line.strip() or line.lstrip().startswith(b'#') else b'# ' + line
                                 for line in lines)


def _read_small_file(dir_fd: int, name: str, limit: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, 'rb') as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise SourceError('/etc/%s of the rootfs is not a regular file' % name)
        content = stream.read(limit + 1)
    if len(content) > limit:
        raise SourceError('/etc/%s of the rootfs is more than %d bytes, more than any real one' % (name, limit))
    return content


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SourceError('%s is not installed; it is in the Debian package %s (apt-get install %s)'
                          % (name, TOOL_PACKAGES[name], TOOL_PACKAGES[name]))
    return path


class VirtBuilderSource:
    def __init__(self, template: str, options: VirtBuilderOptions) -> None:
        self.template = template
        self._options = options
        # Appliance launches so far (virt-builder's and guestfish's), for the result.
        self.appliance_launches = 0
        # The repository configuration virt-builder reads (VIRT_BUILDER_DIRS), and whether it is ours to remove.
        self._config_dir: t.Optional[str] = None
        self._config_dir_is_temporary = False
        self._work_dir: t.Optional[str] = None
        self._process: t.Optional[subprocess.Popen] = None
        self._entries: t.Dict[str, TemplateEntry] = {}

    # -- the Source interface ----------------------------------------------------------------------

    def probe(self, wanted: t.Optional[Platform],
              recorded: t.Optional[t.Tuple[str, t.Optional[str]]] = None) -> t.Tuple[str, t.Optional[str]]:
        """The digest src names now, from the index alone (no build)."""
        return template_digest(self._entry(builder_arch(wanted))), None

    def resolve(self, wanted: t.Optional[Platform]) -> Image:
        require_tool('guestfish')  # before anything is built, not after
        entry = self._entry(builder_arch(wanted))
        image = Image(digest=template_digest(entry), layers=[], platform=image_platform(entry.arch),
                      finish_tree=neutralise_fstab)
        image.layers.append(Layer(open_blob=lambda: self._tar_out(self._build(entry), image.warnings), digest=None,
                                  size=None, media_type=MEDIA_TAR, size_hint=_size_hint(entry)))
        return image

    def close(self) -> None:
        self._stop()
        self._discard_work_dir()
        if self._config_dir is not None and self._config_dir_is_temporary:
            shutil.rmtree(self._config_dir, ignore_errors=True)
        self._config_dir = None

    def _discard_work_dir(self) -> None:
        """Remove the built disk and its directory; what cannot be removed, the next run's recovery does."""
        work_dir, self._work_dir = self._work_dir, None
        if work_dir is not None:
            with contextlib.suppress(OSError, BootstrapError):
                remove_tree(work_dir)

    # -- the index -----------------------------------------------------------------------------------

    def _entry(self, arch: str) -> TemplateEntry:
        if arch not in self._entries:
            self._entries[arch] = self._find_entry(arch)
        return self._entries[arch]

    def _find_entry(self, arch: str) -> TemplateEntry:
        listing = self._listing()
        templates = [item for item in listing.get('templates', []) if isinstance(item, dict)]
        arches = sorted({str(item.get('arch')) for item in templates if item.get('os-version') == self.template})
        if not arches:
            names = sorted({str(item.get('os-version')) for item in templates if not item.get('hidden')})
            shown = ', '.join(names[:MAX_SHOWN_TEMPLATES]) + (', ...' if len(names) > MAX_SHOWN_TEMPLATES else '')
            raise SourceError('virt-builder template %r is not in %s; it has: %s'
                              % (self.template, self._where(), shown or 'no templates'))
        if arch not in arches:
            raise PlatformError('virt-builder template %r is not built for %s in %s; only for: %s'
                                % (self.template, arch, self._where(), ', '.join(arches)))
        for source in listing.get('sources', []):
            uri = source.get('uri') if isinstance(source, dict) else None
            if not isinstance(uri, str):
                continue
            entry = find_template(parse_index(_read_index(uri), 'virt-builder index %s' % without_userinfo(uri)),
                                  self.template, arch)
            if entry is not None:
                return entry
        raise SourceError('virt-builder lists template %r for %s, but no index of %s has it'
                          % (self.template, arch, self._where()))

    def _listing(self) -> t.Dict[str, t.Any]:
        argv = [require_tool('virt-builder'), '--list', '--list-format', 'json'] + self._signature_args()
        try:
            completed = subprocess.run(argv, env=self._environment(), stdin=subprocess.DEVNULL, capture_output=True,
                                       check=False, preexec_fn=die_with_parent, timeout=LIST_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SourceError('virt-builder --list did not answer within %d s reading %s'
                              % (LIST_TIMEOUT, self._where()))
        if completed.returncode != 0:
            message = stderr_text(completed.stderr, (self._options.source_url,))
            raise SourceError('cannot read the virt-builder repository %s: %s'
                              % (self._where(), message or 'exit %d' % completed.returncode))
        try:
            listing = json.loads(completed.stdout)
        except ValueError as exc:
            raise SourceError('virt-builder --list gave no JSON: %s' % exc)
        if not isinstance(listing, dict):
            raise SourceError('virt-builder --list gave no JSON object')
        return listing

    def _where(self) -> str:
        return without_userinfo(self._options.source_url or 'the configured virt-builder repositories')

    # -- building and copying out ----------------------------------------------------------------

    def _build(self, entry: TemplateEntry) -> str:
        """Run virt-builder (one appliance launch); the path of the raw disk it made."""
        self._work_dir = tempfile.mkdtemp(prefix='build-virt-builder-', dir=self._options.scratch_dir)
        disk = os.path.join(self._work_dir, 'disk.raw')
        argv = [require_tool('virt-builder'), entry.name, '--arch', entry.arch, '--output', disk]
        argv += list(BUILD_OPTIONS) + self._cache_args() + self._signature_args()
        progress = Progress(self._options.progress_cb)
        progress.status('Building image %s (revision %s) with virt-builder' % (entry.name, entry.revision))
        try:
            self._run_build(argv, entry, progress)
        except BaseException:
            self._stop()
            self._discard_work_dir()
            raise
        return disk

    def _run_build(self, argv: t.List[str], entry: TemplateEntry, progress: Progress) -> None:
        with tempfile.TemporaryFile(dir=self._work_dir) as stderr:
            self.appliance_launches += 1
            self._process = subprocess.Popen(argv, env=self._environment(), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=stderr, preexec_fn=die_with_parent)
            for line in t.cast(t.IO[bytes], self._process.stdout):
                step = _build_step(line)
                if step:
                    progress.status('Building image: %s' % step)
            returncode = self._process.wait()
            self._process = None
            if returncode != 0:
                stderr.seek(0)
                message = stderr_text(stderr.read(), (self._options.source_url,))
                if 'checksum of template did not match' in message:
                    message += (' (the template changed without a new revision in the index: its cached copy is '
                                'stale; set no_cache, or remove it from the cache directory)')
                raise SourceError('virt-builder could not build %s: %s' % (entry.name, message or 'exit %d'
                                                                           % returncode))

    def _tar_out(self, disk: str, warnings: t.List[str]) -> '_TarOut':
        """The whole tree of the guest in `disk`, as a tar stream from guestfish (one appliance launch)."""
        argv = [require_tool('guestfish'), '--ro', '--format=raw', '--add', disk, '--inspector', 'tar-out', '/', '-']
        argv += list(TAR_OUT_OPTIONS)
        Progress(self._options.progress_cb).status('Extracting rootfs')
        stderr = tempfile.TemporaryFile(dir=self._work_dir)
        self.appliance_launches += 1
        self._process = subprocess.Popen(argv, env=self._environment(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=stderr, preexec_fn=die_with_parent)
        return _TarOut(self, stderr, disk, warnings)

    def _stop(self) -> None:
        """End a tool still running (the applier stopped reading, or the run is being torn down)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def _finished_tar_out(self, stderr: t.IO[bytes], disk: str, warnings: t.List[str]) -> None:
        """guestfish has written all it will: fail with its own message, or keep what it said as warnings."""
        process = self._process
        if process is None:
            return
        returncode = process.wait()
        self._process = None
        stderr.seek(0)
        message = stderr_text(stderr.read(), (self._options.source_url,))
        stderr.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(disk)
        if returncode != 0:
            raise SourceError('guestfish could not copy the filesystems out of template %s: %s'
                              % (self.template, message or 'exit %d' % returncode))
        warnings.extend('guestfish: %s' % line for line in message.splitlines() if line.strip())

    # -- what the tools are given --------------------------------------------------------------

    def _environment(self) -> t.Dict[str, str]:
        """Our environment; with virt_builder_source, virt-builder sees that repository and no other.

        --source would only add it to the configured ones, which may need the network.
        """
        environment = dict(os.environ)
        if self._options.source_url:
            environment['VIRT_BUILDER_DIRS'] = self._repository_config()
            environment['XDG_CONFIG_HOME'] = os.path.join(self._repository_config(), 'no-user-config')
        return environment

    def _repository_config(self) -> str:
        """A directory holding virt-builder/repos.d/virt-bootstrap.conf that names virt_builder_source only.

        Kept in the cache directory, one per URL, so a killed run leaves nothing behind; a temporary one
        (removed by close()) with no_cache.
        """
        if self._config_dir is not None:
            return self._config_dir
        url = t.cast(str, self._options.source_url)
        if '\n' in url or '\r' in url:
            raise SourceError('virt_builder_source must be one URL, without line breaks')
        content = '[virt-bootstrap]\nuri=%s\n' % url
        if self._options.no_cache:
            # Not in dest's bookkeeping: it is made while deciding, before the lock whose recovery sweeps build-*.
            config_dir = tempfile.mkdtemp(prefix='virt-bootstrap-repos-')
            self._config_dir_is_temporary = True
        else:
            key = sha256_digest(url.encode('utf-8')).split(':')[1][:16]
            config_dir = os.path.join(self._cache_root(), 'virt-builder-repositories', key)
        repos = os.path.join(config_dir, 'virt-builder', 'repos.d')
        os.makedirs(repos, 0o700, exist_ok=True)
        conf = os.path.join(repos, 'virt-bootstrap.conf')
        # Written whole under a name of its own, then renamed: a run reading it at the same time sees one or the other.
        fd, temporary = tempfile.mkstemp(dir=repos, prefix='.conf-')
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as stream:
                stream.write(content)
            os.replace(temporary, conf)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._config_dir = config_dir
        return config_dir

    def _cache_root(self) -> str:
        from ansible_collections.virt.bootstrap.plugins.module_utils._registry.cache import default_cache_dir
        return self._options.cache_dir or default_cache_dir()

    def _cache_args(self) -> t.List[str]:
        if self._options.no_cache:
            return ['--no-cache']
        cache = os.path.join(self._cache_root(), 'virt-builder')
        os.makedirs(cache, 0o700, exist_ok=True)
        return ['--cache', cache]

    def _signature_args(self) -> t.List[str]:
        return ['--no-check-signature'] if self._options.no_check_signature else []


class _TarOut:
    """guestfish's tar stream; its end is checked against guestfish's exit status before the applier sees it,
    so a failure shows guestfish's own message rather than a truncated tar."""

    def __init__(self, source: VirtBuilderSource, stderr: t.IO[bytes], disk: str, warnings: t.List[str]) -> None:
        self._source = source
        self._stderr = stderr
        self._disk = disk
        self._warnings = warnings
        self._stream = t.cast(subprocess.Popen, source._process).stdout

    def read(self, amount: int = -1) -> bytes:
        data = t.cast(t.IO[bytes], self._stream).read(amount)
        if not data and amount:
            self._source._finished_tar_out(self._stderr, self._disk, self._warnings)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._source._stop()
        if not self._stderr.closed:
            self._stderr.close()
        self._source._discard_work_dir()

    def __enter__(self) -> '_TarOut':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


def _size_hint(entry: TemplateEntry) -> t.Optional[t.Tuple[int, int]]:
    """(bytes, entries) the template's tree holds at most: its disk's size, and an inode for each 4 KiB of it."""
    try:
        disk_size = int(entry.fields.get('size', ''))
    except ValueError:
        return None
    return (disk_size, disk_size // 4096) if disk_size > 0 else None


_STEP_RE = re.compile(rb'^\[\s*[0-9.]+\]\s+(.*?)\s*$')


def _build_step(line: bytes) -> str:
    """The step of a virt-builder progress line ('[   3.2] Uncompressing'), or ''."""
    match = _STEP_RE.match(line)
    return match.group(1).decode('utf-8', 'replace') if match else ''


def _read_index(uri: str) -> str:
    """The text of the index at `uri` (file://, http:// or https://)."""
    parsed = urllib.parse.urlsplit(uri)
    shown = without_userinfo(uri)
    try:
        if parsed.scheme == 'file':
            with open(urllib.parse.unquote(parsed.path), 'rb') as stream:
                data = stream.read(MAX_INDEX_SIZE + 1)
        elif parsed.scheme in ('http', 'https'):
            from ansible.module_utils.urls import open_url
            with contextlib.closing(open_url(uri, timeout=60)) as response:
                data = response.read(MAX_INDEX_SIZE + 1)
        else:
            raise SourceError('virt-builder index %s: only file://, http:// and https:// indexes can be read' % shown)
    except OSError as exc:
        raise SourceError('cannot read virt-builder index %s: %s' % (shown, exc.strerror or exc))
    except BootstrapError:
        raise
    except Exception as exc:  # open_url raises HTTP and connection errors of several kinds
        raise SourceError('cannot read virt-builder index %s: %s' % (shown, stderr_text(str(exc).encode(), (uri,))))
    if len(data) > MAX_INDEX_SIZE:
        raise SourceError('virt-builder index %s is more than %d bytes' % (shown, MAX_INDEX_SIZE))
    return data.decode('utf-8', 'replace')
