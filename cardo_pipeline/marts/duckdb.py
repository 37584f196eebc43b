"""DuckDB with its `delta` and `iceberg` extensions from the installed wheels, never downloaded.

The curated Delta tables carry deletion vectors. DuckDB's `delta` extension reads them through delta-kernel and
honours them; dbt-duckdb's own `delta` plugin reads through deltalake's pyarrow reader, which refuses them. DuckDB
fetches extensions from its repository at run time, which cannot work offline, so the `duckdb-ext-*` wheels ship
them and every connection here points DuckDB at their folder and turns automatic installs off. DuckDB loads only
extensions built for its own version: the pin in pyproject.toml follows the wheels'.

`Plugin` is the dbt-duckdb plugin the profile names (dbt_project/profiles.yml); `connect` opens the same kind of
connection for Python (the marts' plots, tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

EXTENSIONS = ("delta", "avro", "iceberg")  # iceberg reads manifests through avro: load avro first


def extension_directory() -> Path:
    """The folder the duckdb-ext-* wheels install into (`<dir>/v<version>/<platform>/<name>.duckdb_extension`)."""
    import duckdb_ext  # namespace package of the duckdb-ext-* wheels

    for root in duckdb_ext.__path__:
        folder = Path(root) / "extensions"
        if (folder / f"v{duckdb.__version__}").is_dir():
            return folder
    raise RuntimeError(
        f"no DuckDB extensions for DuckDB {duckdb.__version__} under {list(duckdb_ext.__path__)}: install the "
        "duckdb-ext-delta, duckdb-ext-avro and duckdb-ext-iceberg wheels built for it (`make venv` does)")


def connection_config() -> dict[str, Any]:
    return {"extension_directory": str(extension_directory()), "autoinstall_known_extensions": False,
            "autoload_known_extensions": False}


def load_extensions(conn: duckdb.DuckDBPyConnection) -> None:
    for name in EXTENSIONS:
        conn.execute(f"LOAD {name}")


def connect(database: str | Path = ":memory:", *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads Delta (deletion vectors included) and Iceberg tables offline."""
    conn = duckdb.connect(str(database), read_only=read_only, config=connection_config())
    load_extensions(conn)
    return conn


try:
    from dbt.adapters.duckdb.plugins import BasePlugin
except ImportError:  # dbt-duckdb is not installed where only `connect` is needed
    BasePlugin = object  # type: ignore[assignment,misc]


class Plugin(BasePlugin):  # type: ignore[misc,valid-type]
    """dbt-duckdb plugin: the connection finds the wheels' extensions and loads them."""

    def update_connection_config(self, creds, config: dict[str, Any]) -> None:
        config.update(connection_config())

    def configure_connection(self, conn) -> None:
        load_extensions(conn)
