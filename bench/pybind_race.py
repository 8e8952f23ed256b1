#!/usr/bin/env python3
"""Reproducer: pybind11 records an object made by a factory binding that
releases the GIL (py::init(lambda) with call_guard<gil_scoped_release>) in
its instance table without the GIL (pybind11#5473; torch's own bindings were
changed in 2.7, pytorch#143598). While another thread makes and drops
pybind11 objects with the GIL (here torch.futures.Future; in training, every
collective's Work and Future), the table is corrupted and the process aborts:

    terminate called after throwing an instance of 'std::runtime_error'
      what():  pybind11_object_dealloc(): Tried to deallocate unregistered instance!

    python3 bench/pybind_race.py KIND SECONDS

A second thread makes KIND over and over for SECONDS while the main thread
churns Futures. Prints "KIND ok: N made" and exits 0, or aborts (exit 134).

    store          TCPStore(...) on the thread: aborts on torch 2.6, not 1.13
                   (whose constructor keeps the GIL)
    gloo-timeout   ProcessGroupGloo(store, rank, size, timeout) on the
                   thread: aborts on torch 1.13 and 2.6
    sdk-gloo       bulsajo.torch._direct_gloo_group (the Options overload,
                   a plain constructor) on the thread
    sdk-store      bulsajo.torch._StoreMaker: the thread asks, the churning
                   thread makes the store between its churns (as the SDK's
                   training thread does between steps)

Seen on 2026-12-07 (2-core EPYC, 30 s runs): on torch 2.6 store failed 3 of 5
(2 aborts, 1 hang), gloo-timeout aborted 2 of 5, sdk-gloo and sdk-store passed
5 of 5; on 1.13 gloo-timeout aborted 2 of 3, store, sdk-gloo and sdk-store
passed 3 of 3.
"""
import datetime
import os
import sys
import threading
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

KINDS = ("store", "gloo-timeout", "sdk-gloo", "sdk-store")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in KINDS:
        print("usage: pybind_race.py {%s} SECONDS" % "|".join(KINDS), file=sys.stderr)
        return 2
    try:
        secs = float(sys.argv[2])
    except ValueError:
        print("usage: pybind_race.py {%s} SECONDS" % "|".join(KINDS), file=sys.stderr)
        return 2
    kind = sys.argv[1]
    import bulsajo.torch as bt

    timeout = datetime.timedelta(seconds=5)
    hs = dist.HashStore()
    maker = bt._StoreMaker()  # owned by this (the main) thread
    stop = threading.Event()
    made = [0]

    kw = {"wait_for_workers": False}
    if bt._HAS_USE_LIBUV and bt._libuv_missing():
        kw["use_libuv"] = False

    def store():  # not the SDK's _tcp_store: on 1.x it keeps server stores 5 s
        return dist.TCPStore("127.0.0.1", 0, None, True, timeout, **kw)

    def make_one(n):
        if kind == "store":
            return store()
        if kind == "gloo-timeout":
            return dist.ProcessGroupGloo(dist.PrefixStore(str(n), hs), 0, 1, timeout)
        if kind == "sdk-gloo":
            return bt._direct_gloo_group(hs, 0, 1, timeout, prefix=str(n))
        return maker.make(store, stop.is_set, 0)

    def maker_thread():
        n = 0
        try:
            while not stop.is_set():
                x = make_one(n)
                with bt._QUIET:
                    del x
                n += 1
        except Exception as e:  # a store asked for after the end
            if not stop.is_set():
                print("error: %r" % (e,), file=sys.stderr)
        made[0] = n

    t = threading.Thread(target=maker_thread)
    t.start()
    end = time.time() + secs
    while time.time() < end:
        fs = [torch.futures.Future() for _ in range(64)]
        del fs
        maker.serve()
    stop.set()
    maker.close()
    t.join()
    print("%s ok: %d made in %.0f s" % (kind, made[0], secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
