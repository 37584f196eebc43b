"""Loan-level features: today the geo-enriched borrowers and collaterals that later features are built on."""
