//! Function tools in OpenAI's request shapes, turned into harmony: `tools`
//! (chat's nested `function` objects and Responses' flat ones),
//! `tool_choice`, and the turns of a conversation that called tools —
//! assistant calls and their results — as harmony's commentary messages.

use std::collections::HashMap;

use serde_json::Value;

use super::error::ApiError;
use crate::constrain::{Deadline, Grammar, Guide, Rules, Vocabulary};
use crate::harmony::{Message, ResponseFormat, Role, Tool};

/// Tool definitions larger than this are refused: they would fill the
/// context before the conversation starts.
pub const MAX_TOOLS_BYTES: usize = 32 * 1024;

/// One turn of a conversation, whatever API it came through.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// A system or developer message: the developer's instructions.
    Instructions(String),
    User(String),
    /// An earlier assistant turn: its reasoning (kept while the turn is
    /// still calling tools), its calls and its answer.
    Assistant {
        reasoning: Option<String>,
        calls: Vec<ToolCall>,
        content: Option<String>,
    },
    /// A tool's output, for the call it answers.
    ToolResult {
        name: String,
        content: String,
    },
}

impl Turn {
    /// The bytes of text it holds: a size known before tokenizing.
    pub fn text_len(&self) -> usize {
        match self {
            Turn::Instructions(text) | Turn::User(text) => text.len(),
            Turn::Assistant {
                reasoning,
                calls,
                content,
            } => {
                let calls: usize = calls.iter().map(|c| c.name.len() + c.arguments.len()).sum();
                reasoning.as_ref().map_or(0, String::len) + calls + content.as_ref().map_or(0, String::len)
            }
            Turn::ToolResult { name, content } => name.len() + content.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Which tools the model may or must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// The `tools` of a request. `nested`: chat's `{"type": "function",
/// "function": {...}}`; otherwise Responses' flat `{"type": "function", "name", ...}`.
pub fn parse_tools(tools: Option<&[Value]>, nested: bool) -> Result<Vec<Tool>, ApiError> {
    let Some(tools) = tools else {
        return Ok(Vec::new());
    };
    let size: usize = tools.iter().map(|t| t.to_string().len()).sum();
    if size > MAX_TOOLS_BYTES {
        return Err(ApiError::invalid_param(
            "tools",
            format!(
                "the tool definitions take {size} bytes; at most {MAX_TOOLS_BYTES} fit before the conversation"
            ),
        ));
    }
    let mut parsed: Vec<Tool> = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.type"),
                    format!("tools of type {other:?} are not supported: only \"function\""),
                ))
            }
            None => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.type"),
                    "a tool needs \"type\": \"function\"",
                ))
            }
        }
        let (function, prefix) = if nested {
            let function = tool.get("function").filter(|f| f.is_object()).ok_or_else(|| {
                ApiError::invalid_param(
                    &format!("{param}.function"),
                    "a function tool needs a function object",
                )
            })?;
            (function, format!("{param}.function"))
        } else {
            (tool, param)
        };
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid_param(&format!("{prefix}.name"), "a tool needs a name"))?;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(ApiError::invalid_param(
                &format!("{prefix}.name"),
                format!("{name:?} is not a valid tool name: 1 to 64 letters, digits, '_' or '-'"),
            ));
        }
        if parsed.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid_param(
                &format!("{prefix}.name"),
                format!("the tool name {name:?} is used twice"),
            ));
        }
        let description = match function.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    &format!("{prefix}.description"),
                    "must be a string",
                ))
            }
        };
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => None,
            Some(schema @ Value::Object(_)) => Some(schema.clone()),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    &format!("{prefix}.parameters"),
                    "must be a JSON Schema object (e.g. {\"type\": \"object\", \"properties\": {…}})",
                ))
            }
        };
        parsed.push(Tool {
            name: name.to_string(),
            description,
            parameters,
        });
    }
    Ok(parsed)
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"`, or one function
/// (`{"type": "function", "function": {"name"}}` in chat, `{"type": "function", "name"}` in Responses).
pub fn parse_tool_choice(choice: Option<&Value>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let param = "tool_choice";
    let choice = match choice {
        None | Some(Value::Null) => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid_param(
                    param,
                    format!("unknown tool_choice {other:?}: expected auto, none, required or a function"),
                ))
            }
        },
        Some(object) => {
            let name = object
                .pointer("/function/name")
                .or_else(|| object.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid_param(param, "a named tool_choice needs the function's name")
                })?;
            ToolChoice::Function(name.to_string())
        }
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            Err(ApiError::invalid_param(param, "\"required\" needs tools"))
        }
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => Err(ApiError::invalid_param(
            param,
            format!("no tool named {name:?} was offered in tools"),
        )),
        _ => Ok(choice),
    }
}

/// The tools the prompt offers under `choice` (all of them, or none for
/// `none`), and the names a call must go to when one is required (any
/// offered tool, or the named one).
pub fn offered(tools: Vec<Tool>, choice: ToolChoice) -> (Vec<Tool>, Option<Vec<String>>) {
    match choice {
        ToolChoice::Auto => (tools, None),
        ToolChoice::None => (Vec::new(), None),
        ToolChoice::Required => {
            let names = tools.iter().map(|t| t.name.clone()).collect();
            (tools, Some(names))
        }
        ToolChoice::Function(name) => (tools, Some(vec![name])),
    }
}

/// The part of the token budget a model may reason in before a required
/// call is written for it; a request without a budget gets this many.
const REQUIRED_CALL_REASONING: usize = 1024;

/// A request's structured output: what the developer message tells the
/// model (a schema's `# Response Formats`), and the grammar its answer is
/// held to.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFormat {
    pub described: Option<ResponseFormat>,
    pub grammar: Grammar,
}

/// Chat's `response_format` (`{"type": "json_schema", "json_schema": {name,
/// description, schema, strict}}`, when `nested`) or Responses'
/// `text.format` (the same fields flat); `json_object`; `text` is None.
/// A schema is enforced whether `strict` is set or not: the grammar costs
/// the model nothing it was asked to do.
pub fn parse_response_format(
    format: Option<&Value>,
    param: &str,
    nested: bool,
) -> Result<Option<OutputFormat>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            &format!("{param}.type"),
            "a response format needs a type: \"text\", \"json_object\" or \"json_schema\"",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(OutputFormat {
            described: None,
            grammar: Grammar::JsonObject,
        })),
        "json_schema" => {
            let (fields, prefix) = if nested {
                let fields = format
                    .get("json_schema")
                    .filter(|f| f.is_object())
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            &format!("{param}.json_schema"),
                            "a json_schema response format needs a json_schema object with name and schema",
                        )
                    })?;
                (fields, format!("{param}.json_schema"))
            } else {
                (format, param.to_string())
            };
            let text = |key: &str| -> Result<Option<String>, ApiError> {
                match fields.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(text)) => Ok(Some(text.clone())),
                    Some(_) => Err(ApiError::invalid_param(
                        &format!("{prefix}.{key}"),
                        "must be a string",
                    )),
                }
            };
            let name = text("name")?.unwrap_or_else(|| "response".to_string());
            let schema = match fields.get("schema") {
                Some(schema @ Value::Object(_)) => schema.clone(),
                _ => {
                    return Err(ApiError::invalid_param(
                        &format!("{prefix}.schema"),
                        "must be a JSON Schema object (e.g. {\"type\": \"object\", \"properties\": {…}})",
                    ))
                }
            };
            Ok(Some(OutputFormat {
                grammar: Grammar::JsonSchema(schema.clone()),
                described: Some(ResponseFormat {
                    name,
                    description: text("description")?,
                    schema,
                }),
            }))
        }
        other => Err(ApiError::invalid_param(
            &format!("{param}.type"),
            format!(
                "unknown response format {other:?}: expected \"text\", \"json_object\" or \"json_schema\""
            ),
        )),
    }
}

/// What a request holds the model to: `format` (named by `param`, as
/// `tools` are by `nested`) and the offered tools.
pub struct Structure<'a> {
    pub format: Option<&'a OutputFormat>,
    pub param: &'a str,
    pub tools: &'a [Tool],
    pub nested: bool,
    /// The tools one of which must be called (`tool_choice`).
    pub must_call: Option<Vec<String>>,
    /// The request's token budget, of which a required call takes the second half.
    pub max_tokens: Option<usize>,
}

/// The grammar a request holds the model to: its answer to the format, every
/// call to an offered tool to that tool's parameters, and a call when one is
/// required (written for the model once it has reasoned for half its
/// budget). Each grammar is checked here, so a schema the grammar engine
/// cannot enforce is a 400 naming its field, before any work.
pub fn guide(
    vocabulary: impl FnOnce() -> Result<Vocabulary, ApiError>,
    structure: Structure<'_>,
) -> Result<Option<Guide>, ApiError> {
    let Structure {
        format,
        param: format_param,
        tools,
        nested,
        must_call,
        max_tokens,
    } = structure;
    if format.is_none() && tools.is_empty() {
        return Ok(None);
    }
    let vocabulary = vocabulary()?;
    let check = |grammar: &Grammar, param: &str| {
        vocabulary
            .check(grammar, param)
            .map_err(|e| ApiError::invalid_param(param, e.to_string()))
    };
    let answer = format.map(|f| f.grammar.clone());
    if let Some(grammar) = &answer {
        check(grammar, format_param)?;
    }
    let mut by_name = HashMap::new();
    for (i, tool) in tools.iter().enumerate() {
        let grammar = tool
            .parameters
            .clone()
            .map_or(Grammar::JsonObject, Grammar::JsonSchema);
        let param = if nested {
            format!("tools[{i}].function.parameters")
        } else {
            format!("tools[{i}].parameters")
        };
        check(&grammar, &param)?;
        by_name.insert(tool.name.clone(), grammar);
    }
    let deadline = must_call.map(|names| {
        let after = max_tokens.map_or(REQUIRED_CALL_REASONING, |n| n / 2);
        Deadline::call(after, &names)
    });
    Ok(Some(Guide {
        vocabulary,
        rules: Rules {
            answer,
            tools: by_name,
            deadline,
        },
    }))
}

/// The harmony messages of the turns after the instructions.
pub fn harmony_messages(turns: &[Turn]) -> Vec<Message> {
    let mut messages = Vec::new();
    for turn in turns {
        match turn {
            Turn::Instructions(_) => {}
            Turn::User(text) => messages.push(Message::user(text.clone())),
            Turn::Assistant {
                reasoning,
                calls,
                content,
            } => {
                if let Some(reasoning) = reasoning.as_ref().filter(|r| !r.is_empty()) {
                    messages.push(Message::assistant("analysis", reasoning.clone()));
                }
                for call in calls {
                    messages.push(
                        Message::assistant("commentary", call.arguments.clone())
                            .with_recipient(format!("functions.{}", call.name))
                            .with_content_type("<|constrain|>json"),
                    );
                }
                if let Some(content) = content.as_ref().filter(|c| !c.is_empty() || calls.is_empty()) {
                    messages.push(Message::assistant("final", content.clone()));
                }
            }
            Turn::ToolResult { name, content } => messages.push(
                Message::new(Role::Tool, content.clone())
                    .with_name(format!("functions.{name}"))
                    .with_recipient("assistant")
                    .with_channel("commentary"),
            ),
        }
    }
    messages
}

/// The name of the call `id` among the assistant turns so far, for a tool
/// result that answers it.
pub fn call_name(turns: &[Turn], id: &str) -> Option<String> {
    turns.iter().rev().find_map(|turn| match turn {
        Turn::Assistant { calls, .. } => calls.iter().find(|c| c.id == id).map(|c| c.name.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(e: ApiError) -> String {
        e.body()["error"]["param"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn both_tool_shapes_parse_and_bad_ones_name_the_field() {
        let chat = [
            json!({"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {"type": "object"}}}),
        ];
        let flat = [
            json!({"type": "function", "name": "get_weather", "description": "Weather.", "parameters": {"type": "object"}}),
        ];
        let expected = vec![Tool {
            name: "get_weather".into(),
            description: "Weather.".into(),
            parameters: Some(json!({"type": "object"})),
        }];
        assert_eq!(parse_tools(Some(&chat), true).unwrap(), expected);
        assert_eq!(parse_tools(Some(&flat), false).unwrap(), expected);

        for (tools, param) in [
            (
                vec![json!({"type": "function", "function": {}})],
                "tools[0].function.name",
            ),
            (
                vec![json!({"type": "function", "function": {"name": "a b"}})],
                "tools[0].function.name",
            ),
            (vec![json!({"type": "web_search"})], "tools[0].type"),
            (vec![json!({"function": {"name": "x"}})], "tools[0].type"),
            (
                vec![json!({"type": "function", "function": {"name": "x", "parameters": "object"}})],
                "tools[0].function.parameters",
            ),
            (
                vec![
                    json!({"type": "function", "function": {"name": "x"}}),
                    json!({"type": "function", "function": {"name": "x"}}),
                ],
                "tools[1].function.name",
            ),
            (
                vec![
                    json!({"type": "function", "function": {"name": "x", "description": "d".repeat(64 * 1024)}}),
                ],
                "tools",
            ),
        ] {
            assert_eq!(
                param_of(parse_tools(Some(&tools), true).unwrap_err()),
                param,
                "{tools:?}"
            );
        }
    }

    #[test]
    fn tool_choice_names_must_be_offered() {
        let tools = parse_tools(Some(&[json!({"type": "function", "name": "now"})]), false).unwrap();
        assert_eq!(parse_tool_choice(None, &tools).unwrap(), ToolChoice::Auto);
        assert_eq!(
            parse_tool_choice(Some(&json!("none")), &tools).unwrap(),
            ToolChoice::None
        );
        assert_eq!(
            parse_tool_choice(
                Some(&json!({"type": "function", "function": {"name": "now"}})),
                &tools
            )
            .unwrap(),
            ToolChoice::Function("now".into())
        );
        assert!(parse_tool_choice(Some(&json!({"type": "function", "name": "later"})), &tools).is_err());
        assert!(parse_tool_choice(Some(&json!("required")), &[]).is_err());
        assert!(parse_tool_choice(Some(&json!("sometimes")), &tools).is_err());
        assert_eq!(offered(tools.clone(), ToolChoice::None), (Vec::new(), None));
        assert_eq!(
            offered(tools.clone(), ToolChoice::Required),
            (tools, Some(vec!["now".to_string()]))
        );
    }

    #[test]
    fn calls_and_results_become_harmony_commentary() {
        let turns = [
            Turn::User("Weather?".into()),
            Turn::Assistant {
                reasoning: Some("Look it up.".into()),
                calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: "{}".into(),
                }],
                content: None,
            },
            Turn::ToolResult {
                name: "get_weather".into(),
                content: "sunny".into(),
            },
        ];
        assert_eq!(call_name(&turns, "call_1").as_deref(), Some("get_weather"));
        assert_eq!(call_name(&turns, "call_2"), None);
        let messages = harmony_messages(&turns);
        assert_eq!(messages[1], Message::assistant("analysis", "Look it up."));
        assert_eq!(
            messages[2],
            Message::assistant("commentary", "{}")
                .with_recipient("functions.get_weather")
                .with_content_type("<|constrain|>json")
        );
        assert_eq!(
            messages[3],
            Message::new(Role::Tool, "sunny")
                .with_name("functions.get_weather")
                .with_recipient("assistant")
                .with_channel("commentary")
        );
    }
}
