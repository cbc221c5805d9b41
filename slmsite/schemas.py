"""What every JSON API error looks like (DESIGN §4: a 4xx JSON body with a message), and the API class that
documents the errors every operation can answer, so clients and schemathesis see no undocumented status."""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI, Schema


class ErrorOut(Schema):
    message: str
    detail: str | list[dict[str, Any]]  # the message again, or the list of validation errors (422)


# Status codes any operation may answer besides its own: a body that is not JSON or over the upload limit
# (operations with a body), no/invalid credentials (authenticated operations), a request that does not
# validate (422 with the validation errors in `detail`).
COMMON_ERRORS = {
    "400": "The request body is not JSON",
    "401": "Authentication required (session or Bearer token)",
    "413": "Request body too large",
    "422": "The request does not validate: `message` says why, `detail` lists the errors",
}


class DocumentedAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(**kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorOut", ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}"))
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                have = {str(code) for code in responses}  # ninja's keys are ints: never add "422" beside 422
                for code, text in COMMON_ERRORS.items():
                    if (code == "401" and not operation.get("security")) or (
                        code in ("400", "413") and "requestBody" not in operation
                    ):
                        continue
                    if code not in have:
                        responses[int(code)] = {"description": text, **ref}
        return schema
