"""TorchRuntime: the strategies' Runtime verbs on real torch work (docs/torch_runtime.md).

Importing this package imports torch; nothing else in `simulator` imports it.
"""
from .clock import Driver, RealClock, RealSignal

__all__ = ["Driver", "RealClock", "RealSignal", "TorchRuntime"]


def __getattr__(name):
    if name == "TorchRuntime":
        from .runtime import TorchRuntime
        return TorchRuntime
    raise AttributeError(name)
