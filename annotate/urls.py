from django.urls import path

from annotate import views

app_name = "annotate"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.project_create, name="project_create"),
    path("fix/", views.fix, name="fix"),
    path("runs/", views.runs, name="runs"),
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("exports/<int:pk>/download", views.export_download, name="export_download"),
    path("p/<int:pk>/", views.project_detail, name="project"),
    path("p/<int:pk>/label/", views.label, name="label"),
    path("p/<int:pk>/next", views.next_item, name="next"),
    path("p/<int:pk>/submit", views.submit, name="submit"),
    path("p/<int:pk>/undo", views.undo, name="undo"),
    path("p/<int:pk>/import", views.import_items, name="import"),
    path("p/<int:pk>/retrain", views.retrain, name="retrain"),
    path("p/<int:pk>/review/", views.review, name="review"),
    path("p/<int:pk>/models/", views.models, name="models"),
    path("p/<int:pk>/models/action", views.model_action, name="model_action"),
    path("p/<int:pk>/export", views.export, name="export"),
    path("p/<int:pk>/simulate", views.simulate, name="simulate"),
    path("p/<int:pk>/simulation", views.simulation, name="simulation"),
]
