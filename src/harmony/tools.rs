//! Function tools and response formats in the developer message, written the
//! way harmony's renderer writes them: each tool a TypeScript-like signature
//! inside `namespace functions { … }`, its JSON-Schema parameters turned into
//! a type with the schema's descriptions, titles, examples and defaults as
//! `//` comments. The model was trained on exactly this text, so every quirk
//! of the official rendering (indents that grow by three or four spaces,
//! which defaults keep their quotes) is kept.

use serde_json::Value;

/// A function the model may call: `functions.{name}` on the commentary channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON Schema of the arguments object; `None`: the tool takes none.
    pub parameters: Option<Value>,
}

/// A JSON Schema the final answer is asked to follow (the developer
/// message's `# Response Formats`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseFormat {
    pub name: String,
    pub description: Option<String>,
    pub schema: Value,
}

/// `# Tools` with the `functions` namespace, as harmony's developer message holds it.
pub(super) fn tools_section(tools: &[Tool]) -> String {
    let mut lines = vec![
        "## functions\n".to_string(),
        "namespace functions {\n".to_string(),
    ];
    for tool in tools {
        lines.extend(tool.description.lines().map(|line| format!("// {line}")));
        let arguments = match &tool.parameters {
            Some(schema) => format!("_: {}", typescript(schema, "")),
            None => String::new(),
        };
        lines.push(format!("type {} = ({arguments}) => any;\n", tool.name));
    }
    lines.push("} // namespace functions".to_string());
    format!("# Tools\n\n{}", lines.join("\n"))
}

/// `# Response Formats`, harmony's documented layout: the name, the
/// description as a comment, the schema as compact JSON.
pub(super) fn response_format_section(format: &ResponseFormat) -> String {
    let description = format
        .description
        .as_ref()
        .map_or_else(String::new, |d| format!("// {d}\n"));
    format!(
        "# Response Formats\n\n## {}\n\n{description}{}",
        format.name, format.schema
    )
}

fn is_enum(schema: &Value) -> bool {
    schema["enum"].as_array().is_some_and(|values| !values.is_empty())
}

fn is_nullable(schema: &Value) -> bool {
    schema["nullable"].as_bool() == Some(true)
}

/// `T | null` for a schema marked `nullable`, unless `null` is already there.
fn with_null(schema: &Value, ty: String) -> String {
    if is_nullable(schema) && !ty.contains("null") {
        format!("{ty} | null")
    } else {
        ty
    }
}

/// How a default is written in a comment. Harmony keeps the quotes of a
/// string default except in two places: a property's own comment and a
/// `oneOf` variant's inside an object, when the schema is an enum.
fn default_comment(schema: &Value, default: &Value, bare_enum_strings: bool) -> String {
    match default.as_str() {
        Some(text) if !is_enum(schema) => format!("default: \"{text}\""),
        Some(text) if bare_enum_strings => format!("default: {text}"),
        _ => format!("default: {default}"),
    }
}

/// One `oneOf` variant's trailing comment: its description (when wanted) and default.
fn variant_comment(variant: &Value, description: Option<&str>, bare_enum_strings: bool) -> String {
    let mut parts: Vec<String> = description.map(str::to_string).into_iter().collect();
    if let Some(default) = variant.get("default") {
        parts.push(default_comment(variant, default, bare_enum_strings));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" // {}", parts.join(" "))
    }
}

/// A JSON Schema as the TypeScript-like type harmony writes for it.
fn typescript(schema: &Value, indent: &str) -> String {
    if let Some(variants) = schema["oneOf"].as_array() {
        let nested = format!("{indent}   ");
        return variants
            .iter()
            .map(|variant| {
                let ty = with_null(variant, typescript(variant, &nested));
                let comment = variant_comment(variant, variant["description"].as_str(), false);
                format!("\n{indent} | {ty}{comment}")
            })
            .collect();
    }
    if let Some(types) = schema["type"].as_array() {
        let names: Vec<&str> = types
            .iter()
            .filter_map(Value::as_str)
            .map(|name| if name == "integer" { "number" } else { name })
            .collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    match schema["type"].as_str() {
        Some("object") => object(schema, indent),
        Some("string") => {
            let values: Vec<String> = schema["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|value| format!("\"{value}\""))
                .collect();
            if values.is_empty() {
                "string".to_string()
            } else {
                values.join(" | ")
            }
        }
        Some("number" | "integer") => "number".to_string(),
        Some("boolean") => "boolean".to_string(),
        Some("array") => match schema.get("items") {
            Some(items) => format!("{}[]", typescript(items, indent)),
            None => "Array<any>".to_string(),
        },
        _ => "any".to_string(),
    }
}

/// `{ name: type, optional?: type, … }`, one property a line with its comments above.
fn object(schema: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(description) = schema["description"].as_str() {
        out.push_str(&format!("{indent}// {description}\n"));
    }
    out.push_str("{\n");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (key, property) in schema["properties"].as_object().into_iter().flatten() {
        let optional = if required.contains(&key.as_str()) { "" } else { "?" };
        if let Some(title) = property["title"].as_str() {
            out.push_str(&format!("{indent}// {title}\n{indent}//\n"));
        }
        let one_of = property.get("oneOf");
        if one_of.is_none() {
            if let Some(description) = property["description"].as_str() {
                out.push_str(&format!("{indent}// {description}\n"));
            }
        }
        let examples = property["examples"].as_array().filter(|e| !e.is_empty());
        if let Some(examples) = examples {
            out.push_str(&format!("{indent}// Examples:\n"));
            for example in examples.iter().filter_map(Value::as_str) {
                out.push_str(&format!("{indent}// - \"{example}\"\n"));
            }
        }
        if let Some(variants) = one_of.and_then(Value::as_array) {
            out.push_str(&one_of_property(key, optional, property, variants, indent));
            continue;
        }
        let ty = with_null(property, typescript(property, &format!("{indent}    ")));
        out.push_str(&format!("{indent}{key}{optional}: {ty},"));
        if let (None, Some(default)) = (one_of, property.get("default")) {
            out.push_str(&format!(" // {}", default_comment(property, default, true)));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent}}}"));
    out
}

/// A property whose schema is a `oneOf`: its comments, then one ` | variant`
/// line each. The property's description goes above unless the first
/// variant says the same, and no variant repeats it.
fn one_of_property(key: &str, optional: &str, property: &Value, variants: &[Value], indent: &str) -> String {
    let mut out = String::new();
    let description = property["description"].as_str();
    let first_says_it =
        description.is_some() && variants.first().and_then(|v| v["description"].as_str()) == description;
    let described_above = description.is_some() && !first_says_it;
    if let (true, Some(text)) = (described_above, description) {
        out.push_str(&format!("{indent}// {text}\n"));
    }
    if let Some(default) = property.get("default") {
        out.push_str(&format!(
            "{indent}// {}\n",
            default_comment(property, default, true)
        ));
    }
    out.push_str(&format!("{indent}{key}{optional}:\n"));
    let nested = format!("{indent}   ");
    for (i, variant) in variants.iter().enumerate() {
        let ty = with_null(variant, typescript(variant, &nested));
        let own = variant["description"]
            .as_str()
            .filter(|text| !(i == 0 && described_above) && Some(*text) != description);
        out.push_str(&format!(
            "{indent} | {ty}{}\n",
            variant_comment(variant, own, true)
        ));
    }
    out.push_str(&format!("{indent},\n"));
    out
}
