#!/usr/bin/env python3
"""Runs a training script, but first stops rank 0 of the first generation
with SIGSTOP, as a hang before the job's first step: it has its rank and has
done nothing else (in live mode it has not yet opened the generation's
store, which the other ranks wait for).

    stop_first.py SCRIPT [ARGS...]
"""

import os
import runpy
import signal
import sys

if (os.environ.get("RANK") == "0" and os.environ.get("BULSAJO_GENERATION") == "1"
        and os.environ.get("BULSAJO_JOIN") != "1"):
    print("stop_first: rank 0 stops itself before its first step", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)

script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
