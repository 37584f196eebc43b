"""Country reference data for the simulator: real postcodes with their NUTS 2024 NUTS3 code, regional risk
factors, and first/last names and company legal forms per country.

The postcodes are TERCET's (`cardo_pipeline.geo.postcodes`, the tables the reference assets load), in each
country's own form (NL `1011 AB`, PT `1000-001`, five digits elsewhere). A borrower's country is drawn by
COUNTRY_WEIGHTS, then a postcode of that country uniformly: regions weigh as many postcodes as they have, which
follows where people live (postcodes are finer where addresses are denser).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from cardo_pipeline.geo.postcodes import tercet_rows

COUNTRIES: tuple[str, ...] = ("IT", "ES", "DE", "FR", "NL", "PT")
# Share of borrowers per country (a southern-European-heavy book, like many ABF portfolios).
COUNTRY_WEIGHTS: dict[str, float] = {"IT": 0.26, "ES": 0.20, "DE": 0.18, "FR": 0.20, "NL": 0.08, "PT": 0.08}
# Median annual income of an individual borrower, EUR.
MEDIAN_INCOME: dict[str, float] = {
    "IT": 31_000, "ES": 28_000, "DE": 46_000, "FR": 38_000, "NL": 48_000, "PT": 21_000,
}  # fmt: skip

# Hidden regional risk, in logit units of the monthly missed-payment probability: a country base plus a NUTS1
# adjustment (south of Italy and Spain, eastern Germany and the north of France riskier).
COUNTRY_RISK: dict[str, float] = {"IT": 0.15, "ES": 0.10, "DE": -0.20, "FR": 0.0, "NL": -0.30, "PT": 0.15}
NUTS1_RISK: dict[str, float] = {
    "ITC": -0.15, "ITH": -0.25, "ITI": 0.0, "ITF": 0.40, "ITG": 0.50,
    "ES1": 0.05, "ES2": -0.20, "ES3": -0.10, "ES4": 0.05, "ES5": 0.0, "ES6": 0.30, "ES7": 0.35,
    "DE1": -0.15, "DE2": -0.20, "DE3": 0.15, "DE4": 0.25, "DE8": 0.25, "DED": 0.15, "DEE": 0.30, "DEG": 0.15,
    "FR1": -0.10, "FRE": 0.30, "FRL": 0.15, "FRJ": 0.05, "FRF": 0.10,
    "PT2": 0.10, "PT3": 0.10,
}  # fmt: skip


@dataclass(frozen=True)
class Postcode:
    country_code: str
    postcode: str
    nuts3: str

    @property
    def nuts1(self) -> str:
        return self.nuts3[:3]


def region_risk(nuts3: str) -> float:
    return COUNTRY_RISK[nuts3[:2]] + NUTS1_RISK.get(nuts3[:3], 0.0)


class CountryPostcodes(Sequence[Postcode]):
    """A country's TERCET postcodes, sorted; a Postcode is made when drawn (NL alone has 465k)."""

    def __init__(self, country_code: str, postcodes: list[str], nuts3: list[str]):
        self.country_code, self._postcodes, self._nuts3 = country_code, postcodes, nuts3

    def __len__(self) -> int:
        return len(self._postcodes)

    def __getitem__(self, index):  # an int: what random.choice asks for
        return Postcode(self.country_code, self._postcodes[index], self._nuts3[index])

    def find(self, postcode: str) -> Postcode | None:
        index = bisect.bisect_left(self._postcodes, postcode)
        found = index < len(self) and self._postcodes[index] == postcode
        return self[index] if found else None


@cache
def postcodes_by_country() -> dict[str, CountryPostcodes]:
    columns: dict[str, tuple[list[str], list[str]]] = {c: ([], []) for c in COUNTRIES}
    for country, postcode, nuts3 in tercet_rows(COUNTRIES):
        columns[country][0].append(postcode)
        columns[country][1].append(nuts3)
    return {c: CountryPostcodes(c, *columns[c]) for c in COUNTRIES}


FIRST_NAMES: dict[str, tuple[str, ...]] = {
    "IT": ("Marco", "Giulia", "Luca", "Francesca", "Alessandro", "Chiara", "Giuseppe", "Sara", "Matteo",
           "Elena", "Andrea", "Valentina", "Stefano", "Martina", "Roberto", "Federica", "Davide", "Silvia",
           "Paolo", "Anna"),
    "ES": ("Javier", "María", "Carlos", "Lucía", "Alejandro", "Carmen", "Manuel", "Laura", "David", "Marta",
           "Pablo", "Ana", "Sergio", "Cristina", "Jorge", "Elena", "Antonio", "Paula", "Miguel", "Isabel"),
    "DE": ("Lukas", "Anna", "Maximilian", "Laura", "Jonas", "Julia", "Felix", "Sophie", "Thomas",
           "Katharina", "Michael", "Lea", "Stefan", "Hannah", "Andreas", "Lena", "Tobias", "Sarah", "Jan",
           "Miriam"),
    "FR": ("Thomas", "Camille", "Nicolas", "Léa", "Julien", "Manon", "Antoine", "Chloé", "Maxime", "Sarah",
           "Pierre", "Julie", "Hugo", "Emma", "Romain", "Pauline", "Alexandre", "Inès", "Mathieu", "Claire"),
    "NL": ("Daan", "Emma", "Sem", "Julia", "Lucas", "Sophie", "Bram", "Anna", "Thijs", "Lotte", "Jesse",
           "Sanne", "Ruben", "Fleur", "Niels", "Eva", "Joost", "Lisa", "Pieter", "Femke"),
    "PT": ("João", "Maria", "Rodrigo", "Ana", "Tiago", "Beatriz", "Diogo", "Inês", "Pedro", "Mariana",
           "Miguel", "Sofia", "Rui", "Catarina", "André", "Joana", "Nuno", "Rita", "Bruno", "Marta"),
}  # fmt: skip

LAST_NAMES: dict[str, tuple[str, ...]] = {
    "IT": ("Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
           "Greco", "Bruno", "Gallo", "Conti", "De Luca", "Mancini", "Costa", "Giordano", "Rizzo",
           "Lombardi", "Moretti"),
    "ES": ("García", "Fernández", "González", "Rodríguez", "López", "Martínez", "Sánchez", "Pérez", "Gómez",
           "Martín", "Jiménez", "Ruiz", "Hernández", "Díaz", "Moreno", "Álvarez", "Romero", "Navarro",
           "Torres", "Domínguez"),
    "DE": ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
           "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
           "Schwarz", "Braun"),
    "FR": ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
           "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
           "Vincent", "Fournier"),
    "NL": ("de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser",
           "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks",
           "van Leeuwen", "Dekker", "Brouwer"),
    "PT": ("Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Martins", "Jesus",
           "Sousa", "Fernandes", "Gonçalves", "Gomes", "Lopes", "Marques", "Alves", "Almeida", "Ribeiro",
           "Pinto", "Carvalho"),
}  # fmt: skip

# Legal forms of small companies, and trades that name them.
LEGAL_FORMS: dict[str, tuple[str, ...]] = {
    "IT": ("S.r.l.", "S.n.c.", "S.r.l.s."),
    "ES": ("S.L.", "S.A.", "S.L.U."),
    "DE": ("GmbH", "UG", "KG"),
    "FR": ("SARL", "SAS", "EURL"),
    "NL": ("B.V.", "V.O.F."),
    "PT": ("Lda.", "Unipessoal Lda."),
}  # fmt: skip
TRADES: dict[str, tuple[str, ...]] = {
    "IT": ("Costruzioni", "Trasporti", "Impianti", "Ristorazione", "Meccanica", "Logistica", "Ceramiche"),
    "ES": ("Construcciones", "Transportes", "Instalaciones", "Hostelería", "Talleres", "Logística",
           "Reformas"),
    "DE": ("Bau", "Transporte", "Haustechnik", "Gastronomie", "Maschinenbau", "Logistik", "Metallbau"),
    "FR": ("Bâtiment", "Transports", "Électricité", "Restauration", "Mécanique", "Logistique", "Menuiserie"),
    "NL": ("Bouw", "Transport", "Installatietechniek", "Horeca", "Metaalbewerking", "Logistiek", "Schilders"),
    "PT": ("Construções", "Transportes", "Instalações", "Restauração", "Metalomecânica", "Logística",
           "Têxteis"),
}  # fmt: skip
