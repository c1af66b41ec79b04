//! The rules for prefixes and job names, which keep a key's text unambiguous, short and printable.
//!
//! They are checked once at set-up (building a client or a queue, registering a job), never on the
//! read path.

use super::{KeyError, MAX_JOB_NAME_LEN, MAX_PREFIX_LEN};

const REASON_WHITESPACE: &str = "contains whitespace or a control character";
const REASON_NON_ASCII: &str = "contains a non-ASCII character";

/// Checks that `prefix` is 1 to [`MAX_PREFIX_LEN`] bytes of ASCII letters, digits, `_`, `.`, `-`.
///
/// `:` is excluded so that the prefix is exactly the part of a key before its first `:`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.is_empty() {
        return Err(KeyError::EmptyPrefix);
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(KeyError::PrefixTooLong {
            prefix: prefix.to_owned(),
            len: prefix.len(),
        });
    }
    let invalid = |reason| KeyError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    for c in prefix.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '.' | '-' => {}
            ':' => return Err(invalid("contains `:`, which separates the parts of a key")),
            c if c.is_whitespace() || c.is_control() => return Err(invalid(REASON_WHITESPACE)),
            c if !c.is_ascii() => return Err(invalid(REASON_NON_ASCII)),
            _ => {
                return Err(invalid(
                    "contains a character other than ASCII letters, digits, `_`, `.` and `-`",
                ));
            }
        }
    }
    Ok(())
}

/// Checks that `name` is 1 to [`MAX_JOB_NAME_LEN`] bytes of printable ASCII (`0x21..=0x7E`) other
/// than `{` and `}`.
///
/// Braces are excluded because Redis Cluster would read them as a hash tag and place the key on a
/// slot of the job's choosing; `:` is allowed so that names can look like Rust paths.
pub(crate) fn validate_job_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() {
        return Err(KeyError::EmptyJobName);
    }
    if name.len() > MAX_JOB_NAME_LEN {
        return Err(KeyError::JobNameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let invalid = |reason| KeyError::InvalidJobName {
        name: name.to_owned(),
        reason,
    };
    for c in name.chars() {
        match c {
            '{' | '}' => {
                return Err(invalid(
                    "contains `{` or `}`, which Redis Cluster would read as a hash tag",
                ));
            }
            c if c.is_ascii_graphic() => {}
            c if c.is_whitespace() || c.is_control() => return Err(invalid(REASON_WHITESPACE)),
            _ => return Err(invalid(REASON_NON_ASCII)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_validation() {
        for ok in ["a", "myapp", "My-App_2.0", &"x".repeat(MAX_PREFIX_LEN)] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_prefix(""), Err(KeyError::EmptyPrefix));
        assert!(matches!(
            validate_prefix(&"x".repeat(MAX_PREFIX_LEN + 1)),
            Err(KeyError::PrefixTooLong { len: 65, .. })
        ));
        for bad in ["a:b", "a b", "a\tb", "a\n", "é", "a/b", "a{b}", "a\u{0}"] {
            assert!(
                matches!(validate_prefix(bad), Err(KeyError::InvalidPrefix { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_prefix("a:b").unwrap_err().to_string(),
            "prefix `a:b` contains `:`, which separates the parts of a key"
        );
    }

    #[test]
    fn job_name_validation() {
        for ok in [
            "j",
            "user_tweets",
            "my_crate::user_tweets",
            "a/b@c!#$%&*",
            &"x".repeat(MAX_JOB_NAME_LEN),
        ] {
            assert_eq!(validate_job_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_job_name(""), Err(KeyError::EmptyJobName));
        assert!(matches!(
            validate_job_name(&"x".repeat(MAX_JOB_NAME_LEN + 1)),
            Err(KeyError::JobNameTooLong { len: 129, .. })
        ));
        for bad in [
            "a b", "a\tb", "a\r\n", "\u{7f}", "naïve", "a\u{a0}b", "{tag}", "a}",
        ] {
            assert!(
                matches!(validate_job_name(bad), Err(KeyError::InvalidJobName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_job_name("a b").unwrap_err().to_string(),
            "job name `a b` contains whitespace or a control character"
        );
        assert_eq!(
            validate_job_name("a\nb").unwrap_err().to_string(),
            "job name `a\\nb` contains whitespace or a control character"
        );
        assert_eq!(
            validate_job_name("é").unwrap_err().to_string(),
            "job name `é` contains a non-ASCII character"
        );
        let long = validate_job_name(&"y".repeat(1000))
            .unwrap_err()
            .to_string();
        assert!(long.starts_with(&format!("job name `{}...` is 1000 bytes", "y".repeat(80))));
    }
}
