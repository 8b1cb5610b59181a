"""Make brewing water from distilled water, Epsom salt and baking soda.

The Brewbook club keeps two concentrates in the fridge:

* **Hardness concentrate**: Epsom salt (magnesium sulfate heptahydrate, MgSO4·7H2O)
* **Buffer concentrate**: baking soda (sodium bicarbonate, NaHCO3)

Both are expressed "as CaCO3", the unit water reports and the SCA standard use, so the
numbers can be compared with a tap water report.

Example::

    python water_recipe.py --hardness 70 --alkalinity 40 --litres 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

CACO3 = 100.09  # g/mol
EPSOM = 246.47  # MgSO4·7H2O, g/mol
BAKING_SODA = 84.01  # NaHCO3, g/mol


@dataclass(frozen=True)
class Recipe:
    """Grams of each salt to dissolve into the given volume of distilled water."""

    litres: float
    epsom_g: float
    baking_soda_g: float

    def describe(self) -> str:
        return (
            f"For {self.litres:g} L of distilled water: "
            f"{self.epsom_g:.3f} g Epsom salt, {self.baking_soda_g:.3f} g baking soda"
        )


def epsom_for_hardness(hardness_mg_l: float, litres: float) -> float:
    """Grams of Epsom salt giving ``hardness_mg_l`` (as CaCO3) in ``litres`` of water.

    One mole of magnesium counts as one mole of CaCO3 hardness.
    """
    return hardness_mg_l / CACO3 * EPSOM * litres / 1000


def soda_for_alkalinity(alkalinity_mg_l: float, litres: float) -> float:
    """Grams of baking soda giving ``alkalinity_mg_l`` (as CaCO3) in ``litres``.

    Bicarbonate is monovalent and carbonate divalent, so two moles of bicarbonate make
    one mole of alkalinity as CaCO3.
    """
    return alkalinity_mg_l / CACO3 * 2 * BAKING_SODA * litres / 1000


def recipe(hardness: float, alkalinity: float, litres: float = 1.0) -> Recipe:
    """Recipe for the target hardness and alkalinity (mg/L as CaCO3)."""
    if hardness < 0 or alkalinity < 0 or litres <= 0:
        raise ValueError("targets must be >= 0 and volume > 0")
    return Recipe(
        litres, epsom_for_hardness(hardness, litres), soda_for_alkalinity(alkalinity, litres)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Brewing water from distilled water.")
    parser.add_argument("--hardness", type=float, default=70.0, help="mg/L as CaCO3")
    parser.add_argument("--alkalinity", type=float, default=40.0, help="mg/L as CaCO3")
    parser.add_argument("--litres", type=float, default=1.0)
    args = parser.parse_args()
    print(recipe(args.hardness, args.alkalinity, args.litres).describe())


if __name__ == "__main__":
    main()
