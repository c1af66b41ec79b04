//! Checks the annotated `async fn` and generates the job, its handle and the cached fn.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemFn, Meta, Pat, PathArguments, ReturnType,
    Signature, Token, Type, TypeTuple,
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
    /// For a `#[dep] name: &T` parameter, `T`: the job owns it and lends it to each fetch.
    dep: Option<Type>,
}

/// The marker of a dependency parameter, `#[dep] db: &PgPool`.
const DEP: &str = "dep";

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
    let markers = take_dep_markers(&mut function.sig);
    let args = Args::parse(attr);
    let signature = check_signature(&function, markers);
    match (args, signature) {
        (Ok(args), Ok((params, output))) => generate(function, args, params, output),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            error_and_item(a, quote!(#function))
        }
        (Err(error), _) | (_, Err(error)) => error_and_item(error, quote!(#function)),
    }
}

/// Removes the `#[dep]` markers from the parameters: for each typed parameter, in order, the
/// marker's span if it had one, or the error of a marker written with arguments.
fn take_dep_markers(sig: &mut Signature) -> Vec<syn::Result<Option<Span>>> {
    let mut markers = Vec::new();
    for input in &mut sig.inputs {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        let mut marker = Ok(None);
        typed.attrs.retain(|attr| {
            if !attr.path().is_ident(DEP) {
                return true;
            }
            marker = match &attr.meta {
                Meta::Path(_) => Ok(Some(attr.span())),
                meta => Err(syn::Error::new_spanned(
                    meta,
                    "`#[dep]` takes no arguments: write `#[dep] name: &Type`",
                )),
            };
            false
        });
        markers.push(marker);
    }
    markers
}

fn error_and_item(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item)
}

/// Collects every problem of the signature, each spanned on the offending part.
fn check_signature(
    function: &ItemFn,
    markers: Vec<syn::Result<Option<Span>>>,
) -> syn::Result<(Vec<Param>, Output)> {
    let sig = &function.sig;
    let fn_name = sig.ident.unraw().to_string();
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
    let typed_inputs = sig.inputs.iter().filter_map(|input| match input {
        FnArg::Typed(typed) => Some(typed),
        FnArg::Receiver(_) => None, // reported above
    });
    for (typed, marker) in typed_inputs.zip(markers) {
        let name = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                Some(pat.ident.clone())
            }
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
            Ok(Some(_)) => match check_dep(&typed.ty, &fn_name) {
                Ok(owned) => Some(owned),
                Err(error) => {
                    errors.push(error);
                    None
                }
            },
            Ok(None) => {
                if let Some(error) = check_key_arg(&typed.ty) {
                    errors.push(error);
                }
                None
            }
            Err(error) => {
                errors.push(error);
                None
            }
        };
        if let Some(name) = name {
            params.push(Param {
                name,
                ty: (*typed.ty).clone(),
                dep,
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

/// A `#[dep]` parameter is `&T`: the job owns the `T` that `<fn>::init` was given and lends it
/// to every fetch, so `T` must be a concrete, sized type without borrows. Returns `T`.
fn check_dep(ty: &Type, fn_name: &str) -> syn::Result<Type> {
    let Type::Reference(reference) = ty else {
        let shown = quote!(#ty).to_string().replace(' ', "");
        return Err(syn::Error::new_spanned(
            ty,
            format!(
                "a #[dep] parameter must be a shared reference: write `&{shown}`; the job owns \
                 the `{shown}` given to `{fn_name}::init` and lends it to each fetch"
            ),
        ));
    };
    if let Some(mutability) = &reference.mutability {
        let and = &reference.and_token;
        return Err(syn::Error::new_spanned(
            quote!(#and #mutability),
            "a #[dep] parameter is shared by every call and refresh, so it is `&T`, not \
             `&mut T`; keep the mutable state behind a lock or a pool inside `T`",
        ));
    }
    if let Some(lifetime) = &reference.lifetime {
        return Err(syn::Error::new_spanned(
            lifetime,
            "write a #[dep] parameter as `&T`, without a lifetime: the job lends its \
             dependency for the length of one fetch",
        ));
    }
    let owned = &*reference.elem;
    if let Type::TraitObject(object) = owned {
        let shown = quote!(#object).to_string();
        return Err(syn::Error::new_spanned(
            owned,
            format!(
                "the job owns its dependency, and a trait object can only be owned behind a \
                 pointer: take `&Arc<{shown}>` and pass an `Arc` to `{fn_name}::init`"
            ),
        ));
    }
    if let Some(inner) = find_reference(owned) {
        return Err(syn::Error::new_spanned(
            inner,
            format!(
                "the type behind a #[dep] parameter cannot borrow: the job owns it for as long as \
                 it is registered; give `{fn_name}::init` an owned value (an `Arc`, a pool handle)"
            ),
        ));
    }
    if let Some(impl_trait) = find_impl_trait(owned) {
        return Err(syn::Error::new_spanned(
            impl_trait,
            "a #[dep] parameter cannot be `impl Trait`: the job stores it, so its type must be \
             concrete",
        ));
    }
    Ok(owned.clone())
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

/// `a` for one key argument, `(a, b)` for several, `()` for none: the job's args, as a value or
/// as a pattern, matching the `Args` type that `generate` derives.
fn pack(names: &[&Ident]) -> TokenStream {
    match names {
        [one] => quote!(#one),
        _ => quote!((#(#names),*)),
    }
}

/// How `job()`'s methods take the key arguments, for the generated docs.
fn args_form(names: &[&Ident]) -> String {
    let names: Vec<String> = names.iter().map(|n| n.unraw().to_string()).collect();
    match names.as_slice() {
        [] => "`()`, as the fn has no key arguments".to_owned(),
        [one] => format!("the fn's argument `{one}` itself"),
        several => format!("the fn's arguments as a tuple `({})`", several.join(", ")),
    }
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
    let init_fn = format_ident!("__cacheback_init_{}", fn_name);
    // Spans from the user's signature, so that type errors in the generated code (args that are
    // not serde types, a body that is not `Send`) point at the fn rather than at the attribute.
    let sig_span = fn_name.span();

    let cfgs: Vec<&Attribute> = attrs.iter().filter(|a| is_cfg(a)).collect();
    let lint_levels: Vec<&Attribute> = attrs.iter().filter(|a| is_lint_level(a)).collect();

    let keys: Vec<&Param> = params.iter().filter(|p| p.dep.is_none()).collect();
    let key_names: Vec<&Ident> = keys.iter().map(|p| &p.name).collect();
    let dep_names: Vec<&Ident> = params
        .iter()
        .filter(|p| p.dep.is_some())
        .map(|p| &p.name)
        .collect();
    let dep_types: Vec<&Type> = params.iter().filter_map(|p| p.dep.as_ref()).collect();
    // One key argument is the args itself, so that `job().invalidate(id)` needs no `(id,)`.
    let args_type = match keys.as_slice() {
        [one] => {
            let ty = &one.ty;
            quote!(#ty)
        }
        _ => {
            let tuple = TypeTuple {
                paren_token: sig.paren_token,
                elems: keys
                    .iter()
                    .map(|p| p.ty.clone())
                    .collect::<Punctuated<Type, Token![,]>>(),
            };
            quote!(#tuple)
        }
    };
    let args_value = pack(&key_names);

    // The body's arguments in the order written; the job lends it the dependencies it owns.
    let body_args = params.iter().map(|p| {
        let name = &p.name;
        match p.dep {
            Some(_) => quote!(&self.#name),
            None => quote!(#name),
        }
    });
    let body_call = quote!(#fetch_fn(#(#body_args),*));
    let (value, error, fetch_body) = match &output {
        Output::Fallible { value, error } => (value.clone(), error.clone(), body_call),
        Output::Infallible { value } => (
            value.clone(),
            quote!(::core::convert::Infallible),
            quote!(async move { ::core::result::Result::Ok(#body_call.await) }),
        ),
    };

    let name = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(::core::module_path!(), "::", #fn_name_text)),
    };
    let policy = &args.policy;
    let job_value = if dep_names.is_empty() {
        quote!(#job_type)
    } else {
        quote!(#job_type { #(#dep_names),* })
    };
    // Spanned on the expression, so that a wrong type is reported there.
    let register = match &args.client {
        Some(client) => quote_spanned! {client.span()=>
            ::cacheback::__private::register(#client, #job_value)
        },
        None => {
            let client = args::default_client();
            quote!(::cacheback::__private::register(#client, #job_value))
        }
    };
    let fetch_on_miss = args.fetch_on_miss.unwrap_or(true);

    // The hidden fn keeps the original signature and body: only its name changes.
    let mut fetch_sig = sig.clone();
    fetch_sig.ident = fetch_fn.clone();

    let job_doc =
        format!(" The cacheback job behind `{fn_name_text}` (generated by `#[cacheback]`).");
    let mod_doc = format!(
        " The cacheback job of the cached fn `{fn_name_text}`: `{fn_name_text}::job()` reads, \
         writes, invalidates and warms its values."
    );
    let methods_take = format!(
        "`set`, `invalidate`, `refresh`, `delete`, `peek`, ... take {}.",
        args_form(&key_names)
    );

    let fetch_method = quote_spanned! {sig_span=>
        fn fetch(
            &self,
            args: Self::Args,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<Self::Value, Self::Error>,
        > + ::core::marker::Send {
            let #args_value = args;
            #fetch_body
        }
    };

    // Without dependencies, one registration per process on first use, so that the client
    // expression runs once and the hot path is a single atomic load. With them, `init` makes
    // the one registration, and every read checks that it happened.
    let (job_struct, handle_items, handle, mod_items) = if dep_names.is_empty() {
        let job_fn_doc = format!(
            " The handle of `{fn_name_text}`'s job, registered with its client on first use: \
             {methods_take}"
        );
        (
            quote! {
                #[derive(
                    ::core::fmt::Debug,
                    ::core::clone::Clone,
                    ::core::marker::Copy,
                    ::core::default::Default,
                )]
                #vis struct #job_type;
            },
            quote! {
                #(#cfgs)*
                #[doc(hidden)]
                fn #handle_fn() -> &'static ::cacheback::JobHandle<#job_type> {
                    static HANDLE: ::cacheback::__private::OnceLock<
                        ::cacheback::JobHandle<#job_type>,
                    > = ::cacheback::__private::OnceLock::new();
                    HANDLE.get_or_init(|| #register)
                }
            },
            quote!(#handle_fn()),
            quote! {
                #[doc = #job_fn_doc]
                #[allow(dead_code)]
                pub fn job() -> ::cacheback::JobHandle<super::#job_type> {
                    ::core::clone::Clone::clone(super::#handle_fn())
                }
            },
        )
    } else {
        let dep_list = dep_names
            .iter()
            .map(|n| n.unraw().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let init_call = format!("{fn_name_text}::init({dep_list})");
        let job_type_text = job_type.to_string();
        // The module cannot name the user's types (it is one level down), so `init` names them
        // through aliases declared beside the fn.
        let aliases: Vec<Ident> = dep_names
            .iter()
            .map(|dep| format_ident!("__cacheback_dep_{}_{}", fn_name, dep))
            .collect();
        let alias_items = aliases.iter().zip(&dep_types).map(|(alias, ty)| {
            quote! {
                #(#cfgs)*
                #[doc(hidden)]
                #[allow(non_camel_case_types, unreachable_pub)]
                #vis type #alias = #ty;
            }
        });
        let job_fn_doc = format!(
            " The handle of `{fn_name_text}`'s job, once `{init_call}` registered it with its \
             client (until then a `cacheback::Error::Config`): {methods_take}"
        );
        let init_doc = format!(
            " Gives `{fn_name_text}`'s job its dependencies ({dep_list}) and registers it with \
             its client. Call it once at start-up in every process that calls `{fn_name_text}` \
             or runs its refreshes; a second call is a `cacheback::Error::Config`."
        );
        (
            quote! {
                #vis struct #job_type {
                    #(#dep_names: #dep_types,)*
                }

                #(#cfgs)*
                impl ::core::fmt::Debug for #job_type {
                    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                        f.debug_struct(#job_type_text).finish_non_exhaustive()
                    }
                }

                #(#alias_items)*
            },
            quote! {
                #(#cfgs)*
                #[doc(hidden)]
                fn #handle_fn() -> &'static ::cacheback::__private::OnceLock<
                    ::cacheback::JobHandle<#job_type>,
                > {
                    static HANDLE: ::cacheback::__private::OnceLock<
                        ::cacheback::JobHandle<#job_type>,
                    > = ::cacheback::__private::OnceLock::new();
                    &HANDLE
                }

                #(#cfgs)*
                #[doc(hidden)]
                fn #init_fn(
                    #(#dep_names: #dep_types),*
                ) -> ::cacheback::Result<::cacheback::JobHandle<#job_type>> {
                    ::cacheback::__private::provide(
                        #handle_fn(),
                        #fn_name_text,
                        #init_call,
                        || #register,
                    )
                }
            },
            quote!(::cacheback::__private::provided(#handle_fn(), #fn_name_text, #init_call)?),
            quote! {
                #[doc = #init_doc]
                #[allow(dead_code)]
                pub fn init(
                    #(#dep_names: super::#aliases),*
                ) -> ::cacheback::Result<::cacheback::JobHandle<super::#job_type>> {
                    super::#init_fn(#(#dep_names),*)
                }

                #[doc = #job_fn_doc]
                #[allow(dead_code)]
                pub fn job() -> ::cacheback::Result<::cacheback::JobHandle<super::#job_type>> {
                    ::cacheback::__private::provided(
                        super::#handle_fn(),
                        #fn_name_text,
                        #init_call,
                    )
                    .cloned()
                }
            },
        )
    };

    // The cached fn takes the key params, minus `mut` (it only forwards them).
    let cached_params = keys.iter().map(|Param { name, ty, .. }| quote!(#name: #ty));
    let (cached_output, cached_body) = if fetch_on_miss {
        (
            quote!(::cacheback::Result<::std::sync::Arc<#value>>),
            quote!(::cacheback::__private::get_fetched(#handle, #args_value).await),
        )
    } else {
        (
            quote!(::cacheback::Result<::core::option::Option<::std::sync::Arc<#value>>>),
            quote!(#handle.get_cached(#args_value).await),
        )
    };
    // `expect` would be unfulfilled on one of the two fns; it belongs with the body.
    let cached_attrs = attrs.iter().filter(|a| !a.path().is_ident("expect"));
    let asyncness = &sig.asyncness;

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
        #job_struct

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

        #handle_items

        // Same name as the fn: modules and functions live in different namespaces.
        #(#cfgs)*
        #[doc = #mod_doc]
        #[allow(unreachable_pub)]
        #vis mod #fn_name {
            #mod_items
        }

        #(#cached_attrs)*
        #vis #asyncness fn #fn_name(#(#cached_params),*) -> #cached_output {
            #cached_body
        }
    }
}
