"""Path converters. `<id:pk>` (and `{id:pk}` in the JSON API) accepts database ids only as canonical
digits: "1" but not "01", "+1", " 1" or "1.0" (Django's `int` takes "01" as 1; the API's int parsing also
took " 1" and "+1"), and at most 18 digits so it fits a bigint."""

from __future__ import annotations


class StrictIdConverter:
    regex = "0|[1-9][0-9]{0,17}"  # "0" matches no row; templates reverse it as a placeholder for JS

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int | str) -> str:
        text = str(value)
        if not text.isascii() or not text.isdigit() or (text.startswith("0") and text != "0") or len(text) > 18:
            raise ValueError(f"not a database id: {value!r}")
        return text
