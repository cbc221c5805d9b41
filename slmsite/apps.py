from django.apps import AppConfig


class SlmsiteConfig(AppConfig):
    name = "slmsite"
    verbose_name = "slm site"

    def ready(self) -> None:
        from django.urls import register_converter

        from slmsite.converters import StrictIdConverter

        register_converter(StrictIdConverter, "id")  # before any URLconf is loaded
