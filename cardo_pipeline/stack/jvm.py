"""Jars resolved by Maven into a cache outside git: Kafka, Kafka Connect and Debezium from deploy/jvm/pom.xml, the
Spark engine's Delta, Iceberg and Kafka-source jars from deploy/spark/pom.xml.

Each folder is keyed by its pom's hash, so a pom change resolves again and an unchanged pom costs nothing.
The lib folder is wiped before each resolution: a `lib/*` classpath has no defined order, so a stale jar
could shadow a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

from cardo_pipeline.settings import CardoSettings
from cardo_pipeline.stack.process import StackError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "deploy" / "jvm" / "pom.xml"
SPARK_POM = PROJECT_ROOT / "deploy" / "spark" / "pom.xml"


def java_bin() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java not found: install OpenJDK 17+ (apt-get install -y openjdk-17-jre-headless)")
    return java


def resolve_jars(settings: CardoSettings) -> Path:
    """Return the folder holding the stack's runtime jars (Kafka, Connect, Debezium), resolving them if needed."""
    return _resolve(settings, POM, "lib", "kafka_2.13-*.jar", "the Kafka/Debezium jars")


def resolve_spark_jars(settings: CardoSettings) -> list[Path]:
    """The Spark engine's jars beyond the pyspark wheel (Delta, Iceberg, the Kafka source), resolving them if
    needed."""
    lib = _resolve(settings, SPARK_POM, "spark-lib", "delta-spark_*.jar", "the Spark engine's jars")
    return sorted(lib.glob("*.jar"))


def _resolve(settings: CardoSettings, pom: Path, folder: str, sentinel: str, what: str) -> Path:
    """The folder holding every runtime jar of `pom`, resolved with Maven if the pom changed."""
    if not pom.exists():
        raise StackError(f"{pom} is missing: run cardo from a checkout of the project")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    lib = settings.jvm_cache / folder
    marker = settings.jvm_cache / f"{folder}.sha" if folder != "lib" else settings.jvm_cache / "resolved.sha"
    settings.jvm_cache.mkdir(parents=True, exist_ok=True)
    with open(settings.jvm_cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `stack up` at once must not resolve into one folder
        if marker.exists() and marker.read_text() == digest and any(lib.glob(sentinel)):
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(f"Maven not found: install it (apt-get install -y maven) to fetch {what}")
        shutil.rmtree(lib, ignore_errors=True)
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={lib}",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            errors = [line for line in result.stdout.splitlines() if "ERROR" in line][:1]
            raise StackError(
                f"Maven could not resolve {what} from {pom.relative_to(PROJECT_ROOT)} "
                f"(is Maven Central reachable?): {errors[0] if errors else result.stderr.strip()[:300]}"
            )
        marker.write_text(digest)
    return lib


def java_command(lib: Path, main_class: str, *args: str, heap: str = "512m", log_config: Path) -> list[str]:
    return [
        java_bin(),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        f"{lib}/*",
        main_class,
        *args,
    ]
