"""dns-01 through a persistent CNAME delegation: dns_delegations and dns_txt

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dns_delegations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("base_domain", sa.String(length=253), nullable=False),
        sa.Column("label", sa.String(length=26), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_dns_delegations_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dns_delegations")),
        sa.UniqueConstraint(
            "account_id", "base_domain", name=op.f("uq_dns_delegations_account_id")
        ),
        sa.UniqueConstraint("label", name=op.f("uq_dns_delegations_label")),
    )
    op.create_table(
        "dns_txt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fqdn", sa.String(length=253), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dns_txt")),
        sa.UniqueConstraint("fqdn", "value", name=op.f("uq_dns_txt_fqdn")),
    )
    op.create_index(op.f("ix_dns_txt_fqdn"), "dns_txt", ["fqdn"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dns_txt_fqdn"), table_name="dns_txt")
    op.drop_table("dns_txt")
    op.drop_table("dns_delegations")
