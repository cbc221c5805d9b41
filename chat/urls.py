from django.urls import path

from chat import views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("c/<id:pk>/", views.conversation, name="conversation"),
    path("c/<id:pk>/rename", views.conversation_rename, name="rename"),
    path("c/<id:pk>/delete", views.conversation_delete, name="delete"),
    path("c/<id:pk>/model", views.conversation_model, name="model"),
    path("list/", views.conversation_list, name="list"),
    path("m/<id:pk>/", views.message, name="message"),
    path("m/<id:pk>/rate", views.message_rate, name="rate"),
    path("m/<id:pk>/stop", views.message_stop, name="stop"),
]
