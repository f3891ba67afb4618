"""Publishes a str, then an int32 array, for value_reader.cpp (C++)."""

import sys
import time

import numpy as np

import shmipc

name = sys.argv[1] if len(sys.argv) > 1 else "example_config"
for _ in range(200):  # the C++ reader creates the value
    try:
        v = shmipc.SharedValue.attach(name)
        break
    except FileNotFoundError:
        time.sleep(0.05)
with v:
    v.write("hello from Python")
    time.sleep(0.2)  # lets the reader see the text (a value holds the latest write only)
    v.write(np.arange(10, dtype=np.int32))
print("writer: 2 writes")
