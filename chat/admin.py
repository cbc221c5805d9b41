from django.contrib import admin

from chat.models import ChatModel, Conversation, FinetuneRun, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = (
        "role",
        "text",
        "status",
        "finish_reason",
        "model_ref",
        "model_name",
        "seed",
        "ttft_ms",
        "tokens_per_s",
        "rating",
    )
    readonly_fields = fields


@admin.register(ChatModel)
class ChatModelAdmin(admin.ModelAdmin):
    """The chat models the chat page's picker offers (besides `default`, the model the settings configure,
    which a row named "default" replaces). CHAT_DEFAULT_MODEL names the one new conversations start with."""

    list_display = ("name", "label", "backend", "source", "url", "enabled", "position")
    list_editable = ("enabled", "position")
    list_filter = ("backend", "enabled")
    search_fields = ("name", "label", "source", "url")
    fieldsets = (
        (None, {"fields": ("name", "label", "description", "enabled", "position")}),
        ("Where it runs", {"fields": ("backend", "source", "url", "api", "token")}),
    )


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "model", "created", "updated")
    search_fields = ("title", "owner__username")
    list_filter = ("created",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation",
        "role",
        "status",
        "finish_reason",
        "model_ref",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_s",
        "rating",
        "created",
    )
    list_filter = ("role", "status", "finish_reason", "rating")
    search_fields = ("text",)
    raw_id_fields = ("conversation",)


if not admin.site.is_registered(FinetuneRun):

    @admin.register(FinetuneRun)
    class FinetuneRunAdmin(admin.ModelAdmin):
        list_display = ("id", "status", "progress", "base_ref", "result_ref", "created_by", "created", "finished")
        list_filter = ("status",)
