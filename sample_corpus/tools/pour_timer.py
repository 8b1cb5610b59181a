"""A talking pour-over timer: prints each pour step when it is due.

Schedules are lists of ``(seconds, target_grams, instruction)``. The default is the
Brewbook V60 recipe for 15 g of coffee and 250 g of water.

Run it and start pouring when it says "0:00"::

    python pour_timer.py
    python pour_timer.py --scale 1.6   # the same recipe for 24 g / 400 g
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

Step = tuple[int, float, str]

V60_15G: list[Step] = [
    (0, 40, "Bloom: pour 40 g and swirl"),
    (45, 150, "Pour in spirals to 150 g"),
    (75, 250, "Pour in spirals to 250 g"),
    (105, 250, "Swirl gently to flatten the bed"),
    (180, 250, "Drawdown should be finishing now"),
]


def scale_schedule(steps: Iterable[Step], factor: float) -> list[Step]:
    """Scale every target weight by ``factor``; times stay the same."""
    return [(t, round(g * factor), text) for t, g, text in steps]


def fmt(seconds: int) -> str:
    """Format seconds as ``m:ss``."""
    return f"{seconds // 60}:{seconds % 60:02d}"


def run(
    steps: Iterable[Step],
    *,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> None:
    """Announce each step at its time. ``sleep`` and ``say`` are injectable for tests."""
    now = 0
    for at, grams, text in sorted(steps):
        if at > now:
            sleep(at - now)
            now = at
        say(f"{fmt(at)}  {text}  (scale: {grams:g} g)")


def main() -> None:
    parser = argparse.ArgumentParser(description="Pour-over step timer.")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply all weights")
    args = parser.parse_args()
    run(scale_schedule(V60_15G, args.scale))


if __name__ == "__main__":
    main()
