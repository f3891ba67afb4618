"""Puts raw bytes for queue_consumer.cpp (C++)."""

import sys
import time

import shmipc

name = sys.argv[1] if len(sys.argv) > 1 else "example_results"
for _ in range(200):  # the C++ consumer creates the queue
    try:
        q = shmipc.MessageQueue.attach(name)
        break
    except FileNotFoundError:
        time.sleep(0.05)
with q:
    for i in range(10):
        q.put_bytes(f"result {i}".encode(), timeout=30)
    q.put_bytes(b"stop")
print("producer: 10 messages")
