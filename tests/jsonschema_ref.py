"""The `jsonschema` package as the judge of constrained outputs (tests/constrain.rs).

Reads {"cases": [{"schema": SCHEMA, "outputs": [TEXT, ...]}, ...]} on stdin and
writes [{"schema_ok": bool, "results": [null | "why it fails", ...]}, ...]:
null where TEXT parses as JSON and validates against SCHEMA (Draft 2020-12).
"""

import json
import sys

import jsonschema


def judge(schema: dict, text: str) -> str | None:
    try:
        instance = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON: {e}"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=str)
    return "; ".join(e.message for e in errors) or None


def main() -> None:
    request = json.load(sys.stdin)
    answers = []
    for case in request["cases"]:
        try:
            jsonschema.Draft202012Validator.check_schema(case["schema"])
            schema_ok = True
        except jsonschema.SchemaError:
            schema_ok = False
        answers.append({"schema_ok": schema_ok, "results": [judge(case["schema"], t) for t in case["outputs"]]})
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
