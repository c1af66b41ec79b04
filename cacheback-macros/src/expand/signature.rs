//! The checks of the annotated fn's signature: what kind of fn it is, each parameter (key
//! arguments and `#[dep]` ones) and the return type.

use proc_macro2::Span;
use quote::quote;
use syn::ext::IdentExt;
use syn::{FnArg, ItemFn, Pat, PatType, ReturnType, Signature, Type};

use super::deps::check_dep;
use super::types::{find_impl_trait, find_reference, type_arguments};
use super::{Output, Param};

/// Collects every problem of the signature, each spanned on the offending part. `markers` has
/// one entry per typed parameter, as `deps::take_dep_markers` returns them.
pub(super) fn check_signature(
    function: &ItemFn,
    markers: Vec<syn::Result<Option<Span>>>,
) -> syn::Result<(Vec<Param>, Output)> {
    let sig = &function.sig;
    let fn_name = sig.ident.unraw().to_string();
    let mut errors = check_fn_kind(sig);

    let typed_inputs = sig.inputs.iter().filter_map(|input| match input {
        FnArg::Typed(typed) => Some(typed),
        FnArg::Receiver(_) => None, // reported by `check_fn_kind`
    });
    let params = typed_inputs
        .zip(markers)
        .filter_map(|(typed, marker)| check_param(typed, marker, &fn_name, &mut errors))
        .collect();

    let output = match check_output(&sig.output) {
        Ok(output) => Some(output),
        Err(error) => {
            errors.push(error);
            None
        }
    };

    let mut errors = errors.into_iter();
    match (errors.next(), output) {
        (Some(mut first), _) => {
            for error in errors {
                first.combine(error);
            }
            Err(first)
        }
        (None, Some(output)) => Ok((params, output)),
        (None, None) => unreachable!("a failed output check pushes an error"),
    }
}

/// The problems of the fn itself rather than of its parameters or return type: a method, a fn
/// that is not `async`, a `const`, `unsafe`, `extern` or generic fn.
fn check_fn_kind(sig: &Signature) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    if let Some(receiver) = sig.receiver() {
        errors.push(syn::Error::new_spanned(
            receiver,
            "#[cacheback] cannot be used on methods; wrap the method in a free `async fn`",
        ));
    }
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "#[cacheback] can only be used on an `async fn`: the cached fn awaits the cache",
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            "#[cacheback] cannot be used on a `const fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            "#[cacheback] cannot be used on an `unsafe fn`: workers call the fn with no one to uphold its contract",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "#[cacheback] cannot be used on an `extern` fn",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "#[cacheback] cannot be used on a generic fn: a job has one name and one set of \
             argument and value types; write one non-generic fn per type",
        ));
    }
    errors
}

/// Checks one parameter, its pattern first and then its type (as a dependency if `marker` says
/// it had `#[dep]`, as a key argument otherwise), pushing what is wrong onto `errors`. Returns
/// the parameter if its pattern is a plain name, even if its type is wrong.
fn check_param(
    typed: &PatType,
    marker: syn::Result<Option<Span>>,
    fn_name: &str,
    errors: &mut Vec<syn::Error>,
) -> Option<Param> {
    let name = match &*typed.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => Some(pat.ident.clone()),
        pat => {
            errors.push(syn::Error::new_spanned(
                pat,
                "arguments of a #[cacheback] fn must be plain `name: Type` (they become the \
                 job's args); destructure inside the body instead",
            ));
            None
        }
    };
    let dep = match marker {
        Ok(Some(_)) => check_dep(&typed.ty, fn_name)
            .map_err(|error| errors.push(error))
            .ok(),
        Ok(None) => {
            errors.extend(check_key_arg(&typed.ty));
            None
        }
        Err(error) => {
            errors.push(error);
            None
        }
    };
    name.map(|name| Param {
        name,
        ty: (*typed.ty).clone(),
        dep,
    })
}

/// Splits the return type into the job's value and error types.
fn check_output(output: &ReturnType) -> syn::Result<Output> {
    let ty = match output {
        ReturnType::Default => {
            return Ok(Output::Infallible { value: quote!(()) });
        }
        ReturnType::Type(_, ty) => &**ty,
    };
    if let Some(impl_trait) = find_impl_trait(ty) {
        return Err(syn::Error::new_spanned(
            impl_trait,
            "a #[cacheback] fn cannot return `impl Trait`: its value is stored and decoded, so \
             its type must be concrete",
        ));
    }
    let Type::Path(path) = ty else {
        return Ok(Output::Infallible { value: quote!(#ty) });
    };
    let Some(last) = path.path.segments.last() else {
        return Ok(Output::Infallible { value: quote!(#ty) });
    };
    if last.ident != "Result" {
        return Ok(Output::Infallible { value: quote!(#ty) });
    }
    match type_arguments(&last.arguments).as_slice() {
        [value, error] => Ok(Output::Fallible {
            value: quote!(#value),
            error: quote!(#error),
        }),
        _ => Err(syn::Error::new_spanned(
            ty,
            "#[cacheback] needs the error type spelled out: write `Result<T, E>` (for example \
             `Result<T, anyhow::Error>` instead of `anyhow::Result<T>`) so the macro can tell the \
             cached value from the error",
        )),
    }
}

/// A key argument is hashed and sent to workers: it must be owned and concrete.
fn check_key_arg(ty: &Type) -> Option<syn::Error> {
    if let Some(reference) = find_reference(ty) {
        // A whole parameter of `&Something` (not `&str`, not `&[T]`) is often a pool or a
        // client that does not belong in the key at all.
        let dep_hint = match ty {
            Type::Reference(whole) if !is_str_or_slice(&whole.elem) => {
                "; or, if it is a dependency such as a database pool rather than part of the key, \
                 mark it `#[dep]`"
            }
            _ => "",
        };
        Some(syn::Error::new_spanned(
            reference,
            format!(
                "arguments of a #[cacheback] fn are hashed into the cache key and sent to \
                 workers, so they must be owned; {}{dep_hint}",
                owned_suggestion(reference)
            ),
        ))
    } else {
        find_impl_trait(ty).map(|impl_trait| {
            syn::Error::new_spanned(
                impl_trait,
                "arguments of a #[cacheback] fn cannot be `impl Trait`: they are decoded by \
                 workers, so their type must be concrete",
            )
        })
    }
}

fn is_str_or_slice(ty: &Type) -> bool {
    match ty {
        Type::Slice(_) => true,
        Type::Path(path) => path.path.is_ident("str"),
        _ => false,
    }
}

/// "take `String` instead of `&str`", tailored to the reference found.
fn owned_suggestion(reference: &Type) -> String {
    let Type::Reference(reference) = reference else {
        return String::new();
    };
    let inner = &*reference.elem;
    let shown = quote!(#inner).to_string().replace(' ', "");
    match inner {
        Type::Path(path) if path.path.is_ident("str") => {
            "take `String` instead of `&str`".to_owned()
        }
        Type::Slice(slice) => {
            let elem = &*slice.elem;
            let elem = quote!(#elem).to_string().replace(' ', "");
            format!("take `Vec<{elem}>` instead of `&[{elem}]`")
        }
        _ => format!("take `{shown}` instead of `&{shown}`"),
    }
}
