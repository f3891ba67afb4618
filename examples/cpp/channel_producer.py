"""Sends float64 arrays to channel_consumer.cpp (C++)."""

import sys
import time

import numpy as np

import shmipc

name = sys.argv[1] if len(sys.argv) > 1 else "example_arrays"
for _ in range(200):  # the C++ consumer creates the heap
    try:
        heap = shmipc.Heap.attach(name)
        break
    except FileNotFoundError:
        time.sleep(0.05)
with heap:
    ch = heap.channel("samples")
    for i in range(5):
        ch.send_array(np.full((100, 10), i, dtype=np.float64))
    ch.close()
print("producer: sent 5 arrays")
