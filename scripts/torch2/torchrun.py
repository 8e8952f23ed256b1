"""torchrun of the torch this interpreter imports: what its console script runs
(torch.distributed.run:main), usable where torch was built without libuv.

torch 2.x's TCPStore defaults to libuv, and Debian 13's 2.6 has none. Its
workers' stores honour USE_LIBUV=0, but torchrun's own static rendezvous
passes no use_libuv to its TCPStore and so fails even then. Here, and only
where torch lacks libuv, that store is made without it; nothing a worker
sees depends on it. Used by the environment-parity test and by bench/faults.py
(--torchrun) on torch 2.6:

    python3 scripts/torch2/torchrun.py --nproc_per_node=2 train.py
"""
import datetime
import functools
import sys

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import static_tcp_rendezvous as static

try:
    dist.TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=5), wait_for_workers=False)
except RuntimeError as e:
    if "libuv" not in str(e):
        raise
    static.TCPStore = functools.partial(static.TCPStore, use_libuv=False)

from torch.distributed.run import main  # noqa: E402

sys.argv[0] = "torchrun"
sys.exit(main())
