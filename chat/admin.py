from django.contrib import admin

from chat.models import Conversation, FinetuneRun, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("role", "text", "status", "finish_reason", "model_ref", "seed", "ttft_ms", "tokens_per_s", "rating")
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "created", "updated")
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
