"""The official `openai` Python SDK asking `safeguard serve` for structured output, for tests/server.rs.

Usage: format_client.py BASE_URL EXPECTED_JSON

The server runs the scripted fixture, which answers "1" on the final channel whatever it
is asked: an answer no schema here accepts. Held to each response format, every answer
must still parse as the SDK's pydantic model and validate (the `jsonschema` package)
against the schema the SDK sent. Every check raises on failure; the last line printed is
"ok".
"""

from __future__ import annotations

import json
import sys
from typing import Literal

import jsonschema
import openai
from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel, Field


class Evidence(BaseModel):
    quote: str = Field(max_length=10)
    offset: int = Field(ge=0, le=500)


class Verdict(BaseModel):
    violation: Literal[0, 1]
    category: Literal["spam", "fraud", "none"]
    severity: int = Field(ge=1, le=5)
    evidence: list[Evidence] = Field(max_length=2)


QUESTION = [{"role": "user", "content": "Is this spam? BUY CHEAP WATCHES NOW"}]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def validates(text: str, schema: dict) -> None:
    jsonschema.Draft202012Validator(schema).validate(json.loads(text))


def main() -> None:
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    chat_format = type_to_response_format_param(Verdict)
    schema = chat_format["json_schema"]["schema"]

    # parse(): the SDK sends the strict schema and reads the answer back into the model.
    r = client.chat.completions.parse(model=model, messages=QUESTION, response_format=Verdict, max_tokens=300)
    choice = r.choices[0]
    check(choice.finish_reason == "stop", f"finish {choice.finish_reason}: {choice.message.content!r}")
    check(isinstance(choice.message.parsed, Verdict), f"parsed {choice.message.parsed!r}")
    validates(choice.message.content, schema)

    # Streamed, and sampled: the pieces join into a valid answer too.
    chunks = client.chat.completions.create(model=model, messages=QUESTION, response_format=chat_format,
                                            max_tokens=300, stream=True, temperature=1.0, seed=3)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    validates(content, schema)
    Verdict.model_validate_json(content)

    # json_object: an object opens where "1" would have been. (Its keys are unbounded strings,
    # which this model, indifferent among them, never closes: tests/constrain.rs samples whole
    # objects.)
    r = client.chat.completions.create(model=model, messages=QUESTION, response_format={"type": "json_object"},
                                       max_tokens=12)
    check(r.choices[0].message.content.startswith('{"'), r.choices[0].message.content)

    # Responses: text.format, parsed and streamed.
    response = client.responses.parse(model=model, input="Is this spam?", text_format=Verdict, max_output_tokens=300)
    check(isinstance(response.output_parsed, Verdict), f"output_parsed {response.output_parsed!r}")
    validates(response.output_text, schema)
    flat = {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}
    events = list(client.responses.create(model=model, input="Is this spam?", text={"format": flat},
                                          max_output_tokens=300, stream=True))
    validates("".join(e.delta for e in events if e.type == "response.output_text.delta"), schema)

    # A schema the grammar cannot enforce, and one that is not a schema: 400s naming the field.
    for bad, words in [
        ({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}, ["uniqueItems"]),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, ["strin"]),
    ]:
        try:
            client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, response_format={
                "type": "json_schema", "json_schema": {"name": "bad", "schema": bad}})
            raise AssertionError(f"{bad} was accepted")
        except openai.BadRequestError as e:
            check(e.body.get("param") == "response_format" and all(w in e.message for w in words), str(e))
    try:
        client.responses.create(model=model, input="x", text={"format": {"type": "json_schema", "name": "x"}})
        raise AssertionError("a format without a schema was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "text.format.schema", str(e))
    print("ok")


if __name__ == "__main__":
    main()
