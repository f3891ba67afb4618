"""Sends a Buffer and an array to buffer_receiver.cpp (C++) over a Unix socket."""

import socket
import sys
import time

import numpy as np

import shmipc

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/shmipc-example-py.sock"
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    for _ in range(200):  # the C++ receiver listens
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
    buf = shmipc.Buffer.from_bytes(b"x" * 1000)
    shmipc.send(s, buf, meta={"frame": 7})  # buf is read-only here now
    shmipc.send_array(s, np.arange(100, dtype=np.int64))
print("sender: sent a buffer and an array")
