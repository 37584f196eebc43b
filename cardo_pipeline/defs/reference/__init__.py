"""EU geo reference data as assets: NUTS 2024 regions, the 2021 -> 2024 crosswalk, TERCET postcode -> NUTS3."""
