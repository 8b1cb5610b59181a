"""Brew ratio calculator for the command line.

Examples::

    python ratio_calc.py --water 500 --ratio 16     # how much coffee?
    python ratio_calc.py --coffee 18 --ratio 2      # espresso yield
    python ratio_calc.py --cup 300 --ratio 15       # fill a 300 g mug after absorption
"""

from __future__ import annotations

import argparse

#: Grams of water one gram of spent grounds holds back (about 2 for filter coffee).
ABSORPTION = 2.0


def coffee_for_water(water_g: float, ratio: float) -> float:
    """Dose of coffee for ``water_g`` grams of brewing water at 1:``ratio``."""
    if ratio <= 0:
        raise ValueError("ratio must be positive, e.g. 16 for 1:16")
    return water_g / ratio


def water_for_coffee(coffee_g: float, ratio: float) -> float:
    """Brewing water for ``coffee_g`` grams of coffee at 1:``ratio``."""
    return coffee_g * ratio


def dose_for_cup(cup_g: float, ratio: float, absorption: float = ABSORPTION) -> float:
    """Dose that yields ``cup_g`` grams in the cup once the grounds have soaked up water.

    Brewing water ``W = dose * ratio`` and the cup gets ``W - dose * absorption``, so
    ``dose = cup / (ratio - absorption)``.
    """
    if ratio <= absorption:
        raise ValueError("ratio must exceed the absorption factor")
    return cup_g / (ratio - absorption)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, required=True, help="water per gram, e.g. 16")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--water", type=float, help="grams of brewing water")
    group.add_argument("--coffee", type=float, help="grams of coffee")
    group.add_argument("--cup", type=float, help="grams of finished drink wanted")
    args = parser.parse_args()
    if args.water is not None:
        print(f"{coffee_for_water(args.water, args.ratio):.1f} g coffee")
    elif args.coffee is not None:
        print(f"{water_for_coffee(args.coffee, args.ratio):.0f} g water")
    else:
        dose = dose_for_cup(args.cup, args.ratio)
        print(f"{dose:.1f} g coffee with {dose * args.ratio:.0f} g water")


if __name__ == "__main__":
    main()
