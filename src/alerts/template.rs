//! Checks label and annotation templates the way Prometheus parses them: Go's text/template
//! syntax, with the variables and functions that Prometheus defines for alerting rules.
//!
//! This is a checker, not an interpreter: it finds unclosed actions and comments, unbalanced
//! `if`/`range`/`with`/`end`, undefined variables and unknown functions.

/// Variables that Prometheus defines before every alert template.
const PREDEFINED: [&str; 5] = ["$", "$labels", "$value", "$externalLabels", "$externalURL"];

/// Go's built-in template functions, then the ones Prometheus adds.
const FUNCTIONS: &[&str] = &[
    "and",
    "call",
    "html",
    "index",
    "slice",
    "js",
    "len",
    "not",
    "or",
    "print",
    "printf",
    "println",
    "urlquery",
    "eq",
    "ge",
    "gt",
    "le",
    "lt",
    "ne", //
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "stripPort",
    "stripDomain",
];

#[derive(Debug, PartialEq)]
enum Token {
    Variable(String),
    Identifier(String),
    Field,
    Literal,
    Declare,
    Assign,
    Pipe,
    Other,
}

/// `Ok` when Prometheus would accept `text` as a template, otherwise the first problem.
pub fn check(text: &str) -> Result<(), String> {
    // Each open control (`if`, `range`, …) with the variables declared inside it.
    let mut controls: Vec<&'static str> = Vec::new();
    let mut scopes: Vec<Vec<String>> = vec![PREDEFINED.iter().map(|v| v.to_string()).collect()];
    let mut rest = text;

    while let Some(open) = rest.find("{{") {
        rest = &rest[open + 2..];
        let (action, after) = split_action(rest)?;
        rest = after;
        let action = action.strip_prefix('-').unwrap_or(action).trim_start();
        let action = action.strip_suffix('-').unwrap_or(action).trim_end();
        if action.starts_with("/*") {
            continue;
        }

        let tokens = tokenize(action)?;
        let keyword = match tokens.first() {
            Some(Token::Identifier(word)) => word.as_str(),
            _ => "",
        };
        let mut body = &tokens[..];
        match keyword {
            "if" | "range" | "with" | "block" | "define" => {
                controls.push(match keyword {
                    "if" => "if",
                    "range" => "range",
                    "with" => "with",
                    "block" => "block",
                    _ => "define",
                });
                scopes.push(Vec::new());
                body = &tokens[1..];
            }
            "else" => {
                if !matches!(controls.last(), Some(&("if" | "range" | "with"))) {
                    return Err("unexpected {{else}}".to_string());
                }
                body = &tokens[1..];
                // `else if` and `else with` carry a pipeline of their own.
                if let Some(Token::Identifier(word)) = body.first()
                    && (word == "if" || word == "with")
                {
                    body = &body[1..];
                }
            }
            "end" => {
                if controls.pop().is_none() {
                    return Err("unexpected {{end}}".to_string());
                }
                scopes.pop();
                continue;
            }
            "break" | "continue" => {
                if !controls.contains(&"range") {
                    return Err(format!("{{{{{keyword}}}}} outside {{{{range}}}}"));
                }
                continue;
            }
            "template" => body = &tokens[1..],
            _ => {}
        }
        let bare_else = keyword == "else" && body.is_empty();
        if !bare_else {
            let context = match keyword {
                "if" | "range" | "with" => keyword,
                _ => "command",
            };
            check_pipeline(body, context, &mut scopes)?;
        }
    }

    if let Some(open) = controls.last() {
        return Err(format!("unexpected EOF: {{{{{open}}}}} has no {{{{end}}}}"));
    }
    Ok(())
}

/// The text of one action and what follows its `}}`.
fn split_action(text: &str) -> Result<(&str, &str), String> {
    if text.trim_start_matches('-').trim_start().starts_with("/*") {
        let end = text.find("*/").ok_or("unclosed comment")?;
        let close = text[end..]
            .find("}}")
            .ok_or("comment ends before closing delimiter")?;
        return Ok((&text[..end + close], &text[end + close + 2..]));
    }
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' | '\'' => {
                let mut escaped = false;
                loop {
                    let Some((_, inner)) = chars.next() else {
                        return Err("unterminated quoted string".to_string());
                    };
                    if inner == '\n' {
                        return Err("unterminated quoted string".to_string());
                    }
                    if escaped {
                        escaped = false;
                    } else if inner == '\\' {
                        escaped = true;
                    } else if inner == c {
                        break;
                    }
                }
            }
            '`' => loop {
                match chars.next() {
                    Some((_, '`')) => break,
                    Some(_) => {}
                    None => return Err("unterminated raw quoted string".to_string()),
                }
            },
            '}' if text[at..].starts_with("}}") => return Ok((&text[..at], &text[at + 2..])),
            _ => {}
        }
    }
    Err("unclosed action".to_string())
}

fn tokenize(action: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = action.chars().collect();
    let mut i = 0;
    let name_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Literal);
        } else if c == '$' {
            let start = i;
            i += 1;
            while i < chars.len() && name_char(chars[i]) {
                i += 1;
            }
            tokens.push(Token::Variable(chars[start..i].iter().collect()));
            // A field chain such as `$labels.instance` belongs to the variable.
            while i < chars.len() && (chars[i] == '.' || name_char(chars[i])) {
                i += 1;
            }
        } else if c == '.' {
            i += 1;
            while i < chars.len() && (chars[i] == '.' || name_char(chars[i])) {
                i += 1;
            }
            tokens.push(Token::Field);
        } else if c.is_ascii_digit()
            || ((c == '-' || c == '+') && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            i += 1;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            tokens.push(Token::Literal);
        } else if name_char(c) {
            let start = i;
            while i < chars.len() && name_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A field of a parenthesised or called value, e.g. `(index $x 0).Value`.
            while i < chars.len() && chars[i] == '.' {
                i += 1;
                while i < chars.len() && name_char(chars[i]) {
                    i += 1;
                }
            }
            tokens.push(Token::Identifier(word));
        } else if c == ':' && chars.get(i + 1) == Some(&'=') {
            tokens.push(Token::Declare);
            i += 2;
        } else if c == '=' {
            tokens.push(Token::Assign);
            i += 1;
        } else if c == '|' {
            tokens.push(Token::Pipe);
            i += 1;
        } else if matches!(c, '(' | ')' | ',') {
            tokens.push(Token::Other);
            i += 1;
        } else {
            return Err(format!("unexpected {c:?} in command"));
        }
    }
    Ok(tokens)
}

fn check_pipeline(
    tokens: &[Token],
    context: &str,
    scopes: &mut [Vec<String>],
) -> Result<(), String> {
    // `$x := …` and `$i, $e := …` declare; the names are usable after this action.
    let declare_at = tokens.iter().position(|t| *t == Token::Declare);
    let mut declared = Vec::new();
    let body = match declare_at {
        Some(at) => {
            for token in &tokens[..at] {
                if let Token::Variable(name) = token {
                    declared.push(name.clone());
                }
            }
            &tokens[at + 1..]
        }
        None => tokens,
    };
    // `{{ }}`, `{{ if }}` and `{{ $x := }}` have no value; Go accepts a trailing `|`.
    if body.first().is_none_or(|t| *t == Token::Pipe) {
        return Err(format!("missing value for {context}"));
    }

    let defined = |name: &str, scopes: &[Vec<String>]| {
        scopes.iter().any(|scope| scope.iter().any(|v| v == name))
    };
    for token in body {
        match token {
            Token::Variable(name) if !defined(name, scopes) => {
                return Err(format!("undefined variable \"{name}\""));
            }
            Token::Identifier(word) => {
                let literal = matches!(word.as_str(), "true" | "false" | "nil");
                if !literal && !FUNCTIONS.contains(&word.as_str()) {
                    return Err(format!("function \"{word}\" not defined"));
                }
            }
            _ => {}
        }
    }
    if let Some(scope) = scopes.last_mut() {
        scope.extend(declared);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_templates_pass() {
        for text in [
            "plain text",
            "{{ $labels.instance }} is down",
            "VALUE = {{ $value }}\n  LABELS = {{ $labels }}",
            "{{ $value | humanize }}% of {{ $externalLabels.cluster }}",
            "{{ printf \"%.2f\" $value }}",
            "{{- if gt $value 1.0 -}}high{{ else }}low{{ end }}",
            "{{ range $i, $e := query \"up\" }}{{ $e.Labels.job }}{{ end }}",
            "{{ with query \"up\" }}{{ . | first | value }}{{ end }}",
            "{{/* a comment */}}ok",
            "{{ $x := 1 }}{{ $x }}",
            "{{ \"}}\" }}",
        ] {
            assert_eq!(check(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn broken_templates_are_named() {
        assert_eq!(check("{{ $labels.x "), Err("unclosed action".to_string()));
        assert_eq!(
            check("{{ $foo }}"),
            Err("undefined variable \"$foo\"".to_string())
        );
        assert_eq!(
            check("{{ nosuch 1 }}"),
            Err("function \"nosuch\" not defined".to_string())
        );
        assert_eq!(check("{{ end }}"), Err("unexpected {{end}}".to_string()));
        assert!(check("{{ if true }}x").is_err());
        assert_eq!(
            check("{{ $x := 1 }}{{ end }}"),
            Err("unexpected {{end}}".to_string())
        );
        assert!(check("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}").is_err());
        assert_eq!(check("{{ }}"), Err("missing value for command".to_string()));
        assert_eq!(
            check("{{ if }}x{{ end }}"),
            Err("missing value for if".to_string())
        );
        assert_eq!(
            check("{{ $x := }}"),
            Err("missing value for command".to_string())
        );
        assert_eq!(check("{{ $value | humanize | }}"), Ok(()));
    }
}
