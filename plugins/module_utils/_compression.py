# -*- coding: utf-8 -*-
# Copyright: virt.bootstrap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This file is PRIVATE to the virt.bootstrap collection and may change at any time; do not import it
# from elsewhere. The public Python API is bootstrap.py (bootstrap, build_request, run) and errors.py.
"""Streaming readers: hash what passes, detect compression by magic bytes, cap the size."""

from __future__ import annotations

import bz2
import lzma
import os
import queue
import re
import selectors
import shutil
import subprocess
import threading
import typing as t
import zlib

from ansible_collections.virt.bootstrap.plugins.module_utils.errors import LayerError, SizeLimitExceeded

_MAGIC = (
    (b'\x1f\x8b', 'gzip'),
    (b'\xfd7zXZ\x00', 'xz'),
    (b'BZh', 'bzip2'),
    (b'\x28\xb5\x2f\xfd', 'zstd'),
)
MAGIC_LENGTH = 6


def detect_compression(head: bytes) -> str:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return 'none'


class LimitedReader:
    """Counts decompressed bytes against a shared budget; raises once it is spent."""

    def __init__(self, stream: t.Any, budget: 'SizeBudget') -> None:
        self._stream = stream
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._budget.spend(len(data))
        return data

    def readable(self) -> bool:
        return True


class SizeBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, amount: int) -> None:
        self.used += amount
        if self.used > self.limit:
            raise SizeLimitExceeded(
                'layers expand to more than max_size (%d bytes); raise max_size if this image is really that big'
                % self.limit)


def read_up_to(stream: t.Any, size: int) -> bytes:
    """`size` bytes, or fewer only at the end: a reader may return less than asked for at any read."""
    data = b''
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# -- decoders: compressed bytes in, bounded pieces of output out -------------------------------------

# No piece of output is larger: a few bytes of input can expand to gigabytes.
OUTPUT_CHUNK = 1 << 20
# What is read from the blob at once.
INPUT_CHUNK = 1 << 18
_TRUNCATED = 'Compressed file ended before the end-of-stream marker was reached'


class _Damaged(Exception):
    """The compressed data is damaged (a decoder's own exception, whatever the library raised)."""


class _Decoder:
    """Turns the bytes of a compressed stream, as they come, into pieces of at most OUTPUT_CHUNK bytes."""

    def feed(self, data: bytes) -> t.Iterator[bytes]:
        raise NotImplementedError

    def end(self) -> t.Iterator[bytes]:
        """The input is over: what output is left, then _Damaged if the stream was cut short."""
        return iter(())

    def close(self) -> None:
        """Let go of what the decoder holds (a process), also when it stopped early."""


class _Plain(_Decoder):
    def feed(self, data: bytes) -> t.Iterator[bytes]:
        yield data


class _Gzip(_Decoder):
    """gzip members one after another, zero bytes allowed between and after them (as GzipFile reads).

    zlib checks each member's header, CRC and length itself (wbits 31); python-isal's igzip, when it is
    installed, inflates the same way about twice as fast.
    """

    def __init__(self) -> None:
        self._module = inflate_module()
        self._member: t.Any = None
        self._started = False

    def feed(self, data: bytes) -> t.Iterator[bytes]:
        while data:
            if self._member is None:
                if self._started:
                    data = data.lstrip(b'\0')  # padding after a member
                    if not data:
                        return
                self._member = self._module.decompressobj(31)
                self._started = True
            member = self._member
            while True:
                try:
                    output = member.decompress(data, OUTPUT_CHUNK)
                except Exception as exc:  # zlib.error and isal's IsalError share no base class but Exception
                    raise _Damaged(_gzip_complaint(exc)) from exc
                if output:
                    yield output
                data = member.unconsumed_tail
                if member.eof or (not data and len(output) < OUTPUT_CHUNK):
                    break
            if not member.eof:
                return
            data, self._member = member.unused_data, None

    def end(self) -> t.Iterator[bytes]:
        if self._member is not None:
            raise _Damaged(_TRUNCATED)
        return iter(())


def _gzip_complaint(exc: Exception) -> str:
    """What zlib or igzip said, in GzipFile's words where they mean the same."""
    message = str(exc)
    if 'incorrect data check' in message or 'Incorrect checksum' in message:
        return 'CRC check failed'
    if 'incorrect length check' in message:
        return 'Incorrect length of data produced'
    return message


class _Streams(_Decoder):
    """xz or bzip2 streams one after another; what follows them and is no stream is ignored, as
    LZMAFile and BZ2File do."""

    def __init__(self, factory: t.Callable[[], t.Any], errors: t.Tuple[t.Type[BaseException], ...]) -> None:
        self._factory = factory
        self._errors = errors
        self._stream = factory()
        self._ignoring = False

    def feed(self, data: bytes) -> t.Iterator[bytes]:
        while data and not self._ignoring:
            stream = self._stream
            if stream is None:
                stream = self._stream = self._factory()
                try:
                    output = stream.decompress(data, OUTPUT_CHUNK)
                except self._errors:
                    self._ignoring, self._stream = True, None  # trailing data that is no stream
                    return
            else:
                output = self._decompress(stream, data)
            if output:
                yield output
            while not stream.eof and not stream.needs_input:
                output = self._decompress(stream, b'')
                if output:
                    yield output
            if not stream.eof:
                return
            data, self._stream = stream.unused_data, None

    def _decompress(self, stream: t.Any, data: bytes) -> bytes:
        try:
            return stream.decompress(data, OUTPUT_CHUNK)
        except (EOFError,) + self._errors as exc:
            raise _Damaged(str(exc) or type(exc).__name__) from exc

    def end(self) -> t.Iterator[bytes]:
        if self._stream is not None and not self._ignoring:
            raise _Damaged(_TRUNCATED)
        return iter(())


class _Zstd(_Decoder):
    """zstd frames one after another, decompressed by python-zstandard in small steps; a frame cut short is an error.

    zstandard's readers end quietly at a truncated frame, and its decompressobj has no output limit:
    a zstd block of a few bytes can expand to 128 KiB, so input goes in small pieces, and what one
    piece gives (up to 64 MiB) is handed on in pieces of OUTPUT_CHUNK.
    """

    _STEP = 2048

    def __init__(self) -> None:
        try:
            import zstandard
        except ImportError:
            raise LayerError('a zstd-compressed layer needs the zstd program or the Python package "zstandard" on the '
                             'managed host (Debian/Ubuntu: zstd or python3-zstandard; pip: zstandard)')
        self._context = zstandard.ZstdDecompressor()
        self._frame: t.Any = None

    def feed(self, data: bytes) -> t.Iterator[bytes]:
        view = memoryview(data)
        while view:
            piece, view = view[:self._STEP], view[self._STEP:]
            if self._frame is None:
                self._frame = self._context.decompressobj()
            try:
                output = self._frame.decompress(piece)
            except Exception as exc:  # zstandard.ZstdError, which needs zstandard to be named
                raise _Damaged(str(exc) or type(exc).__name__) from exc
            for start in range(0, len(output), OUTPUT_CHUNK):
                yield output[start:start + OUTPUT_CHUNK]
            if self._frame.eof:
                # The next frame starts with what this one did not use.
                view = memoryview(self._frame.unused_data + bytes(view))
                self._frame = None

    def end(self) -> t.Iterator[bytes]:
        if self._frame is not None:
            raise _Damaged('zstd data ends in the middle of a frame')
        return iter(())


_STDIN_NAME = re.compile(r'^(zstd: )?/\*stdin\*\\? ?: ')


class _ZstdProgram(_Decoder):
    """zstd frames decompressed by the zstd program, as tar -I zstd does: fast, and bounded by its pipe.

    Input and output go through non-blocking pipes, so neither side waits for the other; a frame cut
    short or damaged makes the program fail, which is reported with what it said.
    """

    def __init__(self, program: str) -> None:
        # A session of its own: Ctrl-C at a terminal is ours to handle (close() kills it); if this process
        # is killed, the program sees the end of its input and exits.
        self._process = subprocess.Popen([program, '-d', '-c', '-q'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        self._stdin = t.cast(t.IO[bytes], self._process.stdin).fileno()
        self._stdout = t.cast(t.IO[bytes], self._process.stdout).fileno()
        os.set_blocking(self._stdin, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)

    def feed(self, data: bytes) -> t.Iterator[bytes]:
        view = memoryview(data)
        self._selector.register(self._stdin, selectors.EVENT_WRITE)
        try:
            while view:
                for key, _events in self._selector.select():
                    if key.fd == self._stdin:
                        view = view[self._write(view):]
                    else:
                        output = os.read(self._stdout, OUTPUT_CHUNK)
                        if not output:
                            raise _Damaged(self._complaint())  # it stopped before its input did
                        yield output
        finally:
            self._selector.unregister(self._stdin)

    def _write(self, view: memoryview) -> int:
        try:
            return os.write(self._stdin, view)
        except BlockingIOError:
            return 0
        except BrokenPipeError:
            raise _Damaged(self._complaint())

    def end(self) -> t.Iterator[bytes]:
        t.cast(t.IO[bytes], self._process.stdin).close()
        while True:
            output = os.read(self._stdout, OUTPUT_CHUNK)
            if not output:
                break
            yield output
        if self._process.wait() != 0:
            raise _Damaged(self._complaint())

    def _complaint(self) -> str:
        self._process.kill()
        self._process.wait()
        said = t.cast(t.IO[bytes], self._process.stderr).read(4096).decode('utf-8', 'replace').strip()
        last = said.splitlines()[-1] if said else 'exit %d' % self._process.returncode
        # "zstd: /*stdin*\\: unsupported format" says the program and its input: keep what went wrong.
        return 'zstd: %s' % _STDIN_NAME.sub('', last).strip(' :')

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
        self._selector.close()


def inflate_module() -> t.Any:
    """python-isal's zlib when it is installed (an optional speed-up, never needed), else zlib."""
    try:
        from isal import isal_zlib  # pylint: disable=import-outside-toplevel
    except ImportError:
        return zlib
    return isal_zlib


def _decoder_for(compression: str) -> _Decoder:
    if compression == 'gzip':
        return _Gzip()
    if compression == 'xz':
        return _Streams(lzma.LZMADecompressor, (lzma.LZMAError,))
    if compression == 'bzip2':
        return _Streams(bz2.BZ2Decompressor, (OSError, ValueError))
    if compression == 'zstd':
        program = shutil.which('zstd')
        return _ZstdProgram(program) if program else _Zstd()
    return _Plain()


# -- the uncompressed data of a layer ----------------------------------------------------------------

_END = object()
_CREDIT = object()
_STOP = object()
# Raw pieces handed to the decoding thread and not yet decoded; pieces of output waiting to be read.
_INPUT_AHEAD = 2
_OUTPUT_AHEAD = 4
_POLL_SECONDS = 0.05


class LayerData:
    """The uncompressed bytes of a layer blob, read in order; hashes of both the blob and its data.

    The blob is read on the caller's thread only. With `threaded`, a second thread decompresses and
    hashes while the caller applies what came before (zlib, lzma, bz2, zstandard and hashlib let go
    of the GIL while they work); memory stays bounded by the pieces in flight. Damaged compressed data
    raises LayerError when it is read; errors of the blob itself pass through as they are: a failing
    disk or connection is not damaged data.
    """

    def __init__(self, blob: t.Any, blob_hasher: t.Any = None, data_hasher: t.Any = None,
                 threaded: bool = False) -> None:
        self._blob = blob
        self.blob_hasher = blob_hasher
        self.data_hasher = data_hasher
        self.bytes_read = 0
        first = read_up_to(blob, INPUT_CHUNK)
        self.bytes_read = len(first)
        self.compression = detect_compression(first[:MAGIC_LENGTH])
        self._decoder = _decoder_for(self.compression)
        self._first: t.Optional[bytes] = first
        self._blob_ended = False
        self._chunk = b''
        self._offset = 0
        self._done = False
        self._worker: t.Optional[threading.Thread] = None
        if threaded:
            self._inputs: 'queue.Queue[t.Any]' = queue.Queue()
            self._outputs: 'queue.Queue[t.Any]' = queue.Queue(_OUTPUT_AHEAD)
            self._stopping = threading.Event()
            self._credit = _INPUT_AHEAD
            self._worker = threading.Thread(target=self._decode_in_thread, name='layer-decode', daemon=True)
            self._worker.start()
        else:
            self._pieces = self._decoded(self._blob_pieces())

    def read(self, size: int = -1) -> bytes:
        while self._offset >= len(self._chunk):
            if self._done:
                return b''
            self._chunk, self._offset = self._next_piece(), 0
        if size is None or size < 0 or (self._offset == 0 and size >= len(self._chunk)):
            data, self._chunk, self._offset = self._chunk[self._offset:], b'', 0
            return data
        start = self._offset
        self._offset = min(start + size, len(self._chunk))
        return self._chunk[start:self._offset]

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end, so that both hashes cover everything and a cut-short stream is noticed."""
        self._chunk, self._offset = b'', 0
        while not self._done:
            self._next_piece()

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            self._stop(worker)
        self._decoder.close()

    def _stop(self, worker: threading.Thread) -> None:
        self._stopping.set()
        self._inputs.put(_STOP)
        while worker.is_alive():
            try:
                self._outputs.get(timeout=_POLL_SECONDS)  # a worker waiting to hand over a piece sees the stop
            except queue.Empty:
                pass
        worker.join()

    def __enter__(self) -> 'LayerData':
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    # -- on the caller's thread ----------------------------------------------------------------------

    def _next_piece(self) -> bytes:
        """The next piece of output (b'' when there was none), setting _done at the end."""
        if self._worker is None:
            piece = next(self._pieces, None)
            if piece is None:
                self._done = True
                return b''
            return piece
        while True:
            self._send_input()
            item = self._outputs.get()
            if item is _CREDIT:
                self._credit += 1
            elif item is _END:
                self._done = True
                return b''
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                return t.cast(bytes, item)

    def _send_input(self) -> None:
        while self._credit and not self._blob_ended:
            piece = self._read_blob()
            self._credit -= 1
            self._inputs.put(piece if piece else _END)

    def _read_blob(self) -> bytes:
        """The next piece of the blob; b'' (once) at its end."""
        if self._first is not None:
            piece, self._first = self._first, None
        else:
            piece = self._blob.read(INPUT_CHUNK)
            self.bytes_read += len(piece)
        if not piece:
            self._blob_ended = True
        return piece

    def _blob_pieces(self) -> t.Iterator[bytes]:
        while True:
            piece = self._read_blob()
            if not piece:
                return
            yield piece

    # -- on either thread ----------------------------------------------------------------------------

    def _decoded(self, pieces: t.Iterator[bytes]) -> t.Iterator[bytes]:
        try:
            for piece in pieces:
                if self.blob_hasher is not None:
                    self.blob_hasher.update(piece)
                for output in self._decoder.feed(piece):
                    if self.data_hasher is not None:
                        self.data_hasher.update(output)
                    yield output
            for output in self._decoder.end():
                if self.data_hasher is not None:
                    self.data_hasher.update(output)
                yield output
        except _Damaged as exc:
            raise LayerError('corrupt or truncated data (%s): %s' % (self.compression, exc)) from exc

    # -- on the decoding thread ----------------------------------------------------------------------

    def _decode_in_thread(self) -> None:
        try:
            for output in self._decoded(self._thread_inputs()):
                if not self._hand_over(output):
                    return
        except BaseException as exc:  # the caller's thread raises it when it reads this far
            self._hand_over(exc)
            return
        self._hand_over(_END)

    def _thread_inputs(self) -> t.Iterator[bytes]:
        while True:
            try:
                # A signal that interrupts the caller's thread inside a queue operation can lose the
                # wake-up meant for this one: look at the stop flag now and then, not only the queue.
                item = self._inputs.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if item is _END or item is _STOP:
                return
            yield item
            # Asked for the next piece: this one is decoded, the caller may send another.
            if not self._hand_over(_CREDIT):
                return

    def _hand_over(self, item: t.Any) -> bool:
        while not self._stopping.is_set():
            try:
                self._outputs.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
