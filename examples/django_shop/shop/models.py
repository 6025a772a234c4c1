"""The shop's own table: orders. Stock lives in seqproc (``seqproc.contrib.django.models.ProductStock``)."""

import uuid

from django.db import models


def new_reservation_id() -> str:
    return f"order-{uuid.uuid4().hex}"


class Order(models.Model):
    class Status(models.TextChoices):
        #: Created with its reservation event, in one transaction.
        RESERVED = "reserved"
        #: Paid: its commit event was written with this status, in one transaction.
        PAID = "paid"
        #: seqproc did not hold the stock (``insufficient_stock``) or released it.
        FAILED = "failed"

    product_id = models.BigIntegerField()
    quantity = models.PositiveIntegerField()
    customer = models.CharField(max_length=100)
    #: The id seqproc keys the reservation, its release and its commit by (each happens once per id).
    reservation_id = models.CharField(max_length=64, unique=True, default=new_reservation_id)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RESERVED)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk}: {self.quantity} x product {self.product_id} ({self.status})"
