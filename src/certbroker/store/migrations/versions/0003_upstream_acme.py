"""upstream ACME CAs: our accounts there, upstream orders and their authorizations

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upstream", sa.String(length=40), nullable=False),
        sa.Column("account_url", sa.String(length=2048), nullable=True),
        sa.Column("key_encrypted", sa.Text(), nullable=False),
        sa.Column("thumbprint", sa.String(length=64), nullable=False),
        sa.Column("eab_kid", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_problem", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_accounts")),
        sa.UniqueConstraint("upstream", name=op.f("uq_upstream_accounts_upstream")),
    )
    op.create_table(
        "upstream_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("upstream", sa.String(length=40), nullable=False),
        sa.Column("account_url", sa.String(length=2048), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("order_url", sa.String(length=2048), nullable=True),
        sa.Column("finalize_url", sa.String(length=2048), nullable=True),
        sa.Column("certificate_url", sa.String(length=2048), nullable=True),
        sa.Column("finalize_sent_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("last_problem", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_upstream_orders_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_orders")),
        sa.UniqueConstraint("order_id", "attempt", name="uq_upstream_orders_attempt"),
    )
    op.create_index(
        op.f("ix_upstream_orders_order_id"), "upstream_orders", ["order_id"], unique=False
    )
    op.create_index(
        op.f("ix_upstream_orders_next_attempt_at"),
        "upstream_orders",
        ["next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "upstream_authzs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upstream_order_id", sa.Integer(), nullable=False),
        sa.Column("order_name_id", sa.Integer(), nullable=True),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("identifier", sa.String(length=255), nullable=False),
        sa.Column("wildcard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("challenge_type", sa.String(length=32), nullable=True),
        sa.Column("challenge_url", sa.String(length=2048), nullable=True),
        sa.Column("token", sa.String(length=255), nullable=True),
        sa.Column("key_authorization", sa.String(length=512), nullable=True),
        sa.Column("prechecked_at", sa.DateTime(), nullable=True),
        sa.Column("answered_at", sa.DateTime(), nullable=True),
        sa.Column("last_problem", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["upstream_order_id"],
            ["upstream_orders.id"],
            name=op.f("fk_upstream_authzs_upstream_order_id_upstream_orders"),
        ),
        sa.ForeignKeyConstraint(
            ["order_name_id"],
            ["order_names.id"],
            name=op.f("fk_upstream_authzs_order_name_id_order_names"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_authzs")),
    )
    op.create_index(
        op.f("ix_upstream_authzs_upstream_order_id"),
        "upstream_authzs",
        ["upstream_order_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_upstream_authzs_order_name_id"), "upstream_authzs", ["order_name_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("upstream_authzs")
    op.drop_table("upstream_orders")
    op.drop_table("upstream_accounts")
