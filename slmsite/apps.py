from django.apps import AppConfig


class SlmsiteConfig(AppConfig):
    name = "slmsite"
    verbose_name = "slm site"
