"""dns-01 through a persistent CNAME delegation (docs/DNS-DELEGATION.md): the labels customers
point `_acme-challenge` at, and the publishers that put TXT values in the delegation zone."""
