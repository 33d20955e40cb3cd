"""The SimPy internals the machine relies on for speed (simulator/streams.py `Finish`,
`env._now` in machine.py and segment.py). simpy is pinned in setup.cfg; if a new SimPy changes
any of these, this test fails before any result does."""
from __future__ import annotations

import simpy
from simpy.events import NORMAL

from simulator.streams import Finish


def test_simpy_is_the_pinned_version():
    assert simpy.__version__ == "4.1.2"


def test_env_now_is_the_private_now():
    env = simpy.Environment()
    env.timeout(2.5)
    env.run()
    assert env._now == env.now == 2.5


def test_a_finish_event_fires_like_a_timeout_at_its_delay():
    env = simpy.Environment()
    fired = []
    Finish(env, "act", lambda ev: fired.append((env.now, ev.act, ev.ok, ev.value)), 1.5)
    env.timeout(1.0).callbacks.append(lambda _e: fired.append((env.now, "timeout", True, None)))
    env.run()
    assert fired == [(1.0, "timeout", True, None), (1.5, "act", True, None)]
    assert NORMAL == 1          # the priority a Timeout gets: same-time order by creation
