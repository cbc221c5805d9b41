from django.contrib import admin

from sentiment.models import BatchPrediction


@admin.register(BatchPrediction)
class BatchPredictionAdmin(admin.ModelAdmin):
    list_display = ("id", "filename", "owner", "model_ref", "status", "done", "total", "created")
    list_filter = ("status", "inline")
    search_fields = ("filename", "model_ref", "owner__username")
    readonly_fields = ("created", "started", "finished")
