from django.urls import path

from annotate import views

app_name = "annotate"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.project_create, name="project_create"),
    path("fix/", views.fix, name="fix"),
    path("runs/", views.runs, name="runs"),
    path("runs/<id:pk>/", views.run_detail, name="run"),
    path("exports/<id:pk>/download", views.export_download, name="export_download"),
    path("p/<id:pk>/", views.project_detail, name="project"),
    path("p/<id:pk>/label/", views.label, name="label"),
    path("p/<id:pk>/next", views.next_item, name="next"),
    path("p/<id:pk>/submit", views.submit, name="submit"),
    path("p/<id:pk>/undo", views.undo, name="undo"),
    path("p/<id:pk>/import", views.import_items, name="import"),
    path("p/<id:pk>/retrain", views.retrain, name="retrain"),
    path("p/<id:pk>/review/", views.review, name="review"),
    path("p/<id:pk>/models/", views.models, name="models"),
    path("p/<id:pk>/models/action", views.model_action, name="model_action"),
    path("p/<id:pk>/export", views.export, name="export"),
    path("p/<id:pk>/simulate", views.simulate, name="simulate"),
    path("p/<id:pk>/simulation", views.simulation, name="simulation"),
]
