"""EU geo reference data, free of Dagster: NUTS 2024 regions and the 2021 -> 2024 crosswalk (`nuts`), TERCET
postcode -> NUTS3 tables with each country's postcode rules (`postcodes`), and the enrichment of borrowers and
collaterals with their regions (`enrich`)."""
