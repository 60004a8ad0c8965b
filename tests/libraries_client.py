"""Two more client libraries from PyPI, LangChain (`langchain-openai`) and the OpenAI Agents SDK
(`openai-agents`), calling tools and asking for structured output on `safeguard serve`, for
tests/server.rs. Each goes through Chat Completions and through Responses.

Usage:
  libraries_client.py tools BASE_URL EXPECTED_JSON   (the scripted tool-call fixture)
  libraries_client.py format BASE_URL UNUSED         (the scripted fixture, which answers "1")
  libraries_client.py required BASE_URL UNUSED       (a random fixture, under tool_choice "required")

Tool arguments and structured answers are validated (the `jsonschema` package) against the schema
each library sent. Every check raises on failure; the last line printed is "ok".
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Annotated, Literal

import jsonschema
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, OpenAIResponsesModel, Runner, function_tool
from agents import set_tracing_disabled
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

# Nothing leaves 127.0.0.1: the Agents SDK would otherwise export traces to OpenAI.
set_tracing_disabled(True)

CALLS: list[dict] = []


def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:
    """Current weather."""
    CALLS.append({"city": city})
    return "18 C"


AGENT_TOOL = function_tool(get_weather)
# A random model fills whatever a schema leaves open (a string of any length, properties of any
# name) to the token limit: strict schemas, with bounded strings, are what it can finish.
TOOL_SCHEMA = convert_to_openai_tool(get_weather, strict=True)["function"]["parameters"]


class Verdict(BaseModel):
    violation: Literal[0, 1]
    category: Literal["spam", "scam", "none"]
    rationale: str = Field(max_length=16)


VERDICT_SCHEMA = Verdict.model_json_schema()


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def chats(base_url: str, model: str, max_tokens: int) -> list[ChatOpenAI]:
    """LangChain's chat model over Chat Completions, then over Responses."""
    return [ChatOpenAI(base_url=base_url, api_key="unused", model=model, max_tokens=max_tokens, max_retries=0,
                       use_responses_api=responses) for responses in (False, True)]


def agent_models(base_url: str, model: str) -> list:
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    return [OpenAIChatCompletionsModel(model=model, openai_client=client),
            OpenAIResponsesModel(model=model, openai_client=client)]


def agent_calls(base_url: str, model: str, settings: ModelSettings) -> list[dict]:
    """The calls the Agents SDK ran for one question, per model; the run ends at the first call."""
    runs = []
    for agent_model in agent_models(base_url, model):
        CALLS.clear()
        agent = Agent(name="weather", instructions="Answer with the tool.", model=agent_model, tools=[AGENT_TOOL],
                      tool_use_behavior="stop_on_first_tool", model_settings=settings)
        result = Runner.run_sync(agent, "Weather in Paris?")
        check(result.final_output == "18 C", f"{type(agent_model).__name__}: {result.final_output!r}")
        check(len(CALLS) == 1, f"{type(agent_model).__name__} ran {CALLS}")
        runs.append(CALLS[0])
    return runs


def tools(base_url: str, model: str, expected: dict) -> None:
    arguments = json.loads(expected["arguments"])
    for chat in chats(base_url, model, 64):
        bound = chat.bind_tools([get_weather])
        question = HumanMessage("Weather in Paris?")
        reply = bound.invoke([question])
        calls = reply.tool_calls
        check([(c["name"], c["args"]) for c in calls] == [(expected["tool"], arguments)], f"calls {calls}")
        # The round trip: LangChain's tool message goes back; the scripted model calls again.
        again = bound.invoke([question, reply, ToolMessage("18 C", tool_call_id=calls[0]["id"])])
        check([c["name"] for c in again.tool_calls] == [expected["tool"]], f"round trip {again}")
    for ran in agent_calls(base_url, model, ModelSettings(max_tokens=64)):
        check(ran == arguments, f"the agent ran {ran}")


def structured(base_url: str, model: str) -> None:
    for chat in chats(base_url, model, 200):
        verdict = chat.with_structured_output(Verdict, method="json_schema", strict=True).invoke("Buy now!")
        check(isinstance(verdict, Verdict), f"{verdict!r}")
        jsonschema.Draft202012Validator(VERDICT_SCHEMA).validate(verdict.model_dump())
    for agent_model in agent_models(base_url, model):
        agent = Agent(name="moderator", instructions="Classify.", model=agent_model, output_type=Verdict,
                      model_settings=ModelSettings(max_tokens=200))
        verdict = Runner.run_sync(agent, "Buy now!").final_output
        check(isinstance(verdict, Verdict), f"{type(agent_model).__name__}: {verdict!r}")
        jsonschema.Draft202012Validator(VERDICT_SCHEMA).validate(verdict.model_dump())


def required(base_url: str, model: str) -> None:
    validator = jsonschema.Draft202012Validator(TOOL_SCHEMA)
    for chat in chats(base_url, model, 96):
        reply = chat.bind_tools([get_weather], tool_choice="required", strict=True).invoke("Weather in Paris?")
        check([c["name"] for c in reply.tool_calls] == ["get_weather"], f"calls {reply.tool_calls}")
        validator.validate(reply.tool_calls[0]["args"])
    for ran in agent_calls(base_url, model, ModelSettings(max_tokens=96, tool_choice="required")):
        validator.validate(ran)


def main() -> None:
    mode, base_url, expected = sys.argv[1:4]
    model = OpenAI(base_url=base_url, api_key="unused", max_retries=0).models.list().data[0].id
    modes = {
        "tools": lambda: tools(base_url, model, json.loads(pathlib.Path(expected).read_text())),
        "format": lambda: structured(base_url, model),
        "required": lambda: required(base_url, model),
    }
    modes[mode]()
    print("ok")

if __name__ == "__main__":
    main()
