"""Put on PYTHONPATH by a test: every process it starts, spawned study workers too, trains nothing but
raises, so that trials fail as a broken cause would make them."""

import study.objective


def _broken(*args, **kwargs):
    raise RuntimeError("broken on purpose")


study.objective.train = _broken
