"""The issuance policy: which names and which keys certbroker may certify (pure functions).

`names` and `keys` answer for every path that asks (validate, place, the lifecycle, the DCV
engine, the certificate profile); `public_suffixes` holds the Public Suffix List they read.
Imports only `pki/`, so every other layer may ask it.
"""
