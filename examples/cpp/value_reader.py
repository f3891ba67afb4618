"""Reads the values value_writer.cpp (C++) publishes: ndarrays, then a str."""

import sys

import shmipc

name = sys.argv[1] if len(sys.argv) > 1 else "example_pose"
with shmipc.SharedValue.create(name, size=4096) as v:
    while True:
        v.wait(timeout=30)  # the next write (writes in between coalesce: a value is the latest)
        value = v.read()
        if isinstance(value, str):  # "done"
            break
        assert value.dtype == "float64" and value.shape == (3,)
    print(f"reader: version {v.version}, last value {value!r}")
