"""The SDK's directly built gloo group and its installation as c10d's
default group, for the bench scripts that form a group in a thread while
training goes on (bulsajo.torch does so for a live grow)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from bulsajo.torch import _direct_gloo_group, _install_default  # noqa: E402


def direct_gloo_group(store, prefix, rank, world, timeout):
    return _direct_gloo_group(store, rank, world, timeout, prefix=prefix)


install_default = _install_default
