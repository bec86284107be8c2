"""What every bench section shares: process meters, statistics, the servers on loopback (a
certbroker, Pebble, pebble-challtestsrv, the DCV web site), prepared CSRs and the report."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
CERTBROKER_CLI = str(Path(sys.executable).parent / "certbroker")
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY_TYPES = ("ec256", "rsa2048")
BenchKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- process meters ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/<pid>/stat utime, stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuMeter:
    """CPU seconds used by a set of processes between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()}
        return self.used


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms, default=0.0), 2),
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# --- loopback helpers ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def die_with_parent() -> None:
    """preexec_fn of every server: SIGTERM when the bench dies, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(process: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def post_json(port: int, path: str, body: dict[str, Any]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"POST {path} answered {response.status}")
    finally:
        connection.close()


class ChallTestSrv:
    """Debian's pebble-challtestsrv: DNS for both CAs (every name answers 127.0.0.1) and the
    http-01 responder Pebble validates against."""

    def __init__(self, log_path: Path) -> None:
        binary = shutil.which("pebble-challtestsrv")
        if binary is None:
            raise RuntimeError("pebble-challtestsrv is missing: run scripts/setup test")
        self.dns_port, self.http01_port, self.management_port = (free_port() for _ in range(3))
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [
                binary,
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-http01",
                f"127.0.0.1:{self.http01_port}",
                "-management",
                f"127.0.0.1:{self.management_port}",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:
            wait_port(self.management_port)
            wait_port(self.http01_port)
        except BaseException:
            self.close()
            raise

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def close(self) -> None:
        stop_process(self.process)
        self._log.close()

    def __enter__(self) -> ChallTestSrv:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DcvSite:
    """The customers' web site for certbroker's file DCV: bench/dcv_site.py in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.dcv_site", str(self.port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            wait_port(self.port)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> DcvSite:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- certbroker ----------------------------------------------------------------------------


@dataclass
class CertbrokerServer:
    """`certbroker serve` as operators start it, on a data directory of its own."""

    data_dir: Path
    env_overrides: dict[str, str]
    token: str = ""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # `certbroker serve`, or bench/proposed.py's patched start-up (--proposed).
    proposed: bool = False

    @property
    def command(self) -> list[str]:
        if self.proposed:
            return [sys.executable, "-m", "bench.proposed", "serve"]
        return [CERTBROKER_CLI, "serve"]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CERTBROKER_DATA_DIR": str(self.data_dir),
            "CERTBROKER_PORT": str(self.port),
            # The bench is one reseller sending everything: the per-token limits would measure
            # the limiter instead of the pipeline.
            "CERTBROKER_RATE_LIMIT_PER_TOKEN": "off",
            "CERTBROKER_RATE_LIMIT_PER_ADDRESS": "off",
            **self.env_overrides,
        }

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> CertbrokerServer:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # a server that did not come up must not outlive the bench
            raise

    def _start(self, timeout: float) -> CertbrokerServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out_path = self.data_dir.parent / f"{self.data_dir.name}.stdout"
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        with open(out_path, "wb") as out, open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=log,
                cwd=REPO,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        text = ""
        while "listening on" not in text:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"certbroker serve did not start; see {log_path}")
            time.sleep(0.05)
            text = out_path.read_text()
        for line in text.splitlines():  # printed on the first start only
            if line.strip().startswith("cb_"):
                self.token = line.strip()
        if not self.token:
            raise RuntimeError("certbroker serve printed no token (not a fresh data directory?)")
        wait_port(self.port, timeout=max(1.0, deadline - time.monotonic()))
        while True:  # the port is open before the app has finished its start-up
            try:
                api_call(self.port, "productList", {"api_token": self.token})
                return self
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def topup(self, usd: int) -> None:
        """Credit the first account, as `certbroker account topup default USD` does (a ledger
        row), without paying for a second process start."""
        from certbroker.orders import accounts, ledger
        from certbroker.settings import Settings
        from certbroker.store.db import Database

        settings = Settings(data_dir=self.data_dir)
        db = Database(settings.effective_database_url)
        try:
            with db.transaction() as session:
                account = accounts.find_account(session, "default")
                ledger.post(
                    session,
                    account_id=account.id,
                    amount_cents=usd * 100,
                    kind="topup",
                    op_key=f"topup:bench:{os.urandom(8).hex()}",
                    now=datetime.datetime.now(datetime.UTC),
                    note="bench",
                )
        finally:
            db.dispose()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def api_call(port: int, endpoint: str, fields: dict[str, str]) -> dict[str, Any]:
    """One request on a fresh connection (set-up and checks; load uses bench.load.ApiClient)."""
    from urllib.parse import urlencode

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST",
            f"/ssl/{endpoint}",
            urlencode(fields),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    result: dict[str, Any] = json.loads(body)
    return result


# --- Pebble --------------------------------------------------------------------------------


def self_signed_tls(directory: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1 and localhost (Pebble's WFE speaks HTTPS only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "pebble-tls.pem", directory / "pebble-tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class PebbleServer:
    """Debian's `pebble` with no artificial sleeps and no rejected nonces, validating http-01
    for real against pebble-challtestsrv."""

    workdir: Path
    chall: ChallTestSrv
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Where http-01 is fetched (default: challtestsrv's responder; the upstream section: the
    # DCV site), and External Account Binding as (kid, base64url HMAC key) when required.
    http_port: int | None = None
    eab: tuple[str, str] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> PebbleServer:
        binary = shutil.which("pebble")
        if binary is None:
            raise RuntimeError("pebble is missing: run scripts/setup test")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = self_signed_tls(self.workdir)
        self.tls_cert, self.tls_key = cert_path, key_path
        settings: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": self.http_port or self.chall.http01_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab is not None,
        }
        if self.eab is not None:
            settings["externalAccountMACKeys"] = {self.eab[0]: self.eab[1]}
        config = {"pebble": settings}
        config_path = self.workdir / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            # Every order names new domains; no authorization is reused (as with certbroker).
            "PEBBLE_AUTHZREUSE": "0",
        }
        with open(self.workdir / "pebble.log", "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-config", str(config_path), "-dnsserver", self.chall.resolver],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        try:
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


# --- prepared CSRs -------------------------------------------------------------------------


def generate_key(key_type: str) -> BenchKey:
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def make_csr(key: BenchKey, names: Sequence[str]) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def prepare_csrs(key_type: str, names: Iterable[str], pool: int = 8) -> list[str]:
    """One CSR per name. Keys come from a small pool: generating an RSA key per order would
    make the preparation slower than the run, and neither CA refuses a key seen before."""
    keys = [generate_key(key_type) for _ in range(pool)]
    return [make_csr(keys[i % pool], [name]) for i, name in enumerate(names)]


# --- the report ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    pebble_version = ""
    dpkg = shutil.which("dpkg-query")
    if dpkg:
        found = subprocess.run(
            [dpkg, "-W", "-f", "${Version}", "pebble"], capture_output=True, text=True
        )
        pebble_version = found.stdout.strip()
    import cryptography

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": _openssl_version(),
        "pebble": pebble_version,
        "kernel": platform.release(),
        "load_average_at_start": load_average(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table for the terminal."""
    body = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
