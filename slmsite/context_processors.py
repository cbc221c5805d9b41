from django.http import HttpRequest

from slmsite.roles import is_admin, is_annotator


def nav(request: HttpRequest) -> dict[str, object]:
    user = getattr(request, "user", None)
    return {
        "is_admin": bool(user and is_admin(user)),
        "is_annotator": bool(user and is_annotator(user)),
    }
