"""One settings object: a TOML file plus `CERTBROKER_*` environment variables (DESIGN.md).

The embedded default needs neither: SQLite and the built-in CA live in `data_dir`.
The TOML file is named by `CERTBROKER_CONFIG`, or `certbroker.toml` in the data directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_RATE = re.compile(r"off|none|0|(\d+(\.\d+)?|\.\d+)(\s*,\s*[1-9]\d*)?")


EcCurve = Literal["P-256", "P-384"]


def _all_curves() -> list[EcCurve]:
    return ["P-256", "P-384"]


class UpstreamCapabilities(BaseModel):
    """What an upstream ACME CA certifies; the catalog refuses products that promise more."""

    model_config = ConfigDict(extra="forbid")

    max_identifiers: int = Field(default=100, ge=1)
    # The challenge the upstream accepts for wildcard names (RFC 8555 7.1.3: dns-01 only).
    wildcard: Literal["dns-01"] | None = None
    ip: bool = False
    rsa: list[int] = Field(default_factory=lambda: [2048, 3072, 4096])
    ec: list[EcCurve] = Field(default_factory=_all_curves)


class UpstreamSettings(BaseModel):
    """One upstream ACME CA (RFC 8555), `[upstreams.NAME]` in the TOML file.

    The EAB HMAC key is a secret: it comes from `eab_hmac_key_file` or the environment
    (`CERTBROKER_UPSTREAMS__NAME__EAB_HMAC_KEY`), never from the TOML file itself.
    """

    model_config = ConfigDict(extra="forbid")

    directory: str
    contact: str = ""
    eab_kid: str = ""
    eab_hmac_key: SecretStr | None = None
    eab_hmac_key_file: Path | None = None
    # PEM bundle that verifies the directory's TLS certificate (tests: Pebble's); "" = system.
    ca_bundle: str = ""
    account_key: Literal["ec256", "rsa2048"] = "ec256"
    # The issuer domains this upstream answers to in CAA (RFC 8659), when its directory's
    # `meta.caaIdentities` is missing.
    caa_identities: list[str] = Field(default_factory=list)
    capabilities: UpstreamCapabilities = Field(default_factory=UpstreamCapabilities)
    # Deadline of every request to the upstream, in seconds.
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Steps of this upstream's orders one worker runs at once.
    max_concurrent_steps: int = Field(default=4, ge=1)
    # Circuit breaker: after `circuit_failures` 5xx answers or time-outs in a row, a worker
    # takes no step of this upstream for `circuit_cooldown_seconds`.
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown_seconds: float = Field(default=300.0, gt=0)

    def hmac_key(self) -> str | None:
        """The EAB HMAC key (base64url, RFC 8555 7.3.4), or None when none is configured."""
        if self.eab_hmac_key is not None:
            return self.eab_hmac_key.get_secret_value().strip() or None
        if self.eab_hmac_key_file is not None:
            return self.eab_hmac_key_file.read_text("utf-8").strip() or None
        return None


def _config_file() -> Path:
    explicit = os.environ.get("CERTBROKER_CONFIG")
    if explicit:
        return Path(explicit)
    data_dir = Path(os.environ.get("CERTBROKER_DATA_DIR", "./certbroker-data"))
    return data_dir / "certbroker.toml"


class DcvDelegationSettings(BaseModel):
    """`[dcv_delegation]`: the zone customers delegate `_acme-challenge` to by CNAME, and how
    TXT values get into it (docs/DNS-DELEGATION.md). Environment:
    `CERTBROKER_DCV_DELEGATION__<NAME>`."""

    zone: str = ""  # e.g. dcv.operator.example; empty: delegation not offered
    publisher: Literal["builtin", "rfc2136", "challtestsrv"] = "builtin"
    txt_ttl: int = Field(default=60, ge=1, le=86400)
    # A TXT value is served at most this long, unless removed before (one validation).
    txt_lifetime_seconds: int = Field(default=86400, ge=60)
    confirm_timeout_seconds: float = Field(default=30.0, gt=0)
    # host:port of the authoritative server confirm() asks; default: the built-in server's
    # listen address, the rfc2136 server, or challtestsrv's DNS on 127.0.0.1:8053.
    confirm_server: str = ""
    # builtin: the authoritative server of `certbroker dns serve` (UDP and TCP).
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=53, ge=0, le=65535)
    # The zone's NS names (outside the zone, with their own A/AAAA), first one the SOA MNAME.
    nameservers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    hostmaster: str = ""  # SOA RNAME as a mail address; default hostmaster@<zone>
    # rfc2136: the operator's primary server, and the TSIG key (RFC 8945) it accepts updates
    # with. The secret comes from the environment or a file, never from the TOML file.
    rfc2136_server: str = ""
    rfc2136_port: int = Field(default=53, ge=1, le=65535)
    rfc2136_tsig_key_name: str = ""
    rfc2136_tsig_algorithm: str = "hmac-sha256"
    rfc2136_tsig_secret: SecretStr | None = None
    rfc2136_tsig_secret_file: Path | None = None
    # challtestsrv (tests): pebble-challtestsrv's management API.
    challtestsrv_url: str = "http://127.0.0.1:8055"

    @field_validator("nameservers", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def tsig_secret(self) -> str | None:
        """The TSIG secret (base64) from the environment or the secret file."""
        if self.rfc2136_tsig_secret is not None:
            return self.rfc2136_tsig_secret.get_secret_value().strip()
        if self.rfc2136_tsig_secret_file is not None:
            return self.rfc2136_tsig_secret_file.read_text().strip()
        return None


class _TomlWithoutSecrets(TomlConfigSettingsSource):
    """The TOML file, which must not hold the secrets that belong in the environment."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        upstreams = data.get("upstreams")
        if isinstance(upstreams, dict):
            for name, entry in upstreams.items():
                if isinstance(entry, dict) and "eab_hmac_key" in entry:
                    raise ValueError(
                        f"upstreams.{name}.eab_hmac_key must not be in the TOML file: use "
                        f"eab_hmac_key_file or CERTBROKER_UPSTREAMS__{name.upper()}__EAB_HMAC_KEY"
                    )
        delegation = data.get("dcv_delegation")
        if isinstance(delegation, dict) and "rfc2136_tsig_secret" in delegation:
            raise ValueError(
                "[dcv_delegation] rfc2136_tsig_secret does not belong in the TOML file: set "
                "CERTBROKER_DCV_DELEGATION__RFC2136_TSIG_SECRET or rfc2136_tsig_secret_file"
            )
        return data


class Settings(BaseSettings):
    # `__` nests: CERTBROKER_UPSTREAMS__NAME__EAB_HMAC_KEY sets upstreams.NAME.eab_hmac_key.
    model_config = SettingsConfigDict(
        env_prefix="CERTBROKER_", extra="ignore", env_nested_delimiter="__"
    )

    data_dir: Path = Path("./certbroker-data")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # Base of AIA/CRL/OCSP URLs and approval links; linters want a public-looking name.
    public_url: str = "http://certbroker.example.com"
    # Master keys (keyring.py): one key, or a ring {id: key} whose current key is MASTER_KEY_ID;
    # unset, the ring lives in the data directory and `certbroker keys rotate` manages it.
    master_key: SecretStr | None = None
    master_keys: SecretStr | None = None
    master_key_id: str | None = None
    # Encrypts the CA key files (PKCS#8, AES-256-CBC) when set; needed to create and load them.
    ca_key_passphrase: SecretStr | None = None

    dcv_http_port: int = 80
    dcv_https_port: int = 443
    dcv_resolver: str | None = None
    dcv_allow_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    dcv_timeout_seconds: float = 10.0
    # Back-off between checks of a pending name: 1 min, 5, 15, then hourly.
    dcv_retry_seconds: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [60, 300, 900, 3600]
    )
    dcv_window_days: int = 30
    # Checks in flight at once: in all, per account and per target (docs/SETTINGS.md).
    dcv_max_checks: int = Field(default=50, ge=1)
    dcv_max_per_account: int = Field(default=20, ge=1)
    dcv_max_per_target: int = Field(default=2, ge=1)
    # Orders of free (price 0) products per account and day; 0: none.
    free_orders_per_day: int = Field(default=20, ge=0)
    dcv_ca_domain: str = "sectigo.com"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "certbroker@example.com"
    # Automatic reissue inside a subscription starts this many days before a certificate ends.
    renew_lead_days: int = 30
    caa_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["certbroker.example.com"]
    )

    ca_organization: str = "certbroker"
    # Issuance policy (policy/). Names refused with everything under them, e.g. "bank.com".
    name_blocklist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A newer public_suffix_list.dat than the one the publicsuffixlist package bundles.
    public_suffix_list: Path | None = None
    # badkeys' blocklist data (Debian weak keys and other published compromised keys), made by
    # `XDG_CACHE_HOME=<dir> badkeys --update-bl`; default `<data dir>/badkeys`.
    weak_keys_dir: Path | None = None
    # Lint every leaf with pkilint before the issuer key signs it (BR 4.3.1.2): "on", "off", or
    # "non-sandbox" (only certificates of the trusted issuer).
    pre_issuance_lint: Literal["on", "off", "non-sandbox"] = "non-sandbox"
    # Run the background worker inside `serve` (the default with SQLite).
    worker_in_process: bool = True
    worker_poll_seconds: float = 1.0
    # How long a claimed work item stays a worker's; after that another worker takes it over
    # (the first crashed or stalled). Longer than the slowest DCV check (dcv_timeout_seconds).
    worker_lease_seconds: float = 120.0
    # Dates on the wire; the live service speaks China time (SPEC 1.5).
    api_utc_offset_hours: int = 8
    # Refund window for an issued certificate (SPEC 4.5).
    cancel_refund_days: int = 30
    # RSA keys made ahead per key type for `place` without a CSR (pki/key_pool.py); 0: off.
    key_pool_size: int = Field(default=32, ge=0, le=1024)
    # HTTP hardening (docs/SETTINGS.md). Rates are "<requests per second>,<burst>" or "off".
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    http_keepalive_seconds: int = Field(default=5, ge=1)
    http_max_concurrency: int = Field(default=500, ge=1)
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    # h11 is pure Python; httptools (C) is faster and gets the same head limit (api/http_protocol).
    http_parser: Literal["httptools", "h11"] = "httptools"
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1"]
    )
    rate_limit_per_token: str = "20,200"  # noqa: S105 - not a secret
    rate_limit_per_address: str = "50,500"
    # Seconds a token is trusted without a database read (0: read on every request).
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Upstream ACME CAs by name (docs/UPSTREAMS.md); products name theirs in the catalog.
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    # A JSON catalog that extends (same code replaces, new code adds) or, with
    # `"replace": true`, replaces the shipped products.json.
    catalog: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    dcv_delegation: DcvDelegationSettings = Field(default_factory=DcvDelegationSettings)

    @field_validator(
        "dcv_allow_networks",
        "caa_domains",
        "name_blocklist",
        "dcv_retry_seconds",
        "forwarded_allow_ips",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        # Environment variables may give lists as "a,b" as well as JSON.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("upstreams", mode="after")
    @classmethod
    def _upstream_names(cls, value: dict[str, UpstreamSettings]) -> dict[str, UpstreamSettings]:
        # Environment variable names are case-insensitive: keep names lower-case everywhere.
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", name):
                raise ValueError(f"upstream name {name!r}: use 1-40 of a-z, 0-9 and '-'")
        return value

    @field_validator("rate_limit_per_token", "rate_limit_per_address")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not _RATE.fullmatch(value.strip().lower()):
            raise ValueError(
                "a rate limit is 'off' or '<requests per second>,<burst>', e.g. '20,200'"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _TomlWithoutSecrets(settings_cls, toml_file=_config_file()),
        )

    @property
    def effective_weak_keys_dir(self) -> Path:
        return self.weak_keys_dir or self.data_dir / "badkeys"

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'certbroker.db').resolve()}"
