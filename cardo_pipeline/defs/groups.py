"""The asset groups of the design (ARCHITECTURE section 2), named once; each domain folder uses its own."""

SOURCES = "sources"  # the Kafka CDC topics, observed (Debezium writes them; we never do)
RAW = "raw"
CURATED = "curated"
ICEBERG = "iceberg"
REFERENCE = "reference"
FEATURES = "features"
MODELS = "models"
MARTS = "marts"

ALL_GROUPS = (SOURCES, RAW, CURATED, ICEBERG, REFERENCE, FEATURES, MODELS, MARTS)
