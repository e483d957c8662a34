"""Loaded by every Python process the test suite starts: no connection leaves this machine.

Connections to loopback (127.0.0.0/8, ::1) and Unix sockets still work, so the tests' own HTTP server and
torchrun's rendezvous do; anything else fails at once, as on a machine with no network.
"""

import ipaddress
import os
import socket

if os.environ.get("LDFSAM_TEST_NO_NETWORK") == "1":
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def _is_local(address) -> bool:
        if not isinstance(address, tuple):
            return True  # AF_UNIX path
        host = address[0]
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def _record(what) -> None:
        # Tests that must prove "no attempt at all" (not merely "no success") read this log.
        log = os.environ.get("LDFSAM_TEST_NETLOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{what!r}\n")

    def _guarded_connect(self, address):
        if not _is_local(address):
            _record(address)
            raise OSError(101, f"network disabled in LDFSAM tests: {address!r}")
        return _connect(self, address)

    def _guarded_connect_ex(self, address):
        if not _is_local(address):
            _record(address)
            return 101
        return _connect_ex(self, address)

    def _guarded_getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_local((name, 0)):
            _record(name)
            raise socket.gaierror(socket.EAI_NONAME, f"network disabled in LDFSAM tests: {name}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
