//! Dependency parameters, `#[dep] db: &PgPool`: values the job owns and lends to each fetch,
//! given once with `<fn>::init` rather than hashed into the key.

use proc_macro2::Span;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, Meta, Signature, Type};

use super::types::{find_impl_trait, find_reference};

/// The marker of a dependency parameter, `#[dep] db: &PgPool`.
const DEP: &str = "dep";

/// Removes the `#[dep]` markers from the parameters: for each typed parameter, in order, the
/// marker's span if it had one, or the error of a marker written with arguments.
pub(super) fn take_dep_markers(sig: &mut Signature) -> Vec<syn::Result<Option<Span>>> {
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

/// A `#[dep]` parameter is `&T`: the job owns the `T` that `<fn>::init` was given and lends it
/// to every fetch, so `T` must be a concrete, sized type without borrows. Returns `T`.
pub(super) fn check_dep(ty: &Type, fn_name: &str) -> syn::Result<Type> {
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
    check_owned_dep(owned, fn_name)?;
    Ok(owned.clone())
}

/// The `T` of a `#[dep] name: &T`, which the job stores: not a trait object (unsized), nothing
/// borrowed, nothing opaque.
fn check_owned_dep(owned: &Type, fn_name: &str) -> syn::Result<()> {
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
    Ok(())
}
