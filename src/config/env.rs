//! `${env:NAME}` and `${env:NAME:-default}` in configuration strings.

/// Why a string could not be interpolated; the caller adds the location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    Unset { name: String },
    Unterminated,
    BadReference { reference: String },
}

impl std::fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpolationError::Unset { name } => write!(
                f,
                "environment variable {name} is not set and `${{env:{name}}}` has no default"
            ),
            InterpolationError::Unterminated => f.write_str("`${` is not closed by `}`"),
            InterpolationError::BadReference { reference } => write!(
                f,
                "`${{{reference}}}` is not a valid reference; write `${{env:NAME}}` or \
                 `${{env:NAME:-default}}` (and `$${{` for a literal `${{`)"
            ),
        }
    }
}

/// Replaces every reference in `input` using `lookup`. `$${` stands for a literal `${`.
pub fn interpolate(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut output = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find('$') {
        output.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(stripped) = after.strip_prefix("$${") {
            output.push_str("${");
            rest = stripped;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            output.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(InterpolationError::Unterminated);
        };
        output.push_str(&resolve(&body[..end], &lookup)?);
        rest = &body[end + 1..];
    }
    output.push_str(rest);
    Ok(output)
}

fn resolve(
    reference: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let bad = || InterpolationError::BadReference {
        reference: reference.to_string(),
    };
    let spec = reference.strip_prefix("env:").ok_or_else(bad)?;
    let (name, default) = match spec.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (spec, None),
    };
    let valid_name = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return Err(bad());
    }

    // An empty variable counts as unset when a default is given, as in POSIX `${X:-d}`.
    match (
        lookup(name).filter(|v| !v.is_empty() || default.is_none()),
        default,
    ) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(InterpolationError::Unset {
            name: name.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DATABASE_URL" => Some("postgres://db/app".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_references_and_defaults() {
        assert_eq!(
            interpolate("${env:DATABASE_URL}", env).unwrap(),
            "postgres://db/app"
        );
        assert_eq!(
            interpolate("x=${env:MISSING:-sqlite://a.db}!", env).unwrap(),
            "x=sqlite://a.db!"
        );
        assert_eq!(interpolate("${env:EMPTY:-d}", env).unwrap(), "d");
        assert_eq!(interpolate("${env:EMPTY}", env).unwrap(), "");
        assert_eq!(
            interpolate("cost: $5 $${env:X}", env).unwrap(),
            "cost: $5 ${env:X}"
        );
    }

    #[test]
    fn reports_unset_and_malformed_references() {
        assert_eq!(
            interpolate("${env:MISSING}", env),
            Err(InterpolationError::Unset {
                name: "MISSING".into()
            })
        );
        assert_eq!(
            interpolate("${env:X", env),
            Err(InterpolationError::Unterminated)
        );
        assert!(matches!(
            interpolate("${vault:x}", env),
            Err(InterpolationError::BadReference { .. })
        ));
    }
}
