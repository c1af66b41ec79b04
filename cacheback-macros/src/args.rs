//! The attribute's arguments: `#[cacheback(lifetime = "30s", fetch_on_miss = false, ...)]`.
//!
//! Everything that can be checked without running the user's program is checked here, so a bad
//! knob is a compile error on the literal rather than a panic when the job registers.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token};

use crate::duration;

/// Every key the attribute accepts, in the order the docs list them.
const KEYS: &[&str] = &[
    "name",
    "lifetime",
    "stale_ttl",
    "refresh_timeout",
    "fetch_timeout",
    "stale_threshold",
    "stale_if_error",
    "fetch_on_miss",
    "fleet_coalescing",
    "early_refresh",
    "jitter",
    "queue",
    "schema_version",
    "tags",
    "client",
];

/// The same limit as the core crate's job-name check (`key::validate_job_name`).
const MAX_JOB_NAME_LEN: usize = 128;

/// The parsed and checked arguments of one `#[cacheback(...)]`.
#[derive(Default)]
pub(crate) struct Args {
    /// An explicit job name; by default the macro names the job after the fn's module path.
    pub(crate) name: Option<LitStr>,
    /// `Policy` setter calls, in the order written, e.g. `.lifetime(Duration::from_millis(30000))`.
    pub(crate) policy: Vec<TokenStream>,
    /// `fetch_on_miss`, which also decides the cached fn's return type.
    pub(crate) fetch_on_miss: Option<bool>,
    /// The client expression; by default the global client.
    pub(crate) client: Option<Expr>,
    /// How the job tags its values; by default it does not.
    pub(crate) tags: Option<TagsArg>,
}

/// The two forms of `tags = ...`.
pub(crate) enum TagsArg {
    /// `tags = ["user:{user}", "users"]`: format strings over the key arguments.
    Formats(Vec<LitStr>),
    /// `tags = order_tags`: a fn (or a closure that captures nothing) given the key arguments
    /// and the value by reference, returning `cacheback::Tags`.
    Function(Expr),
}

/// One `key = value` pair, before its value is checked.
struct Pair {
    key: Ident,
    value: Expr,
}

impl Parse for Pair {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `parse_any` so that a keyword used as a key (`type = ...`) gets the "unknown argument"
        // message that lists the valid keys, not a bare syntax error.
        let key = Ident::parse_any(input)?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `{key} = ...`: every #[cacheback] argument takes a value"),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Pair { key, value })
    }
}

impl Args {
    /// Parses the attribute's tokens, collecting every error rather than stopping at the first.
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Args> {
        let pairs =
            syn::parse::Parser::parse2(Punctuated::<Pair, Token![,]>::parse_terminated, tokens)?;
        let mut args = Args::default();
        let mut seen: Vec<String> = Vec::new();
        let mut errors: Option<syn::Error> = None;
        for Pair { key, value } in pairs {
            let key_text = key.unraw().to_string();
            let result = if seen.contains(&key_text) {
                Err(syn::Error::new(
                    key.span(),
                    format!("duplicate #[cacheback] argument `{key_text}`"),
                ))
            } else {
                seen.push(key_text.clone());
                args.apply(&key, &key_text, value)
            };
            if let Err(error) = result {
                match &mut errors {
                    Some(all) => all.combine(error),
                    None => errors = Some(error),
                }
            }
        }
        match errors {
            Some(errors) => Err(errors),
            None => Ok(args),
        }
    }

    /// Records one checked `key = value`: a field of its own for the knobs that shape the
    /// generated code, a `Policy` setter call for the others.
    fn apply(&mut self, key: &Ident, key_text: &str, value: Expr) -> syn::Result<()> {
        let setter = Ident::new(key_text, key.span());
        match key_text {
            "name" => {
                let name = string(key_text, &value)?;
                check_job_name(&name)?;
                self.name = Some(name);
            }
            "fetch_on_miss" => {
                let flag = boolean(key_text, &value)?;
                self.fetch_on_miss = Some(flag);
                self.policy
                    .push(quote_spanned!(value.span()=> .#setter(#flag)));
            }
            "client" => self.client = Some(value),
            "tags" => self.tags = Some(tags(value)?),
            _ => {
                let call = policy_setter(key, key_text, &setter, &value)?;
                self.policy.push(call);
            }
        }
        Ok(())
    }
}

/// The `Policy` setter call of a knob that only configures the policy, such as
/// `.jitter(0.5)`, spanned on the value; or the error of an unknown key.
fn policy_setter(
    key: &Ident,
    key_text: &str,
    setter: &Ident,
    value: &Expr,
) -> syn::Result<TokenStream> {
    let span = value.span();
    match key_text {
        "lifetime" | "refresh_timeout" | "fetch_timeout" => {
            let millis = duration(key_text, value)?;
            if millis == 0 {
                return Err(syn::Error::new_spanned(
                    value,
                    format!("`{key_text}` must be greater than zero"),
                ));
            }
            Ok(duration_setter(setter, millis, span))
        }
        "stale_ttl" | "stale_threshold" | "stale_if_error" => {
            let millis = duration(key_text, value)?;
            Ok(duration_setter(setter, millis, span))
        }
        "early_refresh" => {
            let beta = checked_float(
                key_text,
                value,
                |beta| beta.is_finite() && beta > 0.0,
                "`early_refresh` is the XFetch beta and must be positive (1.0 is the usual choice)",
            )?;
            Ok(quote_spanned!(span=> .#setter(#beta)))
        }
        "jitter" => {
            let fraction = checked_float(
                key_text,
                value,
                |fraction| (0.0..=1.0).contains(&fraction),
                "`jitter` is a fraction of `lifetime` and must be within 0.0..=1.0",
            )?;
            Ok(quote_spanned!(span=> .#setter(#fraction)))
        }
        "queue" => {
            let queue = string(key_text, value)?;
            if queue.value().is_empty() {
                return Err(syn::Error::new(queue.span(), "`queue` must not be empty"));
            }
            Ok(quote_spanned!(span=> .#setter(#queue)))
        }
        "fleet_coalescing" => {
            let flag = boolean(key_text, value)?;
            Ok(quote_spanned!(span=> .#setter(#flag)))
        }
        "schema_version" => {
            let version = match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Int(int), ..
                }) => int.base10_parse::<u32>()?,
                _ => return Err(expected(key_text, "an integer such as `1`", value)),
            };
            Ok(quote_spanned!(span=> .#setter(#version)))
        }
        _ => Err(unknown_key(key, key_text)),
    }
}

/// The error of a key the attribute does not know, listing the valid ones.
fn unknown_key(key: &Ident, key_text: &str) -> syn::Error {
    syn::Error::new(
        key.span(),
        format!(
            "unknown #[cacheback] argument `{key_text}`; valid arguments are: {}",
            KEYS.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

fn duration_setter(setter: &Ident, millis: u64, span: Span) -> TokenStream {
    quote_spanned!(span=> .#setter(::core::time::Duration::from_millis(#millis)))
}

fn expected(key: &str, what: &str, value: &Expr) -> syn::Error {
    syn::Error::new_spanned(
        value,
        format!(
            "`{key}` expects {what}, found `{}`",
            value.to_token_stream()
        ),
    )
}

fn string(key: &str, value: &Expr) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        _ => Err(expected(key, "a string literal", value)),
    }
}

fn duration(key: &str, value: &Expr) -> syn::Result<u64> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(text),
        ..
    }) = value
    else {
        return Err(expected(
            key,
            "a duration string such as \"30s\" or \"1h30m\"",
            value,
        ));
    };
    duration::parse_millis(&text.value()).map_err(|reason| {
        syn::Error::new(
            text.span(),
            format!(
                "invalid duration {:?} for `{key}`: {reason}; expected {}",
                text.value(),
                duration::ACCEPTED_FORMS
            ),
        )
    })
}

fn boolean(key: &str, value: &Expr) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(expected(key, "`true` or `false`", value)),
    }
}

fn float(key: &str, value: &Expr) -> syn::Result<f64> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        _ => Err(expected(key, "a number such as `0.5`", value)),
    }
}

/// A number for `key` that `valid` accepts; otherwise `message`, on the value.
fn checked_float(
    key: &str,
    value: &Expr,
    valid: fn(f64) -> bool,
    message: &str,
) -> syn::Result<f64> {
    let number = float(key, value)?;
    if valid(number) {
        Ok(number)
    } else {
        Err(syn::Error::new_spanned(value, message))
    }
}

/// The core crate's rule for job names, checked early: printable ASCII without whitespace, `{`
/// or `}` (Redis Cluster hash tags), at most 128 bytes.
fn check_job_name(name: &LitStr) -> syn::Result<()> {
    let text = name.value();
    let problem = if text.is_empty() {
        Some("must not be empty".to_owned())
    } else if text.len() > MAX_JOB_NAME_LEN {
        Some(format!(
            "is {} bytes long; the limit is {MAX_JOB_NAME_LEN}",
            text.len()
        ))
    } else if text.contains(['{', '}']) {
        Some("must not contain `{` or `}` (Redis Cluster reads them as a hash tag)".to_owned())
    } else if !text.chars().all(|c| c.is_ascii_graphic()) {
        Some("must be printable ASCII without whitespace".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(syn::Error::new(
            name.span(),
            format!("the job name {text:?} {problem}"),
        )),
        None => Ok(()),
    }
}

/// The longest tag and the most tags per entry, as the core crate's `Tags` checks them.
const MAX_TAG_LEN: usize = 128;
const MAX_TAGS_PER_ENTRY: usize = 32;

/// `tags = [...]` (each a string literal, checked as far as it can be before the arguments are
/// known) or any other expression, taken as the tag function.
fn tags(value: Expr) -> syn::Result<TagsArg> {
    let Expr::Array(array) = value else {
        return Ok(TagsArg::Function(value));
    };
    if array.elems.len() > MAX_TAGS_PER_ENTRY {
        return Err(syn::Error::new_spanned(
            &array,
            format!(
                "{} tags; an entry carries at most {MAX_TAGS_PER_ENTRY}",
                array.elems.len()
            ),
        ));
    }
    let mut formats = Vec::with_capacity(array.elems.len());
    let mut errors: Option<syn::Error> = None;
    for elem in &array.elems {
        let checked = string("tags", elem).and_then(|lit| {
            check_tag_format(&lit)?;
            Ok(lit)
        });
        match checked {
            Ok(lit) => formats.push(lit),
            Err(error) => match &mut errors {
                Some(all) => all.combine(error),
                None => errors = Some(error),
            },
        }
    }
    match errors {
        Some(errors) => Err(errors),
        None if formats.is_empty() => Err(syn::Error::new_spanned(
            &array,
            "`tags = []` tags nothing; leave `tags` out instead",
        )),
        None => Ok(TagsArg::Formats(formats)),
    }
}

/// What can be checked of a tag's format string before its arguments are known: the text
/// around the `{...}` placeholders is printable ASCII without `{`/`}` of its own (the
/// placeholders' values are checked when a value is written), and without placeholders the tag
/// is no longer than a tag may be.
fn check_tag_format(lit: &LitStr) -> syn::Result<()> {
    let text = lit.value();
    let fixed = fixed_text(&text);
    let problem = if text.is_empty() {
        Some("is empty".to_owned())
    } else if fixed.chars().any(|c| !c.is_ascii_graphic()) {
        Some("must be printable ASCII without whitespace".to_owned())
    } else if fixed.contains(['{', '}']) {
        Some(
            "must not contain `{` or `}` (Redis Cluster reads them as a hash tag); `{{` in a \
             format string is a literal `{`"
                .to_owned(),
        )
    } else if !text.contains('{') && text.len() > MAX_TAG_LEN {
        Some(format!(
            "is {} bytes long; the limit is {MAX_TAG_LEN}",
            text.len()
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(syn::Error::new(
            lit.span(),
            format!("the tag {text:?} {problem}"),
        )),
        None => Ok(()),
    }
}

/// The text a format string writes around its placeholders: `"user:{id}"` gives `"user:"`,
/// `"{{x}}"` gives `"{x}"`.
fn fixed_text(format: &str) -> String {
    let mut fixed = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                fixed.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                fixed.push('}');
            }
            '{' => {
                for inner in chars.by_ref() {
                    if inner == '}' {
                        break;
                    }
                }
            }
            c => fixed.push(c),
        }
    }
    fixed
}

/// The default for `client = ...`: the process-wide client.
pub(crate) fn default_client() -> TokenStream {
    quote!(::cacheback::__private::global())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_text_of_a_format_string_leaves_out_its_placeholders() {
        assert_eq!(fixed_text("user:{id}"), "user:");
        assert_eq!(fixed_text("{a}:{b:>4}:c"), "::c");
        assert_eq!(fixed_text("{{x}}"), "{x}");
        assert_eq!(fixed_text("plain"), "plain");
        assert_eq!(fixed_text("{unclosed"), "");
    }

    #[test]
    fn tag_formats_are_checked_as_far_as_they_can_be() {
        let check = |text: &str| check_tag_format(&LitStr::new(text, Span::call_site()));
        assert!(check("user:{id}").is_ok());
        assert!(check("page:{user}:{page}").is_ok());
        // A placeholder may make a long tag short, or a short one too long: checked at write.
        assert!(check(&format!("{{id}}{}", "x".repeat(200))).is_ok());
        for bad in ["", "user {id}", "é:{id}", "{{id}}", &"x".repeat(129)] {
            assert!(check(bad).is_err(), "{bad:?} is accepted");
        }
    }
}
