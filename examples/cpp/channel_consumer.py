"""Receives the frames of channel_producer.cpp (C++) as NumPy arrays, zero copy."""

import sys

import shmipc

name = sys.argv[1] if len(sys.argv) > 1 else "example_frames"
with shmipc.Heap.create(name, size=128 << 20) as heap:
    ch = heap.channel("camera0")
    n = 0
    while True:
        try:
            frame = ch.recv_array(timeout=30)  # uint8, (1080, 1920, 3)
        except EOFError:  # the producer closed the channel
            break
        assert frame.shape == (1080, 1920, 3) and frame[0, 0, 0] == n
        n += 1
        del frame  # frees the block in the heap
    ch.close()
    print(f"consumer: got {n} frames")
