"""The share of small gRPC requests frontend processes pass to the model process undecoded
(channel.ForwardBalance), in process with a clock and a wait meter of the test's own: it falls while
the model process's event loop is busy, rises while it has time to spare, and each change reaches
the frontends once."""
from __future__ import annotations

from naiad.daemon.channel import ForwardBalance

WINDOW = ForwardBalance.WINDOW
STEPS = ForwardBalance.STEPS


class Meter:
    def __init__(self):
        self.now = 100.0
        self.waited = 0.0

    def spend(self, seconds: float, busy: float) -> None:
        """`seconds` pass, the loop busy for `busy` of them."""
        self.now += seconds
        self.waited += seconds * (1 - busy)


def balance_with_meter() -> tuple[ForwardBalance, Meter, list[float]]:
    meter, sent = Meter(), []
    return ForwardBalance(sent.append, clock=lambda: meter.now, waited=lambda: meter.waited), meter, sent


def test_a_busy_model_process_gets_fewer_requests_to_decode():
    balance, meter, sent = balance_with_meter()
    for _ in range(3):
        meter.spend(WINDOW, busy=0.99)
        balance.tick()
    assert sent == [(STEPS - 1) / STEPS, (STEPS - 2) / STEPS, (STEPS - 3) / STEPS]
    for _ in range(STEPS + 5):
        meter.spend(WINDOW, busy=0.99)
        balance.tick()
    assert balance.share == 0 and sent[-1] == 0 and sent.count(0) == 1


def test_time_to_spare_brings_the_share_back_up_to_all():
    balance, meter, sent = balance_with_meter()
    meter.spend(WINDOW, busy=1.0)
    balance.tick()
    for _ in range(5):
        meter.spend(WINDOW, busy=0.5)
        balance.tick()
    assert sent == [(STEPS - 1) / STEPS, 1.0]   # nothing more to say once all go undecoded
    assert balance.share == 1.0


def test_the_load_is_measured_over_a_whole_window():
    balance, meter, sent = balance_with_meter()
    for _ in range(10):
        meter.spend(WINDOW / 20, busy=1.0)
        balance.tick()
    assert sent == []   # half a window: not yet measured
    meter.spend(WINDOW / 2, busy=1.0)
    balance.tick()
    assert sent == [(STEPS - 1) / STEPS]
