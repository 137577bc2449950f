"""utc_iso writes what datetime.isoformat writes, rounding included."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from ivr.timestamps import utc_iso


def test_the_text_is_datetimes_to_the_second_and_to_the_millisecond() -> None:
    rng = random.Random(5)
    now = time.time()
    # Anywhere in time, around now, and with few decimals (where rounding decides the digit).
    stamps = [rng.uniform(0, 4e9) for _ in range(5000)] + [
        now + rng.random() for _ in range(5000)] + [
        round(rng.uniform(1e9, 2e9), rng.randint(0, 7)) for _ in range(5000)] + [
        1795436345.9995, 1795436345.9999996, 0.0, 1e9]
    for stamp in stamps:
        moment = datetime.fromtimestamp(stamp, UTC)
        assert utc_iso(stamp) == moment.isoformat(timespec="seconds"), stamp
        assert utc_iso(stamp, milliseconds=True) == moment.isoformat(
            timespec="milliseconds"), stamp
