"""issuance policy: compromised keys (BR 6.1.1.3) and the order's last signing refusal

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compromised_keys",
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("spki_sha256", name=op.f("pk_compromised_keys")),
    )
    # Why the CA last refused to sign the order's certificate (collect's lastError).
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("last_error")
    op.drop_table("compromised_keys")
