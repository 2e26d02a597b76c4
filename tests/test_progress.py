"""Progress output in a log file: periodic plain lines, never silent for a whole epoch."""

import io

from bitvote.train.progress import Progress


def test_log_file_gets_periodic_lines():
    out = io.StringIO()
    p = Progress(epochs=2, steps=10, stream=out, log_every=0.0)
    for b in range(1, 4):
        p.update(0, b, loss=1.5, acc=0.25, ips=100.0, eta_s=65.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch 1/2 step 3/10 loss 1.500 acc 25.0%")
    assert "\r" not in out.getvalue() and "ETA 1:05" in lines[0]


def test_log_file_rate_limited():
    out = io.StringIO()
    p = Progress(epochs=1, steps=10, stream=out, log_every=3600.0)
    p.update(0, 1, 1.0, 0.5, 10.0, 5.0)
    assert out.getvalue() == ""
