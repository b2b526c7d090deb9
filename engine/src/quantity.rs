//! The Kubernetes quantity grammar (`128Mi`, `1.5`, `500m`, `1e3`).

/// Parse a quantity into a number of base units (bytes for memory), or say why it is not one.
pub fn parse(input: &str) -> Result<f64, String> {
    let s = input.trim();
    if s.is_empty() || s != input {
        return Err(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".into()
        );
    }
    let (sign, rest) = match s.as_bytes()[0] {
        b'+' => (1.0, &s[1..]),
        b'-' => (-1.0, &s[1..]),
        _ => (1.0, s),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let dots = number.matches('.').count();
    if number.is_empty() || number == "." || dots > 1 {
        return Err(grammar_error());
    }
    let value: f64 = number.parse().map_err(|_| grammar_error())?;
    let multiplier = suffix_multiplier(suffix).ok_or_else(grammar_error)?;
    Ok(sign * value * multiplier)
}

fn grammar_error() -> String {
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".into()
}

fn suffix_multiplier(suffix: &str) -> Option<f64> {
    let binary = |p: i32| Some(1024f64.powi(p));
    let decimal = |p: i32| Some(10f64.powi(p));
    match suffix {
        "" => Some(1.0),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            let exp = suffix.strip_prefix('e').or_else(|| suffix.strip_prefix('E'))?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let e: i32 = exp.parse().ok()?;
            decimal(e)
        }
    }
}

/// A JSON value as a quantity: strings by the grammar, plain numbers as they are.
pub fn parse_value(v: &serde_json::Value) -> Result<f64, String> {
    match v {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(grammar_error),
        _ => Err(grammar_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        assert_eq!(parse("128Mi"), Ok(128.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1Gi"), Ok(1024f64.powi(3)));
        assert_eq!(parse("500m"), Ok(0.5));
        assert_eq!(parse("1.5"), Ok(1.5));
        assert_eq!(parse("1e3"), Ok(1000.0));
        assert_eq!(parse("2E-1"), Ok(2.0 * 0.1));
        assert_eq!(parse("+4k"), Ok(4000.0));
        assert_eq!(parse("-1"), Ok(-1.0));
        assert_eq!(parse(".5"), Ok(0.5));
    }

    #[test]
    fn refuses_what_the_apiserver_refuses() {
        for bad in ["", "1Gb", "abc", "1..2", "Mi", "1 Gi", " 1Gi", "1e", "1iMi", "1MiB", "."] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
