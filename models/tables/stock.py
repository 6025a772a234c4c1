"""Stock, keyed by product: quantities on hand and the reservations against them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.fields import MAX_KEY_LENGTH
from seqproc.models.fields import ReservationStatus as ReservationStatus  # its historic home
from seqproc.models.tables.base import Base, BigInt, now_column


class ProductStock(Base):
    """Invariants: ``available >= 0`` and ``available + reserved + sold == total_received``, as constraints."""

    __tablename__ = "product_stock"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_non_negative"),
        CheckConstraint("reserved >= 0", name="reserved_non_negative"),
        CheckConstraint("sold >= 0", name="sold_non_negative"),
        CheckConstraint("available + reserved + sold = total_received", name="quantities_balance"),
    )

    product_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    available: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    reserved: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    sold: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    total_received: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    updated_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return (
            f"ProductStock(product_id={self.product_id}, available={self.available}, "
            f"reserved={self.reserved}, sold={self.sold}, total_received={self.total_received})"
        )


class Reservation(Base):
    """A reservation keyed by the caller's id. ``quantity`` is 0 for a cancellation that came first."""

    __tablename__ = "reservation"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        CheckConstraint("status IN ('active', 'released', 'committed', 'cancelled', 'rejected')", name="status_known"),
        Index("ix_reservation_active_expiry", "status", "expires_at"),
    )

    reservation_id: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInt, index=True)
    quantity: Mapped[int] = mapped_column(BigInt)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    #: When an active reservation should be released by the expiry job (None: never).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def __repr__(self) -> str:
        return (
            f"Reservation(reservation_id={self.reservation_id!r}, product_id={self.product_id}, "
            f"quantity={self.quantity}, status={self.status!r})"
        )
