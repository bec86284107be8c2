"""upstream orders: the ARI certID (RFC 9773) of the certificate a renewal replaces

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upstream_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaces", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upstream_orders", schema=None) as batch_op:
        batch_op.drop_column("replaces")
