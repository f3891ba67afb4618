"""Receives the image buffer_sender.cpp (C++) sends over a Unix socket."""

import os
import socket
import sys

import shmipc

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/shmipc-example.sock"
if os.path.exists(path):
    os.unlink(path)
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(30)
    conn, _ = srv.accept()
    with conn:
        img = shmipc.recv_array(conn, timeout=30)  # float32 (480, 640), zero copy
    os.unlink(path)
assert img.shape == (480, 640) and img[0, 639] == 639
print(f"receiver: {img.dtype} {img.shape}, mean {img.mean():.1f}")
