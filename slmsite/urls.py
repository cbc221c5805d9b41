from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic.base import RedirectView

from slmsite import views
from slmsite.api import api, not_found

handler404 = "slmsite.errors.not_found"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("building/<str:model>/", views.building_status, name="building"),
    path("metrics", views.metrics, name="metrics"),
    # pages without our <link rel="icon"> (the API docs, a browser's own guess) ask for /favicon.ico
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    re_path(r"^api/(?P<rest>(?s:.*))\Z", not_found),  # every other /api/ path, newlines included
    path("chat/", include("chat.urls")),
    path("sentiment/", include("sentiment.urls")),
    path("annotate/", include("annotate.urls")),
]
