"""Takes the jobs queue_producer.cpp (C++) puts."""

import sys

import shmipc

name = sys.argv[1] if len(sys.argv) > 1 else "example_jobs"
with shmipc.MessageQueue.create(name, maxsize=64, max_message_size=1024) as q:
    jobs = []
    while (msg := q.get_bytes(timeout=30)) != b"stop":
        jobs.append(msg.decode())
    print(f"consumer: {len(jobs)} jobs, last {jobs[-1]!r}")
