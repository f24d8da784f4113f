//! Templates: `{{ name }}` placeholders filled from the notification's JSON data.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// A message template: a subject, a plain-text body and an optional HTML body.
///
/// Placeholders are `{{ path }}` where `path` is a dotted path into the data: `{{ name }}`,
/// `{{ order.id }}`, `{{ items.0.title }}` (a number indexes an array). Whitespace inside the
/// braces is ignored. Strings are inserted as they are, numbers and booleans in their JSON form,
/// arrays and objects as compact JSON. In the HTML body values are HTML-escaped (`<`, `>`, `&`,
/// `"`, `'`); the template text itself is not. A path that is absent or `null` in the data is an
/// error ([`Error::MissingVariable`]), never an empty string; an unclosed `{{` or a malformed path
/// is [`Error::TemplateSyntax`]. There are no conditionals or loops: render those upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Subject line (emails) or title.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body, if any.
    #[serde(default)]
    pub html: Option<String>,
}

impl Template {
    /// A template with a subject and a plain-text body.
    pub fn new(subject: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            text: text.into(),
            html: None,
        }
    }

    /// Adds an HTML body.
    pub fn with_html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }
}

/// Rendered content of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body, if the template has one.
    pub html: Option<String>,
}

/// Templates by name; deserializes from a JSON object `{ "<name>": { "subject", "text", "html" } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Templates(HashMap<String, Template>);

impl Templates {
    /// No templates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the template `name`.
    pub fn with(mut self, name: impl Into<String>, template: Template) -> Self {
        self.0.insert(name.into(), template);
        self
    }

    /// The template `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Template> {
        self.0.get(name)
    }

    /// Renders template `name` with `data`.
    pub fn render(&self, name: &str, data: &Value) -> Result<Content, Error> {
        let template = self.get(name).ok_or_else(|| Error::UnknownTemplate {
            template: name.to_owned(),
        })?;
        Ok(Content {
            subject: render(name, &template.subject, data, false)?,
            text: render(name, &template.text, data, false)?,
            html: template
                .html
                .as_deref()
                .map(|html| render(name, html, data, true))
                .transpose()?,
        })
    }
}

/// Renders one template string; see [`Template`] for the rules.
pub fn render(
    template: &str,
    source: &str,
    data: &Value,
    escape_html: bool,
) -> Result<String, Error> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| Error::TemplateSyntax {
            template: template.to_owned(),
            offset: offset + start,
            reason: "`{{` is never closed by `}}`".into(),
        })?;
        let path = after[..end].trim();
        let valid_segment = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !path.split('.').all(valid_segment) {
            return Err(Error::TemplateSyntax {
                template: template.to_owned(),
                offset: offset + start,
                reason: format!("`{path}` is not a dotted path of names"),
            });
        }
        let value = lookup(data, path).ok_or_else(|| Error::MissingVariable {
            template: template.to_owned(),
            variable: path.to_owned(),
        })?;
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if escape_html {
            out.push_str(&escape(&text));
        } else {
            out.push_str(&text);
        }
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = data;
    for segment in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!current.is_null()).then_some(current)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_filled_from_dotted_paths() {
        let data =
            json!({"name": "Ada", "order": {"id": 42, "paid": true, "items": [{"t": "Tea"}]}});
        let out = render(
            "t",
            "Hi {{name}}, order {{ order.id }} ({{order.paid}}): {{order.items.0.t}}",
            &data,
            false,
        )
        .unwrap();
        assert_eq!(out, "Hi Ada, order 42 (true): Tea");
        assert_eq!(
            render("t", "no placeholders", &data, false).unwrap(),
            "no placeholders"
        );
        assert_eq!(
            render("t", "{{order.items}}", &data, false).unwrap(),
            r#"[{"t":"Tea"}]"#
        );
    }

    #[test]
    fn missing_and_null_variables_are_typed_errors() {
        let data = json!({"name": null, "list": [1]});
        for source in [
            "{{name}}",
            "{{absent}}",
            "{{list.1}}",
            "{{list.x}}",
            "{{name.deeper}}",
        ] {
            let err = render("welcome", source, &data, false).unwrap_err();
            assert!(
                matches!(&err, Error::MissingVariable { template, .. } if template == "welcome"),
                "{source}: {err:?}"
            );
        }
    }

    #[test]
    fn malformed_templates_are_syntax_errors() {
        for source in ["Hi {{name", "{{}}", "{{ a..b }}", "{{ a b }}", "{{ <x> }}"] {
            assert!(
                matches!(
                    render("t", source, &json!({}), false),
                    Err(Error::TemplateSyntax { .. })
                ),
                "{source}"
            );
        }
    }

    #[test]
    fn html_bodies_escape_values_but_not_markup() {
        let data = json!({"name": "<script>Ada & 'co'</script>"});
        let templates = Templates::new().with(
            "t",
            Template::new("Hi {{name}}", "Hi {{name}}").with_html("<p>Hi {{name}}</p>"),
        );
        let content = templates.render("t", &data).unwrap();
        assert_eq!(content.text, "Hi <script>Ada & 'co'</script>");
        assert_eq!(
            content.html.unwrap(),
            "<p>Hi &lt;script&gt;Ada &amp; &#39;co&#39;&lt;/script&gt;</p>"
        );
        assert!(matches!(
            templates.render("nope", &data),
            Err(Error::UnknownTemplate { .. })
        ));
    }

    #[test]
    fn templates_deserialize_from_configuration() {
        let templates: Templates = serde_json::from_value(json!({
            "welcome": {"subject": "Welcome {{name}}", "text": "Hello {{name}}"}
        }))
        .unwrap();
        assert_eq!(
            templates
                .render("welcome", &json!({"name": "Bo"}))
                .unwrap()
                .subject,
            "Welcome Bo"
        );
    }
}
