from django.contrib import admin

from shop.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "customer", "product_id", "quantity", "status", "reservation_id", "created_at"]
    list_filter = ["status"]
