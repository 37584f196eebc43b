"""Quality wiring shared by every domain: the factory that turns a Pandera model into a Dagster asset check, and
the monitoring that evaluates freshness and Kafka lag on a schedule."""
