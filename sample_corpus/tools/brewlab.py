"""brewlab: the Brewbook's toolbox of coffee brewing calculations.

Everything here is plain Python with no dependencies, so it runs on any laptop at a
meetup. The module is organised by topic:

* units and conversions (temperature, weight, volume, hardness units)
* recipes: ratios, scaling, water retained by the grounds
* extraction: TDS, extraction yield, the Brewing Control Chart
* water chemistry: hardness, alkalinity, salt recipes, blending waters
* grind: named grind sizes and a method-to-grind table
* heat: boiling point at altitude, cooling of a cup
* caffeine estimates
* espresso dial-in suggestions from taste and shot numbers
* pour-over schedules
* cold brew dilution
* roasting: weight loss, development time, rate of rise
* cupping scores
* freshness and descaling schedules
* cost per cup
* brew logs (CSV) and their summaries
* a small command-line interface (``python brewlab.py --help``)

Examples::

    >>> round(extraction_yield(dose_g=18, beverage_g=36, tds_percent=10), 1)
    20.0
    >>> classify_extraction(20.0, 1.30).label
    'ideal'
    >>> coffee_for_water(500, 16)
    31.25

All temperatures are in degrees Celsius, all weights in grams, all water concentrations in
milligrams per litre (mg/L) unless a function says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import Enum

__all__ = [
    "BrewLog",
    "BrewRecord",
    "CuppingScore",
    "DialInAdvice",
    "ExtractionZone",
    "GrindSize",
    "PourStep",
    "Recipe",
    "RoastLevel",
    "WaterProfile",
    "boiling_point_at_altitude",
    "brix_to_tds",
    "caffeine_mg",
    "celsius_to_fahrenheit",
    "classify_extraction",
    "coffee_for_water",
    "cold_brew_dilution",
    "cooling_curve",
    "cost_per_cup",
    "descaling_interval_days",
    "development_time_ratio",
    "dial_in",
    "extraction_yield",
    "fahrenheit_to_celsius",
    "freshness_window",
    "grind_for_method",
    "pour_schedule",
    "rate_of_rise",
    "roast_level_from_weight_loss",
    "salts_for_water",
    "tds_for_target_yield",
    "water_for_coffee",
]

# ---------------------------------------------------------------------------------------
# Units and conversions
# ---------------------------------------------------------------------------------------

#: Molar mass of calcium carbonate, the reference compound for hardness and alkalinity.
CACO3_G_PER_MOL = 100.09
#: Molar masses of the ions and salts used in brewing-water recipes (g/mol).
CALCIUM_G_PER_MOL = 40.078
MAGNESIUM_G_PER_MOL = 24.305
BICARBONATE_G_PER_MOL = 61.017
SODIUM_G_PER_MOL = 22.990
EPSOM_SALT_G_PER_MOL = 246.47  # MgSO4·7H2O
BAKING_SODA_G_PER_MOL = 84.007  # NaHCO3
CALCIUM_CHLORIDE_G_PER_MOL = 147.01  # CaCl2·2H2O
POTASSIUM_BICARBONATE_G_PER_MOL = 100.115  # KHCO3

#: mg/L as CaCO3 in one German degree of hardness (°dH).
MG_L_PER_DH = 17.848
#: mg/L as CaCO3 in one grain per US gallon (gpg).
MG_L_PER_GPG = 17.118
#: Grams in one avoirdupois ounce.
GRAMS_PER_OUNCE = 28.3495
#: Millilitres in one US fluid ounce.
ML_PER_US_FL_OZ = 29.5735


def celsius_to_fahrenheit(celsius: float) -> float:
    """Convert degrees Celsius to Fahrenheit.

    >>> celsius_to_fahrenheit(93)
    199.4
    """
    return round(celsius * 9 / 5 + 32, 2)


def fahrenheit_to_celsius(fahrenheit: float) -> float:
    """Convert degrees Fahrenheit to Celsius.

    >>> fahrenheit_to_celsius(205)
    96.11
    """
    return round((fahrenheit - 32) * 5 / 9, 2)


def ounces_to_grams(ounces: float) -> float:
    """Convert avoirdupois ounces (weight) to grams.

    >>> round(ounces_to_grams(12), 1)
    340.2
    """
    return ounces * GRAMS_PER_OUNCE


def fluid_ounces_to_ml(fl_oz: float) -> float:
    """Convert US fluid ounces to millilitres (and so, for water, to grams).

    >>> round(fluid_ounces_to_ml(8))
    237
    """
    return fl_oz * ML_PER_US_FL_OZ


def dh_to_mg_l(degrees: float) -> float:
    """German degrees of hardness (°dH, used for GH and KH) to mg/L as CaCO3.

    >>> round(dh_to_mg_l(4), 1)
    71.4
    """
    return degrees * MG_L_PER_DH


def gpg_to_mg_l(grains: float) -> float:
    """Grains per US gallon to mg/L as CaCO3.

    >>> round(gpg_to_mg_l(3), 1)
    51.4
    """
    return grains * MG_L_PER_GPG


def mg_l_to_dh(mg_l: float) -> float:
    """mg/L as CaCO3 to German degrees (°dH)."""
    return mg_l / MG_L_PER_DH


# ---------------------------------------------------------------------------------------
# Recipes and ratios
# ---------------------------------------------------------------------------------------

#: Grams of water one gram of coffee grounds keeps after a filter brew.
DEFAULT_ABSORPTION = 2.0


def coffee_for_water(water_g: float, ratio: float) -> float:
    """Grams of coffee for ``water_g`` grams of brewing water at 1:``ratio``.

    >>> coffee_for_water(250, 16.67)
    15.0
    """
    _require_positive(ratio=ratio)
    return float(round(water_g / ratio, 2))


def water_for_coffee(coffee_g: float, ratio: float) -> float:
    """Grams of water for ``coffee_g`` grams of coffee at 1:``ratio``.

    >>> water_for_coffee(30, 15)
    450.0
    """
    _require_positive(ratio=ratio)
    return float(round(coffee_g * ratio, 2))


def ratio_of(coffee_g: float, water_g: float) -> float:
    """The ratio (water per gram of coffee) of a brew, rounded to one decimal.

    >>> ratio_of(18, 300)
    16.7
    """
    _require_positive(coffee_g=coffee_g)
    return round(water_g / coffee_g, 1)


def beverage_weight(
    coffee_g: float, water_g: float, absorption: float = DEFAULT_ABSORPTION
) -> float:
    """Approximate weight of drink that ends up in the cup after a filter brew.

    The grounds hold back about ``absorption`` grams of water per gram of coffee; the
    dissolved coffee adds back a little mass, which this estimate ignores.

    >>> beverage_weight(20, 320)
    280.0
    """
    return max(0.0, water_g - coffee_g * absorption)


def dose_for_cup(cup_g: float, ratio: float, absorption: float = DEFAULT_ABSORPTION) -> float:
    """Dose that gives ``cup_g`` grams of drink once the grounds have absorbed their share.

    >>> round(dose_for_cup(300, 16), 2)
    21.43
    """
    if ratio <= absorption:
        raise ValueError(f"ratio 1:{ratio} must be longer than the absorption ({absorption})")
    return cup_g / (ratio - absorption)


@dataclass(frozen=True)
class Recipe:
    """A brew recipe by weight.

    >>> r = Recipe("V60", coffee_g=15, water_g=250, temperature_c=94, time_s=180)
    >>> r.ratio
    16.7
    >>> r.scaled(2).coffee_g
    30
    """

    method: str
    coffee_g: float
    water_g: float
    temperature_c: float = 94.0
    time_s: int | None = None
    grind: str | None = None
    notes: str = ""

    @property
    def ratio(self) -> float:
        """Water per gram of coffee, e.g. 16.7 for 1:16.7."""
        return ratio_of(self.coffee_g, self.water_g)

    def scaled(self, factor: float) -> Recipe:
        """The same recipe with dose and water multiplied by ``factor``.

        Larger pour-over batches make deeper beds that drain more slowly, so the grind
        usually needs to be a little coarser; that is left to the brewer.
        """
        _require_positive(factor=factor)
        return Recipe(
            self.method,
            _tidy(self.coffee_g * factor),
            _tidy(self.water_g * factor),
            self.temperature_c,
            self.time_s,
            self.grind,
            self.notes,
        )

    def for_water(self, water_g: float) -> Recipe:
        """The same recipe scaled to use ``water_g`` grams of water."""
        return self.scaled(water_g / self.water_g)

    def describe(self) -> str:
        """A one-line human description.

        >>> Recipe("French press", 30, 500, 94, 240, "coarse").describe()
        'French press: 30 g coffee, 500 g water (1:16.7) at 94 °C, coarse grind, 4:00'
        """
        parts = [f"{self.method}: {_fmt_g(self.coffee_g)} coffee, {_fmt_g(self.water_g)} water"]
        parts[0] += f" (1:{self.ratio:g}) at {self.temperature_c:g} °C"
        if self.grind:
            parts.append(f"{self.grind} grind")
        if self.time_s is not None:
            parts.append(format_time(self.time_s))
        return ", ".join(parts)


#: The Brewbook's house recipes, the baselines in the troubleshooting handbook.
HOUSE_RECIPES: dict[str, Recipe] = {
    "v60": Recipe("V60", 15, 250, 95, 180, "medium-fine"),
    "chemex": Recipe("Chemex", 30, 500, 95, 255, "medium-coarse"),
    "kalita": Recipe("Kalita Wave", 20, 320, 94, 195, "medium"),
    "french-press": Recipe("French press", 30, 500, 94, 240, "coarse"),
    "aeropress": Recipe("AeroPress", 15, 220, 88, 120, "medium-fine"),
    "clever": Recipe("Clever dripper", 20, 320, 94, 150, "medium"),
    "espresso": Recipe("Espresso", 18, 36, 93, 28, "fine", "36 g is beverage out"),
    "cold-brew": Recipe("Cold brew", 100, 800, 5, 15 * 3600, "extra coarse", "dilute 1:1"),
    "turkish": Recipe("Turkish", 7, 70, 70, 210, "powder"),
    "siphon": Recipe("Siphon", 20, 300, 92, 60, "medium"),
}


def format_time(seconds: float) -> str:
    """Format seconds as ``m:ss`` (or ``h:mm:ss`` past an hour).

    >>> format_time(195)
    '3:15'
    >>> format_time(54000)
    '15:00:00'
    """
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def parse_time(text: str) -> int:
    """Parse ``m:ss``, ``h:mm:ss`` or plain seconds into seconds.

    >>> parse_time("3:15")
    195
    >>> parse_time("45")
    45
    """
    parts = [int(p) for p in text.strip().split(":")]
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
        raise ValueError(f"cannot read time {text!r}; write it as m:ss, e.g. 3:15")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def _fmt_g(grams: float) -> str:
    return f"{grams:g} g"


def _tidy(value: float) -> float:
    """Round to 0.1 g and drop a trailing .0 so scaled recipes read cleanly."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


# ---------------------------------------------------------------------------------------
# Extraction: strength and yield
# ---------------------------------------------------------------------------------------

#: Roughly how much of roasted coffee's mass can dissolve at all.
MAX_SOLUBLE_FRACTION = 0.30


def extraction_yield(dose_g: float, beverage_g: float, tds_percent: float) -> float:
    """Extraction yield in percent: how much of the dose ended up dissolved in the drink.

    ``beverage_g`` is the weight of the drink (not the water poured), ``tds_percent`` the
    refractometer reading.

    >>> extraction_yield(15, 215, 1.38)
    19.78
    """
    _require_positive(dose_g=dose_g)
    if not 0 <= tds_percent < 100:
        raise ValueError("tds_percent is a percentage, e.g. 1.35 for filter coffee")
    ey = beverage_g * tds_percent / dose_g
    if ey > MAX_SOLUBLE_FRACTION * 100 + 2:
        raise ValueError(
            f"extraction of {ey:.1f} % is impossible (coffee is only about 30 % soluble); "
            "check the dose, the beverage weight and the TDS reading"
        )
    return round(ey, 2)


def tds_for_target_yield(dose_g: float, beverage_g: float, target_ey: float) -> float:
    """The TDS reading you would need to hit ``target_ey`` percent extraction.

    Useful when dialing in with a refractometer: brew, weigh, then compare.

    >>> tds_for_target_yield(18, 36, 20)
    10.0
    """
    _require_positive(beverage_g=beverage_g)
    return round(target_ey * dose_g / beverage_g, 2)


def brix_to_tds(brix: float, *, espresso: bool = False) -> float:
    """Convert a sugar refractometer's °Brix to an approximate coffee TDS percent.

    Coffee solids bend light differently from sucrose. Filter coffee TDS is about
    0.85 × °Brix; espresso is closer to 0.79 × °Brix at high concentrations. A dedicated
    coffee refractometer is better, but a Brix meter with this factor is serviceable.

    >>> brix_to_tds(1.6)
    1.36
    """
    factor = 0.79 if espresso else 0.85
    return round(brix * factor, 2)


class ExtractionZone(Enum):
    """Cells of the classic Brewing Control Chart for filter coffee."""

    IDEAL = "ideal"
    UNDER_WEAK = "under-extracted and weak"
    UNDER = "under-extracted"
    UNDER_STRONG = "under-extracted and strong"
    WEAK = "weak"
    STRONG = "strong"
    OVER_WEAK = "over-extracted and weak"
    OVER = "over-extracted"
    OVER_STRONG = "over-extracted and strong"

    @property
    def label(self) -> str:
        return self.value


#: Bounds of the ideal box on the control chart.
IDEAL_EY = (18.0, 22.0)
IDEAL_TDS = (1.15, 1.35)


def classify_extraction(
    ey_percent: float,
    tds_percent: float,
    *,
    ey_range: tuple[float, float] = IDEAL_EY,
    tds_range: tuple[float, float] = IDEAL_TDS,
) -> ExtractionZone:
    """Place a filter brew on the Brewing Control Chart.

    The ranges are adjustable because many brewers find lighter roasts taste best at
    higher extraction (21–24 %) and prefer stronger cups than the classic chart.

    >>> classify_extraction(16.5, 1.25).label
    'under-extracted'
    >>> classify_extraction(23.0, 1.45).label
    'over-extracted and strong'
    """
    lo_ey, hi_ey = ey_range
    lo_tds, hi_tds = tds_range
    extraction = "under" if ey_percent < lo_ey else "over" if ey_percent > hi_ey else "ok"
    strength = "weak" if tds_percent < lo_tds else "strong" if tds_percent > hi_tds else "ok"
    table = {
        ("ok", "ok"): ExtractionZone.IDEAL,
        ("under", "weak"): ExtractionZone.UNDER_WEAK,
        ("under", "ok"): ExtractionZone.UNDER,
        ("under", "strong"): ExtractionZone.UNDER_STRONG,
        ("ok", "weak"): ExtractionZone.WEAK,
        ("ok", "strong"): ExtractionZone.STRONG,
        ("over", "weak"): ExtractionZone.OVER_WEAK,
        ("over", "ok"): ExtractionZone.OVER,
        ("over", "strong"): ExtractionZone.OVER_STRONG,
    }
    return table[(extraction, strength)]


def advice_for_zone(zone: ExtractionZone) -> str:
    """What to change for a brew in ``zone``; one sentence, most effective change first.

    >>> advice_for_zone(ExtractionZone.WEAK)
    'Use more coffee for the same water (a shorter ratio); extraction is fine.'
    """
    advice = {
        ExtractionZone.IDEAL: "Keep this recipe and write it down.",
        ExtractionZone.UNDER_WEAK: "Grind finer and use a little more coffee.",
        ExtractionZone.UNDER: "Grind finer, or brew hotter or longer, at the same ratio.",
        ExtractionZone.UNDER_STRONG: (
            "Grind finer and use more water (a longer ratio); the cup is concentrated but "
            "not fully extracted."
        ),
        ExtractionZone.WEAK: (
            "Use more coffee for the same water (a shorter ratio); extraction is fine."
        ),
        ExtractionZone.STRONG: (
            "Use less coffee for the same water, or dilute after brewing; extraction is fine."
        ),
        ExtractionZone.OVER_WEAK: (
            "Grind coarser and use more coffee (a shorter ratio); too much water went through "
            "too little coffee."
        ),
        ExtractionZone.OVER: "Grind coarser, or brew cooler or shorter, at the same ratio.",
        ExtractionZone.OVER_STRONG: "Grind coarser and use a little less coffee.",
    }
    return advice[zone]


def strength_after_dilution(tds_percent: float, coffee_g: float, added_water_g: float) -> float:
    """TDS after adding ``added_water_g`` of water to ``coffee_g`` of brewed coffee.

    Dilution lowers strength without changing extraction; this is how bypass brewing and
    Americanos work.

    >>> strength_after_dilution(2.6, 200, 200)
    1.3
    """
    _require_positive(coffee_g=coffee_g)
    return round(tds_percent * coffee_g / (coffee_g + added_water_g), 3)


def espresso_strength_summary(dose_g: float, yield_g: float, tds_percent: float) -> str:
    """A short description of an espresso shot's numbers.

    >>> espresso_strength_summary(18, 40, 9.0)
    '1:2.2 ratio, 9.0 % TDS, 20.0 % extraction'
    """
    ey = extraction_yield(dose_g, yield_g, tds_percent)
    return f"1:{yield_g / dose_g:.1f} ratio, {tds_percent:.1f} % TDS, {ey:.1f} % extraction"


# ---------------------------------------------------------------------------------------
# Water chemistry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaterProfile:
    """A brewing water described by its ions, in mg/L.

    ``general_hardness`` and ``alkalinity`` convert to mg/L as CaCO3, the unit of the SCA
    water standard and of most water reports.

    >>> w = WaterProfile("club recipe", calcium=0, magnesium=17.0, bicarbonate=48.8)
    >>> round(w.general_hardness)
    70
    >>> round(w.alkalinity)
    40
    """

    name: str
    calcium: float = 0.0
    magnesium: float = 0.0
    bicarbonate: float = 0.0
    sodium: float = 0.0
    chloride: float = 0.0
    sulfate: float = 0.0

    @property
    def calcium_hardness(self) -> float:
        """Calcium hardness, mg/L as CaCO3."""
        return self.calcium / CALCIUM_G_PER_MOL * CACO3_G_PER_MOL

    @property
    def magnesium_hardness(self) -> float:
        """Magnesium hardness, mg/L as CaCO3."""
        return self.magnesium / MAGNESIUM_G_PER_MOL * CACO3_G_PER_MOL

    @property
    def general_hardness(self) -> float:
        """Total hardness (calcium + magnesium), mg/L as CaCO3."""
        return self.calcium_hardness + self.magnesium_hardness

    @property
    def alkalinity(self) -> float:
        """Total alkalinity from bicarbonate, mg/L as CaCO3.

        Bicarbonate carries one charge and CaCO3 two, so two moles of bicarbonate count as
        one mole of alkalinity as CaCO3.
        """
        return self.bicarbonate / BICARBONATE_G_PER_MOL / 2 * CACO3_G_PER_MOL

    def assess(self) -> list[str]:
        """Plain-language comments comparing this water with common coffee targets.

        >>> WaterProfile("hard tap", calcium=110, magnesium=20, bicarbonate=300).assess()[0]
        'hardness 357 mg/L is high: expect scale and dull, chalky cups'
        """
        notes: list[str] = []
        gh, kh = self.general_hardness, self.alkalinity
        if gh > 150:
            notes.append(f"hardness {gh:.0f} mg/L is high: expect scale and dull, chalky cups")
        elif gh < 20:
            notes.append(f"hardness {gh:.0f} mg/L is very low: expect flat, thin extraction")
        else:
            notes.append(f"hardness {gh:.0f} mg/L is within the usual coffee range")
        if kh > 75:
            notes.append(f"alkalinity {kh:.0f} mg/L is high: acidity will be muted")
        elif kh < 10:
            notes.append(f"alkalinity {kh:.0f} mg/L is low: cups may taste sharp")
        else:
            notes.append(f"alkalinity {kh:.0f} mg/L is reasonable")
        if self.sodium > 30:
            notes.append(f"sodium {self.sodium:.0f} mg/L is high (softened water?)")
        return notes

    def blended_with(self, other: WaterProfile, fraction_other: float) -> WaterProfile:
        """Mix this water with ``other``; ``fraction_other`` of the result is ``other``.

        Ion concentrations mix linearly by volume.

        >>> tap = WaterProfile("tap", calcium=80, bicarbonate=244)
        >>> ro = WaterProfile("RO")
        >>> round(tap.blended_with(ro, 0.75).alkalinity)
        50
        """
        if not 0 <= fraction_other <= 1:
            raise ValueError("fraction_other must be between 0 and 1")
        a, b = 1 - fraction_other, fraction_other
        return WaterProfile(
            f"{self.name} + {other.name}",
            calcium=self.calcium * a + other.calcium * b,
            magnesium=self.magnesium * a + other.magnesium * b,
            bicarbonate=self.bicarbonate * a + other.bicarbonate * b,
            sodium=self.sodium * a + other.sodium * b,
            chloride=self.chloride * a + other.chloride * b,
            sulfate=self.sulfate * a + other.sulfate * b,
        )


#: The SCA standard's target as a profile built from calcium and bicarbonate.
SCA_TARGET = WaterProfile(
    "SCA target",
    calcium=68 / CACO3_G_PER_MOL * CALCIUM_G_PER_MOL,
    bicarbonate=40 / CACO3_G_PER_MOL * 2 * BICARBONATE_G_PER_MOL,
    sodium=10,
)


@dataclass(frozen=True)
class SaltRecipe:
    """Grams of each salt to dissolve in ``litres`` of distilled or RO water."""

    litres: float
    epsom_salt_g: float = 0.0
    calcium_chloride_g: float = 0.0
    baking_soda_g: float = 0.0
    potassium_bicarbonate_g: float = 0.0

    def lines(self) -> list[str]:
        """One line per salt actually used."""
        names = {
            "Epsom salt (MgSO4·7H2O)": self.epsom_salt_g,
            "calcium chloride (CaCl2·2H2O)": self.calcium_chloride_g,
            "baking soda (NaHCO3)": self.baking_soda_g,
            "potassium bicarbonate (KHCO3)": self.potassium_bicarbonate_g,
        }
        return [f"{grams:.3f} g {name}" for name, grams in names.items() if grams > 0]


def salts_for_water(
    hardness: float,
    alkalinity: float,
    litres: float = 1.0,
    *,
    magnesium_share: float = 1.0,
    buffer: str = "sodium",
) -> SaltRecipe:
    """Salts that give ``hardness`` and ``alkalinity`` (both mg/L as CaCO3).

    ``magnesium_share`` splits the hardness between Epsom salt (magnesium) and calcium
    chloride (calcium): 1.0 is all magnesium, the Brewbook default because calcium chloride
    is hygroscopic and hard to weigh. ``buffer`` chooses baking soda ("sodium") or
    potassium bicarbonate ("potassium"), which adds no sodium.

    >>> r = salts_for_water(70, 40, 4)
    >>> round(r.epsom_salt_g, 3), round(r.baking_soda_g, 3)
    (0.689, 0.269)
    """
    if hardness < 0 or alkalinity < 0:
        raise ValueError("hardness and alkalinity must be zero or more")
    _require_positive(litres=litres)
    if not 0 <= magnesium_share <= 1:
        raise ValueError("magnesium_share must be between 0 and 1")
    mol_hardness = hardness / CACO3_G_PER_MOL * litres / 1000
    mol_buffer = 2 * alkalinity / CACO3_G_PER_MOL * litres / 1000
    if buffer == "sodium":
        soda, potash = mol_buffer * BAKING_SODA_G_PER_MOL, 0.0
    elif buffer == "potassium":
        soda, potash = 0.0, mol_buffer * POTASSIUM_BICARBONATE_G_PER_MOL
    else:
        raise ValueError("buffer must be 'sodium' or 'potassium'")
    return SaltRecipe(
        litres,
        epsom_salt_g=mol_hardness * magnesium_share * EPSOM_SALT_G_PER_MOL,
        calcium_chloride_g=mol_hardness * (1 - magnesium_share) * CALCIUM_CHLORIDE_G_PER_MOL,
        baking_soda_g=soda,
        potassium_bicarbonate_g=potash,
    )


def concentrate_dose_ml(target_mg_l: float, concentrate_mg_l: float, final_litres: float) -> float:
    """Millilitres of a mineral concentrate to add to reach ``target_mg_l`` in the batch.

    Concentrates are easier to dose than tiny amounts of dry salt. A concentrate of
    10,000 mg/L as CaCO3 dosed at 7 ml per litre gives 70 mg/L.

    >>> concentrate_dose_ml(70, 10_000, 1)
    7.0
    """
    _require_positive(concentrate_mg_l=concentrate_mg_l, final_litres=final_litres)
    return round(target_mg_l * final_litres * 1000 / concentrate_mg_l, 2)


# ---------------------------------------------------------------------------------------
# Grind
# ---------------------------------------------------------------------------------------


class GrindSize(Enum):
    """Named grind sizes, finest first, with a familiar comparison and a micron range."""

    EXTRA_FINE = ("extra fine", "flour", 50, 100)
    FINE = ("fine", "table salt", 200, 300)
    MEDIUM_FINE = ("medium-fine", "fine sand", 400, 600)
    MEDIUM = ("medium", "beach sand", 600, 800)
    MEDIUM_COARSE = ("medium-coarse", "rough sand", 800, 1000)
    COARSE = ("coarse", "kosher salt", 1000, 1200)
    EXTRA_COARSE = ("extra coarse", "peppercorns", 1200, 1600)

    def __init__(self, label: str, looks_like: str, low_um: int, high_um: int) -> None:
        self.label = label
        self.looks_like = looks_like
        self.low_um = low_um
        self.high_um = high_um

    @property
    def midpoint_um(self) -> int:
        """Middle of the micron range."""
        return (self.low_um + self.high_um) // 2

    def finer(self) -> GrindSize:
        """The next finer named size (or this one if already the finest)."""
        members = list(GrindSize)
        return members[max(0, members.index(self) - 1)]

    def coarser(self) -> GrindSize:
        """The next coarser named size (or this one if already the coarsest)."""
        members = list(GrindSize)
        return members[min(len(members) - 1, members.index(self) + 1)]

    @classmethod
    def from_microns(cls, microns: float) -> GrindSize:
        """The named size whose range contains (or is nearest to) ``microns``.

        >>> GrindSize.from_microns(700).label
        'medium'
        """
        return min(
            cls,
            key=lambda g: (
                0
                if g.low_um <= microns <= g.high_um
                else min(abs(microns - g.low_um), abs(microns - g.high_um))
            ),
        )


_GRIND_BY_METHOD: dict[str, GrindSize] = {
    "turkish": GrindSize.EXTRA_FINE,
    "espresso": GrindSize.FINE,
    "moka": GrindSize.MEDIUM_FINE,
    "moka pot": GrindSize.MEDIUM_FINE,
    "aeropress": GrindSize.MEDIUM_FINE,
    "v60": GrindSize.MEDIUM_FINE,
    "pour-over": GrindSize.MEDIUM_FINE,
    "kalita": GrindSize.MEDIUM,
    "kalita wave": GrindSize.MEDIUM,
    "siphon": GrindSize.MEDIUM,
    "batch brewer": GrindSize.MEDIUM,
    "drip": GrindSize.MEDIUM,
    "clever": GrindSize.MEDIUM_COARSE,
    "chemex": GrindSize.MEDIUM_COARSE,
    "cupping": GrindSize.MEDIUM_COARSE,
    "french press": GrindSize.COARSE,
    "cold brew": GrindSize.EXTRA_COARSE,
}


def grind_for_method(method: str) -> GrindSize:
    """Starting grind size for a brewing method (case-insensitive).

    >>> grind_for_method("Chemex").looks_like
    'rough sand'
    """
    key = method.strip().lower()
    try:
        return _GRIND_BY_METHOD[key]
    except KeyError:
        known = ", ".join(sorted(_GRIND_BY_METHOD))
        raise ValueError(f"unknown method {method!r}; known methods: {known}") from None


def grind_change_for_drawdown(actual_s: float, target_s: float, tolerance_s: float = 15) -> str:
    """Which way to move the grinder given a pour-over drawdown time.

    >>> grind_change_for_drawdown(130, 180)
    'finer'
    >>> grind_change_for_drawdown(185, 180)
    'keep'
    """
    if actual_s < target_s - tolerance_s:
        return "finer"
    if actual_s > target_s + tolerance_s:
        return "coarser"
    return "keep"


def particle_surface_ratio(fine_um: float, coarse_um: float) -> float:
    """How many times more surface per gram the finer of two grinds exposes.

    For roughly spherical particles the surface area per unit mass scales with 1/diameter,
    which is why a small grind change has a large effect.

    >>> particle_surface_ratio(400, 800)
    2.0
    """
    _require_positive(fine_um=fine_um, coarse_um=coarse_um)
    return round(coarse_um / fine_um, 3)


# ---------------------------------------------------------------------------------------
# Heat
# ---------------------------------------------------------------------------------------


def boiling_point_at_altitude(metres: float) -> float:
    """Approximate boiling point of water (°C) at ``metres`` above sea level.

    Uses the barometric formula for pressure and the Clausius–Clapeyron relation for water,
    which is accurate to a few tenths of a degree up to 5,000 m.

    >>> boiling_point_at_altitude(0)
    100.0
    >>> boiling_point_at_altitude(1600)
    94.6
    """
    pressure_ratio = (1 - 2.25577e-5 * metres) ** 5.25588
    latent_heat = 40_660.0  # J/mol, water at 100 °C
    gas_constant = 8.314
    inv_t = 1 / 373.15 - gas_constant * math.log(pressure_ratio) / latent_heat
    return round(1 / inv_t - 273.15, 1)


def cooling_curve(
    start_c: float,
    room_c: float = 21.0,
    minutes: int = 30,
    *,
    k_per_min: float = 0.045,
) -> list[tuple[int, float]]:
    """Temperature of a cup of coffee minute by minute, by Newton's law of cooling.

    ``k_per_min`` depends on the cup: about 0.045 for an open 250 ml ceramic mug, much lower
    for a lidded or insulated one. The result is an estimate for planning tastings: flavours
    open up between roughly 60 and 45 °C.

    >>> cooling_curve(80, minutes=2)
    [(0, 80.0), (1, 77.4), (2, 74.9)]
    """
    return [
        (m, round(room_c + (start_c - room_c) * math.exp(-k_per_min * m), 1))
        for m in range(minutes + 1)
    ]


def minutes_until(
    target_c: float, start_c: float, room_c: float = 21.0, k_per_min: float = 0.045
) -> float:
    """Minutes for a cup to cool from ``start_c`` to ``target_c``.

    >>> round(minutes_until(60, 80), 1)
    9.2
    """
    if not room_c < target_c < start_c:
        raise ValueError("target must lie between room temperature and the start temperature")
    return math.log((start_c - room_c) / (target_c - room_c)) / k_per_min


def slurry_temperature(
    water_c: float,
    water_g: float,
    coffee_g: float,
    coffee_c: float = 21.0,
    brewer_g: float = 0.0,
    brewer_c: float = 21.0,
    brewer_specific_heat: float = 0.85,
) -> float:
    """Starting temperature of the slurry once water, grounds and brewer share their heat.

    A simple heat balance: water has a specific heat of 4.18 J/(g·K), roasted coffee about
    1.7, ceramic about 0.85 (glass is similar; plastic about 1.2). With ``brewer_g`` the
    result is the worst case, as if the whole brewer reached the slurry's temperature; in
    practice only its inner wall does, but the number shows why preheating matters.

    >>> round(slurry_temperature(95, 250, 15), 1)
    93.2
    >>> round(slurry_temperature(95, 250, 15, brewer_g=300), 1)
    79.3
    """
    water_heat = 4.18 * water_g
    coffee_heat = 1.7 * coffee_g
    brewer_heat = brewer_specific_heat * brewer_g
    total = water_heat + coffee_heat + brewer_heat
    return (water_heat * water_c + coffee_heat * coffee_c + brewer_heat * brewer_c) / total


# ---------------------------------------------------------------------------------------
# Caffeine
# ---------------------------------------------------------------------------------------

#: Caffeine as a fraction of dry bean weight.
CAFFEINE_FRACTION = {
    "arabica": 0.012,
    "robusta": 0.022,
    "laurina": 0.006,
    "decaf": 0.0008,
}

#: Fraction of the dose's caffeine that reaches the cup, by method.
CAFFEINE_EXTRACTION = {
    "espresso": 0.80,
    "filter": 0.95,
    "french press": 0.90,
    "aeropress": 0.85,
    "cold brew": 0.85,
    "moka pot": 0.85,
    "turkish": 0.95,
}

#: Daily intake health authorities consider safe for most healthy adults (mg).
SAFE_DAILY_MG = 400
#: Daily intake commonly advised during pregnancy (mg).
PREGNANCY_DAILY_MG = 200


def caffeine_mg(dose_g: float, species: str = "arabica", method: str = "filter") -> float:
    """Estimate caffeine in a drink from its dose, species and brew method.

    Real values vary by ±30 % with variety and growing conditions; use this for rough
    comparisons, not for medical decisions.

    >>> caffeine_mg(15)
    171.0
    >>> caffeine_mg(18, method="espresso")
    172.8
    >>> caffeine_mg(18, "robusta", "espresso")
    316.8
    """
    try:
        fraction = CAFFEINE_FRACTION[species.lower()]
    except KeyError:
        raise ValueError(f"species must be one of {sorted(CAFFEINE_FRACTION)}") from None
    try:
        extracted = CAFFEINE_EXTRACTION[method.lower()]
    except KeyError:
        raise ValueError(f"method must be one of {sorted(CAFFEINE_EXTRACTION)}") from None
    return round(dose_g * 1000 * fraction * extracted, 1)


def caffeine_remaining(mg: float, hours: float, half_life_h: float = 5.0) -> float:
    """Caffeine (mg) still in the body ``hours`` after drinking ``mg``.

    Half-life in healthy adults is roughly 3–6 hours; longer in pregnancy and with some
    medications.

    >>> caffeine_remaining(200, 5)
    100.0
    """
    return round(mg * 0.5 ** (hours / half_life_h), 1)


def daily_caffeine_check(drinks_mg: Iterable[float], limit_mg: float = SAFE_DAILY_MG) -> str:
    """Compare a day's drinks against a limit, in words.

    >>> daily_caffeine_check([80, 150, 120])
    '350 mg of 400 mg: within the limit'
    """
    total = sum(drinks_mg)
    verdict = "within the limit" if total <= limit_mg else "over the limit"
    return f"{total:.0f} mg of {limit_mg:.0f} mg: {verdict}"


# ---------------------------------------------------------------------------------------
# Espresso dial-in
# ---------------------------------------------------------------------------------------


class Taste(Enum):
    """What a shot tastes like, in the words the dial-in guide uses."""

    SOUR = "sour"
    BITTER = "bitter"
    SOUR_AND_BITTER = "sour and bitter"
    BALANCED = "balanced"
    WEAK = "weak"
    STRONG = "strong"
    FLAT = "flat"


@dataclass(frozen=True)
class DialInAdvice:
    """The next change to make, why, and the shot to aim for."""

    change: str
    reason: str
    next_yield_g: float
    target_time_s: tuple[int, int]

    def __str__(self) -> str:
        lo, hi = self.target_time_s
        return f"{self.change} ({self.reason}); aim for {self.next_yield_g:g} g in {lo}–{hi} s"


def dial_in(
    dose_g: float,
    yield_g: float,
    time_s: float,
    taste: Taste | str,
    *,
    roast: str = "medium",
) -> DialInAdvice:
    """Suggest one change for the next espresso shot.

    The rules follow the Brewbook espresso guide: fix time with the grinder first, then use
    yield to tune taste, and treat "sour and bitter" as a puck-preparation problem.
    ``roast`` ("light", "medium" or "dark") sets the default target ratio.

    >>> str(dial_in(18, 36, 17, "sour"))
    'grind finer (the shot ran fast (17 s)); aim for 36 g in 25–32 s'
    >>> dial_in(18, 36, 28, Taste.SOUR).change
    'increase yield'
    >>> dial_in(18, 36, 29, "sour and bitter").change
    'improve puck preparation'
    """
    taste = Taste(taste) if isinstance(taste, str) else taste
    ratio = {"light": 2.5, "medium": 2.0, "dark": 1.7}.get(roast)
    if ratio is None:
        raise ValueError("roast must be 'light', 'medium' or 'dark'")
    target = (25, 32)
    ideal_yield = round(dose_g * ratio)
    if taste is Taste.SOUR_AND_BITTER:
        return DialInAdvice(
            "improve puck preparation",
            "sour and bitter together means channeling: use WDT and tamp level",
            yield_g,
            target,
        )
    if time_s < target[0] and taste in (Taste.SOUR, Taste.WEAK, Taste.BALANCED):
        return DialInAdvice("grind finer", f"the shot ran fast ({time_s:g} s)", yield_g, target)
    if time_s > target[1] and taste in (Taste.BITTER, Taste.STRONG, Taste.BALANCED):
        return DialInAdvice("grind coarser", f"the shot ran slow ({time_s:g} s)", yield_g, target)
    if taste is Taste.SOUR:
        return DialInAdvice(
            "increase yield", "time is fine but the shot is under-extracted", yield_g + 4, target
        )
    if taste is Taste.BITTER:
        return DialInAdvice(
            "decrease yield", "time is fine but the shot is over-extracted", yield_g - 4, target
        )
    if taste is Taste.WEAK:
        return DialInAdvice("increase dose by 1 g", "more coffee, more strength", yield_g, target)
    if taste is Taste.STRONG:
        return DialInAdvice(
            "increase yield", "a longer ratio dilutes the shot", yield_g + 4, target
        )
    if taste is Taste.FLAT:
        return DialInAdvice(
            "check bean freshness and raise temperature by 1 °C",
            "flat shots are usually stale beans or low brew temperature",
            yield_g,
            target,
        )
    if abs(yield_g - ideal_yield) > 6:
        return DialInAdvice(
            f"try the {roast}-roast ratio",
            "balanced, but far from the usual ratio for this roast; worth comparing",
            ideal_yield,
            target,
        )
    return DialInAdvice("keep this recipe", "balanced", yield_g, target)


def espresso_style(dose_g: float, yield_g: float) -> str:
    """Name an espresso by its brew ratio: ristretto, normale, lungo or allongé.

    >>> espresso_style(18, 27)
    'ristretto'
    >>> espresso_style(18, 40)
    'normale'
    """
    _require_positive(dose_g=dose_g)
    ratio = yield_g / dose_g
    if ratio < 1.6:
        return "ristretto"
    if ratio <= 2.5:
        return "normale"
    if ratio <= 4.0:
        return "lungo"
    return "allongé"


def bloom_water(dose_g: float, factor: float = 2.5, minimum_g: float = 30.0) -> float:
    """Bloom water for a pour-over: about 2–3 times the dose, never less than ``minimum_g``.

    Very small doses still need enough water to wet every ground.

    >>> bloom_water(15)
    37.5
    >>> bloom_water(10)
    30.0
    """
    return max(minimum_g, round(dose_g * factor, 1))


def americano(shots: int = 2, water_g: float = 150.0, *, long_black: bool = False) -> str:
    """How to build an Americano (water added to espresso) or a long black (the reverse).

    >>> americano(long_black=True)
    'Pour 150 g of water at 85–90 °C into the cup, then pull 2 shots on top.'
    """
    if long_black:
        return (
            f"Pour {water_g:g} g of water at 85–90 °C into the cup, then pull {shots} shots on top."
        )
    return f"Pull {shots} shots, then add {water_g:g} g of water at 85–90 °C."


# ---------------------------------------------------------------------------------------
# Pour-over schedules
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PourStep:
    """Pour until the scale reads ``target_g`` starting at ``at_s`` seconds."""

    at_s: int
    target_g: float
    instruction: str

    def __str__(self) -> str:
        return f"{format_time(self.at_s)}  pour to {self.target_g:g} g  {self.instruction}"


def pour_schedule(
    coffee_g: float,
    ratio: float = 16.0,
    *,
    pours: int = 3,
    bloom_factor: float = 2.5,
    bloom_s: int = 45,
    interval_s: int = 30,
) -> list[PourStep]:
    """A bloom followed by ``pours`` equal pours, ending at the total water weight.

    >>> for step in pour_schedule(15, 16.67, pours=2): print(step)
    0:00  pour to 38 g  bloom: wet all the grounds, swirl
    0:45  pour to 144 g  spiral from the centre outward
    1:15  pour to 250 g  spiral, then swirl gently
    """
    _require_positive(coffee_g=coffee_g, ratio=ratio)
    if pours < 1:
        raise ValueError("at least one pour after the bloom is needed")
    total = round(coffee_g * ratio)
    bloom = round(coffee_g * bloom_factor)
    if bloom >= total:
        raise ValueError("bloom water must be less than the total water")
    steps = [PourStep(0, bloom, "bloom: wet all the grounds, swirl")]
    per_pour = (total - bloom) / pours
    for i in range(1, pours + 1):
        target = total if i == pours else round(bloom + per_pour * i)
        note = "spiral, then swirl gently" if i == pours else "spiral from the centre outward"
        steps.append(PourStep(bloom_s + (i - 1) * interval_s, target, note))
    return steps


def four_six_schedule(
    coffee_g: float, *, sweeter: bool = False, strength_pours: int = 3
) -> list[PourStep]:
    """The 4:6 method: 40 % of the water in two pours for balance, 60 % for strength.

    A smaller first pour gives a sweeter cup; a larger first pour a brighter one. The
    remaining 60 % is split into ``strength_pours`` pours (fewer pours, lighter cup).
    Pours are 45 seconds apart at a 1:15 ratio.

    >>> [s.target_g for s in four_six_schedule(20)]
    [60, 120, 180, 240, 300]
    """
    total = coffee_g * 15
    first_40 = total * 0.4
    first = first_40 * (0.4 if sweeter else 0.5)
    targets = [first, first_40]
    per = total * 0.6 / strength_pours
    targets += [first_40 + per * i for i in range(1, strength_pours + 1)]
    labels = ["balance pour 1", "balance pour 2"] + [
        f"strength pour {i}" for i in range(1, strength_pours + 1)
    ]
    return [
        PourStep(i * 45, round(target), label)
        for i, (target, label) in enumerate(zip(targets, labels, strict=True))
    ]


def flash_brew_split(
    coffee_g: float, ratio: float = 15.0, ice_fraction: float = 0.45
) -> tuple[float, float]:
    """Split the water for Japanese-style iced coffee into (hot water, ice) grams.

    >>> flash_brew_split(20)
    (165.0, 135.0)
    """
    if not 0 < ice_fraction < 0.7:
        raise ValueError("ice_fraction should be between 0 and 0.7 of the total water")
    total = coffee_g * ratio
    ice = round(total * ice_fraction)
    return float(total - ice), float(ice)


# ---------------------------------------------------------------------------------------
# Cold brew
# ---------------------------------------------------------------------------------------


def cold_brew_dilution(
    concentrate_ratio: float, drink_ratio: float, concentrate_ml: float
) -> float:
    """Millilitres of water (or milk) to add to ``concentrate_ml`` of cold brew concentrate.

    ``concentrate_ratio`` is the brewing ratio (e.g. 8 for 1:8) and ``drink_ratio`` the
    effective ratio wanted in the glass (e.g. 15). The grounds keep about 2 g of water per
    gram, which this accounts for.

    >>> round(cold_brew_dilution(8, 15, 200))
    233
    """
    if drink_ratio <= concentrate_ratio:
        raise ValueError("the drink ratio must be longer (larger) than the concentrate ratio")
    coffee_per_ml = 1 / (concentrate_ratio - DEFAULT_ABSORPTION)
    coffee_g = concentrate_ml * coffee_per_ml
    return coffee_g * (drink_ratio - DEFAULT_ABSORPTION) - concentrate_ml


def cold_brew_ready_at(start_hour: float, steep_hours: float = 15.0) -> str:
    """Clock time (``HH:MM``) when a cold brew started at ``start_hour`` is ready.

    >>> cold_brew_ready_at(21.5)
    '12:30'
    """
    end = (start_hour + steep_hours) % 24
    hours = int(end)
    minutes = round((end - hours) * 60)
    return f"{hours:02d}:{minutes:02d}"


# ---------------------------------------------------------------------------------------
# Roasting
# ---------------------------------------------------------------------------------------


class RoastLevel(Enum):
    """Roast levels by typical weight loss (percent of green weight)."""

    UNDER = ("under-developed", 0.0, 12.0)
    LIGHT = ("light", 12.0, 14.0)
    MEDIUM = ("medium", 14.0, 17.0)
    MEDIUM_DARK = ("medium-dark", 17.0, 18.0)
    DARK = ("dark", 18.0, 100.0)

    def __init__(self, label: str, low: float, high: float) -> None:
        self.label = label
        self.low = low
        self.high = high


def weight_loss_percent(green_g: float, roasted_g: float) -> float:
    """Percentage of weight lost in roasting.

    >>> weight_loss_percent(250, 215)
    14.0
    """
    _require_positive(green_g=green_g)
    if roasted_g > green_g:
        raise ValueError("roasted weight cannot exceed green weight; were they swapped?")
    return round((green_g - roasted_g) / green_g * 100, 2)


def roast_level_from_weight_loss(green_g: float, roasted_g: float) -> RoastLevel:
    """Guess the roast level from green and roasted weights.

    Moisture content and bean density shift this by a percent or so; treat it as a guide.

    >>> roast_level_from_weight_loss(250, 215).label
    'medium'
    >>> roast_level_from_weight_loss(100, 87).label
    'light'
    """
    loss = weight_loss_percent(green_g, roasted_g)
    for level in RoastLevel:
        if level.low <= loss < level.high:
            return level
    return RoastLevel.DARK


def development_time_ratio(first_crack_s: float, drop_s: float) -> float:
    """Development time as a percentage of total roast time.

    >>> development_time_ratio(480, 600)
    20.0
    """
    if not 0 < first_crack_s < drop_s:
        raise ValueError("first crack must come after the start and before the drop")
    return round((drop_s - first_crack_s) / drop_s * 100, 1)


def rate_of_rise(
    samples: Sequence[tuple[float, float]], window_s: float = 30.0
) -> list[tuple[float, float]]:
    """Rate of rise (°C per minute) from ``(seconds, bean temperature)`` samples.

    Each output point compares a sample with the latest sample at least ``window_s``
    earlier, which smooths probe noise the way roast-logging programs do.

    >>> rate_of_rise([(0, 100), (30, 110), (60, 118), (90, 125)])
    [(30, 20.0), (60, 16.0), (90, 14.0)]
    """
    ordered = sorted(samples)
    result: list[tuple[float, float]] = []
    j = 0
    for t, temp in ordered:
        while j + 1 < len(ordered) and ordered[j + 1][0] <= t - window_s:
            j += 1
        t0, temp0 = ordered[j]
        if t - t0 >= window_s:
            result.append((t, round((temp - temp0) / (t - t0) * 60, 1)))
    return result


def roast_warnings(
    ror: Sequence[tuple[float, float]], first_crack_s: float | None = None
) -> list[str]:
    """Spot common roast-profile faults in a rate-of-rise series.

    Flags a rate of rise that increases (a "flick") after first crack, a crash (a drop of
    more than half within a minute), and a stall (at or below zero).

    >>> roast_warnings([(60, 20), (90, 18), (120, 5), (150, 4)])
    ['crash at 2:00: rate of rise fell from 18.0 to 5.0 °C/min']
    """
    warnings: list[str] = []
    for (t_prev, r_prev), (t, r) in itertools.pairwise(ror):
        if r <= 0:
            warnings.append(f"stall at {format_time(t)}: temperature stopped rising")
        elif r_prev > 0 and r < r_prev / 2 and t - t_prev <= 60:
            warnings.append(
                f"crash at {format_time(t)}: rate of rise fell from {r_prev:.1f} to {r:.1f} °C/min"
            )
        elif first_crack_s is not None and t > first_crack_s and r > r_prev + 1:
            warnings.append(f"flick at {format_time(t)}: rate of rise increased after first crack")
    return warnings


# ---------------------------------------------------------------------------------------
# Cupping
# ---------------------------------------------------------------------------------------

#: Categories of the classic SCA cupping form, each scored 6–10 in quarter points, except
#: uniformity, clean cup and sweetness, which are 2 points per good cup out of five.
CUPPING_ATTRIBUTES = (
    "fragrance_aroma",
    "flavour",
    "aftertaste",
    "acidity",
    "body",
    "balance",
    "overall",
)
CUP_COUNT_ATTRIBUTES = ("uniformity", "clean_cup", "sweetness")


@dataclass
class CuppingScore:
    """One coffee's score on the classic SCA form.

    >>> s = CuppingScore("Kenya AB", fragrance_aroma=8, flavour=8, aftertaste=7.75,
    ...                  acidity=8.25, body=7.5, balance=7.75, overall=8)
    >>> s.total
    85.25
    >>> s.grade
    'very good'
    """

    coffee: str
    fragrance_aroma: float = 7.0
    flavour: float = 7.0
    aftertaste: float = 7.0
    acidity: float = 7.0
    body: float = 7.0
    balance: float = 7.0
    overall: float = 7.0
    uniform_cups: int = 5
    clean_cups: int = 5
    sweet_cups: int = 5
    taint_cups: int = 0
    fault_cups: int = 0
    descriptors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in CUPPING_ATTRIBUTES:
            value = getattr(self, name)
            if not 6 <= value <= 10 or (value * 4) != int(value * 4):
                raise ValueError(f"{name} must be 6–10 in steps of 0.25, got {value}")
        for name in ("uniform_cups", "clean_cups", "sweet_cups", "taint_cups", "fault_cups"):
            if not 0 <= getattr(self, name) <= 5:
                raise ValueError(f"{name} counts cups out of five")

    @property
    def defects(self) -> int:
        """Points subtracted: 2 per tainted cup, 4 per faulty cup."""
        return 2 * self.taint_cups + 4 * self.fault_cups

    @property
    def total(self) -> float:
        """Final score out of 100."""
        attrs = sum(getattr(self, name) for name in CUPPING_ATTRIBUTES)
        cups = 2 * (self.uniform_cups + self.clean_cups + self.sweet_cups)
        return attrs + cups - self.defects

    @property
    def grade(self) -> str:
        """Verbal grade used on SCA forms: 'outstanding', 'excellent', 'very good' or below."""
        if self.total >= 90:
            return "outstanding"
        if self.total >= 85:
            return "excellent" if self.total >= 87.5 else "very good"
        if self.total >= 80:
            return "very good"
        return "below specialty"


def rank_table(scores: Iterable[CuppingScore]) -> list[tuple[int, str, float]]:
    """Rank a cupping table: ``(place, coffee, total)`` with ties sharing a place.

    >>> a = CuppingScore("A", flavour=8)
    >>> b = CuppingScore("B", flavour=8)
    >>> c = CuppingScore("C")
    >>> rank_table([c, a, b])
    [(1, 'A', 80.0), (1, 'B', 80.0), (3, 'C', 79.0)]
    """
    ordered = sorted(scores, key=lambda s: (-s.total, s.coffee))
    ranked: list[tuple[int, str, float]] = []
    for i, score in enumerate(ordered):
        place = ranked[-1][0] if ranked and ranked[-1][2] == score.total else i + 1
        ranked.append((place, score.coffee, score.total))
    return ranked


def cupping_dose(cup_ml: float = 150.0) -> float:
    """Grams of coffee for a cupping bowl of ``cup_ml`` (8.25 g per 150 ml).

    >>> cupping_dose(200)
    11.0
    """
    return round(cup_ml * 8.25 / 150, 2)


# ---------------------------------------------------------------------------------------
# Freshness and maintenance schedules
# ---------------------------------------------------------------------------------------

#: Days after roasting when a coffee is at its best, by use: (from, until).
FRESHNESS_DAYS = {
    "filter": (4, 28),
    "espresso": (7, 35),
    "cold brew": (3, 42),
}


def freshness_window(roast_date: date, use: str = "filter") -> tuple[date, date]:
    """The dates between which a coffee roasted on ``roast_date`` is at its best.

    >>> freshness_window(date(2026, 3, 1), "espresso")
    (datetime.date(2026, 3, 8), datetime.date(2026, 4, 5))
    """
    try:
        start, end = FRESHNESS_DAYS[use]
    except KeyError:
        raise ValueError(f"use must be one of {sorted(FRESHNESS_DAYS)}") from None
    return roast_date + timedelta(days=start), roast_date + timedelta(days=end)


def freshness_status(roast_date: date, today: date, use: str = "filter") -> str:
    """'resting', 'at its best' or 'past its best' for a bag on ``today``.

    >>> freshness_status(date(2026, 3, 1), date(2026, 3, 3))
    'resting'
    """
    start, end = freshness_window(roast_date, use)
    if today < start:
        return "resting"
    if today <= end:
        return "at its best"
    return "past its best"


def descaling_interval_days(hardness_mg_l: float, litres_per_day: float = 1.0) -> int:
    """Suggested days between descaling a kettle or machine.

    Based on the Brewbook rule of thumb: monthly for hard water (over 120 mg/L) at a litre
    a day, every 2–3 months for medium water, every 3–6 months for soft water, scaled by use.

    >>> descaling_interval_days(150)
    30
    >>> descaling_interval_days(40, litres_per_day=2)
    68
    """
    _require_positive(litres_per_day=litres_per_day)
    if hardness_mg_l > 120:
        base = 30
    elif hardness_mg_l > 60:
        base = 75
    else:
        base = 135
    return max(7, round(base / litres_per_day))


def group_gasket_due(installed: date, today: date, shots_per_day: int = 2) -> bool:
    """Whether a group gasket is due for replacement (6–12 months; sooner with heavy use).

    >>> group_gasket_due(date(2025, 1, 1), date(2025, 9, 1), shots_per_day=6)
    True
    """
    months = 6 if shots_per_day >= 4 else 12
    return today >= installed + timedelta(days=30 * months)


# ---------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------


def cost_per_cup(bag_price: float, bag_g: float, dose_g: float, extras: float = 0.0) -> float:
    """Price of one brew: the coffee share of the bag plus ``extras`` (filter, milk...).

    >>> cost_per_cup(14.0, 250, 16)
    0.9
    >>> cost_per_cup(14.0, 250, 16, extras=0.35)
    1.25
    """
    _require_positive(bag_g=bag_g, dose_g=dose_g)
    return round(bag_price * dose_g / bag_g + extras, 2)


def cups_per_bag(bag_g: float, dose_g: float) -> int:
    """Whole brews in a bag.

    >>> cups_per_bag(250, 16)
    15
    """
    _require_positive(dose_g=dose_g)
    return int(bag_g // dose_g)


def green_vs_roasted_cost(
    green_price_per_kg: float, roasted_price_per_kg: float, weight_loss: float = 15.0
) -> float:
    """Saving (fraction) from home roasting, counting roast weight loss only.

    >>> round(green_vs_roasted_cost(12, 40), 2)
    0.65
    """
    effective_green = green_price_per_kg / (1 - weight_loss / 100)
    return 1 - effective_green / roasted_price_per_kg


# ---------------------------------------------------------------------------------------
# Brew logs
# ---------------------------------------------------------------------------------------

#: Columns of a Brewbook brew log CSV file.
LOG_COLUMNS = (
    "date",
    "coffee",
    "roast_date",
    "method",
    "dose_g",
    "water_g",
    "temperature_c",
    "grind",
    "time",
    "rating",
    "notes",
)


@dataclass(frozen=True)
class BrewRecord:
    """One line of a brew log."""

    day: date
    coffee: str
    method: str
    dose_g: float
    water_g: float
    temperature_c: float | None = None
    grind: str = ""
    time_s: int | None = None
    rating: int | None = None  # 1–5
    roast_date: date | None = None
    notes: str = ""

    @property
    def ratio(self) -> float:
        return ratio_of(self.dose_g, self.water_g)

    @property
    def days_off_roast(self) -> int | None:
        return (self.day - self.roast_date).days if self.roast_date else None


def _parse_date(text: str) -> date | None:
    text = text.strip()
    return date.fromisoformat(text) if text else None


def _parse_float(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def parse_log(text: str) -> Iterator[BrewRecord]:
    """Read brew log CSV text (header row with :data:`LOG_COLUMNS`).

    Errors name the line so the log can be fixed.

    >>> header = "date,coffee,roast_date,method,dose_g,water_g,temperature_c,grind,time,rating"
    >>> csv_text = header + '''
    ... 2026-05-03,Kenya AB,2026-04-20,V60,15,250,96,20,2:50,4
    ... '''
    >>> rec = next(parse_log(csv_text))
    >>> rec.ratio, rec.time_s, rec.days_off_roast
    (16.7, 170, 13)
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"date", "coffee", "method", "dose_g", "water_g"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"brew log is missing columns: {', '.join(sorted(missing))}")
    for line_no, row in enumerate(reader, start=2):
        try:
            yield _record(row)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"brew log line {line_no}: {exc}") from exc


def _record(row: dict[str, str]) -> BrewRecord:
    day = _parse_date(row["date"])
    if day is None:
        raise ValueError("date is empty")
    dose, water = _parse_float(row["dose_g"]), _parse_float(row["water_g"])
    if dose is None or water is None:
        raise ValueError("dose_g and water_g are required")
    time_text = (row.get("time") or "").strip()
    rating_text = (row.get("rating") or "").strip()
    return BrewRecord(
        day=day,
        coffee=row["coffee"].strip(),
        method=row["method"].strip(),
        dose_g=dose,
        water_g=water,
        temperature_c=_parse_float(row.get("temperature_c") or ""),
        grind=(row.get("grind") or "").strip(),
        time_s=parse_time(time_text) if time_text else None,
        rating=int(rating_text) if rating_text else None,
        roast_date=_parse_date(row.get("roast_date") or ""),
        notes=(row.get("notes") or "").strip(),
    )


@dataclass
class BrewLog:
    """A collection of brew records with the summaries used at meetups."""

    records: list[BrewRecord] = field(default_factory=list)

    @classmethod
    def from_csv(cls, text: str) -> BrewLog:
        return cls(list(parse_log(text)))

    def to_csv(self) -> str:
        """Write the log back as CSV with the standard columns."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(LOG_COLUMNS)
        for r in self.records:
            writer.writerow(
                [
                    r.day.isoformat(),
                    r.coffee,
                    r.roast_date.isoformat() if r.roast_date else "",
                    r.method,
                    f"{r.dose_g:g}",
                    f"{r.water_g:g}",
                    "" if r.temperature_c is None else f"{r.temperature_c:g}",
                    r.grind,
                    "" if r.time_s is None else format_time(r.time_s),
                    "" if r.rating is None else r.rating,
                    r.notes,
                ]
            )
        return out.getvalue()

    def by_method(self) -> dict[str, list[BrewRecord]]:
        """Records grouped by method, methods in alphabetical order."""
        groups: dict[str, list[BrewRecord]] = {}
        for record in sorted(self.records, key=lambda r: r.method.lower()):
            groups.setdefault(record.method, []).append(record)
        return groups

    def best(self, method: str | None = None) -> BrewRecord | None:
        """The highest-rated record (most recent wins ties), optionally for one method."""
        rated = [
            r
            for r in self.records
            if r.rating is not None and (method is None or r.method.lower() == method.lower())
        ]
        if not rated:
            return None
        return max(rated, key=lambda r: (r.rating or 0, r.day))

    def consistency(self, method: str) -> dict[str, float]:
        """Spread (standard deviation) of dose, ratio and time for one method.

        Large spreads while troubleshooting point at measurement, not at beans.
        """
        records = [r for r in self.records if r.method.lower() == method.lower()]
        if len(records) < 2:
            return {}
        result = {
            "dose_g": statistics.stdev(r.dose_g for r in records),
            "ratio": statistics.stdev(r.ratio for r in records),
        }
        times = [r.time_s for r in records if r.time_s is not None]
        if len(times) >= 2:
            result["time_s"] = statistics.stdev(times)
        return {k: round(v, 2) for k, v in result.items()}

    def rating_by_age(self) -> list[tuple[int, float]]:
        """Average rating by week off roast: ``(week, mean rating)``."""
        buckets: dict[int, list[int]] = {}
        for r in self.records:
            age = r.days_off_roast
            if age is not None and r.rating is not None:
                buckets.setdefault(age // 7, []).append(r.rating)
        return [(week, round(statistics.mean(v), 2)) for week, v in sorted(buckets.items())]


# ---------------------------------------------------------------------------------------
# Milk
# ---------------------------------------------------------------------------------------

#: Milk drinks: (espresso shots, milk ml, foam depth cm).
MILK_DRINKS: dict[str, tuple[int, int, float]] = {
    "macchiato": (1, 15, 1.0),
    "cortado": (2, 60, 0.3),
    "piccolo": (1, 80, 0.5),
    "flat white": (2, 120, 0.5),
    "cappuccino": (2, 120, 1.75),
    "latte": (2, 220, 1.0),
}


def milk_for_drinks(orders: dict[str, int], waste_fraction: float = 0.15) -> int:
    """Millilitres of milk to steam for a round of drinks, with a margin for waste.

    Milk expands as it is aerated, and some is always left in the jug.

    >>> milk_for_drinks({"latte": 2, "flat white": 1})
    644
    """
    total = 0
    for drink, count in orders.items():
        try:
            total += MILK_DRINKS[drink.lower()][1] * count
        except KeyError:
            raise ValueError(f"unknown drink {drink!r}; known: {sorted(MILK_DRINKS)}") from None
    return round(total * (1 + waste_fraction))


def jug_size_ml(milk_ml: float) -> int:
    """Smallest common pitcher size that fits ``milk_ml`` below the spout (about 55 % full).

    >>> jug_size_ml(250)
    600
    """
    for size in (350, 600, 750, 950):
        if milk_ml <= size * 0.55:
            return size
    raise ValueError("steam in batches: that much milk does not texture well in one jug")


def milk_temperature_ok(celsius: float) -> str:
    """Verdict on steamed milk temperature.

    >>> milk_temperature_ok(75)
    'too hot: proteins denature above 70 °C and the milk tastes cooked'
    """
    if celsius > 70:
        return "too hot: proteins denature above 70 °C and the milk tastes cooked"
    if celsius < 50:
        return "lukewarm: steam a little longer"
    return "good"


# ---------------------------------------------------------------------------------------
# Moka pot and Turkish coffee
# ---------------------------------------------------------------------------------------

#: Moka pot sizes ("cups") to approximate basket dose (g) and water to the valve (ml).
MOKA_POTS: dict[int, tuple[float, int]] = {
    1: (6.5, 60),
    2: (10.0, 100),
    3: (16.0, 150),
    4: (20.0, 200),
    6: (28.0, 300),
    9: (40.0, 450),
    12: (55.0, 600),
}


def moka_pot(cups: int) -> Recipe:
    """Recipe for a moka pot of a given "cup" size (fill the basket, water to the valve).

    >>> moka_pot(3).describe()
    'Moka pot (3-cup): 16 g coffee, 150 g water (1:9.4) at 70 °C, medium-fine grind'
    """
    try:
        dose, water = MOKA_POTS[cups]
    except KeyError:
        raise ValueError(f"moka pots come in {sorted(MOKA_POTS)} cups") from None
    return Recipe(
        f"Moka pot ({cups}-cup)",
        dose,
        water,
        temperature_c=70,
        grind="medium-fine",
        notes="start with hot water; do not tamp",
    )


_TURKISH_SUGAR_G = {"sade": 0.0, "az şekerli": 2.5, "orta": 5.0, "şekerli": 7.5}


def turkish_coffee(cups: int, sweetness: str = "orta") -> dict[str, float]:
    """Coffee, water and sugar for ``cups`` cups of Turkish coffee.

    ``sweetness`` uses the Turkish names: sade (plain), az şekerli (a little),
    orta (medium) or şekerli (sweet).

    >>> turkish_coffee(2, "sade")
    {'coffee_g': 14.0, 'water_ml': 140.0, 'sugar_g': 0.0}
    """
    if cups < 1:
        raise ValueError("at least one cup")
    try:
        sugar = _TURKISH_SUGAR_G[sweetness]
    except KeyError:
        raise ValueError(f"sweetness must be one of {list(_TURKISH_SUGAR_G)}") from None
    return {"coffee_g": 7.0 * cups, "water_ml": 70.0 * cups, "sugar_g": sugar * cups}


# ---------------------------------------------------------------------------------------
# Scales, flow and grinders
# ---------------------------------------------------------------------------------------


def flow_rates(samples: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pour flow rate (g/s) between successive ``(seconds, scale grams)`` samples.

    Smart scales log weight several times a second; this turns the log into the flow
    curve shown in their apps. Pauses show up as zero flow.

    >>> flow_rates([(0, 0), (5, 25), (10, 50), (15, 50)])
    [(5, 5.0), (10, 5.0), (15, 0.0)]
    """
    ordered = sorted(samples)
    rates: list[tuple[float, float]] = []
    for (t0, w0), (t1, w1) in itertools.pairwise(ordered):
        if t1 > t0:
            rates.append((t1, round(max(0.0, w1 - w0) / (t1 - t0), 2)))
    return rates


def pour_steadiness(samples: Sequence[tuple[float, float]]) -> float | None:
    """Coefficient of variation of the flow while pouring (lower is steadier).

    Intervals with no flow (pauses between pours) are ignored. A steady hand with a
    gooseneck kettle usually scores below 0.2.

    >>> pour_steadiness([(0, 0), (2, 10), (4, 20), (6, 31), (8, 40)])
    0.08
    """
    flowing = [rate for _, rate in flow_rates(samples) if rate > 0.2]
    if len(flowing) < 2:
        return None
    mean = statistics.mean(flowing)
    return round(statistics.stdev(flowing) / mean, 2)


def shot_end_weight(target_g: float, flow_g_s: float, lag_s: float = 1.5) -> float:
    """Scale reading at which to stop an espresso shot so it settles at ``target_g``.

    Espresso keeps dripping after the pump stops, for roughly a second or two. Stopping at
    ``target - flow × lag`` compensates.

    >>> shot_end_weight(36, 2.0)
    33.0
    """
    return round(target_g - flow_g_s * lag_s, 1)


#: Rough home burr life in kilograms of coffee before burrs noticeably dull.
BURR_LIFE_KG = {"steel": 750.0, "coated steel": 1500.0, "ceramic": 1000.0}


def burr_wear(kg_ground: float, burr: str = "steel") -> float:
    """Fraction of a burr set's expected life used after ``kg_ground`` kilograms.

    >>> burr_wear(150)
    0.2
    """
    try:
        life = BURR_LIFE_KG[burr]
    except KeyError:
        raise ValueError(f"burr must be one of {sorted(BURR_LIFE_KG)}") from None
    return round(kg_ground / life, 3)


def kg_per_year(dose_g: float, brews_per_day: float) -> float:
    """Kilograms of coffee ground per year at a daily habit.

    >>> kg_per_year(18, 2)
    13.14
    """
    return round(dose_g * brews_per_day * 365 / 1000, 2)


def years_of_burr_life(dose_g: float, brews_per_day: float, burr: str = "steel") -> float:
    """How many years a burr set lasts at a daily habit.

    >>> years_of_burr_life(18, 2)
    55.6
    """
    return round(1 / burr_wear(kg_per_year(dose_g, brews_per_day), burr), 1)


def purge_needed(idle_minutes: float, retention_g: float) -> float:
    """Grams to purge before a shot after the grinder sat idle, given its retention.

    Retained grounds go stale in minutes; after about 30 minutes idle, purge all of them.

    >>> purge_needed(45, 1.2)
    1.2
    >>> purge_needed(5, 1.2)
    0.0
    """
    return retention_g if idle_minutes >= 30 else 0.0


def ratio_table(doses: Iterable[float], ratios: Iterable[float]) -> str:
    """A plain-text table of water weights for each dose and ratio, for printing.

    >>> print(ratio_table([15, 20], [15, 16]))
    dose    1:15  1:16
    15 g     225   240
    20 g     300   320
    """
    ratios = list(ratios)
    header = "dose  " + "".join(f"{'1:' + format(r, 'g'):>6}" for r in ratios)
    rows = [header]
    for dose in doses:
        cells = "".join(f"{dose * r:>6.0f}" for r in ratios)
        rows.append(f"{format(dose, 'g') + ' g':<6}{cells}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------
# Command-line interface
# ---------------------------------------------------------------------------------------


def _cmd_ratio(args: argparse.Namespace) -> str:
    if args.water is not None:
        return f"{coffee_for_water(args.water, args.ratio):g} g coffee"
    return f"{water_for_coffee(args.coffee, args.ratio):g} g water"


def _cmd_extraction(args: argparse.Namespace) -> str:
    ey = extraction_yield(args.dose, args.beverage, args.tds)
    zone = classify_extraction(ey, args.tds)
    return f"extraction {ey:.1f} %, {zone.label}. {advice_for_zone(zone)}"


def _cmd_water(args: argparse.Namespace) -> str:
    recipe = salts_for_water(args.hardness, args.alkalinity, args.litres, buffer=args.buffer)
    return "\n".join([f"For {args.litres:g} L of distilled water:", *recipe.lines()])


def _cmd_dial_in(args: argparse.Namespace) -> str:
    return str(dial_in(args.dose, args.yield_g, args.time, args.taste, roast=args.roast))


def _cmd_schedule(args: argparse.Namespace) -> str:
    steps = pour_schedule(args.coffee, args.ratio, pours=args.pours)
    return "\n".join(str(step) for step in steps)


def _cmd_caffeine(args: argparse.Namespace) -> str:
    return f"about {caffeine_mg(args.dose, args.species, args.method):.0f} mg caffeine"


def _cmd_boil(args: argparse.Namespace) -> str:
    return f"water boils at about {boiling_point_at_altitude(args.altitude):.1f} °C"


def _cmd_log(args: argparse.Namespace) -> str:
    with open(args.path, encoding="utf-8") as handle:
        log = BrewLog.from_csv(handle.read())
    lines = [f"{len(log.records)} brews"]
    for method, records in log.by_method().items():
        best = log.best(method)
        line = f"{method}: {len(records)} brews"
        if best is not None:
            line += f", best rated {best.rating}/5 on {best.day.isoformat()} ({best.coffee})"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``brewlab`` command-line parser (one subcommand per calculator)."""
    parser = argparse.ArgumentParser(prog="brewlab", description="Brewbook coffee calculators.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ratio", help="coffee for water, or water for coffee")
    p.add_argument("--ratio", type=float, default=16.0)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--water", type=float)
    g.add_argument("--coffee", type=float)
    p.set_defaults(func=_cmd_ratio)

    p = sub.add_parser("extraction", help="extraction yield from a TDS reading")
    p.add_argument("--dose", type=float, required=True)
    p.add_argument("--beverage", type=float, required=True)
    p.add_argument("--tds", type=float, required=True)
    p.set_defaults(func=_cmd_extraction)

    p = sub.add_parser("water", help="salts for brewing water")
    p.add_argument("--hardness", type=float, default=70.0)
    p.add_argument("--alkalinity", type=float, default=40.0)
    p.add_argument("--litres", type=float, default=1.0)
    p.add_argument("--buffer", choices=("sodium", "potassium"), default="sodium")
    p.set_defaults(func=_cmd_water)

    p = sub.add_parser("dial-in", help="next change for an espresso shot")
    p.add_argument("--dose", type=float, required=True)
    p.add_argument("--yield", dest="yield_g", type=float, required=True)
    p.add_argument("--time", type=float, required=True)
    p.add_argument("--taste", choices=[t.value for t in Taste], required=True)
    p.add_argument("--roast", choices=("light", "medium", "dark"), default="medium")
    p.set_defaults(func=_cmd_dial_in)

    p = sub.add_parser("schedule", help="pour-over pour schedule")
    p.add_argument("--coffee", type=float, required=True)
    p.add_argument("--ratio", type=float, default=16.0)
    p.add_argument("--pours", type=int, default=3)
    p.set_defaults(func=_cmd_schedule)

    p = sub.add_parser("caffeine", help="estimate caffeine in a drink")
    p.add_argument("--dose", type=float, required=True)
    p.add_argument("--species", default="arabica")
    p.add_argument("--method", default="filter")
    p.set_defaults(func=_cmd_caffeine)

    p = sub.add_parser("boil", help="boiling point at an altitude")
    p.add_argument("--altitude", type=float, required=True, help="metres above sea level")
    p.set_defaults(func=_cmd_boil)

    p = sub.add_parser("log", help="summarise a brew log CSV")
    p.add_argument("path")
    p.set_defaults(func=_cmd_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    >>> main(["ratio", "--water", "500", "--ratio", "16"])
    31.25 g coffee
    0
    >>> main(["boil", "--altitude", "2000"])
    water boils at about 93.2 °C
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        print(args.func(args))
    except ValueError as exc:
        print(f"brewlab: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
