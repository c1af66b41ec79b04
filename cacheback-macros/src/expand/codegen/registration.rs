//! How the job is registered with its client and how the cached fn and `job()` reach it: on
//! first use for a fn without dependencies, by `<fn>::init` for a fn with them (the job then
//! owns the dependencies, so there is nothing to build it from before `init` is called).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Expr, Ident};

use super::{Context, Registration};
use crate::args;

/// The expression that registers the job with its client.
pub(super) fn register(cx: &Context<'_>, client: Option<&Expr>) -> TokenStream {
    let Context {
        job_type,
        dep_names,
        ..
    } = cx;
    let job_value = if dep_names.is_empty() {
        quote!(#job_type)
    } else {
        quote!(#job_type { #(#dep_names),* })
    };
    match client {
        // Spanned on the expression, so that a wrong type is reported there.
        Some(client) => quote_spanned! {client.span()=>
            ::cacheback::__private::register(#client, #job_value)
        },
        None => {
            let client = args::default_client();
            quote!(::cacheback::__private::register(#client, #job_value))
        }
    }
}

/// Without dependencies, one registration per process on first use, so that the client
/// expression runs once and the hot path is a single atomic load.
pub(super) fn registration_on_first_use(cx: &Context<'_>, register: &TokenStream) -> Registration {
    let Context {
        vis,
        fn_name_text,
        job_type,
        handle_fn,
        cfgs,
        ..
    } = cx;
    let job_fn_doc = format!(
        " The handle of `{fn_name_text}`'s job, registered with its client on first use: {}",
        cx.methods_take()
    );
    Registration {
        job_struct: quote! {
            #[derive(
                ::core::fmt::Debug,
                ::core::clone::Clone,
                ::core::marker::Copy,
                ::core::default::Default,
            )]
            #vis struct #job_type;
        },
        handle_items: quote! {
            #(#cfgs)*
            #[doc(hidden)]
            fn #handle_fn() -> &'static ::cacheback::JobHandle<#job_type> {
                static HANDLE: ::cacheback::__private::OnceLock<
                    ::cacheback::JobHandle<#job_type>,
                > = ::cacheback::__private::OnceLock::new();
                HANDLE.get_or_init(|| #register)
            }
        },
        handle: quote!(#handle_fn()),
        mod_items: quote! {
            #[doc = #job_fn_doc]
            #[allow(dead_code)]
            pub fn job() -> ::cacheback::JobHandle<super::#job_type> {
                ::core::clone::Clone::clone(super::#handle_fn())
            }
        },
    }
}

/// With dependencies, `init` makes the one registration, and every read checks that it
/// happened.
pub(super) fn registration_by_init(cx: &Context<'_>, register: &TokenStream) -> Registration {
    let Context {
        fn_name_text,
        job_type,
        handle_fn,
        init_fn,
        cfgs,
        dep_names,
        dep_types,
        ..
    } = cx;
    let dep_list = dep_names
        .iter()
        .map(|n| n.unraw().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let init_call = format!("{fn_name_text}::init({dep_list})");
    Registration {
        job_struct: job_struct_with_deps(cx),
        handle_items: quote! {
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
        handle: quote!(::cacheback::__private::provided(#handle_fn(), #fn_name_text, #init_call)?),
        mod_items: init_and_job_fns(cx, &dep_list, &init_call),
    }
}

/// The job struct that owns the dependencies, its `Debug` (which shows none of them), and the
/// aliases through which `init` names their types.
fn job_struct_with_deps(cx: &Context<'_>) -> TokenStream {
    let Context {
        vis,
        job_type,
        cfgs,
        dep_names,
        dep_types,
        ..
    } = cx;
    let job_type_text = job_type.to_string();
    let alias_items = dep_aliases(cx)
        .into_iter()
        .zip(dep_types)
        .map(|(alias, ty)| {
            quote! {
                #(#cfgs)*
                #[doc(hidden)]
                #[allow(non_camel_case_types, unreachable_pub)]
                #vis type #alias = #ty;
            }
        });
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
    }
}

/// The module cannot name the user's types (it is one level down), so `init` names them through
/// aliases declared beside the fn, one per dependency.
fn dep_aliases(cx: &Context<'_>) -> Vec<Ident> {
    cx.dep_names
        .iter()
        .map(|dep| format_ident!("__cacheback_dep_{}_{}", cx.fn_name, dep))
        .collect()
}

/// The module's `init`, which takes the dependencies and registers the job, and `job()`, which
/// answers an error until `init` ran.
fn init_and_job_fns(cx: &Context<'_>, dep_list: &str, init_call: &str) -> TokenStream {
    let Context {
        fn_name_text,
        job_type,
        handle_fn,
        init_fn,
        dep_names,
        ..
    } = cx;
    let aliases = dep_aliases(cx);
    let job_fn_doc = format!(
        " The handle of `{fn_name_text}`'s job, once `{init_call}` registered it with its \
         client (until then a `cacheback::Error::Config`): {}",
        cx.methods_take()
    );
    let init_doc = format!(
        " Gives `{fn_name_text}`'s job its dependencies ({dep_list}) and registers it with \
         its client. Call it once at start-up in every process that calls `{fn_name_text}` \
         or runs its refreshes; a second call is a `cacheback::Error::Config`."
    );
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
    }
}
