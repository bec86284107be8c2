"""dns-01 for upstream orders: where an authorization's TXT value is published

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-17
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upstream_authzs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("txt_fqdn", sa.String(length=253), nullable=True))
        batch_op.create_index(batch_op.f("ix_upstream_authzs_txt_fqdn"), ["txt_fqdn"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upstream_authzs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upstream_authzs_txt_fqdn"))
        batch_op.drop_column("txt_fqdn")
