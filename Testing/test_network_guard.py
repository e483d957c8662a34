import socket
import subprocess
import sys

import pytest


def test_no_connection_leaves_the_machine():
    with pytest.raises(OSError):
        socket.create_connection(("93.184.216.34", 80), timeout=2)
    with pytest.raises(OSError):
        socket.getaddrinfo("example.com", 80)


def test_subprocesses_inherit_the_guard():
    code = "import socket\ntry:\n socket.create_connection(('1.1.1.1', 53), timeout=2)\n print('open')\n" \
           "except OSError:\n print('blocked')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "blocked"


def test_loopback_still_works():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()
