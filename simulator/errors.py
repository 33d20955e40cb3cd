"""Errors a user can act on.

`ConfigError` is the one exception the CLI turns into a single line on stderr and a non-zero exit:
it names the file, the key (a dotted path) and what is wrong and allowed. Anything else escaping
the CLI is a bug in parasim, not a user error.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: `where` is the file (or 'argument'), `key` the dotted key path."""

    def __init__(self, where: str, key: str, message: str):
        self.where = where
        self.key = key
        self.message = message
        super().__init__(self.line())

    def line(self) -> str:
        loc = self.where or "<input>"
        if self.key:
            return f"{loc}: {self.key}: {self.message}"
        return f"{loc}: {self.message}"


class SimulationError(RuntimeError):
    """The simulated program cannot proceed (e.g. a deadlock); the message names the stuck parts."""


class DeadlockError(SimulationError):
    """The event queue emptied while launched ops were still pending."""


class PointError(ConfigError):
    """A configuration error that concerns one sweep point only (a model that does not fit, a TP
    degree that does not divide the heads); other points of the sweep can still run."""
