"""The servicing Postgres: Debian's server binaries, a private data directory under CARDO_HOME, logical WAL.

Postgres refuses to run as root, and CI runs as root: then every server command runs as the `postgres` user,
who owns the data directory. Schema changes are versioned SQL files in `migrations/`, applied once each.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from importlib import resources
from pathlib import Path

import psycopg

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack.process import StackError, port_is_open

INSTALL_HINT = "install it with `make deps` (runs `apt-get install -y postgresql`)"


def find_bindir() -> Path:
    """The newest Debian Postgres server bin directory (not on PATH), or PG_BINDIR."""
    override = os.environ.get("PG_BINDIR")
    candidates = (
        [Path(override)]
        if override
        else sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    )
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    raise StackError(f"Postgres server binaries not found under /usr/lib/postgresql: {INSTALL_HINT}")


class Postgres:
    def __init__(self, settings: CardoSettings):
        self.settings = settings
        self.root = settings.home / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = settings.home / "logs" / "postgres.log"

    # -- running server commands as a non-root user ------------------------------------------------------
    def _server_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise StackError(f"running as root needs the `postgres` system user: {INSTALL_HINT}") from None

    def _run(self, *argv: str | Path) -> subprocess.CompletedProcess:
        user = self._server_user()
        result = subprocess.run(
            [str(a) for a in argv],
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            capture_output=True,
            text=True,
            cwd="/",
        )
        return result

    def _own(self, *paths: Path) -> None:
        user = self._server_user()
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            if user:
                os.chown(path, user.pw_uid, user.pw_gid)
        if user:
            # The server user must be able to reach its directories below a root-owned checkout.
            for parent in [self.settings.home, *self.settings.home.parents]:
                if parent.stat().st_mode & 0o001 == 0 and parent != Path("/"):
                    raise StackError(f"{parent} is not traversable by the postgres user: chmod o+x {parent}")

    # -- lifecycle ---------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        result = self._run(find_bindir() / "pg_ctl", "status", "-D", self.data_dir)
        return self.data_dir.exists() and result.returncode == 0

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._own(self.root, self.data_dir, self.socket_dir)
        result = self._run(
            find_bindir() / "initdb",
            "-D",
            self.data_dir,
            "-U",
            self.settings.pg_user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")
        # Local development only: trust on loopback, replication included (Debezium connects as cardo).
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
        )

    def start(self) -> None:
        bindir = find_bindir()
        self.init()
        if self.is_running():
            return
        if port_is_open(self.settings.host, self.settings.pg_port):
            raise StackError(
                f"port {self.settings.pg_port} is in use by a process cardo did not start: "
                "stop it or choose another with CARDO_PG_PORT"
            )
        self._own(self.socket_dir, self.log_file.parent)
        self.log_file.touch()
        user = self._server_user()
        if user:
            os.chown(self.log_file, user.pw_uid, user.pw_gid)
        options = " ".join(
            [
                f"-p {self.settings.pg_port}",
                f"-c listen_addresses={self.settings.host}",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c wal_level=logical",
                "-c max_replication_slots=8",
                "-c max_wal_senders=8",
                "-c synchronous_commit=off",  # a local dev server: commit latency matters, power loss does not
                "-c max_connections=50",
            ]
        )
        result = self._run(
            bindir / "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            self.data_dir,
            "-l",
            self.log_file,
            "-o",
            options,
        )
        if result.returncode != 0:
            raise StackError(f"Postgres did not start: see {self.log_file}")
        self.bootstrap()

    def stop(self) -> bool:
        if not self.data_dir.exists() or not self.is_running():
            return False
        result = self._run(
            find_bindir() / "pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", self.data_dir
        )
        if result.returncode != 0:
            raise StackError(f"Postgres did not stop: {result.stderr.strip()}")
        return True

    # -- database and schema -----------------------------------------------------------------------------
    def connect(self, dbname: str | None = None, **kwargs) -> psycopg.Connection:
        return psycopg.connect(
            host=self.settings.host,
            port=self.settings.pg_port,
            user=self.settings.pg_user,
            dbname=dbname or self.settings.database,
            connect_timeout=5,
            **kwargs,
        )

    def bootstrap(self) -> None:
        with self.connect(dbname="postgres", autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.settings.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.settings.database}"')
        apply_migrations(self)

    def healthy(self) -> bool:
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration, in version order."""
    folder = resources.files("cardo_pipeline.stack") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.split("__", 1)[0], f.read_text()) for f in files]


def apply_migrations(pg: Postgres) -> list[str]:
    """Apply each migration not yet recorded in cardo_meta.schema_migrations, each in its own transaction."""
    applied_now = []
    with pg.connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS cardo_meta")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS cardo_meta.schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.commit()
        done = {r[0] for r in conn.execute("SELECT version FROM cardo_meta.schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO cardo_meta.schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
    return applied_now
