from django.contrib import admin
from django.urls import path
from shop import page, views

urlpatterns = [
    path("articles/<int:article_id>", views.article),
    path("articles/<int:article_id>/like", views.like),
    path("checkout", views.checkout),
    path("orders/<int:order_id>", views.order),
    path("orders/<int:order_id>/pay", views.pay),
    # The example page: send, preview, notify (shop/page.py).
    path("page", page.page),
    path("page/state", page.state),
    path("page/like", page.like),
    path("page/unlike", page.unlike),
    path("page/reserve", page.reserve),
    path("page/notifications", page.notifications),
    path("admin/", admin.site.urls),
]
