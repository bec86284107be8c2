"""The key policy at the API: compromised keys across accounts and through the lifecycle, RSA
exponents, and the operator's compromised-key list (BR 6.1.1.3, 6.1.6)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbroker.orders import compromised_keys
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import PrivateKey, generate_private_key, private_key_to_pem
from certbroker.policy.keys import WeakKeyList, key_refusal, spki_sha256
from tests.conftest import Service

COMPROMISED = "this key is known to be compromised"


def params(name: str, key: PrivateKey) -> dict[str, Any]:
    return {
        "server": "nginx",
        "csr": build_csr(key, [name]).pem,
        "domainInfo": [{"domainName": name, "dcvMethod": "HTTP_CSR_HASH"}],
    }


def issue(service: Service, name: str, key: PrivateKey, token: str | None = None) -> str:
    placed = service.call(
        "place", token, productCode="comodo-ssl", years="1", params=params(name, key)
    )
    assert placed["code"] == 1, placed
    service.publish(placed["data"])
    service.work()
    cert_id: str = placed["data"]["certId"]
    assert service.call("collect", token, certId=cert_id)["status"] == "COMPLETE"
    return cert_id


def refused_for_compromise(answer: dict[str, Any]) -> bool:
    return answer["code"] == -1 and COMPROMISED in answer["errors"]["csr"][0]


def test_a_key_revoked_for_key_compromise_is_refused_everywhere(service: Service) -> None:
    service.topup(500)
    other_id, other_token = service.new_account("other")
    service.topup(500, other_id)
    key = generate_private_key("ec256")
    first = issue(service, "shop.example.com", key)
    # The same key on a second order of the same account, issued before the compromise.
    second = issue(service, "www.example.com", key)
    assert service.call("revoke", certId=first, reason="keyCompromise")["code"] == 1

    before = service.balance(), service.balance(other_id), service.counts()
    for token in (None, other_token):  # the same account and another one
        for endpoint in ("validate", "place"):
            answer = service.call(
                endpoint,
                token,
                productCode="comodo-ssl",
                years="1",
                params=params("api.example.com", key),
            )
            assert refused_for_compromise(answer), (endpoint, answer)
    assert (service.balance(), service.balance(other_id), service.counts()) == before

    # The lifecycle of the other order: reissue keeps the customer's key without a CSR,
    # replace sends one; both are refused, a new key goes through.
    again = service.call("reissue", certId=second, reason="server moved")
    assert refused_for_compromise(again), again
    replaced = service.call("replace", certId=second, params=params("www.example.com", key))
    assert refused_for_compromise(replaced), replaced
    fresh = build_csr(generate_private_key("ec256"), ["www.example.com"]).pem
    assert service.call("reissue", certId=second, reason="new key", csr=fresh)["code"] == 1


def test_the_operator_adds_a_key_to_the_list(service: Service) -> None:
    service.topup(100)
    key = generate_private_key("ec256")
    pem = private_key_to_pem(key).encode("ascii")
    now = service.clock.now()
    added = compromised_keys.block_key(service.ctx.db, pem, "published on a forum", now)
    assert added.added and added.spki_sha256 == spki_sha256(key.public_key())
    assert not compromised_keys.block_key(service.ctx.db, pem, "again", now).added
    listed = compromised_keys.list_blocked(service.ctx.db)
    assert [(d, s, n) for d, s, n, _ in listed] == [
        (added.spki_sha256, "operator", "published on a forum")
    ]
    answer = service.call(
        "place", productCode="comodo-ssl", years="1", params=params("shop.example.com", key)
    )
    assert refused_for_compromise(answer), answer
    assert service.counts() == (0, 0)


def test_rsa_exponent_3_is_refused(service: Service) -> None:
    service.topup(100)
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    answer = service.call(
        "place", productCode="comodo-ssl", years="1", params=params("shop.example.com", key)
    )
    assert answer["code"] == -1
    assert "RSA public exponent 3 is not allowed" in answer["errors"]["csr"][0]
    assert service.counts() == (0, 0)


@pytest.mark.parametrize(
    ("exponent", "verdict"),
    [(3, "exponent"), (65537, None), (65539, None), ((1 << 256) + 1, "exponent")],
)
def test_rsa_exponent_range(exponent: int, verdict: str | None) -> None:
    modulus = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    refusal = key_refusal(rsa.RSAPublicNumbers(exponent, modulus).public_key())
    assert (refusal.rule if refusal else None) == verdict


def test_close_primes_are_refused() -> None:
    # p and q next to each other: Fermat factors the modulus at once (BR 6.1.1.3).
    p = (3 << 1022) + 1155
    q = (3 << 1022) + 1647
    refusal = key_refusal(rsa.RSAPublicNumbers(65537, p * q).public_key())
    assert refusal is not None and refusal.rule == "weak"
    assert "close primes" in refusal.reason


def test_published_weak_key_list(tmp_path: Any) -> None:
    # badkeys' blocklist format: sorted records of 15 bytes of SHA-256 over the EC x
    # coordinate or RSA modulus, and the list's id.
    import hashlib
    import json

    listed = ec.generate_private_key(ec.SECP256R1()).public_key()
    x = listed.public_numbers().x
    digest = hashlib.sha256(x.to_bytes((x.bit_length() + 7) // 8, "big")).digest()[:15]
    records = sorted([digest + bytes([7]), b"\x00" * 15 + bytes([1]), b"\xff" * 15 + bytes([1])])
    (tmp_path / "blocklist.dat").write_bytes(b"".join(records))
    (tmp_path / "badkeysdata.json").write_text(
        json.dumps({"blocklists": [{"id": 7, "name": "debianssl"}, {"id": 1, "name": "other"}]})
    )
    weak = WeakKeyList.load(tmp_path)
    assert weak is not None
    refusal = key_refusal(listed, weak_keys=weak)
    assert refusal is not None and refusal.rule == "weak" and "debianssl" in refusal.reason
    clean = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert key_refusal(clean, weak_keys=weak) is None
    assert WeakKeyList.load(tmp_path / "missing") is None
