from django.urls import path

from sentiment import views

app_name = "sentiment"
urlpatterns = [
    path("", views.playground, name="playground"),
    path("classify/", views.classify, name="classify"),
    path("compare/", views.compare, name="compare"),
    path("batch/", views.batch_upload, name="batch_upload"),
    path("batch/<id:batch_id>/", views.batch_detail, name="batch"),
    path("batch/<id:batch_id>/download/", views.batch_download, name="batch_download"),
    path("models/", views.version_list, name="versions"),
    path("models/rollback/", views.version_rollback, name="rollback"),
    path("models/<str:version>/", views.version_detail, name="version"),
    path("models/<str:version>/promote/", views.version_promote, name="promote"),
]
