//! Checks the annotated `async fn` and generates the job, its handle and the cached fn.
//!
//! The work runs in three steps, one module each:
//!
//! - [`deps`] takes the `#[dep]` markers off the parameters before anything else, and checks
//!   the type of each dependency parameter;
//! - [`signature`] checks the rest of the signature (the kind of fn, each parameter, the return
//!   type) and reports every problem at once, each spanned on the offending part;
//! - [`codegen`] turns a signature that passed into the generated items.
//!
//! [`types`] holds the searches inside a type that the checks share.

mod codegen;
mod deps;
mod signature;
mod types;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Ident, ItemFn, Type};

use crate::args::Args;

/// What the fn returns, split into the job's value and error types.
enum Output {
    /// `Result<V, E>`: the fetch can fail with `E`.
    Fallible {
        value: TokenStream,
        error: TokenStream,
    },
    /// Any other type (or none): the fetch cannot fail.
    Infallible { value: TokenStream },
}

/// One `name: Type` parameter.
struct Param {
    name: Ident,
    ty: Type,
    /// For a `#[dep] name: &T` parameter, `T`: the job owns it and lends it to each fetch.
    dep: Option<Type>,
}

/// Expands `#[cacheback(args)] item`. On error, returns the errors and the unchanged item, so
/// that callers of the fn do not get a second wave of "cannot find function" errors.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[cacheback] can only be used on an `async fn`",
            );
            return error_and_item(error, item);
        }
    };
    // Taken off before anything else, so that an item handed back with errors carries no
    // `#[dep]` for rustc to report as an unknown attribute.
    let markers = deps::take_dep_markers(&mut function.sig);
    let args = Args::parse(attr);
    let signature = signature::check_signature(&function, markers);
    match (args, signature) {
        (Ok(args), Ok((params, output))) => codegen::generate(function, args, params, output),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            error_and_item(a, quote!(#function))
        }
        (Err(error), _) | (_, Err(error)) => error_and_item(error, quote!(#function)),
    }
}

/// The errors as `compile_error!`s, followed by `item`.
fn error_and_item(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item)
}
