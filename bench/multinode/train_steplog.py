"""examples/ddp_train.py, with a generation marker in its --sample-log lines
that tells processes apart under torchrun too.

ddp_train.py writes `GEN STEP RANK ids...` per step and rank, GEN being
$BULSAJO_GENERATION (new for every bulsajo generation), else
$TORCHELASTIC_RESTART_COUNT. Under torchrun a spare node that joins after a
fault starts at restart count 0, like the first round, so the benchmark needs
a marker that is new for every worker process: its pid. Under bulsajo the
generation number is kept (the SDK reports progress with it).
"""
import os
import runpy
import sys

os.environ.setdefault("BULSAJO_GENERATION", "pid%d" % os.getpid())
script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "ddp_train.py")
sys.argv = [script] + sys.argv[1:]
runpy.run_path(script, run_name="__main__")
