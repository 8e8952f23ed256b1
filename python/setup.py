# The SDK is standard library (plus torch for bulsajo.torch): a plain
# setup.py, with no pyproject build-system table, lets `pip install ./python`
# build with the setuptools already installed, offline (no isolated build
# environment to download).
from setuptools import setup

setup(
    name="bulsajo",
    version="0.1.0",
    description="Training-side SDK for bulsajo, a fault-tolerant drop-in launcher for torchrun",
    packages=["bulsajo"],
    python_requires=">=3.8",
)
