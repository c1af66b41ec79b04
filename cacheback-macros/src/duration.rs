//! Durations written as strings (`"500ms"`, `"30s"`, `"1h30m"`), parsed while the user's crate
//! compiles so that a typo is a compile error, not a panic at start-up. The macro crate may not
//! depend on `humantime`, hence this small parser of the subset the attribute accepts.

/// The forms a duration may take, for error messages.
pub(crate) const ACCEPTED_FORMS: &str = "a number followed by a unit (`ms`, `s`, `m`, `h` or `d`), \
     or several of them: \"500ms\", \"30s\", \"10m\", \"1h\", \"1d\", \"1h30m\"";

/// Parses `text` into milliseconds, or says what is wrong with it.
///
/// Grammar: one or more `<digits><unit>` components, optionally separated by spaces; units are
/// `ms`, `s`, `m`, `h` and `d`. Components add up, so `"1h30m"` is 90 minutes.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let mut rest = text.trim_start();
    if rest.is_empty() {
        return Err("the duration is empty".to_owned());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let (digits, after) = rest.split_at(digits_end);
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if after.starts_with(['.', ',']) => {
                return Err(
                    "fractions are not accepted; combine units instead, as in \"1h30m\"".to_owned(),
                );
            }
            "" => return Err(format!("`{digits}` has no unit")),
            other => return Err(format!("unknown unit `{other}`")),
        };
        let too_large = || "the duration is too large".to_owned();
        let amount: u64 = digits.parse().map_err(|_| too_large())?;
        let millis = amount.checked_mul(millis_per_unit).ok_or_else(too_large)?;
        total = total.checked_add(millis).ok_or_else(too_large)?;
        rest = after.trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn single_units() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("10m"), Ok(600_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        assert_eq!(parse_millis("0s"), Ok(0));
    }

    #[test]
    fn compounds_add_up() {
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_millis("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_millis("1d2h3m4s5ms"), Ok(93_784_005));
        assert_eq!(parse_millis("1s1s"), Ok(2_000));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse_millis(""), Err("the duration is empty".into()));
        assert_eq!(parse_millis("  "), Err("the duration is empty".into()));
        assert_eq!(parse_millis("30"), Err("`30` has no unit".into()));
        assert_eq!(parse_millis("5min"), Err("unknown unit `min`".into()));
        assert_eq!(parse_millis("s"), Err("expected a number at `s`".into()));
        assert!(parse_millis("1.5h").unwrap_err().contains("fractions"));
        assert_eq!(
            parse_millis("-1s"),
            Err("expected a number at `-1s`".into())
        );
        assert_eq!(
            parse_millis("99999999999999999999s"),
            Err("the duration is too large".into())
        );
        assert_eq!(
            parse_millis("18446744073709552d"),
            Err("the duration is too large".into())
        );
    }
}
