"""nemo_trt.serve.cancel_check: the server is asked at most once per interval; a yes sticks."""
from nemo_trt.serve.cancel_check import CancelCheck


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_asks_at_most_once_per_interval_and_not_before_the_first_interval():
    clock, asked = Clock(), []
    check = CancelCheck(lambda: asked.append(clock.now) or False, interval_s=0.01, clock=clock)
    for _ in range(50):  # a burst of tokens inside the first interval: no round trip at all
        assert check() is False
    assert asked == []
    clock.now += 0.01
    assert check() is False and check() is False
    assert asked == [100.01]
    clock.now += 0.005
    assert check() is False and asked == [100.01]
    clock.now += 0.006
    assert check() is False and asked == [100.01, 100.021]


def test_cancellation_is_seen_within_one_interval_and_remembered():
    clock, state, asked = Clock(), {"cancelled": False}, []

    def is_cancelled():
        asked.append(clock.now)
        return state["cancelled"]

    check = CancelCheck(is_cancelled, interval_s=0.01, clock=clock)
    clock.now += 0.02
    assert check() is False
    state["cancelled"] = True
    clock.now += 0.004
    assert check() is False  # not asked yet: within the interval
    clock.now += 0.006
    assert check() is True and check.cancelled
    calls = len(asked)
    state["cancelled"] = False  # never un-cancels, and stops asking
    clock.now += 1.0
    assert check() is True and len(asked) == calls
