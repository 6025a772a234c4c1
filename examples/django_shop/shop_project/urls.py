from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("articles/<int:article_id>", views.article),
    path("articles/<int:article_id>/like", views.like),
    path("checkout", views.checkout),
    path("orders/<int:order_id>", views.order),
    path("orders/<int:order_id>/pay", views.pay),
    path("admin/", admin.site.urls),
]
