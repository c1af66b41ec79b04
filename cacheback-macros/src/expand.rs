//! Checks the annotated `async fn` and generates the job, its handle and the cached fn.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Token, Type,
    TypeTuple,
};

use crate::args::{self, Args};

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
}

/// Expands `#[cacheback(args)] item`. On error, returns the errors and the unchanged item, so
/// that callers of the fn do not get a second wave of "cannot find function" errors.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[cacheback] can only be used on an `async fn`",
            );
            return error_and_item(error, item);
        }
    };
    let args = Args::parse(attr);
    let signature = check_signature(&function);
    match (args, signature) {
        (Ok(args), Ok((params, output))) => generate(function, args, params, output),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            error_and_item(a, item)
        }
        (Err(error), _) | (_, Err(error)) => error_and_item(error, item),
    }
}

fn error_and_item(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item)
}

/// Collects every problem of the signature, each spanned on the offending part.
fn check_signature(function: &ItemFn) -> syn::Result<(Vec<Param>, Output)> {
    let sig = &function.sig;
    let mut errors: Vec<syn::Error> = Vec::new();
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

    let mut params = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(typed) = input else {
            continue; // the receiver, reported above
        };
        let name = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                Some(pat.ident.clone())
            }
            pat => {
                errors.push(syn::Error::new_spanned(
                    pat,
                    "arguments of a #[cacheback] fn must be plain `name: Type` (they become the \
                     job's args tuple); destructure inside the body instead",
                ));
                None
            }
        };
        if let Some(reference) = find_reference(&typed.ty) {
            errors.push(syn::Error::new_spanned(
                reference,
                format!(
                    "arguments of a #[cacheback] fn are hashed into the cache key and sent to \
                     workers, so they must be owned; {}",
                    owned_suggestion(reference)
                ),
            ));
        } else if let Some(impl_trait) = find_impl_trait(&typed.ty) {
            errors.push(syn::Error::new_spanned(
                impl_trait,
                "arguments of a #[cacheback] fn cannot be `impl Trait`: they are decoded by \
                 workers, so their type must be concrete",
            ));
        }
        if let Some(name) = name {
            params.push(Param {
                name,
                ty: (*typed.ty).clone(),
            });
        }
    }

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
    let types: Vec<&Type> = match &last.arguments {
        PathArguments::AngleBracketed(generic) => generic
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
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

/// The first reference anywhere inside `ty` (`&str`, `Vec<&str>`, ...).
fn find_reference(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Reference(_) => Some(ty),
        _ => nested_types(ty).into_iter().find_map(find_reference),
    }
}

/// The first `impl Trait` anywhere inside `ty`.
fn find_impl_trait(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        _ => nested_types(ty).into_iter().find_map(find_impl_trait),
    }
}

/// The types directly inside `ty`, for the two searches above (syn's `visit` feature would do
/// this, but the macro keeps to syn's default features).
fn nested_types(ty: &Type) -> Vec<&Type> {
    match ty {
        Type::Array(array) => vec![&*array.elem],
        Type::Group(group) => vec![&*group.elem],
        Type::Paren(paren) => vec![&*paren.elem],
        Type::Ptr(ptr) => vec![&*ptr.elem],
        Type::Reference(reference) => vec![&*reference.elem],
        Type::Slice(slice) => vec![&*slice.elem],
        Type::Tuple(tuple) => tuple.elems.iter().collect(),
        Type::Path(path) => path
            .path
            .segments
            .iter()
            .flat_map(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(generic) => generic
                    .args
                    .iter()
                    .filter_map(|arg| match arg {
                        GenericArgument::Type(ty) => Some(ty),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
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

/// Attributes that must apply to every generated item, or the items would not agree on whether
/// they exist.
fn is_cfg(attr: &Attribute) -> bool {
    attr.path().is_ident("cfg")
}

/// Lint-level attributes: kept on the hidden fn as well, since that is where the body now lives.
fn is_lint_level(attr: &Attribute) -> bool {
    ["allow", "warn", "deny", "forbid", "expect"]
        .iter()
        .any(|level| attr.path().is_ident(level))
}

fn generate(function: ItemFn, args: Args, params: Vec<Param>, output: Output) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let fn_name = &sig.ident;
    let fn_name_text = fn_name.unraw().to_string();
    let job_type = format_ident!("__cacheback_job_{}", fn_name);
    let fetch_fn = format_ident!("__cacheback_fetch_{}", fn_name);
    let handle_fn = format_ident!("__cacheback_handle_{}", fn_name);
    // Spans from the user's signature, so that type errors in the generated code (args that are
    // not serde types, a body that is not `Send`) point at the fn rather than at the attribute.
    let sig_span = fn_name.span();

    let cfgs: Vec<&Attribute> = attrs.iter().filter(|a| is_cfg(a)).collect();
    let lint_levels: Vec<&Attribute> = attrs.iter().filter(|a| is_lint_level(a)).collect();

    let names: Vec<&Ident> = params.iter().map(|p| &p.name).collect();
    let args_type = TypeTuple {
        paren_token: sig.paren_token,
        elems: params
            .iter()
            .map(|p| p.ty.clone())
            .collect::<Punctuated<Type, Token![,]>>(),
    };
    // A trailing comma makes a one-element tuple, and is harmless otherwise.
    let args_type = if params.len() == 1 {
        let ty = &params[0].ty;
        quote_spanned!(sig.paren_token.span.join()=> (#ty,))
    } else {
        quote!(#args_type)
    };

    let (value, error, fetch_body) = match &output {
        Output::Fallible { value, error } => {
            (value.clone(), error.clone(), quote!(#fetch_fn(#(#names),*)))
        }
        Output::Infallible { value } => (
            value.clone(),
            quote!(::core::convert::Infallible),
            quote!(async move { ::core::result::Result::Ok(#fetch_fn(#(#names),*).await) }),
        ),
    };

    let name = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(::core::module_path!(), "::", #fn_name_text)),
    };
    let policy = &args.policy;
    // Spanned on the expression, so that a wrong type is reported there.
    let register = match &args.client {
        Some(client) => quote_spanned! {client.span()=>
            ::cacheback::__private::register(#client, #job_type)
        },
        None => {
            let client = args::default_client();
            quote!(::cacheback::__private::register(#client, #job_type))
        }
    };
    let fetch_on_miss = args.fetch_on_miss.unwrap_or(true);

    // The hidden fn keeps the original signature and body: only its name changes.
    let mut fetch_sig = sig.clone();
    fetch_sig.ident = fetch_fn.clone();

    // The cached fn takes the same params, minus `mut` (it only forwards them).
    let cached_params = params.iter().map(|Param { name, ty }| quote!(#name: #ty));
    let (cached_output, cached_body) = if fetch_on_miss {
        (
            quote!(::cacheback::Result<::std::sync::Arc<#value>>),
            quote!(::cacheback::__private::get_fetched(#handle_fn(), (#(#names,)*)).await),
        )
    } else {
        (
            quote!(::cacheback::Result<::core::option::Option<::std::sync::Arc<#value>>>),
            quote!(#handle_fn().get_cached((#(#names,)*)).await),
        )
    };
    // `expect` would be unfulfilled on one of the two fns; it belongs with the body.
    let cached_attrs = attrs.iter().filter(|a| !a.path().is_ident("expect"));
    let asyncness = &sig.asyncness;

    let job_doc =
        format!(" The cacheback job behind `{fn_name_text}` (generated by `#[cacheback]`).");
    let mod_doc = format!(
        " The cacheback job of the cached fn `{fn_name_text}`: `{fn_name_text}::job()` reads, \
         writes, invalidates and warms its values."
    );
    let job_fn_doc = format!(
        " The handle of `{fn_name_text}`'s job, registered with its client on first use: \
         `set`, `invalidate`, `refresh`, `delete`, `peek`, ... take the fn's arguments as a tuple."
    );

    let fetch_method = quote_spanned! {sig_span=>
        fn fetch(
            &self,
            args: Self::Args,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<Self::Value, Self::Error>,
        > + ::core::marker::Send {
            let (#(#names,)*) = args;
            #fetch_body
        }
    };

    quote! {
        // The original body, renamed: the job's `fetch` runs it on a miss or a refresh.
        #(#cfgs)*
        #(#lint_levels)*
        #[doc(hidden)]
        #fetch_sig #block

        #(#cfgs)*
        #[doc = #job_doc]
        #[doc(hidden)]
        #[allow(non_camel_case_types, unreachable_pub)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #job_type;

        #(#cfgs)*
        impl ::cacheback::Job for #job_type {
            type Args = #args_type;
            type Value = #value;
            type Error = #error;

            fn name(&self) -> &str {
                #name
            }

            fn policy(&self) -> ::cacheback::Policy {
                ::cacheback::Policy::default() #(#policy)*
            }

            #fetch_method
        }

        // One registration per process, on first use, so that the client expression runs once
        // and the hot path is a single atomic load.
        #(#cfgs)*
        #[doc(hidden)]
        fn #handle_fn() -> &'static ::cacheback::JobHandle<#job_type> {
            static HANDLE: ::cacheback::__private::OnceLock<::cacheback::JobHandle<#job_type>> =
                ::cacheback::__private::OnceLock::new();
            HANDLE.get_or_init(|| #register)
        }

        // Same name as the fn: modules and functions live in different namespaces.
        #(#cfgs)*
        #[doc = #mod_doc]
        #[allow(unreachable_pub)]
        #vis mod #fn_name {
            #[doc = #job_fn_doc]
            #[allow(dead_code)]
            pub fn job() -> ::cacheback::JobHandle<super::#job_type> {
                ::core::clone::Clone::clone(super::#handle_fn())
            }
        }

        #(#cached_attrs)*
        #vis #asyncness fn #fn_name(#(#cached_params),*) -> #cached_output {
            #cached_body
        }
    }
}
