from django.contrib import admin

from annotate.models import Annotation, Assignment, Export, ImportJob, Item, Project, Simulation, TrainingRun


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "model_name", "family", "strategy", "promote_policy", "created_at")
    search_fields = ("name",)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "project",
        "short_text",
        "is_gold",
        "gold_label",
        "final_label",
        "n_labels",
        "needed",
        "disputed",
    )
    list_filter = ("project", "is_gold", "disputed", "adjudicated", "source")
    search_fields = ("text",)

    @admin.display(description="text")
    def short_text(self, obj: Item) -> str:
        return obj.text[:60]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "item", "annotator", "slot", "status", "expires_at")
    list_filter = ("status", "project")


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = ("id", "item", "annotator", "label", "created_at")
    list_filter = ("project", "label")


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "status", "progress", "version", "promoted", "created_at")
    list_filter = ("status", "project")


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "path", "status", "progress", "created_at")


@admin.register(Export)
class ExportAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "fmt", "status", "rows", "created_at")


@admin.register(Simulation)
class SimulationAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "status", "progress", "created_at")
