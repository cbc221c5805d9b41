from django.urls import path

from chat import views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("c/<int:pk>/", views.conversation, name="conversation"),
    path("c/<int:pk>/rename", views.conversation_rename, name="rename"),
    path("c/<int:pk>/delete", views.conversation_delete, name="delete"),
    path("list/", views.conversation_list, name="list"),
    path("m/<int:pk>/", views.message, name="message"),
    path("m/<int:pk>/rate", views.message_rate, name="rate"),
    path("m/<int:pk>/stop", views.message_stop, name="stop"),
]
