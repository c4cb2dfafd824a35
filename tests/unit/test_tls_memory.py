"""What a TLS stream's memory BIOs keep once a connection goes idle: OpenSSL's memory BIO
never shrinks its buffer by itself, so `TlsStream` gives both buffers back after the first
exchange (`tls_stream.release_buffer`). The buffers are read here with OpenSSL's own
BIO_get_mem_ptr, through the same libcrypto `_ssl` uses."""

from __future__ import annotations

import _ssl
import ctypes
import ssl

import pytest

from bench.procstat import malloc_bytes
from dataplane.tls_stream import release_buffer
from tests.unit.test_tls_stream import Pair

pytestmark = pytest.mark.unit

_libcrypto = ctypes.PyDLL(_ssl.__file__)
_ctrl = _libcrypto.BIO_ctrl
_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
_ctrl.restype = ctypes.c_long
_GET_BUF_MEM_PTR = 115


class _BufMem(ctypes.Structure):
    _fields_ = [
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    ]


def capacity(bio: ssl.MemoryBIO) -> int:
    """Bytes of buffer the BIO holds allocated, whatever it has pending."""
    bio_pointer = ctypes.c_void_p.from_address(id(bio) + object.__basicsize__).value
    buf = ctypes.c_void_p()
    assert _ctrl(bio_pointer, _GET_BUF_MEM_PTR, 0, ctypes.byref(buf)) == 1
    assert buf.value
    return int(_BufMem.from_address(buf.value).max)


REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n"
ANSWER = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"


def test_the_release_is_on_with_this_python_and_openssl() -> None:
    """CPython with a shared libcrypto (this machine, the image): the checks pass, so the
    release is not silently off."""
    assert release_buffer is not None


def test_a_drained_bio_gives_its_buffer_back_and_still_works() -> None:
    assert release_buffer is not None
    bio = ssl.MemoryBIO()
    bio.write(bytes(256 * 1024))
    bio.read()
    assert capacity(bio) >= 256 * 1024  # drained, still allocated
    before = malloc_bytes()
    release_buffer(bio)
    assert before - malloc_bytes() >= 256 * 1024
    assert capacity(bio) == 0
    bio.write(b"after")
    assert bio.read() == b"after"
    assert 0 < capacity(bio) < 64


def test_a_bio_that_holds_data_is_left_alone() -> None:
    assert release_buffer is not None
    bio = ssl.MemoryBIO()
    bio.write(b"pending")
    held = capacity(bio)
    release_buffer(bio)
    assert capacity(bio) == held
    assert bio.read() == b"pending"


async def test_after_the_first_exchange_neither_bio_keeps_a_buffer() -> None:
    """The ClientHello, the server's flight, the request and the answer leave nothing
    allocated in the BIOs of an idle connection; later traffic works as before."""
    pair = Pair()
    pair.handshake()
    stream = pair.stream
    assert capacity(stream.outgoing) > 500  # the server's flight, until the first write
    pair.client.write(REQUEST)
    pair.to_server(pair.c_out.read())
    assert bytes(pair.app.data) == REQUEST
    assert capacity(stream.incoming) == 0
    pair.app.transport.write(ANSWER)
    assert capacity(stream.outgoing) == 0
    assert pair.client_read() == ANSWER
    pair.client.write(b"later")
    pair.to_server(pair.c_out.read())
    pair.app.transport.write(b"back")
    assert pair.client_read() == b"back"
    assert bytes(pair.app.data) == REQUEST + b"later"
    # Only the first exchange is released: later records keep theirs (one record at most).
    assert capacity(stream.incoming) > 0 and capacity(stream.outgoing) > 0


async def test_a_request_in_the_same_read_as_the_clients_finished_is_released_too() -> None:
    pair = Pair()
    for _ in range(10):
        try:
            pair.client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pair.to_server(pair.c_out.read())
            pair.to_client()
    pair.client.write(REQUEST)
    pair.to_server(pair.c_out.read())  # the client's Finished and the request, one read
    assert pair.app.events == ["made"]
    assert bytes(pair.app.data) == REQUEST
    assert capacity(pair.stream.incoming) == 0
